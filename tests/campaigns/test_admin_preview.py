"""Staff preview the notice in every language and send a test to themselves."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse

from campaigns.services import notice_versions_freeze
from tests.campaigns.factories import make_campaign


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("priya", "priya@example.com", "pw-for-tests-only")


@pytest.fixture
def staff_client(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    return client


def _preview(campaign) -> str:
    return reverse("admin:campaigns_campaign_notice_preview", args=[campaign.pk])


def test_it_previews_an_unfrozen_campaign_in_the_chosen_language(staff_client, purpose):
    campaign = make_campaign(purpose)

    page = staff_client.get(_preview(campaign), {"lang": "bg"}).content.decode()

    assert "Вашата информация и ИИ в Demur Social" in page
    assert "Not frozen yet" in page
    assert "srcdoc=" in page and "Възразявам" in page
    for code, name in [
        ("el", "Ελληνικά"),
        ("mt", "Malti"),
        ("ga", "Gaeilge"),
        ("nb", "norsk (bokmål)"),
    ]:
        assert f'hreflang="{code}"' in page and name in page


def test_it_shows_the_frozen_version_once_there_is_one(staff_client, purpose):
    campaign = make_campaign(purpose)
    versions = {v.language: v for v in notice_versions_freeze(campaign_id=campaign.pk)}

    page = staff_client.get(_preview(campaign), {"lang": "de", "variant": "objected"}).content.decode()

    assert f"Frozen version {versions['de'].content_hash[:12]}" in page
    assert "Ihr Widerspruch gegen KI-Training gilt weiter" in page


def test_it_shows_translation_coverage_per_language(staff_client, purpose):
    page = staff_client.get(_preview(make_campaign(purpose))).content.decode()

    rows = re.findall(r'<tr><td lang="([a-z]{2})">[^<]+</td><td>(\d+) / (\d+) \((\d+) %\)</td>', page)
    assert len(rows) == 26
    assert all(translated == total and percent == "100" for _code, translated, total, percent in rows)


def test_it_sends_a_test_to_the_staff_members_own_address_in_any_language(staff_client, purpose):
    campaign = make_campaign(purpose)
    page = staff_client.get(_preview(campaign), {"lang": "el"}).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = staff_client.post(
        reverse("admin:campaigns_campaign_notice_send_test", args=[campaign.pk]),
        {"lang": "el", "csrfmiddlewaretoken": token, "to": "someone-else@example.com"},
    )

    assert response.status_code == 302
    (message,) = mail.outbox
    assert message.to == ["priya@example.com"]
    assert message.subject == "Οι πληροφορίες σας και η ΤΝ στο Demur Social"
    assert "Γεια σας, priya," in message.body
    assert "Test sent to priya@example.com" in staff_client.get(response["Location"]).content.decode()


def test_it_refuses_a_test_send_without_a_csrf_token(staff_client, purpose):
    campaign = make_campaign(purpose)

    response = staff_client.post(
        reverse("admin:campaigns_campaign_notice_send_test", args=[campaign.pk]),
        {"lang": "de"},
    )

    assert response.status_code == 403
    assert mail.outbox == []


def test_it_keeps_the_preview_from_people_who_are_not_staff(client, purpose, django_user_model):
    campaign = make_campaign(purpose)
    client.force_login(django_user_model.objects.create_user("visitor", "v@example.com", "pw"))

    response = client.get(_preview(campaign))

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_it_says_what_is_missing_instead_of_rendering_a_half_notice(staff_client, purpose):
    page = staff_client.get(_preview(make_campaign(purpose, policy_url=""))).content.decode()

    assert "The campaign lacks values the notice needs" in page


def test_it_shows_a_frozen_version_as_it_was_sent(staff_client, purpose):
    campaign = make_campaign(purpose)
    version = next(v for v in notice_versions_freeze(campaign_id=campaign.pk) if v.language == "sv")

    page = staff_client.get(reverse("admin:campaigns_noticeversion_change", args=[version.pk])).content.decode()

    assert version.content_hash in page and version.template_hash in page and version.catalog_hash in page
    assert "srcdoc=" in page and "Din rätt att invända" in page and "Hej Alex," in page


def test_a_test_mail_links_to_a_page_that_says_it_is_a_test_and_records_nothing(staff_client, client, purpose):
    from campaigns.models import Suppression
    from optout.models import AuditEntry, ObjectionEvent

    campaign = make_campaign(purpose)
    page = staff_client.get(_preview(campaign), {"lang": "de"}).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    staff_client.post(
        reverse("admin:campaigns_campaign_notice_send_test", args=[campaign.pk]),
        {"lang": "de", "csrfmiddlewaretoken": token},
    )
    (message,) = mail.outbox
    unsubscribe = message.extra_headers["List-Unsubscribe"].strip("<>")
    object_link = next(link for link in re.findall(r"https?://\S+", message.body) if "/test-link/object/" in link)
    assert "/test-link/unsubscribe/" in unsubscribe
    assert not [link for link in re.findall(r"https?://\S+", message.body) if "/optout/" in link]

    # The page speaks the mail's language: German words for the two kinds of link.
    for link, says in ((object_link, "Widerspruchslink"), (unsubscribe, "Abmeldelink")):
        response = client.get(link.removeprefix("http://testserver"))
        body = response.content.decode()
        assert response.status_code == 200
        assert '<html lang="de"' in body and says in body and campaign.name in body
    # The test token is worthless on the real objection page.
    real_page = client.get(f"/de/optout/t/{object_link.rstrip('/').rsplit('/', 1)[1]}/")
    assert 400 <= real_page.status_code < 500
    assert not ObjectionEvent.objects.exists() and not Suppression.objects.exists()
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action) == ("priya", "test-send")
    assert entry.details == {"campaign": campaign.pk, "language": "de", "already_objected": False}


def test_the_test_page_refuses_a_real_objection_token(client, purpose):
    from optout.links import LinkClaims, objection_url

    real = objection_url(LinkClaims(subject_id="u-1", purpose="ai-training", language="de"))
    token = real.rstrip("/").rsplit("/", 1)[1]

    response = client.get(reverse("admin:campaigns_campaign_test_link", args=["object", token]))

    assert response.status_code == 400
    assert "This test link is not valid." in response.content.decode()


def test_a_mail_server_that_refuses_the_test_gets_a_message_not_a_server_error(staff_client, purpose, settings):
    import socket

    from optout.models import AuditEntry

    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    campaign = make_campaign(purpose)
    page = staff_client.get(_preview(campaign), {"lang": "fr"}).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = staff_client.post(
        reverse("admin:campaigns_campaign_notice_send_test", args=[campaign.pk]),
        {"lang": "fr", "csrfmiddlewaretoken": token},
    )

    assert response.status_code == 302 and "lang=fr" in response["Location"]
    shown = staff_client.get(response["Location"]).content.decode()
    assert "The mail server did not take the test (ConnectionRefusedError). Nothing was sent" in shown
    assert "Test sent to" not in shown
    assert not AuditEntry.objects.filter(action=AuditEntry.Action.TEST_SEND).exists()
