"""Countries of residence the public form accepts: the EU member states and the other
EEA states. Names come from CLDR (through Babel) in the page's language, so no
catalog has to carry 30 country names in 26 languages."""

from __future__ import annotations

from functools import lru_cache

from babel import Locale, UnknownLocaleError

EU_EEA = (
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    "IS", "LI", "NO",
)  # fmt: skip


@lru_cache(maxsize=64)  # parsed once per language: every date on a page needs one
def babel_locale(language: str) -> Locale:
    try:
        return Locale.parse(language.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def country_choices(language: str) -> list[tuple[str, str]]:
    """(code, name) for every EU/EEA country, sorted by name as the reader's language sorts."""
    names = babel_locale(language).territories
    return sorted(((code, names.get(code, code)) for code in EU_EEA), key=lambda item: item[1].casefold())


def country_name(code: str, language: str) -> str:
    return babel_locale(language).territories.get(code, code)
