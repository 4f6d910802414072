"""Campaigns and the frozen notice versions that objections point back to.

The campaign engine (audience, deliveries, dispatch) grows here; the ledger only needs a
campaign and the exact notice version a person was shown (DESIGN invariant 5).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class ObjectedPolicy(models.TextChoices):
    VARIANT = "variant", _("send the “already objected” variant")
    SKIP = "skip", _("send nothing")


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", _("draft")
        SCHEDULED = "scheduled", _("scheduled")
        RUNNING = "running", _("running")
        PAUSED = "paused", _("paused")
        COMPLETED = "completed", _("completed")
        CANCELLED = "cancelled", _("cancelled")

    name = models.CharField(_("name"), max_length=200)
    purpose = models.ForeignKey("optout.Purpose", on_delete=models.PROTECT, verbose_name=_("purpose"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.DRAFT)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    # What the notice says. Inserted into the notice as named placeholders when the
    # versions are frozen (campaigns.notices); required before freezing.
    notice_template = models.SlugField(
        _("notice template"),
        max_length=64,
        default="ai-training",
    )
    controller_name = models.CharField(_("controller"), max_length=200, blank=True)
    product_name = models.CharField(_("product name"), max_length=100, blank=True)
    training_starts_on = models.DateField(_("training starts on"), null=True, blank=True)
    dpo_email = models.EmailField(_("data protection officer's email"), blank=True)
    contact_email = models.EmailField(_("contact email"), blank=True)
    policy_url = models.URLField(_("privacy policy URL"), blank=True)

    # Who gets it, how, when (campaigns.services.campaign_launch and campaigns.dispatch).
    send_mail = models.BooleanField(_("send by mail"), default=True)
    send_inapp = models.BooleanField(_("show in the app"), default=False)
    # Empty: everyone. Otherwise ISO country codes (EU/EEA) and LANGUAGES codes.
    countries = models.JSONField(_("countries"), default=list, blank=True)
    languages = models.JSONField(_("languages"), default=list, blank=True)
    scheduled_at = models.DateTimeField(_("send from"), null=True, blank=True)
    # Nothing goes out after this moment, whatever happened before (an outage, a pause).
    expires_at = models.DateTimeField(_("send until"), null=True, blank=True)
    send_rate = models.PositiveIntegerField(_("mails per second"), default=50)
    objected_policy = models.CharField(
        _("people who already objected"),
        max_length=16,
        choices=ObjectedPolicy.choices,
        default=ObjectedPolicy.VARIANT,
    )
    launched_at = models.DateTimeField(_("launched at"), null=True, blank=True, editable=False)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True, editable=False)
    # Why the campaign paused itself (an error rate past the threshold); empty otherwise.
    pause_reason = models.CharField(_("pause reason"), max_length=300, blank=True, editable=False)
    # Last time a dispatch task claimed work; the periodic tick restarts dispatch when stale.
    dispatched_at = models.DateTimeField(_("last dispatch"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")

    def __str__(self) -> str:
        return self.name


class NoticeVersion(models.Model):
    """One notice, rendered for one language and frozen at launch.

    The texts hold the campaign's values already; what differs per person (name, signed
    links, the date of an earlier objection) is left as `__demur_<slot>__` markers that
    campaigns.notices fills in at send time. Each text exists twice: for everyone, and
    for people who have already objected (the `objected_*` fields). `content_hash` covers
    all of them; `template_hash` and `catalog_hash` name the sources they came from.
    """

    campaign = models.ForeignKey(
        Campaign, on_delete=models.PROTECT, related_name="versions", verbose_name=_("campaign")
    )
    language = models.CharField(_("language"), max_length=8)
    content_hash = models.CharField(_("content hash"), max_length=64)
    subject = models.CharField(_("mail subject"), max_length=300)
    body_html = models.TextField(_("HTML body"))
    body_text = models.TextField(_("text body"))
    created_at = models.DateTimeField(_("frozen at"), auto_now_add=True)
    direction = models.CharField(_("text direction"), max_length=3, default="ltr")
    preheader = models.CharField(_("preheader"), max_length=300, blank=True)
    inapp_body = models.TextField(_("in-app body"), blank=True)
    objected_subject = models.CharField(_("mail subject (already objected)"), max_length=300, blank=True)
    objected_preheader = models.CharField(_("preheader (already objected)"), max_length=300, blank=True)
    objected_body_html = models.TextField(_("HTML body (already objected)"), blank=True)
    objected_body_text = models.TextField(_("text body (already objected)"), blank=True)
    objected_inapp_body = models.TextField(_("in-app body (already objected)"), blank=True)
    # {"named": "Hello __demur_name__,", "anonymous": "Hello,"}: the greeting is chosen per person.
    greetings = models.JSONField(_("greetings"), default=dict, blank=True)
    template_name = models.CharField(_("template"), max_length=64, blank=True)
    template_hash = models.CharField(_("template hash"), max_length=64, blank=True)
    catalog_hash = models.CharField(_("catalog hash"), max_length=64, blank=True)

    class Meta:
        verbose_name = _("notice version")
        verbose_name_plural = _("notice versions")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "language"], name="campaigns_version_campaign_language"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} [{self.language}] {self.content_hash[:12]}"


class Suppression(models.Model):
    """Who gets no more notice mails: unsubscribed (RFC 8058 one-click), hard bounces
    and complaints. Unsubscribing is not objecting: the ledger is untouched."""

    class Reason(models.TextChoices):
        UNSUBSCRIBED = "unsubscribed", _("unsubscribed")
        BOUNCED = "bounced", _("hard bounce")
        COMPLAINED = "complained", _("spam complaint")

    subject_id = models.CharField(_("subject id"), max_length=128, blank=True)
    email = models.EmailField(_("email"), blank=True)
    reason = models.CharField(_("reason"), max_length=16, choices=Reason.choices)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("suppression")
        verbose_name_plural = _("suppressions")
        indexes = [
            models.Index(fields=["subject_id"], name="campaigns_suppr_subject"),
            models.Index(fields=["email"], name="campaigns_suppr_email"),
        ]

    def __str__(self) -> str:
        return f"{self.subject_id or self.email}: {self.reason}"


class Recipient(models.Model):
    """One person of the audience (DESIGN data flow 1). The email is erased once the
    retention period after their last campaign has passed; the row, the deliveries and
    the ledger stay, so counts and proofs survive (campaigns.audience)."""

    subject_id = models.CharField(_("subject id"), max_length=128)
    email = models.EmailField(_("email"), blank=True)
    language = models.CharField(_("language"), max_length=8)
    country = models.CharField(_("country"), max_length=2)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now)
    last_campaign_ended_at = models.DateTimeField(_("last campaign ended at"), null=True, blank=True)
    email_erased_at = models.DateTimeField(_("email erased at"), null=True, blank=True)

    class Meta:
        verbose_name = _("recipient")
        verbose_name_plural = _("recipients")
        constraints = [
            # A constraint rather than unique=True, which would add a second (LIKE) index
            # on PostgreSQL that every import pays for and no query uses.
            models.UniqueConstraint(fields=["subject_id"], name="campaigns_recipient_subject"),
        ]
        indexes = [
            # campaigns.audience.recipients_erase_expired; only people some campaign has
            # reached, so an import of new recipients writes nothing to it
            models.Index(
                fields=["last_campaign_ended_at"],
                condition=models.Q(last_campaign_ended_at__isnull=False) & ~models.Q(email=""),
                name="campaigns_recipient_retention",
            ),
        ]

    def __str__(self) -> str:
        return self.subject_id


class Delivery(models.Model):
    """One notice to one person on one channel, created at launch before anything is
    sent (DESIGN invariant 4). Status moves only through conditional UPDATEs in
    campaigns.dispatch; `claim` names the dispatch batch that holds a row (claimed or
    sending). A dead worker's claimed rows go back to pending; its one row in "sending"
    may have gone out, so it becomes "unknown" rather than be sent twice."""

    class Channel(models.TextChoices):
        MAIL = "mail", _("mail")
        INAPP = "inapp", _("in-app")

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        # Held by a dispatch batch, not yet handed to the mail backend.
        CLAIMED = "claimed", _("claimed")
        # Being handed to the mail backend right now.
        SENDING = "sending", _("sending")
        SENT = "sent", _("sent")
        FAILED = "failed", _("failed")
        # The worker died while this mail was in flight: it may or may not have gone out.
        # Never retried automatically, so nobody is mailed twice.
        UNKNOWN = "unknown", _("outcome unknown")
        SKIPPED = "skipped", _("skipped")
        CANCELLED = "cancelled", _("cancelled")
        EXPIRED = "expired", _("expired")

    campaign = models.ForeignKey(
        Campaign, on_delete=models.PROTECT, db_index=False, related_name="deliveries", verbose_name=_("campaign")
    )
    subject_id = models.CharField(_("subject id"), max_length=128)
    channel = models.CharField(_("channel"), max_length=8, choices=Channel.choices)
    notice_version = models.ForeignKey(
        NoticeVersion, on_delete=models.PROTECT, db_index=False, related_name="+", verbose_name=_("notice version")
    )
    # When the person had objected before launch (they get the "already objected" variant).
    objected_at = models.DateTimeField(_("had objected on"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    claim = models.UUIDField(_("claim"), null=True, blank=True, editable=False)
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    message_id = models.CharField(_("Message-ID"), max_length=200, blank=True)
    error = models.TextField(_("error"), blank=True)
    # In-app notices: what the platform reported (POST /api/v1/notices/{id}/events), the
    # server-side proof that the notice was seen. Each is set once, at its first report.
    shown_at = models.DateTimeField(_("shown at"), null=True, blank=True)
    clicked_at = models.DateTimeField(_("clicked at"), null=True, blank=True)
    dismissed_at = models.DateTimeField(_("dismissed at"), null=True, blank=True)
    # Mail: what the provider's tracking webhooks reported (campaigns.tracking), first time each.
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    opened_at = models.DateTimeField(_("opened at"), null=True, blank=True)
    bounced_at = models.DateTimeField(_("bounced at"), null=True, blank=True)
    complained_at = models.DateTimeField(_("complained at"), null=True, blank=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "subject_id", "channel"], name="campaigns_delivery_one_per_channel"
            ),
        ]
        indexes = [
            # campaigns.dispatch claim: pending mail of one campaign, oldest id first
            models.Index(
                fields=["campaign", "id"],
                condition=models.Q(status="pending", channel="mail"),
                name="campaigns_delivery_pending",
            ),
            # campaigns.dispatch settle: rows left claimed or sending by a dead worker
            models.Index(
                fields=["claimed_at"],
                condition=models.Q(status__in=["claimed", "sending"]),
                name="campaigns_delivery_sending",
            ),
            # the in-app notices of one subject
            models.Index(
                fields=["subject_id"],
                condition=models.Q(channel="inapp"),
                name="campaigns_delivery_inapp",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}/{self.subject_id}/{self.channel}: {self.status}"


class TrackingEvent(models.Model):
    """A mail provider's tracking event, kept once per (provider, event id): a replayed
    webhook finds its event here and changes nothing."""

    esp = models.CharField(_("mail provider"), max_length=32)
    event_id = models.CharField(_("event id"), max_length=200)
    event_type = models.CharField(_("event"), max_length=32)
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("delivery")
    )
    occurred_at = models.DateTimeField(_("occurred at"))
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)

    class Meta:
        verbose_name = _("tracking event")
        verbose_name_plural = _("tracking events")
        constraints = [
            models.UniqueConstraint(fields=["esp", "event_id"], name="campaigns_tracking_event_once"),
        ]

    def __str__(self) -> str:
        return f"{self.esp} {self.event_type} {self.event_id}"
