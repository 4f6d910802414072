"""The pages an EU user sees: object from a notice link, the public form with email
verification, the receipt, status and withdrawal, and one-click unsubscribe.

Views are thin: read the token or form, call one service in optout.flows, render.
Every bad input ends on a localized page with a 4xx status and records nothing.
"""

from __future__ import annotations

import re
from functools import lru_cache, wraps
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import get_language_info
from django.utils.translation import gettext as _
from django_ratelimit.core import is_ratelimited
from markupsafe import escape as markup_escape

from core.countries import country_name
from optout import flows
from optout.formatting import mask_email, mask_id, when
from optout.forms import ObjectForm, PublicObjectionForm, WithdrawForm
from optout.links import (
    OBJECT_SALT,
    STATUS_SALT,
    BadLink,
    ExpiredLink,
    LinkClaims,
    account_unproven,
    read_token,
    status_url,
)
from optout.models import Purpose
from optout.selectors import objection_history, objection_state_get
from optout.services import LedgerError, Receipt


class TooLarge(Exception):
    pass


class LanguageLink(NamedTuple):
    code: str
    name: str
    url: str
    current: bool


# Stands for the rest of the page's path in a cached switcher (no path contains it).
_REST = "\x00rest\x00"


def _language_links(request: HttpRequest) -> SafeString:
    """The switcher: this page's URL under each language prefix. Every page here lives
    under i18n_patterns, so swapping the first path segment is translate_url's answer
    without 26 resolve/reverse round trips per page. The list is rendered once per
    language and process; each page only puts in its own path."""
    # Safe: the cached list was escaped by its template, the path by escape().
    return mark_safe(_switcher(translation.get_language()).replace(_REST, escape(_rest_of_path(request))))


def _rest_of_path(request: HttpRequest) -> str:
    path = request.get_full_path() if request.method == "GET" else request.path
    _empty, _prefix, rest = path.split("/", 2) if path.count("/") >= 2 else ("", "", "")
    return rest


@lru_cache(maxsize=64)
def _switcher(current: str) -> str:
    links = [
        LanguageLink(code, get_language_info(code)["name_local"], f"/{code}/{_REST}", code == current)
        for code, _name in settings.LANGUAGES
    ]
    return render_to_string("optout/_languages.html", {"languages": links})


