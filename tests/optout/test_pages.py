"""The opt-out pages, through Django's test client: what a person sees and what each
request writes (ledger events, outbox mail, suppressions), including every bad input."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.core import mail, signing
from django.core.cache import cache
from django.test import Client
from django.utils import translation

from campaigns.models import Campaign, NoticeVersion, Suppression
from optout.links import (
    OBJECT_SALT,
    LinkClaims,
    make_token,
    objection_url,
    status_url,
    unsubscribe_url,
)
from optout.models import EmailVerification, ObjectionEvent, ObjectionState, OutboxMessage
from optout.services import objection_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _clean_rate_limits():
    cache.clear()
    yield
    cache.clear()


def local(url: str) -> str:
    return url.removeprefix(settings.SITE_URL)


def claims(subject: str = "user-1001", language: str = "en", email: str = "jane@example.com", **extra) -> LinkClaims:
    return LinkClaims(subject_id=subject, purpose="ai-training", language=language, email=email, **extra)


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def links_in(body: str) -> list[str]:
    return re.findall(r"https?://\S+", body)


# --- the signed link -----------------------------------------------------------------


def test_it_shows_the_link_page_on_get_and_records_nothing(purpose):
    response = Client().get(local(objection_url(claims())))

    assert response.status_code == 200
    body = text(response)
    assert "Object to the use of your data" in body
    assert "j***@example.com" in body
    assert "jane@example.com" not in body
    assert 'name="reason"' in body
    assert body.count('type="submit"') == 1
    assert ObjectionEvent.objects.count() == 0
    assert response["Referrer-Policy"] == "no-referrer"
    csp = response["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script" not in body and "style=" not in body and "<style" not in body


def test_it_records_the_objection_on_post_and_shows_the_receipt(purpose):
    campaign = Campaign.objects.create(name="Spring notice", purpose=purpose)
    version = NoticeVersion.objects.create(
        campaign=campaign, language="en", content_hash="a" * 64, subject="s", body_html="h", body_text="t"
    )
    url = local(objection_url(claims(campaign_id=campaign.id, notice_version_id=version.id)))
    client = Client(enforce_csrf_checks=True)
    page = client.get(url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)

    response = client.post(url, {"csrfmiddlewaretoken": token, "object": "yes", "reason": "I prefer not to."})

    assert response.status_code == 200
    event = ObjectionEvent.objects.get()
    assert (event.subject_id, event.action, event.source) == ("user-1001", "objected", "email-link")
    assert (event.campaign_id, event.notice_version_id, event.reason) == (campaign.id, version.id, "I prefer not to.")
    assert event.email == ""  # the ledger keeps emails only for the public form
    body = text(response)
    assert "Your objection has been recorded" in body
    assert event.receipt in body
    assert "training and improving AI models" in body
    assert "Recorded on" in body and "applies from" in body
    # the confirmation: one outbox row, sent (tasks run eagerly without a broker)
    message = OutboxMessage.objects.get()
    assert (message.kind, message.status, message.to) == ("receipt", "sent", "jane@example.com")
    assert len(mail.outbox) == 1 and event.receipt in mail.outbox[0].subject
    status_link = next(link for link in links_in(mail.outbox[0].body) if "/status/" in link)
    assert status_link.startswith(f"{settings.SITE_URL}/en/optout/status/")


def test_it_shows_someone_who_already_objected_the_date_and_nothing_to_redo(purpose):
    receipt = objection_record(subject_id="user-1001", source="in-app")

    response = Client().get(local(objection_url(claims())))

    assert response.status_code == 200
    body = text(response)
    assert "You have already objected" in body
    assert receipt.receipt in body
    assert 'type="submit"' not in body
    assert ObjectionEvent.objects.count() == 1


def test_it_gives_the_same_receipt_when_the_objection_is_posted_twice(purpose):
    url = local(objection_url(claims()))
    first = Client().post(url, {"object": "yes", "reason": ""})
    second = Client().post(url, {"object": "yes", "reason": ""})

    receipt = ObjectionEvent.objects.get().receipt
    assert receipt in text(first) and receipt in text(second)
    assert "You have already objected" in text(second)
    assert OutboxMessage.objects.count() == 1


def test_it_opens_the_page_in_the_language_of_the_link(purpose):
    response = Client().get(local(objection_url(claims(language="de"))))

    assert response.status_code == 200
    assert '<html lang="de"' in response.content.decode()
    assert response["Content-Language"] == "de"


def test_it_redirects_a_link_without_language_to_the_token_language_else_the_browser_language(purpose):
    token = make_token(claims(language="pl"), salt=OBJECT_SALT)

    from_token = Client().get(f"/optout/t/{token}/", HTTP_ACCEPT_LANGUAGE="fr")
    from_browser = Client().get("/optout/t/not-a-token/", HTTP_ACCEPT_LANGUAGE="fr")

    assert from_token.status_code == 302 and from_token["Location"] == f"/pl/optout/t/{token}/"
    assert from_browser.status_code == 302 and from_browser["Location"] == "/fr/optout/t/not-a-token/"


def test_it_offers_every_language_in_a_switcher_that_needs_no_script(purpose):
    url = local(objection_url(claims()))
    body = Client().get(url).content.decode()

    for code, _name in settings.LANGUAGES:
        assert f'hreflang="{code}"' in body
    assert url.replace("/en/", "/mt/", 1) in body
    assert ">Malti<" in body
    assert "<details" in body


def test_it_knows_maltese():
    assert translation.get_language_info("mt")["name_local"] == "Malti"


# --- bad input -------------------------------------------------------------------------


def _tampered(token: str) -> str:
    payload, rest = token.split(":", 1)
    return payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + ":" + rest


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda: "/en/optout/t/garbage/", id="malformed"),
        pytest.param(
            lambda: "/en/optout/t/" + _tampered(objection_url(claims()).split("/t/")[1].rstrip("/")) + "/",
            id="tampered",
        ),
        pytest.param(lambda: objection_url(claims()).replace("/t/", "/status/"), id="object-token-on-status"),
        pytest.param(lambda: status_url(claims()).replace("/status/", "/t/"), id="status-token-on-link"),
        pytest.param(lambda: unsubscribe_url(claims()).replace("/unsubscribe/", "/t/"), id="unsubscribe-token-on-link"),
        pytest.param(
            lambda: "/en/optout/t/" + make_token(LinkClaims("user-1", "no-such-purpose", "en"), salt=OBJECT_SALT) + "/",
            id="unknown-purpose",
        ),
        pytest.param(
            lambda: "/en/optout/verify/" + signing.dumps({"v": "x"}, salt="demur.optout.verify") + "/",
            id="verify-bad-payload",
        ),
    ],
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_it_answers_a_bad_token_with_a_clear_400_page_and_records_nothing(purpose, make_url, method):
    response = getattr(Client(), method)(local(make_url()))

    assert response.status_code == 400
    assert "This link does not work" in text(response)
    assert "Traceback" not in text(response)
    assert ObjectionEvent.objects.count() == 0
    assert Suppression.objects.count() == 0


def test_it_answers_an_expired_token_with_410_and_records_nothing(purpose, settings):
    settings.DEMUR_LINK_MAX_AGE = 3600
    with mock.patch("django.core.signing.time.time", return_value=time.time() - 7200):
        url = local(objection_url(claims()))

    for response in (Client().get(url), Client().post(url, {"object": "yes", "reason": ""})):
        assert response.status_code == 410
        assert "This link has expired" in text(response)
    assert ObjectionEvent.objects.count() == 0


def test_it_refuses_a_post_without_csrf_token_with_a_localized_403(purpose):
    url = local(objection_url(claims(language="de")))

    response = Client(enforce_csrf_checks=True).post(url, {"object": "yes", "reason": "x"})

    assert response.status_code == 403
    assert '<html lang="de"' in response.content.decode()
    assert ObjectionEvent.objects.count() == 0


@pytest.mark.parametrize("fetch_site, status", [("same-origin", 200), ("cross-site", 403), (None, 403)])
def test_it_accepts_the_null_origin_of_no_referrer_only_from_its_own_site(purpose, fetch_site, status):
    """Referrer-Policy: no-referrer makes browsers send `Origin: null` on the page's own
    form; Sec-Fetch-Site tells that apart from a post by another site."""
    url = local(objection_url(claims()))
    client = Client(enforce_csrf_checks=True)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(url).content.decode()).group(1)
    headers = {"Origin": "null", **({"Sec-Fetch-Site": fetch_site} if fetch_site else {})}

    response = client.post(url, {"csrfmiddlewaretoken": token, "object": "yes"}, headers=headers)

    assert response.status_code == status
    assert ObjectionEvent.objects.count() == (1 if status == 200 else 0)


def test_it_refuses_an_oversized_post_with_413(purpose, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    url = local(objection_url(claims()))

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.get(url)  # the cookie; the CSRF check then reads the oversized body itself
    for client in (Client(), csrf_client):
        response = client.post(url, {"object": "yes", "reason": "x" * 20_000})

        assert response.status_code == 413
        assert "That was too much text" in text(response)
    assert ObjectionEvent.objects.count() == 0


def test_it_refuses_a_reason_longer_than_the_limit_with_400(purpose):
    response = Client().post(local(objection_url(claims())), {"object": "yes", "reason": "x" * 2001})

    assert response.status_code == 400
    assert "at most 2000 characters" in text(response)
    assert ObjectionEvent.objects.count() == 0


def test_it_refuses_a_garbage_body_with_a_4xx(purpose):
    response = Client().generic(
        "POST", local(objection_url(claims())), b"\xff\xfe--\x00garbage", content_type="multipart/form-data; boundary=x"
    )

    assert 400 <= response.status_code < 500
    assert ObjectionEvent.objects.count() == 0


# --- the public form ------------------------------------------------------------------


def form_data(**overrides) -> dict:
    return {"email": "Someone@Example.org", "country": "MT", "account_id": "", "reason": "", **overrides}


def test_it_sends_a_verification_mail_and_records_nothing_until_it_is_confirmed(purpose):
    response = Client().post("/en/optout/", form_data())

    assert response.status_code == 200
    assert "Check your email" in text(response)
    assert "s***@example.org" in text(response)
    assert ObjectionEvent.objects.count() == 0
    assert EmailVerification.objects.get().email == "someone@example.org"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["someone@example.org"]
    assert "30 minutes" in mail.outbox[0].body


def test_it_answers_the_same_whether_or_not_the_address_is_known(purpose):
    objection_record(subject_id="email:known@example.org", source="web-form", email="known@example.org")

    known = Client().post("/en/optout/", form_data(email="known@example.org"))
    unknown = Client().post("/en/optout/", form_data(email="unknown@example.org"))

    def scrub(response):
        return re.sub(r"\w\*\*\*@example\.org", "", text(response))

    assert known.status_code == unknown.status_code == 200
    assert scrub(known) == scrub(unknown)


def test_it_records_the_objection_once_when_the_verification_link_is_confirmed(purpose):
    Client().post("/en/optout/", form_data(account_id="acct-77", reason="No thanks"))
    verify_link = local(next(link for link in links_in(mail.outbox[0].body) if "/verify/" in link))

    shown = Client().get(verify_link)
    assert shown.status_code == 200 and ObjectionEvent.objects.count() == 0
    assert "Malta" in text(shown)

    confirmed = Client().post(verify_link)
    assert confirmed.status_code == 200
    event = ObjectionEvent.objects.get()
    assert (event.subject_id, event.source, event.email, event.reason) == (
        "acct-77",
        "web-form",
        "someone@example.org",
        "No thanks",
    )
    assert event.receipt in text(confirmed)

    reused = Client().post(verify_link)
    assert reused.status_code == 410
    assert "already been used" in text(reused)
    assert ObjectionEvent.objects.count() == 1


def test_a_typed_account_id_gets_no_status_link_and_no_earlier_receipt(purpose):
    """The form proves the address, not the account: someone who knows another person's
    account id must not see that person's receipt, nor get a link to withdraw it."""
    victim = objection_record(subject_id="victim-1", source="in-app")

    Client().post("/en/optout/", form_data(email="other@example.org", account_id="victim-1"))
    verify_link = local(next(link for link in links_in(mail.outbox[-1].body) if "/verify/" in link))
    confirmed = Client().post(verify_link)

    page = text(confirmed)
    assert confirmed.status_code == 200
    assert "An objection is already on record for this account" in page
    assert victim.receipt not in page and "/status/" not in page
    state = ObjectionState.objects.get(subject_id="victim-1")
    assert state.objected and state.receipt == victim.receipt
    assert ObjectionEvent.objects.count() == 1

    # A new objection for a typed account: its own receipt, but no status link, here or in the mail.
    mail.outbox.clear()
    Client().post("/en/optout/", form_data(email="other@example.org", account_id="acct-9"))
    verify_link = local(next(link for link in links_in(mail.outbox[-1].body) if "/verify/" in link))
    created = Client().post(verify_link)
    event = ObjectionEvent.objects.get(subject_id="acct-9")
    assert event.receipt in text(created) and "/status/" not in text(created)
    receipt_mail = next(message for message in mail.outbox if event.receipt in message.subject + message.body)
    assert "/status/" not in receipt_mail.body
    assert "use the link in a notice we sent to that account" in receipt_mail.body


