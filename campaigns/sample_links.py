"""Harmless links for the test notices staff send themselves.

A test mail must look like the real one, but following its "Object" or unsubscribe
link must record nothing: no objection in the ledger, no suppression. So test mails
carry links to a page of their own that says "this is a test notice". Their tokens are
signed with a salt of their own: the opt-out pages (optout.links) refuse them as they
refuse any forged token, and this page refuses the real ones.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import translation

from campaigns.models import Campaign, NoticeVersion

SALT = "demur.campaigns.test-notice"
KINDS = ("object", "unsubscribe")


def sample_links(version: NoticeVersion) -> tuple[str, str]:
    """(objection link, unsubscribe link) for a staff test mail of this version."""
    token = signing.dumps({"c": version.campaign_id, "l": version.language}, salt=SALT, compress=True)
    return tuple(  # type: ignore[return-value]
        settings.SITE_URL + reverse("admin:campaigns_campaign_test_link", args=[kind, token]) for kind in KINDS
    )


def sample_link_view(request: HttpRequest, kind: str, token: str) -> HttpResponse:
    """Open to anyone with the link (staff may read test mails on another device, or
    forward them to a translator); it shows a page and changes nothing."""
    try:
        claims = signing.loads(token, salt=SALT, max_age=settings.DEMUR_LINK_MAX_AGE)
        language, campaign_id = str(claims["l"]), int(claims["c"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        claims = None
    if claims is None or kind not in KINDS or language not in dict(settings.LANGUAGES):
        return TemplateResponse(request, "campaigns/test_link.html", {"valid": False}, status=400)
    with translation.override(language):
        response = TemplateResponse(
            request,
            "campaigns/test_link.html",
            {
                "valid": True,
                "kind": kind,
                "campaign": Campaign.objects.filter(pk=campaign_id).values_list("name", flat=True).first() or "",
                "language": language,
            },
        )
        response.render()  # inside the override: the page is in the notice's language
    return response
