"""The SQL functions PostgreSQL holds are the ones optout/sql/ shows a reviewer."""

from __future__ import annotations

import re

import pytest
from django.db import connection, transaction

from optout.sql import DIRECTORY, FUNCTIONS, function_sql

pytestmark = pytest.mark.django_db


def _definition(name: str) -> tuple[str, str]:
    """(pg_get_functiondef, prosrc) of the one function called `name`."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef(oid), prosrc FROM pg_proc WHERE proname = %s", [name])
        rows = cursor.fetchall()
    assert len(rows) == 1, f"{name}: {len(rows)} functions of that name"
    return rows[0]


def test_every_ledger_function_has_its_file_and_nothing_else_is_defined():
    with connection.cursor() as cursor:
        cursor.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'demur\\_%' ORDER BY proname")
        defined = {name for (name,) in cursor.fetchall()}

    assert defined == set(FUNCTIONS)
    assert {path.stem for path in DIRECTORY.glob("*.sql")} == set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_body_postgresql_holds_is_the_files(name):
    source = function_sql(name)
    bodies = re.findall(r"\$\$(.*?)\$\$", source, re.DOTALL)
    assert len(bodies) == 1, f"{name}.sql must hold one function body between $$"

    assert _definition(name)[1] == bodies[0]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_loading_the_file_again_changes_nothing(name):
    """The whole definition (arguments, result, language, volatility, body) is the file's:
    running the file's CREATE OR REPLACE leaves what pg_get_functiondef shows as it was."""
    held, _ = _definition(name)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(function_sql(name))
        reloaded, _ = _definition(name)
        transaction.set_rollback(True)

    assert reloaded == held


def test_the_check_can_tell_a_changed_function():
    """The control for the test above: a body that differs from the file is seen."""
    changed = function_sql("demur_receipt").replace("IMMUTABLE", "STABLE")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(changed)
        assert "STABLE" in _definition("demur_receipt")[0]
        transaction.set_rollback(True)

    assert "IMMUTABLE" in _definition("demur_receipt")[0]
