"""Reads of the objection ledger."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from django.db import connection
from django.utils.translation import gettext as _
from psycopg.adapt import Loader

from optout.models import LedgerEpoch, ObjectionEvent, ObjectionState


class BadCursor(ValueError):
    """A cursor this feed cannot continue from; the message says why (400 bad_cursor)."""


class ResyncRequired(Exception):
    """A cursor of an earlier epoch beyond what this database holds of it (410): the
    client may hold events the ledger here lost, so it must start again from a snapshot."""


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in the change feed: (feed_key, event id), the ledger and epoch it was
    issued in, and the purpose whose feed it was read from.

    Positions are comparable across the epochs of one ledger (optout.models.LedgerEpoch):
    each epoch starts above everything before it. A page of one purpose's feed ends at
    that purpose's last event; events of other purposes before it were not on the page,
    so its cursor would skip them in another feed. Such a cursor carries the purpose
    (`scope`) and is refused elsewhere. A cursor of the whole feed, or a horizon (the
    check's and the export's), has no scope and is good for any feed. Opaque to clients:
    they get `encode()`'s text back and hand it in unchanged. The texts of earlier
    releases (version 1, and version 2 with a scope) still read, as cursors of the
    ledger's first epoch, whose positions were transaction ids."""

    key: int = 0
    id: int = 0
    scope: str = ""
    ledger: str = ""
    epoch: str = ""

    def encode(self) -> str:
        if self.ledger:
            raw = f"3.{self.ledger}.{self.epoch}.{self.scope}.{self.key}.{self.id}"
        elif self.scope:
            raw = f"2.{self.scope}.{self.key}.{self.id}"
        else:
            raw = f"1.{self.key}.{self.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        try:
            padded = text + "=" * (-len(text) % 4)
            raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        except (ValueError, UnicodeError, binascii.Error):
            raise BadCursor(text) from None
        match = _CURSOR_TEXT.fullmatch(raw)
        if match is None:
            raise BadCursor(text)
        return cls(
            int(match["key"]),
            int(match["id"]),
            match["scope"] or match["scope3"] or "",
            match["ledger"] or "",
            match["epoch"] or "",
        )

    @property
    def is_start(self) -> bool:
        return not (self.key or self.id)

    def allows(self, purpose: str | None) -> bool:
        """Whether the feed of `purpose` (None: every purpose) may continue from here."""
        return not self.scope or self.scope == purpose


# Canonical text only (no signs, spaces or underscores that int() would take), with
# numbers that fit PostgreSQL's bigint.
_CURSOR_TEXT = re.compile(
    r"(?:1|2\.(?P<scope>[-a-zA-Z0-9_]{1,64})"
    r"|3\.(?P<ledger>[0-9a-f]{32})\.(?P<epoch>[0-9a-f]{32})\.(?P<scope3>[-a-zA-Z0-9_]{0,64}))"
    r"\.(?P<key>\d{1,18})\.(?P<id>\d{1,18})"
)


@dataclass(frozen=True)
class FeedPosition:
    """Where the feed stands for one statement: its ledger and epoch, and the horizon
    (the epoch's base plus the statement's oldest running transaction) below which
    every event has committed."""

    ledger: str
    epoch: str
    horizon: int

    def cursor(self, key: int, event_id: int, scope: str = "") -> Cursor:
        return Cursor(key, event_id, scope, self.ledger, self.epoch)


# The position in a statement's own snapshot: demur_ledger_epoch() (optout/sql/) runs
# first, in a CTE, and starts a new epoch if the ledger finds itself somewhere new.
_POSITION_CTE = """
    position AS MATERIALIZED (
        SELECT ledger, epoch, base + pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon
        FROM demur_ledger_epoch()
    )
"""


def cursor_continue(cursor: Cursor, position: FeedPosition) -> Cursor:
    """`cursor` as a position in the current epoch, after checking that the feed can
    continue from it: BadCursor for a cursor of another ledger or one ahead of the feed
    (which Demur never issued), ResyncRequired for one of an earlier epoch beyond what
    this database holds of it (or of an epoch it does not know)."""
    if cursor.is_start:
        return cursor
    if cursor.ledger and cursor.ledger != position.ledger:
        raise BadCursor(_("This cursor comes from another ledger than this one; use a next_cursor from this API."))
    if cursor.epoch:
        epoch = cursor.epoch
    else:  # a cursor of an earlier release: the ledger's first epoch
        epoch = LedgerEpoch.objects.order_by("id").values_list("epoch", flat=True).first()
    if epoch == position.epoch:
        if (cursor.key, cursor.id) > (position.horizon, 0):
            raise BadCursor(
                _("This cursor is ahead of the change feed: Demur never issued it. Use a next_cursor from this API.")
            )
    else:
        complete_below = LedgerEpoch.objects.filter(epoch=epoch).values_list("complete_below", flat=True).first()
        if complete_below is None or (cursor.key, cursor.id) > (complete_below, 0):
            raise ResyncRequired(epoch)
    return Cursor(cursor.key, cursor.id, cursor.scope, position.ledger, position.epoch)


