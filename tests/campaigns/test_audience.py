"""The audience import: all or nothing, bad lines named, re-import updates; retention
erases the email after the last campaign and keeps everything else."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone

from campaigns.audience import audience_import, recipients_erase_expired
from campaigns.models import Recipient

pytestmark = pytest.mark.django_db


def _csv(tmp_path, text: str, name: str = "audience.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_it_adds_then_updates_recipients(tmp_path):
    first = _csv(tmp_path, "subject_id,email,language,country\nu1,ana@example.com,de,DE\nu2,bo@example.com,pl,PL\n")
    report = audience_import(first)
    assert report.ok and (report.rows, report.created, report.updated) == (2, 2, 0)

    second = _csv(
        tmp_path,
        "country,language,email,subject_id\nDE,de,ana@example.com,u1\nAT,de,bo@example.at,u2\nMT,mt,cy@example.com,u3\n",
        "again.csv",
    )
    report = audience_import(second)
    assert report.ok and (report.created, report.updated, report.unchanged) == (1, 1, 1)
    assert dict(Recipient.objects.values_list("subject_id", "country")) == {"u1": "DE", "u2": "AT", "u3": "MT"}
    assert Recipient.objects.get(subject_id="u2").email == "bo@example.at"


def test_it_lists_every_bad_line_and_keeps_nothing(tmp_path):
    path = _csv(
        tmp_path,
        "subject_id,email,language,country\n"
        "u1,ana@example.com,de,DE\n"
        ",nobody@example.com,de,DE\n"
        "u3,not-an-address,de,DE\n"
        "u4,x@example.com,xx,DE\n"
        "u5,x@example.com,en,US\n"
        "u6,x@example.com,en\n"
        "u1,again@example.com,en,IE\n",
    )
    report = audience_import(path)

    assert not report.ok
    text = "\n".join(report.errors)
    assert "line 3: subject_id is empty" in text
    assert "line 4: email 'not-an-address' is not a valid address" in text
    assert "line 5: unknown language 'xx'" in text
    assert "line 6: country 'US' is not an EU or EEA country code" in text
    assert "line 7: expected 4 fields, found 3" in text
    assert "line 8: subject_id 'u1' is also on line 2" in text
    assert report.error_count == 6
    assert Recipient.objects.count() == 0


def test_it_refuses_a_file_with_a_missing_column(tmp_path):
    report = audience_import(_csv(tmp_path, "subject_id,email,language\nu1,a@example.com,de\n"))
    assert not report.ok and report.errors == ["line 1: missing column(s): country."]


def test_it_refuses_a_file_that_names_a_column_twice(tmp_path):
    report = audience_import(_csv(tmp_path, "subject_id,email,language,country,country\nu1,a@example.com,de,DE,FR\n"))
    assert not report.ok and report.errors == ["line 1: column(s) named more than once: country."]
    assert Recipient.objects.count() == 0


def test_it_reports_through_the_command(tmp_path):
    good = _csv(tmp_path, "subject_id,email,language,country\nu1,ana@example.com,de,DE\n")
    out = StringIO()
    call_command("import_audience", good, stdout=out)
    assert "1 recipients added" in out.getvalue()

    bad = _csv(tmp_path, "subject_id,email,language,country\nu2,ana@example.com,de,ZZ\n", "bad.csv")
    err = StringIO()
    with pytest.raises(CommandError, match="1 problem"):
        call_command("import_audience", bad, stderr=err)
    assert "line 2:" in err.getvalue()
    assert list(Recipient.objects.values_list("subject_id", flat=True)) == ["u1"]


def test_it_erases_the_email_only_after_the_retention_period(settings):
    settings.DEMUR_RECIPIENT_RETENTION_DAYS = 30
    now = timezone.now()
    Recipient.objects.create(
        subject_id="old",
        email="old@example.com",
        language="en",
        country="IE",
        last_campaign_ended_at=now - dt.timedelta(days=31),
    )
    Recipient.objects.create(
        subject_id="recent",
        email="new@example.com",
        language="en",
        country="IE",
        last_campaign_ended_at=now - dt.timedelta(days=29),
    )
    Recipient.objects.create(subject_id="never", email="never@example.com", language="en", country="IE")

    assert recipients_erase_expired(now=now) == 1

    emails = dict(Recipient.objects.values_list("subject_id", "email"))
    assert emails == {"old": "", "recent": "new@example.com", "never": "never@example.com"}
    assert Recipient.objects.get(subject_id="old").email_erased_at == now
    assert recipients_erase_expired(now=now) == 0


def test_it_imports_unusual_but_valid_lines_and_names_a_lone_duplicate(tmp_path):
    unusual = _csv(
        tmp_path,
        "subject_id,email,language,country\n"
        '"  üser-1 ",Ana.Maria@Example.COM,DE,de\n'
        '"id,with,commas",x@example.com,el,GR\n',
    )
    report = audience_import(unusual)
    assert report.ok and report.created == 2
    assert dict(Recipient.objects.values_list("subject_id", "country")) == {"üser-1": "DE", "id,with,commas": "GR"}
    assert Recipient.objects.get(subject_id="üser-1").language == "de"

    duplicate = _csv(
        tmp_path,
        "subject_id,email,language,country\nu1,a@example.com,de,DE\nu2,b@example.com,de,DE\nu1,c@example.com,de,DE\n",
        "duplicate.csv",
    )
    report = audience_import(duplicate)
    assert report.errors == ["line 4: subject_id 'u1' is also on line 2."]
    assert Recipient.objects.count() == 2


def test_it_refuses_a_subject_given_twice_who_is_already_in_the_audience(tmp_path):
    Recipient.objects.create(subject_id="u1", email="old@example.com", language="en", country="IE")
    path = _csv(tmp_path, "subject_id,email,language,country\nu1,a@example.com,de,DE\nu1,b@example.com,fr,FR\n")

    report = audience_import(path)

    assert report.errors == ["line 3: subject_id 'u1' is also on line 2."]
    assert Recipient.objects.get().email == "old@example.com"


def test_it_refuses_what_the_narrow_check_would_let_through_only_if_it_were_too_wide(tmp_path):
    long_subject, long_tld = "s" * 129, "a@example." + "x" * 64
    long_email = "a" * 64 + "@" + ".".join(["d" * 60] * 3) + "." + "x" * 10  # 256 characters
    path = _csv(
        tmp_path,
        "subject_id,email,language,country\n"
        f"{long_subject},a@example.com,de,DE\n"
        f"u2,{long_tld},de,DE\n"
        f"u3,{long_email},de,DE\n"
        "u4,a@example.com,de,DE\n",
    )

    report = audience_import(path)

    assert [error.split(":")[0] for error in report.errors] == ["line 2", "line 3", "line 4"]
    assert not Recipient.objects.exists()


@pytest.mark.parametrize("email", ["a..b@example.com", ".a@example.com", "a.@example.com", "a@-x-.com", "a@x..com"])
def test_it_refuses_addresses_with_misplaced_dots_or_hyphens(tmp_path, email):
    path = _csv(tmp_path, f"subject_id,email,language,country\nu1,{email},de,DE\nu2,b@example.com,de,DE\n")

    report = audience_import(path)

    assert [error.split(":")[0] for error in report.errors] == ["line 2"]
    assert not Recipient.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("quote", ["", '"'], ids=["fast path", "line-by-line path"])
def test_a_subject_another_writer_adds_during_the_import_is_updated_not_lost(tmp_path, quote):
    """New subjects are inserted without ON CONFLICT; when another transaction adds one
    of them meanwhile, the import writes again and nobody is lost. A quoted field sends
    the file through the line-by-line path."""
    path = _csv(
        tmp_path,
        "subject_id,email,language,country\n"
        + "".join(f"{quote}u{n}{quote},{email}@example.com,de,DE\n" for n, email in ((1, "a"), (2, "b"), (3, "c"))),
    )
    params = connection.get_connection_params()
    other = psycopg.connect(**params)
    watcher = psycopg.connect(**params, autocommit=True)  # sees activity as it changes
    waiting = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%campaigns_recipient%'"
    )
    try:
        other.execute(
            "INSERT INTO campaigns_recipient (subject_id, email, language, country, created_at, updated_at) "
            "VALUES ('u2', 'other@example.com', 'en', 'IE', now(), now())"
        )
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(lambda: (audience_import(path), connections.close_all())[0])
            try:
                deadline = time.monotonic() + 30
                while not watcher.execute(waiting).fetchone()[0]:
                    assert time.monotonic() < deadline and not running.done(), "the import never met the other writer"
                    time.sleep(0.05)
                other.commit()
            finally:
                other.close()  # lets a stuck import go on whatever happened
            report = running.result(timeout=60)
    finally:
        other.close()
        watcher.close()

    assert report.ok and (report.created, report.updated) == (2, 1)
    assert dict(Recipient.objects.values_list("subject_id", "email")) == {
        "u1": "a@example.com",
        "u2": "b@example.com",
        "u3": "c@example.com",
    }


def test_it_reads_crlf_lines_and_a_last_line_without_a_newline(tmp_path):
    crlf = _csv(tmp_path, "subject_id,email,language,country\r\nu1,a@example.com,de,DE\r\nu2,b@example.com,fr,FR\r\n")
    assert audience_import(crlf).created == 2
    unterminated = _csv(
        tmp_path, "subject_id,email,language,country\nu3,c@example.com,de,DE\nu4,d@example.com,fr,FR", "b.csv"
    )
    assert audience_import(unterminated).created == 2
    assert dict(Recipient.objects.values_list("subject_id", "country")) == {
        "u1": "DE",
        "u2": "FR",
        "u3": "DE",
        "u4": "FR",
    }
