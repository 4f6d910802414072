"""The ledger's hash chain, event ids and receipt numbers: pure functions, shared by the
services, the importer and `verify_ledger`, so all three agree byte for byte."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid as uuid_lib
from datetime import UTC, datetime
from typing import Any

from core.timestamps import format_timestamp

GENESIS_HASH = "0" * 64

# The earliest date an objection may carry (imports, the API). Nothing online predates
# it, and an older date is a typo.
EARLIEST_RECEIVED_AT = datetime(1990, 1, 1, tzinfo=UTC)

SUBJECT_ID_MAX = 128


def subject_id_valid(value: object) -> bool:
    """What a subject id may be: 1 to SUBJECT_ID_MAX printable characters (no control
    characters, no lone surrogates). The one rule for every write and for the API's
    reads of one subject, so that whatever can be recorded can also be looked up."""
    return isinstance(value, str) and 0 < len(value) <= SUBJECT_ID_MAX and value.isprintable()


# Crockford's base32: no I, L, O or U, so a receipt read aloud or typed is unambiguous.
_RECEIPT_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_uuid() -> uuid_lib.UUID:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then
    random bits. New events land at the right edge of the uuid index instead of at random
    places in it, which keeps inserts cheap as the ledger grows. The bulk import's
    statement (optout.services.STAGED_APPEND_SQL) makes the same kind in SQL."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return uuid_lib.UUID(int=value)


# A receipt number is the event's id and 24 random bits, as 12 Crockford base32
# characters: short enough to read out on the phone, found again through the primary key
# (no index of its own, so every insert is cheaper), and not guessable from its neighbours.
RECEIPT_CODE_BITS = 24
_RECEIPT_DECODE = {char: value for value, char in enumerate(_RECEIPT_ALPHABET)}
_RECEIPT_DECODE.update({"O": 0, "I": 1, "L": 1})


def new_receipt_code() -> int:
    return secrets.randbits(RECEIPT_CODE_BITS)


def format_receipt(event_id: int, code: int) -> str:
    """The receipt number of event `event_id`, such as 000D-2KQ4-M2XD."""
    value = event_id << RECEIPT_CODE_BITS | code
    chars = "".join(_RECEIPT_ALPHABET[(value >> shift) & 31] for shift in range(55, -1, -5))
    return f"{chars[0:4]}-{chars[4:8]}-{chars[8:12]}"


def parse_receipt(text: str) -> tuple[int, int] | None:
    """(event id, code) from a receipt number as a person may type it, or None."""
    cleaned = text.strip().upper().replace("-", "").replace(" ", "")
    if len(cleaned) != 12 or any(char not in _RECEIPT_DECODE for char in cleaned):
        return None
    value = 0
    for char in cleaned:
        value = value << 5 | _RECEIPT_DECODE[char]
    return value >> RECEIPT_CODE_BITS, value & ((1 << RECEIPT_CODE_BITS) - 1)


def _field(value: object) -> str:
    # Length-prefixed, so no separator or escaping can make two events read alike.
    # demur_event_hash() (optout/sql/demur_event_hash.sql) spells the same encoding in SQL.
    if value is None:
        return "~"
    text = str(value)
    return f"{len(text)}:{text}"


def event_hash(
    *,
    prev_hash: str,
    uuid: Any,
    subject_id: str,
    purpose: str,
    action: str,
    source: str,
    received_at: datetime,
    effective_at: datetime,
    recorded_at: datetime,
    receipt_code: int,
    email: str = "",
    reason: str = "",
    campaign_id: int | None = None,
    notice_version_id: int | None = None,
    staff_user: str = "",
    idempotency_key: str | None = None,
) -> str:
    """SHA-256 over everything the event says and the hash of the subject's previous
    event. Changing any field, or a link, changes the hash.

    PostgreSQL's demur_event_hash() computes the same digest for every writer (this one
    serves verify_ledger); tests check that the two agree on awkward input and on what
    each writer stored."""
    fields = (
        prev_hash,
        str(uuid),
        subject_id,
        purpose,
        action,
        source,
        format_timestamp(received_at),
        format_timestamp(effective_at),
        format_timestamp(recorded_at),
        receipt_code,
        email,
        reason,
        campaign_id,
        notice_version_id,
        staff_user,
        idempotency_key,
    )
    payload = "demur-event-v1|" + "".join(_field(value) for value in fields)
    return hashlib.sha256(payload.encode()).hexdigest()
