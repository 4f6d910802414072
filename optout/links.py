"""Signed links that identify a person without a login (DESIGN F1, F4).

Every notice carries an objection link; receipts carry a status link; notice mails carry
a one-click unsubscribe link (RFC 8058). Each kind is signed with its own salt, so a
token minted for one purpose is worthless for another, and expires after
DEMUR_LINK_MAX_AGE seconds (12 months by default).

The URL names `optout:link` and `optout:status` are served by optout/urls.py under a
language prefix, e.g. /de/optout/t/<token>/; `unsubscribe` (/de/optout/unsubscribe/...)
by campaigns.views, which owns the suppression list, through config/urls.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import translation

OBJECT_SALT = "demur.optout.object"
STATUS_SALT = "demur.optout.status"
UNSUBSCRIBE_SALT = "demur.optout.unsubscribe"


class BadLink(Exception):
    """The token is tampered with, malformed or from another kind of link."""


class ExpiredLink(BadLink):
    pass


@dataclass(frozen=True)
class LinkClaims:
    subject_id: str
    purpose: str
    language: str
    campaign_id: int | None = None
    notice_version_id: int | None = None
    email: str = ""


def make_token(claims: LinkClaims, *, salt: str) -> str:
    payload = {"s": claims.subject_id, "p": claims.purpose, "l": claims.language}
    if claims.campaign_id is not None:
        payload["c"] = claims.campaign_id
    if claims.notice_version_id is not None:
        payload["v"] = claims.notice_version_id
    if claims.email:
        payload["e"] = claims.email
    return signing.dumps(payload, salt=salt, compress=True)


def read_token(token: str, *, salt: str, max_age: int | None = None) -> LinkClaims:
    """The claims of a valid token; BadLink (or ExpiredLink) otherwise."""
    if max_age is None:
        max_age = settings.DEMUR_LINK_MAX_AGE
    try:
        payload = signing.loads(token, salt=salt, max_age=max_age)
    except signing.SignatureExpired:
        raise ExpiredLink(token) from None
    except (signing.BadSignature, ValueError, UnicodeError):
        raise BadLink(token) from None
    try:
        claims = LinkClaims(
            subject_id=str(payload["s"]),
            purpose=str(payload["p"]),
            language=str(payload["l"]),
            campaign_id=payload.get("c"),
            notice_version_id=payload.get("v"),
            email=str(payload.get("e", "")),
        )
    except (KeyError, TypeError, AttributeError):
        raise BadLink(token) from None
    # Only a token made with our key gets here, but PostgreSQL text cannot hold NUL: a
    # claim carrying one is refused like any other bad link, never a database error.
    if any("\x00" in text for text in (claims.subject_id, claims.purpose, claims.language, claims.email)):
        raise BadLink(token)
    return claims


def _absolute(name: str, token: str, language: str) -> str:
    before, after = _path_around_token(name, language, get_script_prefix(), get_urlconf() or settings.ROOT_URLCONF)
    return f"{settings.SITE_URL}{before}{token}{after}"


# Stands for the token in a cached path (a signed token is letters, digits and "-_.:").
_TOKEN = "demur.token"


@lru_cache(maxsize=256)
def _path_around_token(name: str, language: str, script_prefix: str, urlconf: str) -> tuple[str, str]:
    """The path of a link before and after its token: a receipt page and every mail need
    one, and a reverse() under translation.override() per link was most of the time
    that making the link took. A token needs no quoting, so the path is the same."""
    with translation.override(language):
        path = reverse(name, kwargs={"token": _TOKEN}, urlconf=urlconf)
    before, _token, after = path.partition(_TOKEN)
    return before, after


def objection_url(claims: LinkClaims) -> str:
    """The link every notice carries: opens the one-button objection page."""
    return _absolute("optout:link", make_token(claims, salt=OBJECT_SALT), claims.language)


def status_url(claims: LinkClaims) -> str:
    """The link in a receipt: the person's current state, history and withdrawal."""
    return _absolute("optout:status", make_token(claims, salt=STATUS_SALT), claims.language)


def unsubscribe_url(claims: LinkClaims) -> str:
    """The List-Unsubscribe target of a notice mail (RFC 8058 one-click)."""
    return _absolute("unsubscribe", make_token(claims, salt=UNSUBSCRIBE_SALT), claims.language)


def account_unproven(*, subject_id: str, email: str) -> bool:
    """True for a public-form objection about an account id the person typed in (the
    event keeps the verified address, and the subject is not that address): the
    verification proved the address, not the account. Such a person gets no status link,
    on the page or in the mail, and no earlier receipt of the account: either would let
    anyone who knows an account id see, and withdraw, what the account holder decided."""
    return bool(email) and subject_id != f"email:{email}"