@dataclass(frozen=True)
class FeedRow:
    uuid: object
    subject_id: str
    purpose: str
    action: str
    received_at: datetime
    effective_at: datetime
    source: str
    seq: int


@dataclass(frozen=True)
class FeedPage:
    rows: list[FeedRow]
    next_cursor: Cursor
    has_more: bool


# PostgreSQL hands out sequence numbers at INSERT but rows become visible at COMMIT, so
# "id > cursor" would skip an event whose transaction commits after a later one. Instead
# read only events below the horizon: every event's feed_key is at least the epoch's base
# plus its writer's transaction id, so below base + the snapshot's xmin (the oldest
# transaction still running) the set can no longer grow, and paging on (feed_key, id)
# walks it in a fixed order. A chain's events rise in both (optout/sql/
# demur_objection_append.sql), so each person's events come in the order of their chain.
_FEED_SQL = """
    SELECT e.uuid, e.subject_id, p.slug, e.action, e.received_at, e.effective_at, e.source, e.seq,
           e.feed_key, e.id
    FROM optout_objectionevent e JOIN optout_purpose p ON p.id = e.purpose_id
    WHERE (e.feed_key, e.id) > (%s, %s) AND e.feed_key < %s {purpose_filter}
    ORDER BY e.feed_key, e.id
    LIMIT %s
"""


def feed_position() -> FeedPosition:
    """Where the feed stands now. Its horizon stays good for any later statement: what
    had committed below it then is still there."""
    with connection.cursor() as db:
        db.execute(f"WITH {_POSITION_CTE} SELECT ledger, epoch, horizon FROM position")
        return FeedPosition(*db.fetchone())


def feed_page(*, cursor: Cursor, limit: int, purpose: str | None = None) -> FeedPage:
    """Events after `cursor`, oldest first, never skipping one that commits late.
    BadCursor for a cursor read from another purpose's feed, or one cursor_continue()
    refuses; ResyncRequired as cursor_continue() says."""
    if not cursor.allows(purpose):
        raise BadCursor(cursor.encode())
    position = feed_position()
    cursor = cursor_continue(cursor, position)
    purpose_filter = "AND p.slug = %s" if purpose else ""
    params: list[object] = [cursor.key, cursor.id, position.horizon, *([purpose] if purpose else []), limit]
    with connection.cursor() as db:
        db.execute(_FEED_SQL.format(purpose_filter=purpose_filter), params)
        raw = db.fetchall()
    rows = [FeedRow(*row[:8]) for row in raw]
    next_cursor = position.cursor(raw[-1][8], raw[-1][9], purpose or "") if raw else cursor
    return FeedPage(rows=rows, next_cursor=next_cursor, has_more=len(raw) == limit)


def feed_horizon() -> Cursor:
    """A feed cursor for a reader of the current state: read it *before* the state.

    Every transaction below the horizon had committed when it was taken, so a state read
    afterwards already reflects those events; events at or past the horizon may be read
    again by a client that continues from here, which is harmless, but none is missed."""
    position = feed_position()
    return position.cursor(position.horizon, 0)


def objection_state_get(*, subject_id: str, purpose: str) -> ObjectionState | None:
    return ObjectionState.objects.select_related("purpose").filter(subject_id=subject_id, purpose__slug=purpose).first()


def objection_history(*, subject_id: str, purpose: str) -> list[ObjectionEvent]:
    return list(ObjectionEvent.objects.filter(subject_id=subject_id, purpose__slug=purpose).order_by("id"))


@dataclass(frozen=True)
class LedgerProblem:
    event_id: int | None
    receipt: str
    subject_id: str
    reason: str


@dataclass(frozen=True)
class LedgerReport:
    events: int
    chains: int
    problems: list[LedgerProblem]

    @property
    def first_problem(self) -> LedgerProblem | None:
        with_ids = [p for p in self.problems if p.event_id is not None]
        if with_ids:
            return min(with_ids, key=lambda p: p.event_id)
        return self.problems[0] if self.problems else None


