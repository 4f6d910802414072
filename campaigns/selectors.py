"""Reads for campaigns: translation coverage of the notice catalogs."""

from __future__ import annotations

from dataclasses import dataclass

from babel.messages.pofile import read_po
from django.conf import settings
from django.utils.translation import get_language_info

from campaigns.notices import catalog_path


@dataclass(frozen=True)
class Coverage:
    language: str
    name: str
    translated: int
    total: int

    @property
    def missing(self) -> int:
        return self.total - self.translated

    @property
    def percent(self) -> int:
        return int(100 * self.translated / self.total) if self.total else 0


def catalog_coverage() -> list[Coverage]:
    """Per language: how many messages of locale/<lang>/django.po are translated (and not fuzzy)."""
    rows = []
    for language, _name in settings.LANGUAGES:
        path = catalog_path(language)
        translated = total = 0
        if path.exists():
            with path.open("rb") as handle:
                catalog = read_po(handle)
            for message in catalog:
                if not message.id:
                    continue
                total += 1
                strings = message.string if isinstance(message.string, (list, tuple)) else [message.string]
                if all(strings) and not message.fuzzy:
                    translated += 1
        rows.append(Coverage(language, get_language_info(language)["name_local"], translated, total))
    return rows