def test_an_address_alone_still_gets_its_status_link(purpose):
    Client().post("/en/optout/", form_data())
    verify_link = local(next(link for link in links_in(mail.outbox[-1].body) if "/verify/" in link))

    confirmed = Client().post(verify_link)

    assert "/status/" in text(confirmed)
    event = ObjectionEvent.objects.get()
    receipt_mail = next(message for message in mail.outbox if event.receipt in message.subject + message.body)
    assert "/status/" in receipt_mail.body


def test_it_uses_the_address_as_subject_when_no_account_id_is_given(purpose):
    Client().post("/en/optout/", form_data())
    verify_link = local(next(link for link in links_in(mail.outbox[0].body) if "/verify/" in link))
    Client().post(verify_link)

    assert ObjectionEvent.objects.get().subject_id == "email:someone@example.org"


def test_it_refuses_a_verification_link_older_than_30_minutes(purpose):
    with mock.patch("django.core.signing.time.time", return_value=time.time() - 31 * 60):
        Client().post("/en/optout/", form_data())
    verify_link = local(next(link for link in links_in(mail.outbox[0].body) if "/verify/" in link))

    response = Client().post(verify_link)

    assert response.status_code == 410
    assert ObjectionEvent.objects.count() == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"country": "US"}, "Choose a country of the EU or the EEA"),
        ({"country": ""}, "Choose a country of the EU or the EEA"),
        ({"email": ""}, "Enter your email address."),
        ({"email": "not-an-address"}, "Enter a valid email address"),
        ({"account_id": "a" * 129}, "at most 128 characters (it has 129)"),
        ({"account_id": "bad\x01id"}, "control characters"),
        ({"account_id": "zero\u200bwidth"}, "control characters"),  # not printable: no subject id
        ({"reason": "a\x00b"}, "The text cannot contain null characters."),
    ],
)
def test_it_refuses_a_bad_form_with_a_400_naming_the_problem(purpose, overrides, message):
    response = Client().post("/en/optout/", form_data(**overrides))

    assert response.status_code == 400
    assert message in text(response)
    assert EmailVerification.objects.count() == 0 and len(mail.outbox) == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"email": "not-an-address"}, "Daħħal indirizz tal-email validu"),
        ({"account_id": "a" * 129}, "Dan twil wisq: l-aktar 128 karattru (fih 129)."),
        ({"reason": "a\x00b"}, "It-test ma jistax ikun fih karattri null."),
    ],
)
def test_a_bad_form_is_explained_in_maltese_which_django_has_no_words_for(purpose, overrides, message):
    response = Client().post("/mt/optout/", form_data(**overrides))

    assert response.status_code == 400
    assert message in text(response)
    assert "Enter a valid" not in text(response) and "Ensure this value" not in text(response)


