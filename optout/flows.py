"""Services behind the opt-out pages. Each one writes the ledger event (through
optout.services) and the mail that confirms it (through the outbox) in one transaction,
so the person is told "recorded" only once both are durable."""

from __future__ import annotations

import time

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.utils import timezone

from optout.formatting import when
from optout.links import BadLink, ExpiredLink, LinkClaims, objection_url
from optout.models import EmailVerification, OutboxMessage, Purpose, Source
from optout.outbox import outbox_add
from optout.services import Receipt, objection_record, objection_withdraw, purpose_get

VERIFY_SALT = "demur.optout.verify"


class UsedLink(BadLink):
    """A single-use link that was already used."""


def purpose_cached(slug: str) -> Purpose | None:
    """The purpose a link names. Purposes almost never change, and every page view and
    objection needs one, so each process keeps them for a minute."""
    now = time.monotonic()
    hit = _PURPOSES.get(slug)
    if hit is not None and now - hit[1] < 60:
        return hit[0]
    purpose = Purpose.objects.filter(slug=slug).first()
    if purpose is not None:
        _PURPOSES[slug] = (purpose, now)
    return purpose


_PURPOSES: dict[str, tuple[Purpose, float]] = {}


def link_object(*, claims: LinkClaims, reason: str, language: str, source: str = Source.EMAIL_LINK) -> Receipt:
    """An objection from a signed link (a notice, or the status page of a receipt), with
    its confirmation mail when the link carries an address. On PostgreSQL one round trip."""
    return objection_record(
        subject_id=claims.subject_id,
        purpose=claims.purpose,
        source=source,
        reason=reason,
        campaign_id=claims.campaign_id,
        notice_version_id=claims.notice_version_id,
        confirm_to=claims.email,
        confirm_language=language,
    )


def link_withdraw(*, claims: LinkClaims, language: str) -> Receipt:
    return objection_withdraw(
        subject_id=claims.subject_id,
        purpose=claims.purpose,
        source=Source.EMAIL_LINK,
        confirm_to=claims.email,
        confirm_language=language,
    )


def public_subject_id(*, email: str, account_id: str) -> str:
    """Who a public-form objection is about: the account id when given, else the
    verified address, which the training systems can match against their accounts."""
    return account_id or f"email:{email.strip().lower()}"


def verification_request(
    *, email: str, country: str, account_id: str, reason: str, language: str, purpose: str
) -> None:
    """Queue the verification mail for a public-form request. The same happens whether
    or not the address is known, so the page cannot be used to probe for accounts."""
    purpose_obj = purpose_get(purpose)
    with transaction.atomic():
        verification = EmailVerification.objects.create(
            email=email,
            country=country,
            subject_id=account_id,
            reason=reason,
            language=language,
            purpose=purpose_obj,
        )
        token = signing.dumps({"v": verification.id}, salt=VERIFY_SALT)
        outbox_add(
            kind=OutboxMessage.Kind.VERIFICATION,
            to=email,
            language=language,
            template="optout/mail/verification",
            context={
                "verify_url": _verify_url(token, language),
                "purpose": purpose_obj,
                "minutes": settings.DEMUR_VERIFY_MAX_AGE // 60,
                "when": when,
            },
        )


def _verify_url(token: str, language: str) -> str:
    from django.urls import reverse
    from django.utils import translation

    with translation.override(language):
        return f"{settings.SITE_URL}{reverse('optout:verify', kwargs={'token': token})}"


def verification_read(token: str) -> EmailVerification:
    """The pending request a verification token names; BadLink, ExpiredLink or UsedLink."""
    try:
        payload = signing.loads(token, salt=VERIFY_SALT, max_age=settings.DEMUR_VERIFY_MAX_AGE)
    except signing.SignatureExpired:
        raise ExpiredLink(token) from None
    except (signing.BadSignature, ValueError, UnicodeError):
        raise BadLink(token) from None
    verification_id = payload.get("v") if isinstance(payload, dict) else None
    if not isinstance(verification_id, int):
        raise BadLink(token)
    verification = EmailVerification.objects.select_related("purpose").filter(id=verification_id).first()
    if verification is None:
        raise BadLink(token)
    if verification.used_at is not None:
        raise UsedLink(token)
    return verification


def verification_confirm(*, verification_id: int, language: str) -> Receipt:
    """Record the objection of a verified public-form request. Single use: the row is
    locked and marked used in the same transaction as the ledger event."""
    with transaction.atomic():
        verification = EmailVerification.objects.select_for_update().select_related("purpose").get(id=verification_id)
        if verification.used_at is not None:
            raise UsedLink(str(verification_id))
        email = verification.email.strip().lower()
        claims = LinkClaims(
            subject_id=public_subject_id(email=email, account_id=verification.subject_id),
            purpose=verification.purpose.slug,
            language=language,
            email=email,
        )
        receipt = objection_record(
            subject_id=claims.subject_id,
            purpose=claims.purpose,
            source=Source.WEB_FORM,
            email=email,
            reason=verification.reason,
            confirm_to=email,
            confirm_language=language,
        )
        verification.used_at = timezone.now()
        verification.save(update_fields=["used_at"])
    return receipt


def status_claims_for(receipt: Receipt, *, language: str, email: str) -> LinkClaims:
    return LinkClaims(subject_id=receipt.subject_id, purpose=receipt.purpose, language=language, email=email)


def objection_link_for(claims: LinkClaims) -> str:
    return objection_url(claims)
