from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

# Django ships no language info for Maltese; get_language_info() and the language
# switcher need it. Added at start-up rather than patched into Django's sources.
MALTESE = {"bidi": False, "code": "mt", "name": "Maltese", "name_local": "Malti"}


class OptoutConfig(AppConfig):
    name = "optout"
    verbose_name = _("Objections")

    def ready(self) -> None:
        from django.conf.locale import LANG_INFO

        LANG_INFO.setdefault("mt", MALTESE)
