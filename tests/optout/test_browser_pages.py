"""The opt-out journey in Chromium: open a notice link, object, see the receipt, find the
confirmation mail, follow its status link and withdraw; with JavaScript off, in several
languages. axe-core finds no violation on any page; screenshots at 360 and 1280 px."""

from __future__ import annotations

import os
import re

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop

import pytest  # noqa: E402
from django.core import mail  # noqa: E402

from optout.links import LinkClaims, objection_url, unsubscribe_url  # noqa: E402
from optout.models import ObjectionEvent  # noqa: E402
from tests.browser.chromium import SCREENSHOTS, axe_violations  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = {"phone": 360, "desktop": 1280}
# What each language's pages must say, to be sure the page is really in that language.
EXPECTED = {
    "de": ("Widerspruch absenden", "Ihr Widerspruch wurde erfasst", "Meinen Widerspruch zurücknehmen",
           "Ihr Widerspruch wurde zurückgenommen."),
    "pl": ("Wyślij sprzeciw", "Twój sprzeciw został zarejestrowany", "Wycofuję mój sprzeciw",
           "Twój sprzeciw został wycofany."),
    "el": ("Αποστολή αντίρρησης", "Η αντίρρησή σας καταχωρίστηκε", "Ανάκληση της αντίρρησής μου",
           "Η αντίρρησή σας ανακλήθηκε."),
    "mt": ("Ibgħat l-oġġezzjoni tiegħi", "L-oġġezzjoni tiegħek ġiet irreġistrata", "Irtira l-oġġezzjoni tiegħi",
           "L-oġġezzjoni tiegħek ġiet irtirata."),
    "en": ("Send my objection", "Your objection has been recorded", "Withdraw my objection",
           "Your objection has been withdrawn."),
}  # fmt: skip


@pytest.fixture
def site(live_server, settings, purpose):
    """The live server, with the links in mails pointing at it."""
    settings.SITE_URL = live_server.url
    return live_server.url


def _notice_link(language: str, subject: str = "user-2001") -> str:
    claims = LinkClaims(subject_id=subject, purpose="ai-training", language=language, email="zofia@example.com")
    return objection_url(claims)


def _assert_accessible(page) -> None:
    violations = axe_violations(page)
    assert violations == [], f"{page.url}: {violations}"


@pytest.mark.parametrize("language", ["de", "pl", "el", "mt"])
def test_it_objects_and_withdraws_from_a_notice_link_with_javascript_off(browser, site, language):
    link_text, receipt_text, withdraw_text, withdrawn_text = EXPECTED[language]
    context = browser.new_context(java_script_enabled=False, viewport={"width": 360, "height": 800})
    page = context.new_page()

    response = page.goto(_notice_link(language))
    assert response.status == 200
    assert page.locator("html").get_attribute("lang") == language
    assert ObjectionEvent.objects.count() == 0  # opening the link records nothing
    page.get_by_role("button", name=link_text).click()

    page.get_by_role("heading", name=receipt_text).wait_for()
    event = ObjectionEvent.objects.get()
    assert (event.action, event.source) == ("objected", "email-link")
    assert event.receipt in page.content()

    assert len(mail.outbox) == 1
    confirmation = mail.outbox[0]
    assert event.receipt in confirmation.subject
    status_link = next(url for url in re.findall(r"https?://\S+", confirmation.body) if "/status/" in url)
    assert status_link.startswith(f"{site}/{language}/optout/status/")

    page.goto(status_link)
    assert event.receipt in page.content()
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name=withdraw_text).click()
    page.get_by_text(withdrawn_text).wait_for()
    assert list(ObjectionEvent.objects.order_by("id").values_list("action", flat=True)) == ["objected", "withdrawn"]
    context.close()


def test_it_switches_language_without_javascript(browser, site):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(_notice_link("en"))

    page.locator("summary").click()
    page.get_by_role("link", name="Malti").click()

    assert page.locator("html").get_attribute("lang") == "mt"
    assert page.get_by_role("button", name=EXPECTED["mt"][0]).is_visible()
    context.close()


