"""The notice mails' one page: the one-click unsubscribe behind List-Unsubscribe. It is
served at /<lang>/optout/unsubscribe/<token>/ beside the opt-out pages (config/urls.py)
and shares their layout and link handling (optout.views)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils import translation
from django.views.decorators.csrf import csrf_exempt

from campaigns.suppressions import unsubscribe_record
from optout import flows
from optout.formatting import mask_email, mask_id
from optout.links import UNSUBSCRIBE_SALT, BadLink, LinkClaims
from optout.views import (
    TooLarge,
    allow_methods,
    bad_link_page,
    link_claims,
    not_understood_page,
    page,
    read_post,
    too_large_page,
)


@csrf_exempt
@allow_methods("GET", "HEAD", "POST")
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """RFC 8058 one-click unsubscribe. The mail client POSTs `List-Unsubscribe=One-Click`
    with no cookie, so this view is exempt from CSRF (it can only stop mail) and answers
    200 without a redirect. GET shows a page with the same button and the objection."""
    try:
        claims, purpose = link_claims(token, UNSUBSCRIBE_SALT)
    except BadLink as exc:
        return bad_link_page(request, exc)
    context = {
        "identity": mask_email(claims.email) if claims.email else mask_id(claims.subject_id),
        "objection_url": flows.objection_link_for(
            LinkClaims(claims.subject_id, claims.purpose, translation.get_language(), email=claims.email)
        ),
        "purpose": purpose,
    }
    if request.method != "POST":
        return page(request, "unsubscribe.html", {**context, "done": False})
    try:
        data = read_post(request)
    except TooLarge:
        return too_large_page(request)
    except BadLink as exc:
        return bad_link_page(request, exc)
    if data.get("List-Unsubscribe") != "One-Click":
        return not_understood_page(request)
    unsubscribe_record(subject_id=claims.subject_id, email=claims.email)
    return page(request, "unsubscribe.html", {**context, "done": True})
