"""The objection ledger: purposes, append-only events and the current state per subject."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from rest_framework_api_key.models import AbstractAPIKey

from optout.ledger import format_receipt, new_event_uuid


class Purpose(models.Model):
    """What personal data would be used for. Name and description are gettext msgids:
    the data migration marks them for translation and `display_*` translate at read time."""

    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True)

    class Meta:
        verbose_name = _("purpose")
        verbose_name_plural = _("purposes")
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return gettext(self.name)

    @property
    def display_description(self) -> str:
        return gettext(self.description) if self.description else ""


class Action(models.TextChoices):
    OBJECTED = "objected", _("objected")
    WITHDRAWN = "withdrawn", _("withdrawn")


class Source(models.TextChoices):
    EMAIL_LINK = "email-link", _("link in a notice")
    IN_APP = "in-app", _("in the app")
    WEB_FORM = "web-form", _("public web form")
    API = "api", _("API")
    GPC = "gpc", _("Global Privacy Control signal")
    IMPORT = "import", _("import of past objections")
    STAFF_ENTRY = "staff-entry", _("entered by staff")


class ObjectionEvent(models.Model):
    """One objection or withdrawal. Rows are never updated or deleted: on PostgreSQL a
    trigger rejects UPDATE, DELETE and TRUNCATE (migration 0002).

    `xid` is the writing transaction's id: the column's default, and a trigger corrects
    any row that arrives with another value (migration 0008). `feed_key` is the event's
    position in the change feed: the epoch's base plus `xid`, raised to the previous
    event of its chain if that is higher (optout/sql/demur_ledger_epoch.sql). The feed
    reads only below the oldest running transaction and pages on (feed_key, id), so an
    event that commits late is never skipped, and one person's events come in the order
    of their chain, whatever order their transactions took their ids in
    (optout.selectors.feed_page). `seq` is the event's place in its chain: 1, 2, 3, ...

    Events chain per (subject, purpose): `prev_hash` is the hash of that subject's
    previous event for the purpose, so appends for different people never wait on each
    other, and `verify_ledger` still finds any edited, removed or reordered row.
    """

    uuid = models.UUIDField(_("event id"), default=new_event_uuid, unique=True, editable=False)
    xid = models.BigIntegerField(_("transaction id"), null=True, editable=False)
    subject_id = models.CharField(_("subject id"), max_length=128)
    # Only the public web form knows a person by email alone; we keep the address it
    # verified so the confirmation and a later status link can reach them. Every other
    # flow identifies the person by subject id and leaves this empty.
    email = models.EmailField(_("verified email"), blank=True)
    # No index of their own on the foreign keys: every query reaches events through the
    # feed index or the subject index below, and each index costs every insert.
    purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, db_index=False, verbose_name=_("purpose"))
    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    reason = models.TextField(_("reason"), blank=True, max_length=2000)
    campaign = models.ForeignKey(
        "campaigns.Campaign",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_index=False,
        verbose_name=_("campaign"),
    )
    notice_version = models.ForeignKey(
        "campaigns.NoticeVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_index=False,
        verbose_name=_("notice version"),
    )
    staff_user = models.CharField(_("recorded by staff member"), max_length=150, blank=True)
    received_at = models.DateTimeField(_("received at"))
    effective_at = models.DateTimeField(_("effective from"))
    recorded_at = models.DateTimeField(_("recorded at"), default=timezone.now, editable=False)
    # With the id, the receipt number (optout.ledger.format_receipt).
    receipt_code = models.PositiveIntegerField(_("receipt code"))
    # An API caller's Idempotency-Key: a retry with the same key is a no-op.
    # NULL, not "": the unique constraint below must ignore events without a key.
    idempotency_key = models.CharField(_("idempotency key"), max_length=200, null=True, blank=True)  # noqa: DJ001
    prev_hash = models.CharField(_("previous hash"), max_length=64)
    hash = models.CharField(_("hash"), max_length=64)
    seq = models.PositiveIntegerField(_("place in the chain"), editable=False)
    feed_key = models.BigIntegerField(_("feed position"), editable=False)

    class Meta:
        verbose_name = _("objection event")
        verbose_name_plural = _("objection events")
        indexes = [
            # optout.selectors.feed_page: WHERE (feed_key, id) > cursor ORDER BY feed_key, id
            models.Index(fields=["feed_key", "id"], name="optout_event_feed"),
            # one subject's history, and the hash chain walk in verify_ledger
            models.Index(fields=["subject_id", "purpose", "id"], name="optout_event_subject"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["purpose", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="optout_event_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.receipt} {self.subject_id} {self.action}"

    @property
    def receipt(self) -> str:
        return format_receipt(self.id, self.receipt_code) if self.id else ""


class ObjectionState(models.Model):
    """The current answer for one (subject, purpose), written in the same transaction as
    the event that changed it. `head_hash` is the hash of that last event: the start of
    the next link in the subject's chain."""

    subject_id = models.CharField(_("subject id"), max_length=128)
    # No database constraint on this key and on last_event: checking them cost the import
    # a trigger call per row each (about a third of its database time with the event's
    # own). Every state row is written with its event, whose foreign key keeps the
    # purpose from being deleted; events are never deleted (migration 0002), and
    # verify_ledger checks that each state points at the last event of its chain.
    # Django's on_delete=PROTECT still guards deletes made through the ORM.
    purpose = models.ForeignKey(
        Purpose, on_delete=models.PROTECT, db_index=False, db_constraint=False, verbose_name=_("purpose")
    )
    objected = models.BooleanField(_("objected"), default=False)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices, blank=True)
    received_at = models.DateTimeField(_("received at"), null=True)
    effective_at = models.DateTimeField(_("effective from"), null=True)
    receipt = models.CharField(_("receipt"), max_length=16, blank=True)
    last_event = models.ForeignKey(
        ObjectionEvent,
        null=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
        verbose_name=_("last event"),
    )
    head_hash = models.CharField(_("head hash"), max_length=64, blank=True)
    # The last event's seq and feed_key, which the next event of the chain continues from.
    seq = models.PositiveIntegerField(_("events in the chain"), db_default=0, editable=False)
    feed_key = models.BigIntegerField(_("feed position of the last event"), db_default=0, editable=False)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("objection state")
        verbose_name_plural = _("objection states")
        constraints = [
            models.UniqueConstraint(fields=["subject_id", "purpose"], name="optout_state_subject_purpose"),
        ]
        indexes = [
            # bulk check and export: WHERE purpose_id = ? AND objected
            models.Index(
                fields=["purpose", "subject_id"],
                condition=models.Q(objected=True),
                name="optout_state_objected",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject_id} ({self.purpose_id}): {'objected' if self.objected else 'not objected'}"


class LedgerEpoch(models.Model):
    """A stretch of the ledger written in one place: one PostgreSQL cluster, timeline and
    database. The change feed's positions are `base` plus a transaction id, and
    transaction ids are only comparable within one such place; demur_ledger_epoch()
    (optout/sql/) starts a new epoch when the ledger finds itself somewhere else, after a
    restore, a failover or a move, with a base that puts what follows above all it holds.

    `ledger` is the same in every epoch of one ledger (a cursor from another ledger is
    refused); `complete_below` is a feed position below which every event of the epoch
    is known to be in this database, advanced by a periodic task. A cursor of an earlier
    epoch continues if it is below that, and is told to resynchronise otherwise."""

    ledger = models.CharField(_("ledger"), max_length=32, editable=False)
    epoch = models.CharField(_("epoch"), max_length=32, unique=True, editable=False)
    system_identifier = models.BigIntegerField(_("cluster system identifier"), editable=False)
    timeline = models.BigIntegerField(_("timeline"), editable=False)
    database_oid = models.BigIntegerField(_("database OID"), editable=False)
    base = models.BigIntegerField(_("base"), editable=False)
    complete_below = models.BigIntegerField(_("complete below"), editable=False)
    started_at = models.DateTimeField(_("started at"), editable=False)

    class Meta:
        verbose_name = _("ledger epoch")
        verbose_name_plural = _("ledger epochs")

    def __str__(self) -> str:
        return self.epoch


class LedgerCheck(models.Model):
    """One run of the ledger's verification by the periodic task optout.ledger_verify
    (optout.services.ledger_check_record): what it read and what it found. The newest
    one with problems is an alarm on the admin's index page and in /metrics."""

    checked_at = models.DateTimeField(_("checked at"), default=timezone.now, editable=False)
    events = models.BigIntegerField(_("events read"), editable=False)
    chains = models.BigIntegerField(_("chains read"), editable=False)
    problems = models.IntegerField(_("problems found"), editable=False)
    # The first problem's event and receipt number and what is wrong, as verify_ledger
    # says it (English, for the log); never a subject id. The admin shows the receipt.
    first_problem = models.TextField(_("first problem"), blank=True, editable=False)
    first_receipt = models.CharField(_("receipt of the first problem"), max_length=16, blank=True, editable=False)

    class Meta:
        verbose_name = _("ledger check")
        verbose_name_plural = _("ledger checks")
        get_latest_by = "checked_at"

    def __str__(self) -> str:
        return f"{self.checked_at:%Y-%m-%d %H:%M}: {self.problems}"


class ApiScope(models.TextChoices):
    OBJECTIONS_READ = "objections:read", _("read objections (training systems)")
    OBJECTIONS_WRITE = "objections:write", _("record objections on a person's behalf")
    AUDIENCE_WRITE = "audience:write", _("sync the audience")
    NOTICES_READ = "notices:read", _("fetch in-app notices and report their events")


class ApiClient(AbstractAPIKey):
    """An API key (stored hashed by djangorestframework-api-key) with the scopes it may use."""

    scopes = models.JSONField(_("scopes"), default=list, blank=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = _("API client")
        verbose_name_plural = _("API clients")

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class OutboxMessage(models.Model):
    """A mail to send, written in the same transaction as what caused it (an objection,
    a verification request), and sent by a Celery task after commit or by the periodic
    sweep when the broker was down. Recording never waits on the broker or the mail
    provider (DESIGN invariant 1)."""

    class Kind(models.TextChoices):
        RECEIPT = "receipt", _("objection receipt")
        VERIFICATION = "verification", _("email verification")
        WITHDRAWAL = "withdrawal", _("withdrawal receipt")

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        SENDING = "sending", _("sending")
        SENT = "sent", _("sent")
        FAILED = "failed", _("failed")

    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    to = models.EmailField(_("to"))
    language = models.CharField(_("language"), max_length=8)
    subject = models.CharField(_("subject"), max_length=300)
    body_text = models.TextField(_("text body"))
    body_html = models.TextField(_("HTML body"), blank=True)
    event = models.ForeignKey(
        ObjectionEvent, null=True, blank=True, on_delete=models.PROTECT, verbose_name=_("objection event")
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    class Meta:
        verbose_name = _("outgoing mail")
        verbose_name_plural = _("outgoing mail")
        indexes = [
            # the sweep: WHERE status = 'pending' ORDER BY id
            models.Index(fields=["id"], condition=models.Q(status="pending"), name="optout_outbox_pending"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"


class EmailVerification(models.Model):
    """A public-form request waiting for its single-use link (valid 30 minutes).

    The link carries a signed token naming this row; `used_at` makes it single-use."""

    email = models.EmailField(_("email"))
    country = models.CharField(_("country of residence"), max_length=2)
    subject_id = models.CharField(_("account id"), max_length=128, blank=True)
    reason = models.TextField(_("reason"), blank=True, max_length=2000)
    language = models.CharField(_("language"), max_length=8)
    purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, verbose_name=_("purpose"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    used_at = models.DateTimeField(_("used at"), null=True, blank=True)

    class Meta:
        verbose_name = _("email verification")
        verbose_name_plural = _("email verifications")

    def __str__(self) -> str:
        return f"verification #{self.pk}"


class AuditEntry(models.Model):
    """One staff action, for the trail a regulator may ask for. Written by
    optout.services.audit_record inside the action's own transaction; never edited."""

    class Action(models.TextChoices):
        STAFF_ENTRY = "staff-entry", _("recorded an objection received by letter or email")
        IMPORT = "import", _("imported past objections")
        EXPORT = "export", _("exported objections")
        KEY_CREATED = "key-created", _("created an API key")
        KEY_REVOKED = "key-revoked", _("revoked API keys")
        KEY_CHANGED = "key-changed", _("changed an API key")
        LAUNCH = "launch", _("launched a campaign")
        PAUSE = "pause", _("paused a campaign")
        RESUME = "resume", _("resumed a campaign")
        CANCEL = "cancel", _("cancelled a campaign")
        TEST_SEND = "test-send", _("sent a test notice")
        AUDIENCE_IMPORT = "audience-import", _("imported recipients")

    at = models.DateTimeField(_("when"), default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("user")
    )
    username = models.CharField(_("who"), max_length=150)  # kept if the account is deleted
    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    target = models.CharField(_("about"), max_length=300, blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)

    class Meta:
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit log")
        ordering = ["-at"]
        permissions = [
            ("record_objection", _("Can record an objection received by letter or email")),
            ("import_objections", _("Can import past objections")),
            ("export_objections", _("Can export objections")),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username} {self.action} {self.target}"