def ledger_verify(*, chunk_size: int = 10_000) -> LedgerReport:
    """Recompute every event's hash and every chain link, then check that each current
    state row matches the last event of its chain. Streams in chain order, so memory
    stays flat however long the ledger is."""
    from optout.ledger import GENESIS_HASH, event_hash, format_receipt

    problems: list[LedgerProblem] = []
    events = chains = 0
    chain_key = None
    prev_hash = GENESIS_HASH
    place = prev_key = 0
    rows = (
        ObjectionEvent.objects.order_by("subject_id", "purpose_id", "id")
        .values_list(
            "id",
            "uuid",
            "subject_id",
            "purpose_id",
            "purpose__slug",
            "action",
            "source",
            "received_at",
            "effective_at",
            "recorded_at",
            "receipt_code",
            "email",
            "reason",
            "campaign_id",
            "notice_version_id",
            "staff_user",
            "idempotency_key",
            "prev_hash",
            "hash",
            "seq",
            "feed_key",
        )
        .iterator(chunk_size=chunk_size)
    )
    for (
        event_id,
        uuid,
        subject_id,
        purpose_id,
        slug,
        action,
        source,
        received_at,
        effective_at,
        recorded_at,
        receipt_code,
        email,
        reason,
        campaign_id,
        notice_version_id,
        staff_user,
        idempotency_key,
        stored_prev,
        stored_hash,
        seq,
        feed_key,
    ) in rows:
        events += 1
        if (subject_id, purpose_id) != chain_key:
            chain_key = (subject_id, purpose_id)
            prev_hash = GENESIS_HASH
            place = prev_key = 0
            chains += 1
        if stored_prev != prev_hash:
            problems.append(
                LedgerProblem(
                    event_id, format_receipt(event_id, receipt_code), subject_id, "link to the previous event is broken"
                )
            )
        expected = event_hash(
            prev_hash=stored_prev,
            uuid=uuid,
            subject_id=subject_id,
            purpose=slug,
            action=action,
            source=source,
            received_at=received_at,
            effective_at=effective_at,
            recorded_at=recorded_at,
            receipt_code=receipt_code,
            email=email,
            reason=reason,
            campaign_id=campaign_id,
            notice_version_id=notice_version_id,
            staff_user=staff_user,
            idempotency_key=idempotency_key,
        )
        if expected != stored_hash:
            problems.append(
                LedgerProblem(
                    event_id, format_receipt(event_id, receipt_code), subject_id, "content does not match its hash"
                )
            )
        place += 1
        if seq != place:
            problems.append(
                LedgerProblem(
                    event_id,
                    format_receipt(event_id, receipt_code),
                    subject_id,
                    f"place in the chain is {seq}, but the event is number {place} of its chain",
                )
            )
        if feed_key < prev_key:
            problems.append(
                LedgerProblem(
                    event_id,
                    format_receipt(event_id, receipt_code),
                    subject_id,
                    "feed position is below the previous event's: the feed would deliver the chain out of order",
                )
            )
        prev_key = feed_key
        prev_hash = stored_hash

    problems.extend(_state_problems())
    return LedgerReport(events=events, chains=chains, problems=problems)


def _state_problems() -> list[LedgerProblem]:
    """State rows that disagree with the last event of their chain."""
    from django.db.models import Exists, Max, OuterRef, Q, Subquery

    last_id = (
        ObjectionEvent.objects.filter(subject_id=OuterRef("subject_id"), purpose_id=OuterRef("purpose_id"))
        .values("subject_id")
        .annotate(last=Max("id"))
        .values("last")
    )
    mismatched = (
        ObjectionState.objects.annotate(
            chain_end=Subquery(last_id),
            has_events=Exists(
                ObjectionEvent.objects.filter(subject_id=OuterRef("subject_id"), purpose_id=OuterRef("purpose_id"))
            ),
        )
        .filter(Q(has_events=True) | Q(objected=True))
        .select_related("last_event")
    )
    problems = []
    for state in mismatched.iterator(chunk_size=10_000):
        event = state.last_event
        if event is None or event.id != state.chain_end:
            reason = "current state does not point at the last event of its chain"
        elif state.head_hash != event.hash:
            reason = "current state's head hash differs from its last event"
        elif state.objected != (event.action == "objected"):
            reason = "current state disagrees with its last event"
        elif (state.seq, state.feed_key) != (event.seq, event.feed_key):
            reason = "current state's chain position differs from its last event"
        else:
            continue
        problems.append(LedgerProblem(None, state.receipt, state.subject_id, reason))
    return problems


