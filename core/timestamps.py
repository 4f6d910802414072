"""The one text form of a moment that Demur writes: UTC with microseconds and a Z, in
the API's JSON, the feed's SQL-built pages and the ledger's hash input alike."""

from __future__ import annotations

from datetime import UTC, datetime


def format_timestamp(value: datetime) -> str:
    """UTC with microseconds, as PostgreSQL's to_char(..., 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')."""
    v = value.astimezone(UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}Z"
