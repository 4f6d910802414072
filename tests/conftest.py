from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db.backends.postgresql.operations import DatabaseOperations

from optout.models import Purpose
from tests.redis_dbs import empty_owned, own_database

# The ledger's tables refuse TRUNCATE (optout/migrations 0002, 0013).
GUARDS = [("optout_objectionevent", "demur_ledger_no_truncate"), ("optout_objectionstate", "demur_state_no_truncate")]
EPOCH_TABLE = "optout_ledgerepoch"

_sql_flush = DatabaseOperations.sql_flush


def _sql_flush_past_ledger_guard(self, style, tables, **kwargs):
    """Transactional tests end with a TRUNCATE of every table, which the ledger's trigger
    rightly refuses. Inside that one flush transaction the test database lifts the guard
    the way an operator would (ALTER TABLE ... DISABLE TRIGGER) and restores it."""
    statements = _sql_flush(self, style, tables, **kwargs)
    guarded = [(table, trigger) for table, trigger in GUARDS if table in tables]
    if guarded and statements:
        statements = [
            *(f"ALTER TABLE {table} DISABLE TRIGGER {trigger};" for table, trigger in guarded),
            *statements,
            *(f"ALTER TABLE {table} ENABLE TRIGGER {trigger};" for table, trigger in guarded),
        ]
    if EPOCH_TABLE in tables and statements:
        # The ledger starts again, in an epoch of its own (as after migrate), so that no
        # test's first write starts one inside that test's transactions.
        statements.append("SELECT demur_ledger_epoch();")
    return statements


DatabaseOperations.sql_flush = _sql_flush_past_ledger_guard


def pytest_sessionstart(session):
    """Compile every catalog, as scripts/test does, so that a bare `python -m pytest`
    reads the translations as they are in the .po files. A Redis cache is this session's
    own, emptied now and at the end (tests/redis_dbs.py)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "i18n.py"
    subprocess.run([sys.executable, str(script), "compile", "-q"], check=True)
    if os.environ.get("CACHE_URL", "").startswith("redis"):
        own_database("CACHE_URL", 0)


def pytest_sessionfinish(session, exitstatus):
    empty_owned()


@pytest.fixture
def purpose(db) -> Purpose:
    """The default purpose. Created by a data migration, but transactional tests flush it."""
    obj, _ = Purpose.objects.get_or_create(slug="ai-training", defaults={"name": "training and improving AI models"})
    return obj


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for a browser test module (skips, or fails in CI, without it)."""
    from tests.browser.chromium import launch_chromium

    playwright, browser = launch_chromium()
    yield browser
    browser.close()
    playwright.stop()
