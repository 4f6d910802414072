"""How the pages and mails show dates and identities."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from babel.dates import format_datetime
from django.utils import translation

from core.countries import babel_locale


def when(value: datetime | None) -> str:
    """A date and time as the reader's language writes it (CLDR, through Babel)."""
    if value is None:
        return ""
    # CLDR's "long" time shows whole seconds in every language (tests/optout), so all
    # the moments of one second read the same: a receipt's two dates, and the pages
    # answered within that second, share one formatting.
    return _when(value.replace(microsecond=0), translation.get_language() or "en")


@lru_cache(maxsize=256)
def _when(value: datetime, language: str) -> str:
    return format_datetime(value, "long", tzinfo=UTC, locale=babel_locale(language))


def mask_email(email: str) -> str:
    """j***@example.com: enough for people to recognise their address, not to learn one."""
    local, _at, domain = email.partition("@")
    if not domain:
        return mask_id(email)
    return f"{local[:1]}***@{domain}"


def mask_id(value: str) -> str:
    if value.startswith("email:"):
        return mask_email(value.removeprefix("email:"))
    if len(value) <= 4:
        return "***"
    return f"{value[:2]}***{value[-2:]}"
