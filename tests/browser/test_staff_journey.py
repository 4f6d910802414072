"""The privacy staff's whole journey in Chromium, as a person clicks through it: log in,
turn on two-factor login and log in again with a code, upload an audience, create a
campaign, preview the notice, send a test (whose link records nothing), launch after
the confirmation page, watch the progress, see a person's objection arrive, and export
the regulator's report. Screenshots go to var/screenshots/.

The campaign is sent by a real Celery worker on Redis to an SMTP sink, at one mail a
second, so the progress panel is seen moving (it reloads itself, the test never does)
and the pause and resume buttons act on a campaign that is really sending. The staff
member's test mail goes through the web process's mail backend (Django's test outbox)."""

from __future__ import annotations

import base64
import os
import re

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop

import pytest  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.core import mail  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django_otp.oath import hotp, totp  # noqa: E402
from django_otp.plugins.otp_totp.models import TOTPDevice  # noqa: E402

from campaigns.models import Campaign, Delivery, Recipient  # noqa: E402
from optout.models import AuditEntry, ObjectionEvent  # noqa: E402
from tests.browser.chromium import SCREENSHOTS, axe_violations  # noqa: E402
from tests.campaigns.smtpsink import SmtpSink  # noqa: E402
from tests.campaigns.test_reliability import Worker, broker  # noqa: E402,F401 (the fixture)

# serialized_rollback: the roles and the default purpose come from data migrations,
# which a transactional test's flush would otherwise leave empty for the next one.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

PASSWORD = "journey-pw-for-tests-only"
AUDIENCE = "subject_id,email,language,country\n" + "".join(
    f"journey-{n},{name}@example.org,{language},{country}\n"
    for n, (name, language, country) in enumerate(
        [
            ("anna", "de", "DE"),
            ("piotr", "pl", "PL"),
            ("maria", "el", "GR"),
            ("jean", "fr", "FR"),
            ("lena", "de", "AT"),
            ("ines", "pt", "PT"),
            ("sofia", "it", "IT"),
            ("eva", "sv", "SE"),
        ],  # fmt: skip
        start=1,
    )
)
AUDIENCE_SIZE = 8


@pytest.fixture
def sink():
    with SmtpSink(keep=True) as server:
        yield server


@pytest.fixture
def worker(broker, sink, live_server, tmp_path):  # noqa: F811 (pytest passes the imported fixture)
    """A Celery worker sending to the sink, its links pointing at the live server."""
    process = Worker("journey", sink, tmp_path / "worker.log")
    process.env["SITE_URL"] = live_server.url
    process.start()
    yield process
    process.stop()


def _code(secret: str) -> str:
    """What an authenticator app shows now for the key on the two-factor page."""
    return f"{totp(base64.b32decode(secret)):06d}"


def _next_code(secret: str, user: User) -> str:
    """The code of the time step after the last one the device accepted: a code is good
    once, and when the first one was entered across a 30-second boundary django-otp
    moved the device's drift back a step, so "now plus one step" could fall outside its
    window. The step after the last accepted one is inside it either way."""
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    return f"{hotp(base64.b32decode(secret), device.last_t + 1):06d}"


def _log_in(page, site: str, code: str = "") -> None:
    page.goto(f"{site}/admin/login/?next=/admin/")
    page.fill("#id_username", "sam")
    page.fill("#id_password", PASSWORD)
    if code:
        page.fill("#id_otp_token", code)
    page.click("#login-form input[type=submit]")
    page.wait_for_url(f"{site}/admin/")


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"staff-{name}.png"), full_page=True)


def _confirm(page, action: str, done: str) -> None:
    page.click(f".campaign-control-{action}")
    page.click(f"#confirm-{action}")
    page.get_by_text(done).wait_for()


