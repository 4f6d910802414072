"""The notice in Chromium: the staff preview in four languages and the mail as received
(parsed back from the bytes that would go on the wire) at phone width. Screenshots go to
var/screenshots/."""

from __future__ import annotations

import email
import email.policy
import os

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from campaigns.notices import notice_email
from campaigns.services import notice_versions_freeze
from tests.browser.chromium import SCREENSHOTS
from tests.campaigns.factories import make_campaign

# Playwright's sync API runs an event loop; the ORM calls in these tests are synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "preview-pw-for-tests-only"
# What the preview must show in each language: the admin heading and the mail's subject.
PREVIEW = {
    "en": ("Notice preview", "Your information and AI at Demur Social"),
    "de": ("Vorschau der Mitteilung", "Ihre Informationen und KI bei Demur Social"),
    "el": ("Προεπισκόπηση ενημέρωσης", "Οι πληροφορίες σας και η ΤΝ στο Demur Social"),
    "bg": ("Преглед на известието", "Вашата информация и ИИ в Demur Social"),
}
MAIL = {
    "de": ("Ihr Recht auf Widerspruch", "Widersprechen"),
    "pl": ("Państwa prawo do sprzeciwu", "Sprzeciwiam się"),
}


@pytest.fixture
def campaign(purpose):
    return make_campaign(purpose)


@pytest.mark.parametrize("language", list(PREVIEW))
def test_it_shows_staff_the_notice_preview_in_each_language(browser, live_server, campaign, language):
    get_user_model().objects.create_superuser("priya", "priya@example.com", PASSWORD)
    context = browser.new_context(locale=language, viewport={"width": 1400, "height": 2800})
    page = context.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "priya")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/notice-preview/?lang={language}")

    heading, subject = PREVIEW[language]
    assert heading in page.inner_text("#content")
    assert page.inner_text("#notice-subject") == subject
    mail_frame = page.frame_locator("iframe")
    assert mail_frame.locator("a.button").count() == 1
    assert mail_frame.locator("html").get_attribute("lang") == language
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"notice-preview-{language}.png"), full_page=True)
    context.close()


@pytest.mark.parametrize("language", list(MAIL))
def test_it_renders_the_mail_as_received_at_phone_width_without_fetching_anything(browser, campaign, language):
    version = next(v for v in notice_versions_freeze(campaign_id=campaign.pk) if v.language == language)
    notice_email(version, to="reader@example.com", name="Zofia", subject_id="user-2001").send()
    received = email.message_from_bytes(mail.outbox[0].message().as_bytes(), policy=email.policy.default)
    html = received.get_body(preferencelist=("html",)).get_content()
    text = received.get_body(preferencelist=("plain",)).get_content()
    context = browser.new_context(viewport={"width": 360, "height": 740}, java_script_enabled=False)
    page = context.new_page()
    fetched = []
    page.route("**/*", lambda route: (fetched.append(route.request.url), route.abort()))

    page.set_content(html)

    section, button = MAIL[language]
    assert page.locator("html").get_attribute("lang") == language
    assert section in page.inner_text("body") and section.upper() in text
    assert page.locator("a.button").inner_text() == button
    assert page.locator("a.button").is_visible()
    assert not page.locator(".preheader").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling on a phone
    assert fetched == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"notice-mail-{language}-phone.png"), full_page=True)
    context.close()