def _pages_of_the_journey(page, site: str, language: str):
    """Visit every kind of page, yielding a name for each while it is shown."""
    page.goto(_notice_link(language, subject=f"axe-{language}"))
    yield "link"
    page.get_by_role("button", name=EXPECTED[language][0]).click()
    page.get_by_role("heading", name=EXPECTED[language][1]).wait_for()
    yield "receipt"
    page.goto(_notice_link(language, subject=f"axe-{language}"))
    yield "already"
    status_link = next(url for url in re.findall(r"https?://\S+", mail.outbox[-1].body) if "/status/" in url)
    page.goto(status_link)
    yield "status"
    page.get_by_role("button", name=EXPECTED[language][2]).click()  # no tick: the error state
    yield "status-error"
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name=EXPECTED[language][2]).click()
    yield "status-withdrawn"
    page.goto(f"{site}/{language}/optout/")
    yield "form"
    page.get_by_role("button").last.click()  # empty: the error state
    yield "form-error"
    page.locator("input[type=email]").fill("axe@example.org")
    page.locator("select").select_option("MT")
    page.get_by_role("button").last.click()
    yield "check-inbox"
    verify_link = next(url for url in re.findall(r"https?://\S+", mail.outbox[-1].body) if "/verify/" in url)
    page.goto(verify_link)
    yield "verify"
    page.get_by_role("button").last.click()
    page.wait_for_selector(".receipt-number")
    yield "verified-receipt"
    # The form again, naming the account that objected above: the address is proven, the
    # account is not, so the page neither shows that account's receipt nor links its status.
    page.goto(f"{site}/{language}/optout/")
    page.locator("input[type=email]").fill("axe-account@example.org")
    page.locator("select").select_option("MT")
    page.locator("input[name=account_id]").fill(f"axe-{language}")
    page.get_by_role("button").last.click()
    page.goto(next(url for url in re.findall(r"https?://\S+", mail.outbox[-1].body) if "/verify/" in url))
    page.get_by_role("button").last.click()
    page.wait_for_selector("h1")
    assert "/status/" not in page.content()
    yield "account-receipt"
    claims = LinkClaims(subject_id=f"axe-{language}", purpose="ai-training", language=language)
    page.goto(unsubscribe_url(claims))
    yield "unsubscribe"
    page.get_by_role("button").last.click()
    yield "unsubscribed"
    page.goto(f"{site}/{language}/optout/t/not-a-valid-token/")
    yield "bad-link"


@pytest.mark.parametrize("language", ["en", "de", "pl", "el", "mt"])
def test_it_has_no_axe_violation_and_no_csp_violation_on_any_page(browser, site, language):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console = []
    page.on("console", lambda message: console.append(message.text))
    seen = []
    for name in _pages_of_the_journey(page, site, language):
        seen.append(name)
        _assert_accessible(page)
    assert len(seen) == 15
    assert not [text for text in console if "Content Security Policy" in text], console
    context.close()


@pytest.mark.parametrize("language", ["en", "de", "pl", "el", "mt"])
@pytest.mark.parametrize("width_name", ["phone", "desktop"])
def test_it_fits_the_screen_and_saves_screenshots(browser, site, language, width_name):
    width = WIDTHS[width_name]
    context = browser.new_context(viewport={"width": width, "height": 800}, java_script_enabled=False)
    page = context.new_page()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(_notice_link(language, subject=f"shot-{language}-{width}"))
    _assert_fits(page, width)
    page.screenshot(path=str(SCREENSHOTS / f"optout-link-{language}-{width}.png"), full_page=True)
    page.get_by_role("button", name=EXPECTED[language][0]).click()
    page.get_by_role("heading", name=EXPECTED[language][1]).wait_for()
    _assert_fits(page, width)
    page.screenshot(path=str(SCREENSHOTS / f"optout-receipt-{language}-{width}.png"), full_page=True)
    context.close()


def _assert_fits(page, width: int) -> None:
    """Nothing wider than the screen: no sideways scrolling at 360 px."""
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"{page.url}: page is {scroll_width}px wide at {width}px"


def test_it_would_see_an_accessibility_violation(browser):
    """The axe check above can fail: an unlabelled field and an image without text are found."""
    context = browser.new_context()
    page = context.new_page()
    page.set_content('<html lang="en"><title>t</title><main><input type="text"><img src="x.png"></main></html>')

    found = " ".join(axe_violations(page))

    assert "label" in found and "image-alt" in found
    context.close()
