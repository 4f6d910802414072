from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from optout.models import ObjectionEvent, ObjectionState
from optout.selectors import ledger_verify
from optout.services import objection_record, objection_withdraw

pytestmark = pytest.mark.django_db

GOOD = (
    "subject_id,purpose,received_at,source,email\n"
    "u1,ai-training,2025-04-20T10:00:00Z,web-form,one@example.com\n"
    "u2,ai-training,2025-04-21,email-link,\n"
    "u3,ai-training,2025-05-01T08:30:00+02:00,in-app,\n"
    "u1,ai-training,2025-04-19T09:00:00Z,web-form,\n"
)


@pytest.fixture
def write_csv(tmp_path):
    def write(text: str | bytes, name="objections.csv") -> Path:
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return write


def test_it_imports_past_objections_with_their_dates(purpose, write_csv, capsys):
    call_command("import_objections", str(write_csv(GOOD)))

    assert "4 rows read: 3 objections imported, 0 already recorded, 1 duplicates" in capsys.readouterr().out
    u1 = ObjectionEvent.objects.get(subject_id="u1")
    assert u1.received_at.isoformat() == "2025-04-19T09:00:00+00:00"  # the earliest row wins
    assert ObjectionEvent.objects.get(subject_id="u3").received_at.isoformat() == "2025-05-01T06:30:00+00:00"
    assert ObjectionState.objects.filter(objected=True).count() == 3
    assert ledger_verify().problems == []


def test_importing_the_same_file_again_adds_nothing(purpose, write_csv, capsys):
    path = write_csv(GOOD)
    call_command("import_objections", str(path))
    objection_withdraw(subject_id="u2", source="web-form")  # a later answer the re-import must respect
    before = ObjectionEvent.objects.count()

    call_command("import_objections", str(path))

    assert ObjectionEvent.objects.count() == before
    assert not ObjectionState.objects.get(subject_id="u2").objected
    assert "0 objections imported, 3 already recorded" in capsys.readouterr().out


def test_it_skips_people_who_already_object(purpose, write_csv):
    existing = objection_record(subject_id="u2", source="email-link")

    call_command("import_objections", str(write_csv(GOOD)))

    assert ObjectionEvent.objects.filter(subject_id="u2").count() == 1
    assert ObjectionState.objects.get(subject_id="u2").receipt == existing.receipt


# Only the forms PostgreSQL's COPY path takes as they are (see optout.imports): a file
# like this one goes through COPY; one more line with a Unicode subject id sends the whole
# file through the line-by-line path. Both must write the same ledger.
PLAIN = (
    "subject_id,purpose,received_at,source,email\n"
    "u1,ai-training,2025-04-20T10:00:00Z,web-form,one@example.com\n"
    "u2,ai-training,2025-04-21,email-link,\n"
    "u1,ai-training,2025-04-19T09:00:00Z,in-app,\n"
    "u3,ai-training,2025-04-19T09:00:00Z,gpc,\n"
    "u3,ai-training,2025-04-19T09:00:00Z,api,three@example.org\n"
)


@pytest.mark.parametrize("extra", ["", "müller,ai-training,2025-04-22,web-form,\n"], ids=["copy", "line-by-line"])
def test_both_import_paths_write_the_same_events(purpose, write_csv, capsys, extra):
    call_command("import_objections", str(write_csv(PLAIN + extra)))

    events = {
        e.subject_id: (e.received_at.isoformat(), e.effective_at.isoformat(), e.source, e.email, e.action)
        for e in ObjectionEvent.objects.all()
    }
    assert events.pop("müller", None) == (
        ("2025-04-22T00:00:00+00:00", "2025-04-22T00:00:00+00:00", "web-form", "", "objected") if extra else None
    )
    assert events == {
        "u1": ("2025-04-19T09:00:00+00:00", "2025-04-19T09:00:00+00:00", "in-app", "", "objected"),
        "u2": ("2025-04-21T00:00:00+00:00", "2025-04-21T00:00:00+00:00", "email-link", "", "objected"),
        "u3": ("2025-04-19T09:00:00+00:00", "2025-04-19T09:00:00+00:00", "gpc", "", "objected"),  # first line of a tie
    }
    states = {s.subject_id: (s.objected, s.receipt, s.last_event.receipt) for s in ObjectionState.objects.all()}
    assert all(objected and receipt == last for objected, receipt, last in states.values())
    assert all(e.uuid.version == 7 for e in ObjectionEvent.objects.all())
    assert ledger_verify().problems == []
    rows = 6 if extra else 5
    imported = 4 if extra else 3
    assert (
        f"{rows} rows read: {imported} objections imported, 0 already recorded, 2 duplicates" in capsys.readouterr().out
    )


