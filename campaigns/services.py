"""Writes for campaigns: freezing notice versions, sending a test notice to staff."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import IntegrityError, transaction

from campaigns.models import Campaign, NoticeVersion
from campaigns.notices import notice_build, notice_email


def notice_versions_freeze(*, campaign_id: int) -> list[NoticeVersion]:
    """Freeze the campaign's notice in every language, once. A language already frozen
    keeps its version untouched, so calling this again (or concurrently) changes nothing;
    what a person was shown stays provable (DESIGN invariant 5)."""
    campaign = Campaign.objects.select_related("purpose").get(pk=campaign_id)
    # Rendering is slow-ish and needs no lock; only the inserts run in transactions.
    existing = set(NoticeVersion.objects.filter(campaign=campaign).values_list("language", flat=True))
    for language, _name in settings.LANGUAGES:
        if language in existing:
            continue
        version = notice_build(campaign=campaign, language=language)
        try:
            with transaction.atomic():
                version.save()
        except IntegrityError:
            pass  # frozen by a concurrent call: theirs stands
    return list(NoticeVersion.objects.filter(campaign=campaign).order_by("language"))


def notice_test_send(
    *,
    campaign_id: int,
    language: str,
    to: str,
    name: str,
    already_objected: bool = False,
) -> NoticeVersion:
    """Send the notice to a staff member: the frozen version when the campaign has one
    for the language, else a fresh rendering of the current templates (not stored)."""
    campaign = Campaign.objects.select_related("purpose").get(pk=campaign_id)
    version = NoticeVersion.objects.filter(campaign=campaign, language=language).first()
    if version is None:
        version = notice_build(campaign=campaign, language=language)
    objected_on = dt.date.today() if already_objected else None
    notice_email(version, to=to, name=name, subject_id=f"staff-test-{to}", objected_on=objected_on).send()
    return version
