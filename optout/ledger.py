"""The ledger's hash chain and receipt numbers: pure functions, shared by the services,
the importer and `verify_ledger`, so all three agree byte for byte."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64

# Crockford's base32: no I, L, O or U, so a receipt read aloud or typed is unambiguous.
_RECEIPT_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


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
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    """SHA-256 over a canonical JSON array of everything the event says, and the hash of
    the subject's previous event. Changing any field, or a link, changes the hash."""
    payload = [
        1,  # format version
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
    ]
    encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()