# --- The API's reads -------------------------------------------------------------------

# The hot reads build their whole JSON answer inside PostgreSQL and hand it over as one
# bytes value: Python then neither decodes 10,000 rows into str objects nor joins and
# re-encodes them (measured: 10 -> 2 ms of Python CPU per 10,000-event page). to_json()
# escapes the free-text values; uuids, timestamps and choices need no escaping.
# Timestamps use the same form as optout.ledger.format_timestamp; a fixed UTC offset
# (INTERVAL) spares looking up the zone 'UTC' by name on every row (4 % of the page).
_TS = """to_char({col} AT TIME ZONE INTERVAL '00:00', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


class _BytesLoader(Loader):
    """Loads a text column as the bytes PostgreSQL sent (UTF-8), without decoding."""

    def load(self, data) -> bytes:
        return bytes(data)


def _json_cursor() -> psycopg.Cursor:
    """A cursor on Django's own connection (in its transaction, if any) that reads text
    columns as bytes; statements are never prepared, so each is planned for its values."""
    connection.ensure_connection()
    cursor = psycopg.Cursor(connection.connection)
    cursor.adapters.register_loader("text", _BytesLoader)
    return cursor


# The page is the inner query: the same rows, order and horizon as _FEED_SQL.
# The outer level only aggregates them, with no join or grouping of its own, so
# string_agg() sees the rows in the inner ORDER BY (the form PostgreSQL's manual gives for
# ordered aggregate input; an ORDER BY inside string_agg would sort 10,000 wide rows again).
# received_at is formatted once and reused for effective_at when they are equal, as they
# are unless a caller set effective_at (optout.services: effective_at or received_at).
_FEED_JSON = f"""
    WITH {_POSITION_CTE}
    SELECT string_agg(
               '{{{{"id":"' || e.uuid || '","subject_id":' || to_json(e.subject_id)
               || ',"purpose":' || e.purpose || ',"action":"' || e.action
               || '","received_at":"' || e.received || '","effective_at":"'
               || CASE WHEN e.effective_at = e.received_at THEN e.received
                       ELSE {_TS.format(col="e.effective_at")} END
               || '","source":"' || e.source || '","seq":' || e.seq || '}}}}',
               ','),
           count(*), max(ARRAY[e.feed_key, e.id]),
           {{purpose_known}},
           (SELECT ledger FROM position), (SELECT epoch FROM position), (SELECT horizon FROM position)
    FROM (
        SELECT e.uuid, e.subject_id, to_json(p.slug)::text AS purpose, e.action, e.received_at,
               e.effective_at, e.source, e.seq, e.feed_key, e.id, {_TS.format(col="e.received_at")} AS received
        FROM optout_objectionevent e JOIN optout_purpose p ON p.id = e.purpose_id
        WHERE (e.feed_key, e.id) > (%(key)s, %(id)s)
          AND e.feed_key < (SELECT horizon FROM position)
          {{purpose_filter}}
        ORDER BY e.feed_key, e.id
        LIMIT %(limit)s
    ) e