def page(request: HttpRequest, template: str, context: dict | None = None, *, status: int = 200) -> HttpResponse:
    context = {
        **(context or {}),
        "language_links": _language_links(request),
        "when": when,
        "language_name": get_language_info(translation.get_language() or "en")["name_local"],
    }
    response = render(request, f"optout/{template}", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


# Stand for the person's values in a cached receipt page (no page text contains them).
_SENTINEL = re.compile("\x00(receipt|recorded|effective|identity|status|rest)\x00")
_RECEIPT, _RECORDED, _EFFECTIVE, _IDENTITY, _STATUS_URL = (
    f"\x00{name}\x00" for name in ("receipt", "recorded", "effective", "identity", "status")
)


class _ReceiptStand:
    """What receipt.html reads of a receipt, in the cached page: the sentinels, and
    `created`, which the page branches on (part of the cache key). Reading anything else
    fails loudly rather than showing one person's value to the next."""

    receipt, received_at, effective_at = _RECEIPT, _RECORDED, _EFFECTIVE

    def __init__(self, created: bool) -> None:
        self.created = created

    def __getattr__(self, name: str):
        if name.startswith("__"):  # Python's and Jinja's own probes
            raise AttributeError(name)
        raise TypeError(f"receipt.html reads receipt.{name}: add it to optout.views._receipt_stencil")


_STENCILS: dict[tuple, str] = {}


def _receipt_stencil(purpose: Purpose, *, language: str, created: bool, mailed: bool) -> str:
    """receipt.html in one language, rendered with sentinels for the person's values.
    The receipt answers every objection, and all of it but six values is the same for
    everyone in a language: rendered once per language and process (as the language
    switcher is), it no longer costs each objection a page render."""
    key = (language, created, mailed, purpose.pk, purpose.name)
    stencil = _STENCILS.get(key)
    if stencil is None:
        context = {
            "receipt": _ReceiptStand(created),
            "purpose": purpose,
            "identity": _IDENTITY,
            "status_url": _STATUS_URL,
            "mailed": mailed,
            "language_links": mark_safe(_switcher(language)),
            "when": str,  # the dates are sentinels already
            "language_name": get_language_info(language)["name_local"],
        }
        stencil = render_to_string("optout/receipt.html", context)  # no request, so no CSRF token in it
        if len(_STENCILS) >= 1024:
            _STENCILS.clear()
        _STENCILS[key] = stencil
    return stencil


def receipt_page(
    request: HttpRequest, *, receipt: Receipt, purpose: Purpose, identity: str, status_url: str, mailed: bool
) -> HttpResponse:
    """The receipt page: the cached page of this language with the person's values put in
    (one pass, so no value is read for sentinels), escaped as the template escapes them;
    the same bytes as a render (tests/optout/test_pages.py)."""
    language = translation.get_language()
    values = {
        "receipt": markup_escape(receipt.receipt),
        "recorded": markup_escape(when(receipt.received_at)),
        "effective": markup_escape(when(receipt.effective_at)),
        "identity": markup_escape(identity),
        "status": markup_escape(status_url),
        "rest": escape(_rest_of_path(request)),  # as _language_links escapes it
    }
    stencil = _receipt_stencil(purpose, language=language, created=receipt.created, mailed=mailed)
    response = HttpResponse(_SENTINEL.sub(lambda match: values[match.group(1)], stencil))
    response["Cache-Control"] = "no-store"
    return response


def error_page(request: HttpRequest, *, status: int, title: str, message: str, offer_form: bool = True) -> HttpResponse:
    return page(request, "error.html", {"title": title, "message": message, "offer_form": offer_form}, status=status)


def allow_methods(*allowed: str):
    """Django's require_http_methods, answering another method with the localized page
    (405, with Allow) instead of an empty body."""

    def decorate(view):
        @wraps(view)
        def inner(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in allowed:
                response = error_page(
                    request,
                    status=405,
                    title=_("This page does not take that kind of request"),
                    message=_("Please use the buttons on the page."),
                    offer_form=False,
                )
                response["Allow"] = ", ".join(allowed)
                return response
            return view(request, *args, **kwargs)

        return inner

    return decorate


def bad_link_page(request: HttpRequest, exc: Exception) -> HttpResponse:
    if isinstance(exc, flows.UsedLink):
        return error_page(
            request,
            status=410,
            title=_("This link has already been used"),
            message=_("Each confirmation link works once. If you still want to object, fill in the form again."),
        )
    if isinstance(exc, ExpiredLink):
        return error_page(
            request,
            status=410,
            title=_("This link has expired"),
            message=_("For your safety, links stop working after a while. You can still object with the form."),
        )
    return error_page(
        request,
        status=400,
        title=_("This link does not work"),
        message=_("The link is incomplete or has been changed. Copy the whole link from the email, or use the form."),
    )


def read_post(request: HttpRequest):
    """request.POST, with an oversized or malformed body turned into TooLarge / BadLink."""
    try:
        return request.POST
    except (RequestDataTooBig, TooManyFieldsSent) as exc:
        raise TooLarge from exc
    except (MultiPartParserError, SuspiciousOperation, UnicodeDecodeError, ValueError) as exc:
        raise BadLink("body") from exc


def too_large_page(request: HttpRequest) -> HttpResponse:
    return error_page(
        request,
        status=413,
        title=_("That was too much text"),
        message=_("What you sent is larger than this form accepts. Please shorten it and try again."),
    )


def link_claims(token: str, salt: str) -> tuple[LinkClaims, Purpose]:
    claims = read_token(token, salt=salt)
    if not claims.subject_id or len(claims.subject_id) > 128:
        raise BadLink(token)
    purpose = flows.purpose_cached(claims.purpose)
    if purpose is None:
        raise BadLink(token)
    return claims, purpose


@allow_methods("GET", "HEAD", "POST")
def link(request: HttpRequest, token: str) -> HttpResponse:
    """The page every notice links to. GET only shows it (mail scanners open links);
    POST records the objection and answers with the receipt."""
    try:
        claims, purpose = link_claims(token, OBJECT_SALT)
    except BadLink as exc:
        return bad_link_page(request, exc)
    language = translation.get_language()
    identity = mask_email(claims.email) if claims.email else mask_id(claims.subject_id)
    status_link = status_url(LinkClaims(claims.subject_id, claims.purpose, language, email=claims.email))

    if request.method == "POST":
        try:
            form = ObjectForm(read_post(request))
        except TooLarge:
            return too_large_page(request)
        except BadLink as exc:
            return bad_link_page(request, exc)
        if "object" in form.errors:
            return not_understood_page(request)
        if not form.is_valid():
            return page(request, "link.html", {"form": form, "purpose": purpose, "identity": identity}, status=400)
        try:
            receipt = flows.link_object(claims=claims, reason=form.cleaned_data["reason"], language=language)
        except LedgerError as exc:
            return bad_link_page(request, exc)
        return receipt_page(
            request,
            receipt=receipt,
            purpose=purpose,
            identity=identity,
            status_url=status_link,
            mailed=bool(claims.email) and receipt.created,
        )

    state = objection_state_get(subject_id=claims.subject_id, purpose=claims.purpose)
    if state is not None and state.objected:
        return page(
            request,
            "already.html",
            {"state": state, "purpose": purpose, "identity": identity, "status_url": status_link},
        )
    return page(request, "link.html", {"form": ObjectForm(), "purpose": purpose, "identity": identity})


@allow_methods("GET", "HEAD", "POST")
def status(request: HttpRequest, token: str) -> HttpResponse:
    """Current state and history; withdraw (with a confirmation tick) or object again."""
    try:
        claims, purpose = link_claims(token, STATUS_SALT)
    except BadLink as exc:
        return bad_link_page(request, exc)
    language = translation.get_language()
    identity = mask_email(claims.email) if claims.email else mask_id(claims.subject_id)
    withdraw_form = WithdrawForm()
    result_status = 200
    done = ""

    if request.method == "POST":
        try:
            data = read_post(request)
        except TooLarge:
            return too_large_page(request)
        except BadLink as exc:
            return bad_link_page(request, exc)
        action = data.get("action")
        try:
            if action == "withdraw":
                withdraw_form = WithdrawForm(data)
                if withdraw_form.is_valid():
                    flows.link_withdraw(claims=claims, language=language)
                    withdraw_form = WithdrawForm()
                    done = "withdrawn"
                else:
                    result_status = 400
            elif action == "object":
                flows.link_object(claims=claims, reason="", language=language)
                done = "objected"
            else:
                return not_understood_page(request)
        except LedgerError as exc:  # as on the link page: e.g. a purpose gone since the link was made
            return bad_link_page(request, exc)

    state = objection_state_get(subject_id=claims.subject_id, purpose=claims.purpose)
    history = objection_history(subject_id=claims.subject_id, purpose=claims.purpose)
    return page(
        request,
        "status.html",
        {
            "state": state,
            "history": list(reversed(history)),
            "purpose": purpose,
            "identity": identity,
            "withdraw_form": withdraw_form,
            "done": done,
        },
        status=result_status,
    )


@allow_methods("GET", "HEAD", "POST")
def public_form(request: HttpRequest) -> HttpResponse:
    """Object without a link: email, country, optional account id and reason; we answer
    with a verification mail, and the same page whether or not the address is known."""
    language = translation.get_language()
    if request.method != "POST":
        return page(request, "form.html", {"form": PublicObjectionForm(language=language)})
    if is_ratelimited(request, group="optout-form-ip", key="ip", rate=settings.DEMUR_FORM_RATE_IP, increment=True):
        return _rate_limited(request)
    try:
        form = PublicObjectionForm(read_post(request), language=language)
    except TooLarge:
        return too_large_page(request)
    except BadLink as exc:
        return bad_link_page(request, exc)
    if not form.is_valid():
        return page(request, "form.html", {"form": form}, status=400)
    email = form.cleaned_data["email"].strip().lower()
    if is_ratelimited(
        request,
        group="optout-form-email",
        key=lambda _group, _request: email,
        rate=settings.DEMUR_FORM_RATE_EMAIL,
        increment=True,
    ):
        return _rate_limited(request)
    flows.verification_request(
        email=email,
        country=form.cleaned_data["country"],
        account_id=form.cleaned_data["account_id"],
        reason=form.cleaned_data["reason"],
        language=language,
        purpose=settings.DEMUR_DEFAULT_PURPOSE,
    )
    return page(
        request, "check_inbox.html", {"email": mask_email(email), "minutes": settings.DEMUR_VERIFY_MAX_AGE // 60}
    )


def not_understood_page(request: HttpRequest) -> HttpResponse:
    return error_page(
        request,
        status=400,
        title=_("We could not understand that request"),
        message=_("Please use the buttons on the page."),
        offer_form=False,
    )


def _rate_limited(request: HttpRequest) -> HttpResponse:
    response = error_page(
        request,
        status=429,
        title=_("Too many requests"),
        message=_("We have received many requests from you in a short time. Please wait an hour and try again."),
        offer_form=False,
    )
    response["Retry-After"] = "3600"
    return response


@allow_methods("GET", "HEAD", "POST")
def verify(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the verification mail. GET asks for a click (scanners open links);
    POST records the objection once."""
    try:
        verification = flows.verification_read(token)
    except BadLink as exc:
        return bad_link_page(request, exc)
    language = translation.get_language()
    context = {
        "purpose": verification.purpose,
        "identity": mask_email(verification.email),
        "country": country_name(verification.country, language),
    }
    if request.method != "POST":
        return page(request, "verify.html", context)
    try:
        receipt = flows.verification_confirm(verification_id=verification.id, language=language)
    except BadLink as exc:
        return bad_link_page(request, exc)
    email = verification.email.strip().lower()
    if account_unproven(subject_id=receipt.subject_id, email=email):
        # An account id the person typed: no status link, and no earlier receipt.
        return page(request, "account_receipt.html", {**context, "receipt": receipt, "mailed": receipt.created})
    return receipt_page(
        request,
        receipt=receipt,
        purpose=verification.purpose,
        identity=context["identity"],
        status_url=status_url(flows.status_claims_for(receipt, language=language, email=email)),
        mailed=receipt.created,
    )


def link_without_language(request: HttpRequest, token: str) -> HttpResponse:
    """/optout/t/<token>/ with no language prefix: open it in the token's language, else
    in the browser's (Accept-Language)."""
    language = None
    try:
        language = read_token(token, salt=OBJECT_SALT).language
    except BadLink:
        pass
    if language not in dict(settings.LANGUAGES):
        language = translation.get_language_from_request(request)
    with translation.override(language):
        return HttpResponseRedirect(reverse("optout:link", kwargs={"token": token}))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    return error_page(
        request,
        status=403,
        title=_("Your request could not be checked"),
        message=_(
            "The page had been open for too long, or your browser did not send its security check. "
            "Go back, reload the page and try again."
        ),
        offer_form=False,
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Any page that does not exist (handler404), in the language of its prefix."""
    return error_page(
        request,
        status=404,
        title=_("This page does not exist"),
        message=_("Check the address, or start again from the form."),
    )


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, RequestDataTooBig | TooManyFieldsSent):
        return too_large_page(request)
    return error_page(
        request,
        status=400,
        title=_("We could not understand that request"),
        message=_("Please go back and try again."),
        offer_form=False,
    )