def test_privacy_staff_run_a_campaign_from_the_admin(browser, live_server, settings, worker, sink, tmp_path):
    settings.SITE_URL = live_server.url  # the links in mails point at the live server
    cache.clear()  # login attempts counted by earlier tests
    site = live_server.url
    sam = User.objects.create_user("sam", "sam@example.org", PASSWORD, is_staff=True)
    sam.groups.add(Group.objects.get(name="Privacy staff"))
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en", accept_downloads=True)
    # Every admin page runs under a CSP (config.admin.ADMIN_CSP): Chromium reports what it blocks.
    blocked = []
    context.on(
        "console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None
    )
    page = context.new_page()

    # Log in, turn on two-factor login, and log in again with a code.
    _log_in(page, site)
    page.click("text=Two-factor login")
    secret = page.inner_text("#totp-secret")
    assert page.locator(".two-factor-qr svg").count() == 1
    page.fill("#id_otp_token", _code(secret))
    page.click("#two-factor-submit")
    page.get_by_text("Two-factor login is on.").wait_for()
    page.click("#logout-form button")
    _log_in(page, site, code=_next_code(secret, sam))

    # Upload the audience.
    audience = tmp_path / "audience.csv"
    audience.write_text(AUDIENCE, encoding="utf-8")
    page.goto(f"{site}/admin/campaigns/recipient/upload/")
    page.set_input_files("input[type=file]", str(audience))
    page.click("#content-main input[type=submit]")
    page.get_by_text(f"{AUDIENCE_SIZE} rows read").wait_for()
    assert Recipient.objects.count() == AUDIENCE_SIZE

    # Create the campaign as a draft.
    page.goto(f"{site}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "EU AI training notice")
    page.select_option("#id_purpose", index=1)
    page.fill("#id_controller_name", "Example Social Ltd")
    page.fill("#id_product_name", "Demur Social")
    page.fill("#id_training_starts_on", "2027-01-27")
    page.fill("#id_dpo_email", "dpo@example.com")
    page.fill("#id_contact_email", "privacy@example.com")
    page.fill("#id_policy_url", "https://example.com/privacy")
    page.fill("#id_send_rate", "1")
    page.click("input[name=_continue]")
    campaign = Campaign.objects.get(name="EU AI training notice")
    page.wait_for_url(f"{site}/admin/campaigns/campaign/{campaign.pk}/change/")

    # Preview the notice in German and send a test of it to oneself.
    page.click(".object-tools >> text=Notice preview")
    page.click("a[hreflang=de]")
    assert page.inner_text("#notice-subject") == "Ihre Informationen und KI bei Demur Social"
    _shot(page, "notice-preview")
    page.select_option("#test-lang", "de")
    page.click("text=Send a test to sam@example.org")
    page.get_by_text("Test sent to sam@example.org").wait_for()
    (test_mail,) = mail.outbox
    test_link = next(url for url in re.findall(r"https?://\S+", test_mail.body) if "/test-link/object/" in url)
    reader = context.new_page()
    reader.goto(test_link)
    assert "Dies ist eine Testmitteilung" in reader.content() or "This is a test notice" in reader.content()
    assert axe_violations(reader) == []
    reader.close()
    assert not ObjectionEvent.objects.exists()  # the test mail's link records nothing

    # Launch, after the confirmation page has said what will happen.
    page.goto(f"{site}/admin/campaigns/campaign/{campaign.pk}/change/")
    page.click(".campaign-control-launch")
    assert page.inner_text("#launch-audience") == str(AUDIENCE_SIZE)
    assert page.inner_text("#launch-mail") == str(AUDIENCE_SIZE)
    campaign.refresh_from_db()
    assert campaign.status == "draft"  # the confirmation page changed nothing
    assert axe_violations(page) == []
    _shot(page, "launch-confirmation")
    page.click("#confirm-launch")
    page.get_by_text(f"Deliveries created: {AUDIENCE_SIZE}.").wait_for()

    # Watch the progress, pause and resume: the panel reloads itself until everything is out.
    progress = page.frame_locator("iframe.campaign-progress")
    assert progress.locator("meta[http-equiv=refresh]").count() == 1
    assert f"{AUDIENCE_SIZE} of {AUDIENCE_SIZE} done" not in progress.locator("body").inner_text()
    _confirm(page, "pause", f"{campaign.name} paused.")
    campaign.refresh_from_db()
    assert campaign.status == "paused"
    assert (
        page.locator(".campaign-control-resume").count() == 1 and page.locator(".campaign-control-pause").count() == 0
    )
    _confirm(page, "resume", f"{campaign.name} resumed.")
    progress.get_by_text(f"{AUDIENCE_SIZE} of {AUDIENCE_SIZE} done").wait_for(timeout=60_000)
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == AUDIENCE_SIZE
    progress.get_by_text("The status has changed").click()  # the panel's link reloads the whole page
    page.get_by_text("Status: completed").first.wait_for()
    assert page.locator(".campaign-control-pause, .campaign-control-launch").count() == 0
    panel = context.new_page()
    panel.goto(f"{site}/admin/campaigns/campaign/{campaign.pk}/progress/")
    assert axe_violations(panel) == []
    panel.close()
    _shot(page, "campaign-sent")

    # A person objects from the link in the notice they received.
    notice = next(m for m in sink.messages() if m["To"] == "anna@example.org")
    text = notice.get_body(preferencelist=("plain",)).get_content()
    link = next(url for url in re.findall(r"https?://\S+", text) if "/optout/t/" in url)
    person = browser.new_context(java_script_enabled=False, viewport={"width": 360, "height": 800})
    person_page = person.new_page()
    person_page.goto(link)
    person_page.get_by_role("button", name="Widerspruch absenden").click()
    person_page.get_by_role("heading", name="Ihr Widerspruch wurde erfasst").wait_for()
    person.close()

    # Staff see it arrive.
    event = ObjectionEvent.objects.get()
    assert (event.subject_id, event.campaign_id) == ("journey-1", campaign.pk)
    page.goto(f"{site}/admin/optout/objectionevent/?q=journey-1")
    assert event.receipt in page.inner_text("#result_list")

    # The campaign's dashboard counts it; the regulator's report is exported as CSV and PDF.
    page.goto(f"{site}/admin/campaigns/campaign/{campaign.pk}/change/")
    page.click(".campaign-reports >> text=Dashboard")
    # The counts are made by the worker; staff reload. A count made before the objection
    # (the launch's) is shown until it is older than the maximum age, shortened here.
    settings.DEMUR_DASHBOARD_MAX_AGE = 1
    objected = page.locator("#funnel tbody tr", has_text="Objected")
    for _attempt in range(60):
        if objected.count():
            break
        page.wait_for_timeout(1000)
        page.reload()
    assert objected.locator("td").first.inner_text() == "1"
    _shot(page, "dashboard")
    page.go_back()
    with page.expect_download() as csv_download:
        page.click(".campaign-reports >> text=Report (CSV)")
    report_csv = csv_download.value.path().read_text(encoding="utf-8")
    assert campaign.name in report_csv and "journey" not in report_csv  # counts, no subject ids
    with page.expect_download() as pdf_download:
        page.click(".campaign-reports >> text=Report (PDF)")
    pdf = SCREENSHOTS / "staff-report.pdf"
    pdf_download.value.save_as(str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF-")
    viewer = context.new_page()
    viewer.goto(pdf.as_uri())
    viewer.wait_for_timeout(1500)
    _shot(viewer, "report")

    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert actions >= {"audience-import", "test-send", "launch", "pause", "resume", "export"}
    assert blocked == []
    context.close()
