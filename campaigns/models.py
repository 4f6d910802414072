"""Campaigns and the frozen notice versions that objections point back to.

The campaign engine (audience, deliveries, dispatch) grows here; the ledger only needs a
campaign and the exact notice version a person was shown (DESIGN invariant 5).
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


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

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="versions", verbose_name=_("campaign"))
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
