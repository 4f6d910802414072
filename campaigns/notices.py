"""Notices: freezing one version per language, and filling it in for one person.

A notice lives in templates/notices/<name>/ as Jinja2 templates (subject.txt,
preheader.txt, greeting.txt, body.html, body.txt, inapp.html). Freezing renders them in
the campaign's language with the campaign's values; what differs per person is rendered
as a marker (`__demur_<slot>__`) and filled in at send time, escaped for HTML where the
text is HTML. Filling in is a join of the text's cached pieces, so a frozen version renders
for a recipient in microseconds and reads exactly as it did when it was frozen, whatever
happens to the templates and catalogs later.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from pathlib import Path

import css_inline
from babel.dates import format_date
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template import engines
from django.urls import reverse
from django.utils import translation
from jinja2 import Environment
from markupsafe import Markup

from campaigns.models import Campaign, NoticeVersion
from optout.links import OBJECT_SALT, UNSUBSCRIBE_SALT, LinkClaims, make_token

TEMPLATE_FILES = (
    "subject.txt",
    "preheader.txt",
    "greeting.txt",
    "body.html",
    "body.txt",
    "inapp.html",
)
SLOTS = ("greeting", "name", "object_url", "unsubscribe_url", "objected_on")
_MARKER = "__demur_{}__"
_MARKER_RE = re.compile(r"__demur_([a-z_]+?)__")
MARKERS = {slot: _MARKER.format(slot) for slot in SLOTS}

# Fields of NoticeVersion that hold frozen text, in the order the content hash reads them.
TEXT_FIELDS = (
    "subject",
    "preheader",
    "body_html",
    "body_text",
    "inapp_body",
    "objected_subject",
    "objected_preheader",
    "objected_body_html",
    "objected_body_text",
    "objected_inapp_body",
)


# CLDR's long Latvian date names the month in the nominative ("27. janvāris"), which reads
# wrongly after "no" (from); the numeric form needs no case ending.
DATE_FORMATS = {"lv": "dd.MM.y."}


def date_display(day: dt.date, language: str) -> str:
    return format_date(day, format=DATE_FORMATS.get(language, "long"), locale=language)


class NoticeNotReady(ValueError):
    """The campaign lacks a value the notice needs, or a value contains a marker."""


@dataclass(frozen=True)
class RenderedNotice:
    """A notice as one person receives it."""

    language: str
    subject: str
    preheader: str
    html: str
    text: str
    inapp: str


def _env(*, html: bool) -> Environment:
    env = engines["jinja2"].env
    return env if html else _text_env(env)


@lru_cache(maxsize=4)
def _text_env(env: Environment) -> Environment:
    # Subjects and text bodies are not HTML: the same environment without autoescape.
    return env.overlay(autoescape=False)


def _template_sources(template: str) -> dict[str, str]:
    env = _env(html=True)
    return {name: env.loader.get_source(env, f"notices/{template}/{name}")[0] for name in TEMPLATE_FILES}


def template_hash(template: str) -> str:
    """The hash of the notice's template files, as they are now."""
    digest = hashlib.sha256()
    for name, source in _template_sources(template).items():
        digest.update(f"{name}\0{len(source.encode())}\0".encode())
        digest.update(source.encode())
    return digest.hexdigest()


def catalog_path(language: str) -> Path:
    return Path(settings.LOCALE_PATHS[0]) / language / "LC_MESSAGES" / "django.po"