"""
_FEED_JSON_ALL = _FEED_JSON.format(purpose_known="true", purpose_filter="")
_FEED_JSON_ONE = _FEED_JSON.format(
    purpose_known="EXISTS (SELECT FROM optout_purpose WHERE slug = %(purpose)s)",
    purpose_filter="AND p.slug = %(purpose)s",
)


class UnknownPurpose(LookupError):
    pass


@dataclass(frozen=True)
class FeedJsonPage:
    events_json: bytes  # a JSON array of the page's events
    count: int
    next_cursor: Cursor
    has_more: bool


def feed_page_json(*, cursor: Cursor, limit: int, purpose: str | None = None) -> FeedJsonPage:
    """feed_page() with the events already encoded as a JSON array, for the API.

    Same rows, same order and the same never-skip horizon as feed_page(). Raises
    UnknownPurpose for a purpose that does not exist (checked in the same statement),
    BadCursor and ResyncRequired as feed_page(). The page is read in the same statement
    as the position the cursor is then checked against; a page from a refused cursor is
    dropped unread."""
    if not cursor.allows(purpose):
        raise BadCursor(cursor.encode())
    params = {"key": cursor.key, "id": cursor.id, "limit": limit, "purpose": purpose}
    with _json_cursor() as db:
        db.execute(_FEED_JSON_ONE if purpose else _FEED_JSON_ALL, params, prepare=False)
        events, count, last, known, ledger, epoch, horizon = db.fetchone()
    if not known:
        raise UnknownPurpose(purpose)
    position = FeedPosition(ledger.decode(), epoch.decode(), horizon)
    cursor = cursor_continue(cursor, position)
    if not count:
        return FeedJsonPage(b"[]", 0, cursor, False)
    return FeedJsonPage(b"[" + events + b"]", count, position.cursor(last[0], last[1], purpose or ""), count == limit)


@dataclass(frozen=True)
class CheckAnswer:
    horizon: Cursor  # the feed cursor this answer is consistent with
    results_json: bytes  # a JSON array: {"subject_id", "objected", "effective_at"} per id, in input order


# One statement, so one snapshot: every event written below its horizon (the epoch's base
# plus the snapshot's xmin) had committed before the snapshot was taken, so the state read in the same
# snapshot reflects it (see feed_horizon). The ids travel as one JSON text parameter
# (json.dumps is C; psycopg would quote a text[] id by id in Python) and become an array
# once. The objectors among them come from one `= ANY(array)` index scan, which visits the
# index in key order; then each id, in input order (WITH ORDINALITY), gets its answer.
# The array's size is unknown to the planner, so it keeps the index scan (with 10,000
# literal ids it would expect 10,000 matches and may scan the table).
_CHECK_SQL = f"""
    WITH {_POSITION_CTE},
    input AS MATERIALIZED (
        SELECT ARRAY(SELECT json_array_elements_text(%(ids)s::json)) AS ids
    ),
    objecting AS MATERIALIZED (
        SELECT s.subject_id, {_TS.format(col="s.effective_at")} AS effective_at
        FROM optout_objectionstate s, input
        WHERE s.purpose_id = (SELECT id FROM optout_purpose WHERE slug = %(purpose)s)
          AND s.objected AND s.subject_id = ANY(input.ids)
    )
    SELECT (SELECT ledger FROM position), (SELECT epoch FROM position), (SELECT horizon FROM position),
           EXISTS (SELECT FROM optout_purpose WHERE slug = %(purpose)s),
           (SELECT coalesce(string_agg(
                       '{{"subject_id":' || to_json(q.subject_id) || CASE
                           WHEN o.effective_at IS NULL THEN ',"objected":false,"effective_at":null}}'
                           ELSE ',"objected":true,"effective_at":"' || o.effective_at || '"}}' END,
                       ',' ORDER BY q.n), '')
            FROM input, unnest(input.ids) WITH ORDINALITY AS q(subject_id, n)
            LEFT JOIN objecting o ON o.subject_id = q.subject_id)
"""


def objection_check(*, purpose: str, subject_ids: list[str]) -> CheckAnswer | None:
    """Whether each of `subject_ids` currently objects to `purpose`, as a JSON array in
    input order, and the feed cursor the answer is consistent with. None when the
    purpose does not exist."""
    import json

    with _json_cursor() as db:
        db.execute(_CHECK_SQL, {"ids": json.dumps(subject_ids), "purpose": purpose}, prepare=False)
        ledger, epoch, horizon, known, results = db.fetchone()
    position = FeedPosition(ledger.decode(), epoch.decode(), horizon)
    return CheckAnswer(position.cursor(horizon, 0), b"[" + results + b"]") if known else None


_OBJECTOR_LINES = f"""
    SELECT '{{"subject_id":' || to_json(subject_id) || ',"purpose":' || to_json(%s::text)
           || ',"received_at":' || coalesce('"' || {_TS.format(col="received_at")} || '"', 'null')
           || ',"effective_at":' || coalesce('"' || {_TS.format(col="effective_at")} || '"', 'null')
           || ',"source":' || to_json(source) || ',"seq":' || seq || '}}'
    FROM optout_objectionstate
    WHERE purpose_id = %s AND objected
    ORDER BY subject_id
"""


def objector_lines(*, purpose_id: int, purpose_slug: str, chunk_size: int = 5000) -> Iterator[list[str]]:
    """Everyone currently objecting to the purpose, by subject id, as NDJSON lines
    (without newlines) in lists of up to `chunk_size`.

    Must run inside a transaction: the rows come from a server-side cursor
    that is not WITH HOLD, so they stream instead of being materialised first, and
    memory stays flat however many objectors there are. PostgreSQL writes the JSON."""
    with connection.chunked_cursor() as db:
        db.execute(_OBJECTOR_LINES, [purpose_slug, purpose_id])
        while rows := db.fetchmany(chunk_size):
            yield [row[0] for row in rows]