def test_it_limits_requests_per_address(purpose, settings):
    settings.DEMUR_FORM_RATE_EMAIL = "2/h"
    answers = [Client(REMOTE_ADDR=f"10.0.0.{n}").post("/en/optout/", form_data()).status_code for n in range(3)]

    assert answers == [200, 200, 429]
    assert EmailVerification.objects.count() == 2


def test_it_limits_requests_per_ip(purpose, settings):
    settings.DEMUR_FORM_RATE_IP = "2/h"
    answers = [Client().post("/en/optout/", form_data(email=f"p{n}@example.org")).status_code for n in range(3)]

    assert answers == [200, 200, 429]
    assert EmailVerification.objects.count() == 2


# --- status and withdrawal ---------------------------------------------------------------


def test_it_shows_the_status_with_history_and_withdraws_only_after_confirmation(purpose):
    receipt = objection_record(subject_id="user-1001", source="email-link")
    url = local(status_url(claims()))

    shown = Client().get(url)
    assert shown.status_code == 200
    assert "You are objecting." in text(shown) and receipt.receipt in text(shown)

    unconfirmed = Client().post(url, {"action": "withdraw"})
    assert unconfirmed.status_code == 400
    assert "Tick the box" in text(unconfirmed)
    assert ObjectionEvent.objects.count() == 1

    withdrawn = Client().post(url, {"action": "withdraw", "confirm": "on"})
    assert withdrawn.status_code == 200
    assert "Your objection has been withdrawn." in text(withdrawn)
    assert list(ObjectionEvent.objects.order_by("id").values_list("action", flat=True)) == ["objected", "withdrawn"]
    assert OutboxMessage.objects.get().kind == "withdrawal"

    again = Client().post(url, {"action": "object"})
    assert again.status_code == 200
    assert "You are objecting." in text(again)
    actions = list(ObjectionEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["objected", "withdrawn", "objected"]


def test_it_refuses_an_unknown_status_action(purpose):
    objection_record(subject_id="user-1001", source="email-link")

    response = Client().post(local(status_url(claims())), {"action": "delete-everything"})

    assert response.status_code == 400
    assert ObjectionEvent.objects.count() == 1


def test_it_answers_an_objection_from_the_status_page_for_a_purpose_gone_since_with_a_bad_link_page(purpose):
    link = local(status_url(LinkClaims("user-1002", "a-purpose-since-deleted", "en")))

    response = Client().post(link, {"action": "object"})

    assert response.status_code == 400
    assert not ObjectionEvent.objects.exists()


# --- one-click unsubscribe ------------------------------------------------------------------


def test_it_unsubscribes_on_a_one_click_post_without_cookie_or_redirect(purpose):
    url = local(unsubscribe_url(claims()))

    response = Client(enforce_csrf_checks=True).post(
        url, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 200
    assert "Location" not in response
    suppression = Suppression.objects.get()
    assert (suppression.subject_id, suppression.reason) == ("user-1001", "unsubscribed")
    assert ObjectionEvent.objects.count() == 0  # unsubscribing is not objecting


def test_it_shows_the_unsubscribe_page_on_get_with_the_objection_offered(purpose):
    response = Client().get(local(unsubscribe_url(claims())))

    assert response.status_code == 200
    assert Suppression.objects.count() == 0
    assert "/en/optout/t/" in response.content.decode()
    assert "Unsubscribing is not objecting" in text(response)


def test_it_refuses_an_unsubscribe_post_without_the_one_click_field(purpose):
    response = Client().post(local(unsubscribe_url(claims())), {"something": "else"})

    assert response.status_code == 400
    assert Suppression.objects.count() == 0


# --- languages and wiring ---------------------------------------------------------------


@pytest.mark.parametrize("language", [code for code, _name in settings.LANGUAGES])
def test_it_shows_the_link_page_and_receipt_in_each_language(purpose, language):
    url = local(objection_url(claims(subject=f"user-{language}", language=language)))
    with translation.override(language):
        button = translation.gettext("Send my objection")
        recorded = translation.gettext("Your objection has been recorded")
    if language != "en":
        assert button != "Send my objection" and recorded != "Your objection has been recorded"

    shown = Client().get(url)
    answered = Client().post(url, {"object": "yes"})

    assert f'<html lang="{language}"' in shown.content.decode()
    assert button in shown.content.decode()
    assert recorded in answered.content.decode()
    receipt = ObjectionEvent.objects.get().receipt
    assert receipt in answered.content.decode()
    assert receipt in mail.outbox[0].subject
    if language != "en":
        assert "Your objection" not in mail.outbox[0].subject and "We have recorded" not in mail.outbox[0].body


@pytest.mark.parametrize("language", [code for code, _name in settings.LANGUAGES])
def test_the_receipt_page_is_the_same_bytes_as_its_template_rendered_for_the_person(purpose, language):
    # The receipt is put together from a page cached per language (optout.views.receipt_page):
    # it must read exactly as receipt.html rendered for this person, escaping included.
    from django.test import RequestFactory

    from optout.services import Receipt
    from optout.views import page, receipt_page

    moment = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
    request = RequestFactory().post(f"/{language}/optout/t/.eJy<&'\"x:1:y/")
    with translation.override(language):
        for created, mailed in [(True, True), (True, False), (False, False)]:
            receipt = Receipt(
                receipt="R<&'\">-1", subject_id="s", purpose="ai-training", objected=True, received_at=moment,
                effective_at=moment + timedelta(days=1, seconds=1), created=created, event_uuid=None,
            )  # fmt: skip
            values = {
                "identity": "o'***@a&b<c>.example",
                "status_url": "https://x.example/s/?a=1&b='2'\"",
                "mailed": mailed,
            }
            rendered = page(request, "receipt.html", {"receipt": receipt, "purpose": purpose, **values})
            answered = receipt_page(request, receipt=receipt, purpose=purpose, **values)

            assert answered.content.decode() == rendered.content.decode()
            assert answered["Content-Type"] == rendered["Content-Type"]
            assert answered["Cache-Control"] == "no-store"
            assert "\x00" not in answered.content.decode()


@pytest.mark.parametrize("language", [code for code, _name in settings.LANGUAGES])
def test_a_date_reads_the_same_for_every_moment_of_its_second(language):
    # when() formats once per second and language: CLDR's long time shows no fraction.
    from babel.dates import format_datetime

    from core.countries import babel_locale
    from optout.formatting import when

    moment = datetime(2026, 3, 1, 9, 30, 15, tzinfo=UTC)
    later = moment.replace(microsecond=999999)
    with translation.override(language):
        shown = format_datetime(later, "long", tzinfo=UTC, locale=babel_locale(language))
        assert shown == format_datetime(moment, "long", tzinfo=UTC, locale=babel_locale(language))
        assert when(later) == when(moment) == shown
        assert "15" in shown  # the seconds


def test_it_keeps_the_bench_view_out_of_production_urls():
    from django.urls import Resolver404, resolve

    with pytest.raises(Resolver404):
        resolve("/bench/insert-one-row/")


@pytest.mark.parametrize(
    "path", ["/de/optout/t/", "/de/optout/verify/", "/de/optout/t/abc/extra/", "/de/nothing-here/"]
)
def test_a_page_that_does_not_exist_says_so_in_the_prefix_language(purpose, path):
    response = Client().get(path)

    assert response.status_code == 404
    assert "Diese Seite gibt es nicht" in text(response) and "Not Found" not in text(response)
    assert "Content-Security-Policy" in response.headers


def test_a_method_the_page_does_not_take_gets_the_localized_page_and_allow(purpose):
    response = Client().put("/pl/optout/")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, POST"
    assert "Ta strona nie przyjmuje tego rodzaju żądania" in text(response)
