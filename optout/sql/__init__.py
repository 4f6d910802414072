"""The ledger's SQL functions, one file each (`<name>.sql`, a CREATE OR REPLACE), so that
a reviewer reads each current body whole. Migration optout/0011 loads them; a change to
one edits its file and adds a migration that loads that file again (`function_sql`).
A test checks that what PostgreSQL holds is what the files say."""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent

# In load order: demur_objection_append calls demur_event_hash, demur_receipt and
# demur_ledger_epoch (whose table migration optout/0012 creates); demur_state_guard
# (optout/0013) calls demur_receipt.
FUNCTIONS = (
    "demur_ledger_reject_change",
    "demur_ledger_stamp_xid",
    "demur_event_hash",
    "demur_receipt",
    "demur_ledger_epoch",
    "demur_objection_append",
    "demur_state_guard",
)


def function_sql(name: str) -> str:
    """The CREATE OR REPLACE FUNCTION statement of `name`, from its file."""
    return (DIRECTORY / f"{name}.sql").read_text(encoding="utf-8")
