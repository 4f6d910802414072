"""Prebuilt notice mails (campaigns.notice_mime) are byte for byte the mails Django builds
(but for header folding and the MIME boundary), and the shortcut steps aside wherever it
could not be exact."""

from __future__ import annotations

import datetime as dt
import re
from email import message_from_bytes, policy

import pytest
from django.core.mail import EmailMessage

from campaigns.notice_mime import PrebuiltSmtpBackend, fits, mail_connection, prebuilt_email
from campaigns.notices import date_display, notice_build, notice_email, notice_links
from tests.campaigns.factories import make_campaign

pytestmark = pytest.mark.django_db

TO = "r.person@example.com"
MESSAGE_ID = "<d7.c1@example.org>"


@pytest.fixture
def version(purpose, request):
    campaign = make_campaign(purpose)
    version = notice_build(campaign=campaign, language=getattr(request, "param", "de"))
    version.save()
    return version


def _django_bytes(version, *, objected_on, links, date: str) -> bytes:
    """What dispatch builds the ordinary way, headers in the prebuilt template's order."""
    message = notice_email(version, to=TO, name="", subject_id="s-1", objected_on=objected_on, links=links)
    message.extra_headers.update(
        {
            "Message-ID": MESSAGE_ID,
            "Date": date,
            "X-Demur-Campaign": str(version.campaign_id),
            "X-Demur-Delivery": "7",
        }
    )
    return message.message().as_bytes(linesep="\r\n")


def _prebuilt(version, *, objected_on=None, links=None, to=TO):
    object_url, unsubscribe_url = links or notice_links(version, subject_id="s-1", email=to)
    return prebuilt_email(
        version,
        to=to,
        objected_on=objected_on,
        object_url=object_url,
        unsubscribe_url=unsubscribe_url,
        message_id=MESSAGE_ID,
        delivery_id=7,
        connection=None,
    )


def _comparable(raw: bytes, boundary: bytes) -> bytes:
    """Headers unfolded (folding is insignificant whitespace, RFC 5322 2.2.3; Django
    folds a long List-Unsubscribe that the template held short) and one boundary."""
    raw = re.sub(rb"===============\d+==", boundary, raw)
    headers, _sep, body = raw.partition(b"\r\n\r\n")
    return re.sub(rb"\r\n[ \t]", b" ", headers).replace(b":  ", b": ") + b"\r\n\r\n" + body


@pytest.mark.parametrize("version", ["de", "el", "mt", "bg", "pl"], indirect=True)
@pytest.mark.parametrize("objected_on", [None, dt.date(2026, 5, 4)])
def test_it_builds_byte_for_byte_the_mail_django_builds(version, objected_on):
    links = notice_links(version, subject_id="s-1", email=TO)
    fast = _prebuilt(version, objected_on=objected_on, links=links)
    assert fast is not None
    date = message_from_bytes(fast.raw, policy=policy.SMTP)["Date"]

    expected = _django_bytes(version, objected_on=objected_on, links=links, date=str(date))

    assert _comparable(fast.raw, b"B") == _comparable(expected, b"B")
    parsed = message_from_bytes(fast.raw, policy=policy.SMTP)
    assert parsed["To"] == TO and parsed["Message-ID"] == MESSAGE_ID and parsed["X-Demur-Delivery"] == "7"
    assert parsed["List-Unsubscribe"] == f"<{links[1]}>"
    texts = parsed.get_body(("plain",)).get_content(), parsed.get_body(("html",)).get_content()
    if objected_on is None:
        assert all(links[0] in text for text in texts)
    else:  # no button to object again; the date of the earlier objection instead
        assert all(links[0] not in text and date_display(objected_on, version.language) in text for text in texts)


def test_it_fills_in_each_person_separately(version):
    first, second = _prebuilt(version), _prebuilt(version, to="other@example.org")
    assert b"To: r.person@example.com\r\n" in first.raw and b"To: other@example.org\r\n" in second.raw
    assert notice_links(version, subject_id="s-1", email="other@example.org")[0].encode() in second.raw
    assert b"__demur_" not in first.raw + second.raw


def test_it_steps_aside_where_it_could_not_be_exact(version):
    object_url, unsubscribe_url = notice_links(version, subject_id="s-1", email=TO)
    # an address the SMTP backend would encode
    assert _prebuilt(version, to="jürgen@example.com") is None
    assert _prebuilt(version, to="a b@example.com") is None
    # a link that HTML would escape, or that is not printable ASCII
    assert _prebuilt(version, links=(object_url + "&x=1", unsubscribe_url)) is None
    assert _prebuilt(version, links=(object_url, unsubscribe_url + "\r\nBcc: x@example.org")) is None
    # a line past RFC 5322's 998 octets once filled in
    assert _prebuilt(version, links=(object_url, unsubscribe_url + "a" * 1000)) is None


def test_it_only_hands_prebuilt_mail_to_djangos_smtp_backend(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    assert isinstance(mail_connection(), PrebuiltSmtpBackend) and fits(mail_connection())
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    assert not fits(mail_connection())
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    assert not fits(mail_connection())


def test_the_smtp_backend_still_sends_ordinary_mail(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    from tests.campaigns.smtpsink import SmtpSink

    with SmtpSink() as sink:
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        connection = mail_connection()
        assert EmailMessage("hello", "body", to=["x@example.org"], connection=connection).send() == 1
        assert sink.counts == {"x@example.org": 1}
