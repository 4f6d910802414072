"""The ledger's hash chain and receipt numbers: pure functions, shared by the services,
the importer and `verify_ledger`, so all three agree byte for byte."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid as uuid_lib
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64

# Crockford's base32: no I, L, O or U, so a receipt read aloud or typed is unambiguous.
_RECEIPT_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_uuid() -> uuid_lib.UUID:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then
    random bits. New events land at the right edge of the uuid index instead of at random
    places in it, which keeps inserts cheap as the ledger grows. demur_uuid7() in SQL
    makes the same kind for bulk imports."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return uuid_lib.UUID(int=value)


def new_receipt() -> str:
    """A short human receipt number such as 7KQ4-M2XD-9PTR (60 random bits)."""
    value = secrets.randbits(60)
    chars = []
    for _ in range(12):
        value, index = divmod(value, 32)
        chars.append(_RECEIPT_ALPHABET[index])
    code = "".join(chars)
    return f"{code[0:4]}-{code[4:8]}-{code[8:12]}"


def format_timestamp(value: datetime) -> str:
    """UTC with microseconds, as PostgreSQL's to_char(..., 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')."""
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}Z"
    )


def _field(value: object) -> str:
    # Length-prefixed, so no separator or escaping can make two events read alike.
    # demur_event_hash() (migration optout/0002) spells the same encoding in SQL.
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
    receipt: str,
    email: str = "",
    reason: str = "",
    campaign_id: int | None = None,
    notice_version_id: int | None = None,
    staff_user: str = "",
    idempotency_key: str | None = None,
) -> str:
    """SHA-256 over everything the event says and the hash of the subject's previous
    event. Changing any field, or a link, changes the hash.

    PostgreSQL's demur_event_hash() computes the same digest for bulk imports; a test
    checks that the two agree on awkward input."""
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
        receipt,
        email,
        reason,
        campaign_id,
        notice_version_id,
        staff_user,
        idempotency_key,
    )
    payload = "demur-event-v1|" + "".join(_field(value) for value in fields)
    return hashlib.sha256(payload.encode()).hexdigest()