def catalog_hash(language: str) -> str:
    """The hash of the language's catalog (.po), or "" when the language has none."""
    path = catalog_path(language)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def content_hash(version: NoticeVersion) -> str:
    payload = {field: getattr(version, field) for field in TEXT_FIELDS}
    payload.update(
        language=version.language,
        direction=version.direction,
        greetings=version.greetings,
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# The campaign's fields a notice's text needs; a campaign without all of them cannot freeze.
CAMPAIGN_VALUE_FIELDS = (
    "controller_name",
    "product_name",
    "training_starts_on",
    "dpo_email",
    "contact_email",
    "policy_url",
)


def _campaign_values(campaign: Campaign, language: str) -> dict[str, str]:
    missing = [field for field in CAMPAIGN_VALUE_FIELDS if not getattr(campaign, field)]
    if missing:
        raise NoticeNotReady(f"campaign {campaign.pk} lacks {', '.join(missing)}")
    values = {
        "controller": campaign.controller_name,
        "product": campaign.product_name,
        "start_date": date_display(campaign.training_starts_on, language),
        "dpo_email": campaign.dpo_email,
        "contact_email": campaign.contact_email,
        "policy_url": campaign.policy_url,
    }
    for key, value in values.items():
        if "__demur_" in value:
            raise NoticeNotReady(f"campaign {campaign.pk}: {key} must not contain '__demur_'")
    return values


def _mailto(address: str) -> Markup:
    return Markup('<a href="mailto:{0}">{0}</a>').format(address)


def _link(url: str) -> Markup:
    return Markup('<a href="{0}">{0}</a>').format(url)


def _render(template: str, name: str, context: dict, *, html: bool) -> str:
    return _env(html=html).get_template(f"notices/{template}/{name}").render(context).strip()


def notice_build(*, campaign: Campaign, language: str) -> NoticeVersion:
    """Render the campaign's notice in one language, unsaved: a preview, or what
    `notice_versions_freeze` stores."""
    template = campaign.notice_template
    values = _campaign_values(campaign, language)
    with translation.override(language):
        direction = "rtl" if translation.get_language_bidi() else "ltr"
        base = {
            **values,
            "lang": language,
            "dir": direction,
            "greeting": MARKERS["greeting"],
            "object_url": MARKERS["object_url"],
            "unsubscribe_url": MARKERS["unsubscribe_url"],
            "objected_on": MARKERS["objected_on"],
            "mailto": _mailto,
            "link": _link,
        }
        greetings = {
            "named": _render(template, "greeting.txt", {"name": MARKERS["name"]}, html=False),
            "anonymous": _render(template, "greeting.txt", {"name": ""}, html=False),
        }
        texts: dict[str, str] = {}
        for prefix, already_objected in (("", False), ("objected_", True)):
            context = {**base, "already_objected": already_objected}
            context["subject"] = _render(template, "subject.txt", context, html=False)
            context["preheader"] = _render(template, "preheader.txt", context, html=False)
            texts[prefix + "subject"] = context["subject"]
            texts[prefix + "preheader"] = context["preheader"]
            texts[prefix + "body_html"] = css_inline.inline(
                _render(template, "body.html", context, html=True),
                keep_style_tags=False,
            )
            texts[prefix + "body_text"] = _render(template, "body.txt", context, html=False) + "\n"
            texts[prefix + "inapp_body"] = _render(template, "inapp.html", context, html=True)
    version = NoticeVersion(
        campaign=campaign,
        language=language,
        direction=direction,
        greetings=greetings,
        template_name=template,
        template_hash=template_hash(template),
        catalog_hash=catalog_hash(language),
        **texts,
    )
    version.content_hash = content_hash(version)
    return version


# --- Filling in a frozen version for one person ---------------------------------------------


@lru_cache(maxsize=4096)
def _split(text: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """The frozen text as its pieces, with the positions of the markers among them.
    Filling in copies the pieces, puts the values at those positions and joins: a
    memory copy, where str.format would scan every character of a 10 kB body."""
    pieces = tuple(_MARKER_RE.split(text))
    return pieces, tuple((index, pieces[index]) for index in range(1, len(pieces), 2))


def _fill(text: str, values: dict[str, str]) -> str:
    pieces, slots = _split(text)
    out = list(pieces)
    for index, slot in slots:
        out[index] = values[slot]
    return "".join(out)


def notice_personalise(
    version: NoticeVersion,
    *,
    name: str,
    object_url: str,
    unsubscribe_url: str,
    objected_on: dt.date | None = None,
) -> RenderedNotice:
    """The frozen version with one person's values. `objected_on` (the date of their
    earlier objection) selects the "you have already objected" variant."""
    greetings = version.greetings
    greeting = greetings["named"].replace(MARKERS["name"], name) if name else greetings["anonymous"]
    objected_text = date_display(objected_on, version.language) if objected_on else ""
    plain = {
        "greeting": greeting,
        "name": name,
        "object_url": object_url,
        "unsubscribe_url": unsubscribe_url,
        "objected_on": objected_text,
    }
    escaped = {key: escape(value) for key, value in plain.items()}
    if objected_on:
        subject, preheader = version.objected_subject, version.objected_preheader
        html, text, inapp = (
            version.objected_body_html,
            version.objected_body_text,
            version.objected_inapp_body,
        )
    else:
        subject, preheader = version.subject, version.preheader
        html, text, inapp = version.body_html, version.body_text, version.inapp_body
    return RenderedNotice(
        language=version.language,
        subject=subject,
        preheader=preheader,
        html=_fill(html, escaped),
        text=_fill(text, plain),
        inapp=_fill(inapp, escaped),
    )


@lru_cache(maxsize=512)
def _link_parts(url_name: str, language: str, site_url: str, urlconf: str) -> tuple[str, str]:
    """What comes before and after the token in the URL of this kind and language."""
    with translation.override(language):
        path = reverse(url_name, kwargs={"token": "__demur_token__"}, urlconf=urlconf)
    head, tail = f"{site_url}{path}".split("__demur_token__")
    return head, tail


def _signed_url(url_name: str, claims: LinkClaims, salt: str) -> str:
    # The URL objection_url()/unsubscribe_url() build, without a reverse() per person:
    # the signature is the only per-person part (tests/campaigns check they agree).
    head, tail = _link_parts(url_name, claims.language, settings.SITE_URL, settings.ROOT_URLCONF)
    return f"{head}{make_token(claims, salt=salt)}{tail}"


def notice_claims(version: NoticeVersion, *, subject_id: str, email: str = "") -> LinkClaims:
    campaign = version.campaign
    return LinkClaims(
        subject_id=subject_id,
        purpose=campaign.purpose.slug,
        language=version.language,
        campaign_id=campaign.pk,
        notice_version_id=version.pk,
        email=email,
    )


def notice_object_url(claims: LinkClaims) -> str:
    """optout.links.objection_url(claims), faster: the Object button's signed link."""
    return _signed_url("optout:link", claims, OBJECT_SALT)


def notice_unsubscribe_url(claims: LinkClaims) -> str:
    """optout.links.unsubscribe_url(claims), faster: the List-Unsubscribe target."""
    return _signed_url("unsubscribe", claims, UNSUBSCRIBE_SALT)


def notice_links(version: NoticeVersion, *, subject_id: str, email: str = "") -> tuple[str, str]:
    """The signed objection and unsubscribe links of one person for this version."""
    claims = notice_claims(version, subject_id=subject_id, email=email)
    return notice_object_url(claims), notice_unsubscribe_url(claims)


def notice_email(
    version: NoticeVersion,
    *,
    to: str,
    name: str,
    subject_id: str,
    objected_on: dt.date | None = None,
    connection=None,
    links: tuple[str, str] | None = None,
) -> EmailMultiAlternatives:
    """The notice mail for one person: text and HTML parts, and the one-click
    unsubscribe headers (RFC 8058). `links` (objection, unsubscribe) replaces the
    person's signed links: staff test mails carry harmless ones (campaigns.sample_links)."""
    object_link, unsubscribe_link = links or notice_links(version, subject_id=subject_id, email=to)
    notice = notice_personalise(
        version,
        name=name,
        object_url=object_link,
        unsubscribe_url=unsubscribe_link,
        objected_on=objected_on,
    )
    message = EmailMultiAlternatives(
        subject=notice.subject,
        body=notice.text,
        to=[to],
        headers={
            "List-Unsubscribe": f"<{unsubscribe_link}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Content-Language": version.language,
            "X-Demur-Notice-Version": f"{version.pk}:{version.content_hash}",
        },
        connection=connection,
    )
    message.attach_alternative(notice.html, "text/html")
    return message