def test_a_line_that_would_end_copy_early_is_named_not_cut_off(purpose, write_csv, capsys):
    """COPY's CSV reader stops at a line holding only \\. ; the rows after it must not be lost."""
    content = (
        "subject_id,purpose,received_at,source\n"
        "u1,ai-training,2025-02-03,web-form\n"
        "\\.\n"
        "u2,ai-training,2025-02-03,web-form\n"
    )
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_objections", str(write_csv(content)))

    assert "line 3: expected 4 fields, found 1." in capsys.readouterr().err
    assert not ObjectionEvent.objects.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "subject_id,purpose,received_at,source\nu1,ai-training,2025-02-30,web-form\n",
            ["line 2: received_at '2025-02-30' is not an ISO 8601 date or date and time."],
        ),
        (
            "subject_id,purpose,received_at,source\nu1,advertising,2025-02-03,web-form\n",
            ["line 2: unknown purpose 'advertising'."],
        ),
        (
            "subject_id,purpose,source\nu1,ai-training,web-form\n",
            ["line 1: missing column(s): received_at."],
        ),
        (
            b"subject_id,purpose,received_at,source\nu1,ai-training,2025-02-03,web-form\nM\xfcller,ai-training,2025-02-03,web-form\n",
            ["line 3: the text is not valid UTF-8."],
        ),
        (
            "subject_id,purpose,received_at,source\n"
            "u1,ai-training,2025-02-03,web-form\n"
            ",ai-training,2025-02-03,post\n"
            "u3,ai-training,2999-01-01,web-form\n"
            "u4,ai-training\n",
            [
                "line 3: subject_id is empty; unknown source 'post'",
                "line 4: received_at is in the future.",
                "line 5: expected 4 fields, found 2.",
            ],
        ),
        ("", ["The file is empty."]),
        ("\ufeff\n", ["The file is empty."]),
        (
            "subject_id,purpose,received_at,source\n"
            "u1,ai-training,0001-01-01T00:00:00+05:00,web-form\n"
            "u2,ai-training,9999-12-31T23:00:00-05:00,web-form\n"
            "u3,ai-training,1989-12-31T23:59:59Z,web-form\n"
            "u4,ai-training,1990-01-01,web-form\n",
            [
                "line 2: received_at '0001-01-01T00:00:00+05:00' is not an ISO 8601 date or date and time.",
                "line 3: received_at '9999-12-31T23:00:00-05:00' is not an ISO 8601 date or date and time.",
                "line 4: received_at is before 1990-01-01.",
            ],
        ),
        (
            "subject_id,purpose,received_at,source,email\n"
            f"u1,ai-training,2025-02-03,web-form,{'a' * 64}@{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * 60}.de\n"
            "u2,ai-training,2025-02-03,web-form,u2@example.org\n",
            ["line 2: email is longer than 254 characters."],
        ),
        (
            "subject_id,purpose,received_at,source,source\nu1,ai-training,2025-02-03,web-form,api\n",
            ["line 1: column(s) named more than once: source."],
        ),
    ],
    ids=[
        "bad-date",
        "unknown-purpose",
        "missing-column",
        "wrong-encoding",
        "several-bad-lines",
        "empty",
        "only-a-byte-order-mark",
        "dates-at-the-calendar-edges",
        "email-over-254-characters",
        "repeated-column",
    ],
)
def test_a_malformed_file_changes_nothing_and_names_each_bad_line(purpose, write_csv, capsys, content, expected):
    objection_record(subject_id="already-here", source="api")

    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_objections", str(write_csv(content)))

    errors = capsys.readouterr().err
    for message in expected:
        assert message in errors
    assert list(ObjectionEvent.objects.values_list("subject_id", flat=True)) == ["already-here"]
    assert ObjectionState.objects.count() == 1


def test_a_missing_file_is_a_clear_error(purpose):
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_objections", "/nonexistent/file.csv")
