"""A small campaign built by hand, whose every figure is known, for the dashboard and
report tests.

    subject  country lang  mail                                  in-app     ledger
    a        DE      de    sent, delivered, opened, clicked      -          objected (30 s to effect)
    b        DE      de    sent, delivered                       -          -
    c        DE      de    sent, bounced                         -          -
    g        DE      de    failed (refused when sending)         -          -
    d        GR      el    sent (no tracking event)              shown      objected (90 s), withdrew later
    e        GR      el    -                                     not shown  -
    f        GR      el    sent, delivered, spam complaint       -          -

Audience 7; delivered or shown 4 (a, b, d, f); opened or shown 2 (a, d); clicked 1 (a);
objected 2 (a, d); withdrew later 1 (d). Reach: DE 2 of 4 (50 %), GR 2 of 3 (66.7 %).
Mails sent 5, delivered 3, bounced 1 (20 % of sent), complaints 1 (33.3 % of delivered),
failed 1.
"""

from __future__ import annotations

import datetime as dt

from campaigns.models import Campaign, Delivery, NoticeVersion, Recipient
from optout.services import objection_record, objection_withdraw
from tests.campaigns.factories import make_campaign

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
HASHES = {"de": "d" * 64, "el": "e" * 64}


def build_campaign(purpose) -> Campaign:
    campaign = make_campaign(
        purpose,
        name="Κοινοποίηση AI 2026",
        status=Campaign.Status.COMPLETED,
        launched_at=T0,
        ended_at=T0 + dt.timedelta(days=10),
    )
    versions = {
        language: NoticeVersion.objects.create(
            campaign=campaign,
            language=language,
            content_hash=digest,
            subject="Notice",
            body_html="<p>n</p>",
            body_text="n",
        )
        for language, digest in HASHES.items()
    }
    people = {"a": "DE", "b": "DE", "c": "DE", "g": "DE", "d": "GR", "e": "GR", "f": "GR"}
    Recipient.objects.bulk_create(
        [
            Recipient(subject_id=s, email=f"{s}@example.org", language="de" if c == "DE" else "el", country=c)
            for s, c in people.items()
        ]
    )
    at = T0 + dt.timedelta(hours=1)
    sent = {"status": Delivery.Status.SENT, "sent_at": at}

    def mail(subject: str, **fields) -> Delivery:
        version = versions["de" if people[subject] == "DE" else "el"]
        return Delivery(
            campaign=campaign, subject_id=subject, channel=Delivery.Channel.MAIL, notice_version=version, **fields
        )

    def inapp(subject: str, **fields) -> Delivery:
        version = versions["de" if people[subject] == "DE" else "el"]
        return Delivery(
            campaign=campaign, subject_id=subject, channel=Delivery.Channel.INAPP, notice_version=version, **fields
        )

    Delivery.objects.bulk_create(
        [
            mail("a", **sent, delivered_at=at, opened_at=at, clicked_at=at),
            mail("b", **sent, delivered_at=at),
            mail("c", **sent, bounced_at=at),
            mail("g", status=Delivery.Status.FAILED),
            mail("d", **sent),
            inapp("d", status=Delivery.Status.SENT, shown_at=at),
            inapp("e", status=Delivery.Status.PENDING),
            mail("f", **sent, delivered_at=at, complained_at=at),
        ]
    )
    objection_record(
        subject_id="a",
        source="email-link",
        received_at=T0,
        effective_at=T0 + dt.timedelta(seconds=30),
        campaign_id=campaign.pk,
        notice_version_id=versions["de"].pk,
    )
    day2 = T0 + dt.timedelta(days=1)
    objection_record(
        subject_id="d",
        source="in-app",
        received_at=day2,
        effective_at=day2 + dt.timedelta(seconds=90),
        campaign_id=campaign.pk,
        notice_version_id=versions["el"].pk,
    )
    objection_withdraw(subject_id="d", source="web-form", received_at=T0 + dt.timedelta(days=3))
    return campaign
