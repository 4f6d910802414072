"""The Jinja2 environment for notices and public pages.

Gettext comes from Django's active translation, so `{% trans %}` blocks and `_()` in
templates read the same catalogs as the Python code.
"""

from __future__ import annotations

from django.templatetags.static import static
from django.urls import reverse
from django.utils import translation
from django.utils.formats import date_format
from jinja2 import Environment


def environment(**options) -> Environment:
    options.setdefault("autoescape", True)
    env = Environment(extensions=["jinja2.ext.i18n"], **options)
    env.install_gettext_callables(
        gettext=translation.gettext,
        ngettext=translation.ngettext,
        pgettext=translation.pgettext,
        npgettext=translation.npgettext,
        newstyle=True,
    )
    env.globals.update(
        static=static,
        url=lambda name, *args, **kwargs: reverse(name, args=args or None, kwargs=kwargs or None),
        get_language=translation.get_language,
        get_language_bidi=translation.get_language_bidi,
    )
    env.filters["date"] = lambda value, fmt="DATE_FORMAT": date_format(value, fmt)
    return env
