"""Chromium for the browser tests: Debian's build at /usr/bin/chromium, driven by
Playwright (which downloads nothing). Without it the tests skip, unless
DEMUR_REQUIRE_BROWSER=1 (CI) makes a missing browser a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


def launch_chromium():
    """(playwright, browser), or a skip/failure naming why there is none."""
    required = os.environ.get("DEMUR_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        reason = f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)"
        if required:
            pytest.fail(f"DEMUR_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("DEMUR_REQUIRE_BROWSER=1 but Playwright is not installed")
        pytest.skip("browser tests need Playwright (requirements-dev.txt)")
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    return playwright, browser


def axe_violations(page) -> list[str]:
    """axe-core (bundled by axe-playwright-python, no network) on the current page:
    one line per violation, WCAG 2.0/2.1 A and AA rules and best practices."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
    ]
