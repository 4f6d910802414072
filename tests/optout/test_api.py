"""The objection API v1: keys and scopes, the feed, the bulk check, the export, one
subject, recording, throttling and the error shape (DESIGN.md, "The objection API")."""

from __future__ import annotations

import gzip
import json
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from optout.ledger import format_timestamp
from optout.models import ApiClient, ObjectionEvent, Purpose
from optout.selectors import Cursor, FeedRow, feed_horizon, feed_page
from optout.services import objection_record, objection_withdraw

pytestmark = pytest.mark.django_db

READ, WRITE = "objections:read", "objections:write"


@pytest.fixture(autouse=True)
def _fresh_throttle_budget():
    from django.core.cache import cache

    cache.clear()


def settle_feed(timeout: float = 300) -> None:
    """Wait until the feed horizon has passed every committed event.

    The horizon is cluster-wide: a long transaction in any database on the same
    PostgreSQL server (another test run, a bulk load) holds the feed back, as it should."""
    deadline = time.monotonic() + timeout
    while True:
        with connection.cursor() as db:
            db.execute("SELECT coalesce(max(feed_key), 0) FROM optout_objectionevent")
            (newest,) = db.fetchone()
        horizon = feed_horizon().key
        if horizon > newest:
            return
        assert time.monotonic() < deadline, "another transaction on this server held the feed back"
        time.sleep(0.2)


def _feed_event(row: FeedRow) -> dict[str, str]:
    """One feed row as the API must show it."""
    return {
        "id": str(row.uuid),
        "subject_id": row.subject_id,
        "purpose": row.purpose,
        "action": row.action,
        "received_at": format_timestamp(row.received_at),
        "effective_at": format_timestamp(row.effective_at),
        "source": row.source,
        "seq": row.seq,
    }


def make_key(*scopes: str, name: str = "pipeline") -> tuple[ApiClient, str]:
    return ApiClient.objects.create_key(name=name, scopes=list(scopes))


@pytest.fixture
def read_key(purpose) -> str:
    return make_key(READ)[1]


@pytest.fixture
def write_key(purpose) -> str:
    return make_key(WRITE, name="platform")[1]


def call(client, method: str, url: str, key: str | None = None, body=None, **headers):
    if key:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    if body is not None:
        return getattr(client, method)(url, data=json.dumps(body), content_type="application/json", **headers)
    return getattr(client, method)(url, **headers)


# (method, url, body, scope) for every endpoint this issue builds.
ENDPOINTS = [
    ("get", "/api/v1/objections/changes", None, READ),
    ("post", "/api/v1/objections/check", {"subject_ids": ["a"]}, READ),
    ("get", "/api/v1/objections/export", None, READ),
    ("get", "/api/v1/objections/someone", None, READ),
    ("post", "/api/v1/objections", {"subject_id": "a", "source": "in-app"}, WRITE),
]
OTHER_SCOPE = {READ: WRITE, WRITE: READ}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = json.loads(response.content)["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(("method", "url", "body", "scope"), ENDPOINTS)
def test_every_endpoint_refuses_a_missing_key_a_wrong_scope_and_a_revoked_key(
    client, purpose, method, url, body, scope
):
    assert_error(call(client, method, url, body=body), 401, "not_authenticated")
    assert call(client, method, url, body=body)["WWW-Authenticate"] == "Bearer"
    assert_error(call(client, method, url, key="nope.not-a-key", body=body), 401, "authentication_failed")

    _, wrong = make_key(OTHER_SCOPE[scope])
    error = assert_error(call(client, method, url, key=wrong, body=body), 403, "permission_denied")
    assert scope in error["message"]

    api_client, right = make_key(scope)
    assert call(client, method, url, key=right, body=body).status_code in (200, 201)
    api_client.revoked = True
    api_client.save(update_fields=["revoked"])
    assert_error(call(client, method, url, key=right, body=body), 401, "authentication_failed")


def test_a_key_records_its_last_use(client, purpose):
    api_client, key = make_key(READ)
    assert api_client.last_used_at is None
    call(client, "get", "/api/v1/objections/changes", key=key)
    api_client.refresh_from_db()
    assert api_client.last_used_at is not None


@pytest.mark.parametrize(
    ("url", "scope"),
    [
        ("/api/v1/objections/check", "objections:read"),
        ("/api/v1/objections", "objections:write"),
        ("/api/v1/audience", "audience:write"),
    ],
)
def test_a_deeply_nested_body_is_a_400_not_a_500(client, purpose, url, scope):
    _client, key = make_key(scope)
    body = '{"subject_ids": ' + "[" * 5000 + "]" * 5000 + "}"

    response = client.post(url, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")

    error = assert_error(response, 400, "parse_error")
    assert error["message"] == "The body is not valid JSON."


def test_unknown_paths_and_methods_answer_in_the_error_shape(client, read_key):
    assert_error(call(client, "get", "/api/v1/nothing-here", key=read_key), 404, "not_found")
    assert_error(call(client, "delete", "/api/v1/objections/changes", key=read_key), 405, "method_not_allowed")


def test_a_malformed_body_is_a_400_in_the_error_shape(client, read_key):
    response = client.post(
        "/api/v1/objections/check",
        data="{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {read_key}",
    )
    assert_error(response, 400, "parse_error")
    assert response.json()["error"]["message"] == "The body is not valid JSON."
    for bad in [{"subject_ids": "a"}, {"subject_ids": [1]}, {"subject_ids": [""]}, {}, {"subject_ids": ["x" * 129]}]:
        error = assert_error(call(client, "post", "/api/v1/objections/check", key=read_key, body=bad), 400, "invalid")
        assert "subject_ids" in error["fields"]
    assert_error(
        call(client, "post", "/api/v1/objections/check", key=read_key, body={"purpose": "nope", "subject_ids": ["a"]}),
        400,
        "unknown_purpose",
    )


# --- The change feed ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_feed_pages_with_an_opaque_cursor_and_filters_by_purpose(client, purpose):
    _, key = make_key(READ)
    Purpose.objects.create(slug="ads", name="ads")
    for n in range(3):
        objection_record(subject_id=f"s{n}", source="api")
    objection_record(subject_id="ad", source="gpc", purpose="ads")
    objection_withdraw(subject_id="s0", source="api")
    settle_feed()

    first_response = call(client, "get", "/api/v1/objections/changes?limit=2", key=key)
    first = json.loads(first_response.content)
    rest = json.loads(
        call(client, "get", f"/api/v1/objections/changes?limit=10&cursor={first['next_cursor']}", key=key).content
    )
    ads_response = call(client, "get", "/api/v1/objections/changes?purpose=ads", key=key)
    ads = json.loads(ads_response.content)
    # A cursor read from the ads feed would skip the earlier ai-training events there.
    crossed = call(
        client, "get", f"/api/v1/objections/changes?purpose=ai-training&cursor={ads['next_cursor']}", key=key
    )
    error = assert_error(crossed, 400, "bad_cursor")
    assert error["message"] == "This cursor was read from the feed of another purpose (ads); continue there."

    assert first["has_more"] is True and rest["has_more"] is False
    # The cursor in headers too, so a client can ask for the next page before parsing this one.
    assert (first_response["X-Next-Cursor"], first_response["X-Has-More"]) == (first["next_cursor"], "true")
    events = first["events"] + rest["events"]
    assert [(e["subject_id"], e["action"]) for e in events] == [
        ("s0", "objected"),
        ("s1", "objected"),
        ("s2", "objected"),
        ("ad", "objected"),
        ("s0", "withdrawn"),
    ]
    assert set(events[0]) == {"id", "subject_id", "purpose", "action", "received_at", "effective_at", "source", "seq"}
    assert [e["seq"] for e in events] == [1, 1, 1, 1, 2]
    assert {str(u) for u in ObjectionEvent.objects.values_list("uuid", flat=True)} == {e["id"] for e in events}
    assert events[0]["received_at"].endswith("Z")
    assert [(e["subject_id"], e["purpose"], e["source"]) for e in ads["events"]] == [("ad", "ads", "gpc")]


@pytest.mark.django_db(transaction=True)
def test_the_feed_json_is_the_feed_event_for_event_in_order(client, purpose):
    """The page built inside PostgreSQL holds feed_page()'s rows, in its order, on every
    page: several purposes, withdrawals and renewed objections of one subject, an id
    that needs escaping, and an effective date later than the objection."""
    _, key = make_key(READ)
    Purpose.objects.create(slug="ads", name="ads")
    later = timezone.now() + timedelta(days=3)
    for n in range(40):
        subject_id = f"s{n % 7}" if n % 5 else 'quo"te\\ é/😀' + str(n)
        objection_record(subject_id=subject_id, source="api", purpose="ads" if n % 3 == 0 else "ai-training")
        if n % 4 == 0:
            objection_withdraw(subject_id=subject_id, source="api", purpose="ads" if n % 3 == 0 else "ai-training")
    objection_record(subject_id="later", source="gpc", effective_at=later)
    settle_feed()

    events, cursor = [], ""
    while True:
        page = json.loads(call(client, "get", f"/api/v1/objections/changes?limit=9&cursor={cursor}", key=key).content)
        events += page["events"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break

    # The same rows as feed_page() reads them, rendered in Python, are the reference.
    expected = [_feed_event(row) for row in feed_page(cursor=Cursor(), limit=1000).rows]
    assert len(expected) > 30 and events == expected
    assert events[-1]["effective_at"] == format_timestamp(later) != events[-1]["received_at"]


@pytest.mark.django_db(transaction=True)
def test_an_idle_poll_with_if_none_match_gets_304(client, purpose):
    _, key = make_key(READ)
    objection_record(subject_id="s1", source="api")
    settle_feed()
    url = "/api/v1/objections/changes"
    page = call(client, "get", url, key=key)
    cursor = json.loads(page.content)["next_cursor"]

    idle = call(client, "get", f"{url}?cursor={cursor}", key=key)
    again = call(client, "get", f"{url}?cursor={cursor}", key=key, HTTP_IF_NONE_MATCH=idle["ETag"])
    assert json.loads(idle.content)["events"] == []
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == idle["ETag"]

    objection_record(subject_id="s2", source="api")
    settle_feed()
    changed = call(client, "get", f"{url}?cursor={cursor}", key=key, HTTP_IF_NONE_MATCH=idle["ETag"])
    assert changed.status_code == 200
    assert [e["subject_id"] for e in json.loads(changed.content)["events"]] == ["s2"]


@pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=x", "cursor=%25%25garbage", "purpose=nope"])
def test_the_feed_rejects_bad_parameters(client, read_key, query):
    assert_error(call(client, "get", f"/api/v1/objections/changes?{query}", key=read_key), 400)


# --- The bulk check ------------------------------------------------------------------------------


def test_the_check_answers_in_input_order_with_a_cursor(client, read_key):
    objection_record(subject_id="b", source="api")
    objection_record(subject_id="c", source="api")
    objection_withdraw(subject_id="c", source="api")
    ids = ["z", "b", "c", "b"]

    body = json.loads(call(client, "post", "/api/v1/objections/check", key=read_key, body={"subject_ids": ids}).content)

    assert [(r["subject_id"], r["objected"]) for r in body["results"]] == [
        ("z", False),
        ("b", True),
        ("c", False),
        ("b", True),
    ]
    assert body["results"][1]["effective_at"].endswith("Z") and body["results"][0]["effective_at"] is None
    Cursor.decode(body["next_cursor"])  # a cursor the feed accepts
    empty = json.loads(call(client, "post", "/api/v1/objections/check", key=read_key, body={"subject_ids": []}).content)
    assert empty["results"] == []


def test_the_check_takes_10000_ids_and_answers_413_above(client, read_key):
    ids = [f"id-{n}" for n in range(10_000)]
    ok = call(client, "post", "/api/v1/objections/check", key=read_key, body={"subject_ids": ids})
    assert ok.status_code == 200 and len(json.loads(ok.content)["results"]) == 10_000

    too_many = call(client, "post", "/api/v1/objections/check", key=read_key, body={"subject_ids": [*ids, "one-more"]})
    error = assert_error(too_many, 413, "too_large")
    assert "10000" in error["message"]


def test_a_body_over_djangos_own_cap_is_a_413_not_a_500(client, write_key, settings):
    # Django refuses to read a body above DATA_UPLOAD_MAX_MEMORY_SIZE; an endpoint whose
    # own limit is higher (the audience sync) met that as a 500.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200
    body = {"subject_id": "app-user-8", "source": "in-app", "reason": "x" * 400}

    response = call(client, "post", "/api/v1/objections", key=write_key, body=body)

    error = assert_error(response, 413, "too_large")
    assert "200" in error["message"]
    assert not ObjectionEvent.objects.exists()


# --- The export ----------------------------------------------------------------------------------


def _export_lines(response) -> list[dict]:
    raw = b"".join(response.streaming_content)
    if response.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_the_export_streams_every_objector_then_the_cursor_to_continue_from(client, read_key):
    for subject_id in ["b", "a", "c"]:
        objection_record(subject_id=subject_id, source="in-app")
    objection_withdraw(subject_id="c", source="api")

    response = call(client, "get", "/api/v1/objections/export", key=read_key)

    assert response.streaming and response["Content-Type"] == "application/x-ndjson"
    *rows, last = _export_lines(response)
    assert [(r["subject_id"], r["purpose"], r["source"]) for r in rows] == [
        ("a", "ai-training", "in-app"),
        ("b", "ai-training", "in-app"),
    ]
    assert last["count"] == 2 and Cursor.decode(last["next_cursor"]) == Cursor.decode(response["X-Next-Cursor"])


def test_the_export_is_gzipped_when_the_client_accepts_it(client, read_key):
    for n in range(200):
        objection_record(subject_id=f"subject-{n}", source="api")

    response = call(client, "get", "/api/v1/objections/export", key=read_key, HTTP_ACCEPT_ENCODING="gzip")

    assert response["Content-Encoding"] == "gzip"
    assert len(_export_lines(response)) == 201


# --- One subject and recording ----------------------------------------------------------------------


def test_one_subject_shows_its_state_and_history(client, read_key):
    objection_record(subject_id="s1", source="email-link")
    objection_withdraw(subject_id="s1", source="api")
    objection_record(subject_id="s1", source="gpc")

    body = json.loads(call(client, "get", "/api/v1/objections/s1", key=read_key).content)
    nobody = json.loads(call(client, "get", "/api/v1/objections/never-seen", key=read_key).content)

    assert body["objected"] is True and body["purpose"] == "ai-training"
    assert [(e["action"], e["source"]) for e in body["history"]] == [
        ("objected", "email-link"),
        ("withdrawn", "api"),
        ("objected", "gpc"),
    ]
    assert nobody == {
        "subject_id": "never-seen",
        "purpose": "ai-training",
        "objected": False,
        "received_at": None,
        "effective_at": None,
        "history": [],
    }


def test_recording_returns_a_receipt_and_is_idempotent_by_header(client, write_key):
    body = {"subject_id": "app-user-7", "source": "in-app"}
    first = call(client, "post", "/api/v1/objections", key=write_key, body=body, HTTP_IDEMPOTENCY_KEY="tap-1")
    replay = call(client, "post", "/api/v1/objections", key=write_key, body=body, HTTP_IDEMPOTENCY_KEY="tap-1")

    assert first.status_code == 201 and replay.status_code == 200
    receipt, again = json.loads(first.content), json.loads(replay.content)
    assert receipt["created"] is True and again["created"] is False
    assert receipt["receipt"] == again["receipt"] and receipt["objected"] is True
    event = ObjectionEvent.objects.get()
    assert (event.subject_id, event.source, event.receipt) == ("app-user-7", "in-app", receipt["receipt"])


def test_recording_is_idempotent_by_the_natural_key_without_a_header(client, write_key):
    body = {"subject_id": "gpc-user", "source": "gpc"}
    first = json.loads(call(client, "post", "/api/v1/objections", key=write_key, body=body).content)
    second = call(client, "post", "/api/v1/objections", key=write_key, body=body)

    assert second.status_code == 200 and json.loads(second.content)["receipt"] == first["receipt"]
    assert ObjectionEvent.objects.count() == 1


def test_an_idempotency_key_reused_for_another_subject_is_refused(client, write_key):
    call(client, "post", "/api/v1/objections", key=write_key, body={"subject_id": "a"}, HTTP_IDEMPOTENCY_KEY="k")
    other = call(
        client, "post", "/api/v1/objections", key=write_key, body={"subject_id": "b"}, HTTP_IDEMPOTENCY_KEY="k"
    )

    assert_error(other, 422, "idempotency_key_reused")
    assert list(ObjectionEvent.objects.values_list("subject_id", flat=True)) == ["a"]


@pytest.mark.parametrize(
    "body",
    [
        {"subject_id": ""},
        {"subject_id": "a", "source": "import"},
        {"subject_id": "a", "received_at": "2999-01-01T00:00:00Z"},
        {"subject_id": "a", "purpose": "nope"},
        ["a"],
        {"subject_id": "a", "received_at": "0001-01-01T00:00:00Z"},
        {"subject_id": "a", "received_at": "1989-12-31T23:59:59Z"},
        {"subject_id": 12345},
        {"subject_id": 1.5e308},
        {"subject_id": "a\nb"},
        {"subject_id": None},
    ],
)
def test_a_bad_objection_is_refused_and_records_nothing(client, write_key, body):
    assert_error(call(client, "post", "/api/v1/objections", key=write_key, body=body), 400)
    assert ObjectionEvent.objects.count() == 0


# --- Throttling ------------------------------------------------------------------------------------


@override_settings(DEMUR_API_THROTTLE_RATE="3/minute")
def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(client, purpose):
    _, key = make_key(READ)
    _, other = make_key(READ)
    url = "/api/v1/objections/changes"
    statuses = [call(client, "get", url, key=key).status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    limited = call(client, "get", url, key=key)
    assert_error(limited, 429, "throttled")
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert call(client, "get", url, key=other).status_code == 200


# --- Keys: the command and the admin -----------------------------------------------------------------


def test_the_command_prints_a_working_key_once_and_stores_only_its_hash(client, purpose, capsys):
    call_command("create_api_client", "trainer", "--scopes", READ)
    key = capsys.readouterr().out.strip()

    stored = ApiClient.objects.get(name="trainer")
    assert stored.scopes == [READ] and key not in stored.hashed_key and key not in stored.id
    assert call(client, "get", "/api/v1/objections/changes", key=key).status_code == 200


def test_the_command_refuses_an_unknown_scope(purpose):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="everything"):
        call_command("create_api_client", "trainer", "--scopes", "everything")
    assert not ApiClient.objects.exists()


def test_changing_a_keys_scopes_or_revoking_it_in_its_form_is_audited(admin_client, client, purpose):
    from optout.models import AuditEntry

    api_client, key = make_key(READ, name="trainer")
    url = reverse("admin:optout_apiclient_change", args=[api_client.pk])

    admin_client.post(url, {"name": "trainer", "scopes": [READ, WRITE]})
    (changed,) = AuditEntry.objects.filter(action=AuditEntry.Action.KEY_CHANGED)
    assert changed.target == api_client.prefix and changed.username == "admin"
    assert changed.details == {"scopes": {"before": [READ], "after": [READ, WRITE]}}

    admin_client.post(url, {"name": "trainer", "scopes": [READ, WRITE], "revoked": "on"})
    (revoked,) = AuditEntry.objects.filter(action=AuditEntry.Action.KEY_REVOKED)
    assert revoked.target == api_client.prefix
    assert AuditEntry.objects.filter(action=AuditEntry.Action.KEY_CHANGED).count() == 1
    assert call(client, "get", "/api/v1/objections/changes", key=key).status_code == 401


def test_the_admin_shows_a_new_key_once_and_revokes_keys(admin_client, client, purpose):
    add = admin_client.post(reverse("admin:optout_apiclient_add"), {"name": "trainer", "scopes": [READ]}, follow=True)
    shown = [str(m) for m in add.context["messages"]]
    api_client = ApiClient.objects.get(name="trainer")
    key = next(word for m in shown for word in m.split() if word.startswith(api_client.prefix + "."))
    assert call(client, "get", "/api/v1/objections/changes", key=key).status_code == 200
    assert key not in admin_client.get(reverse("admin:optout_apiclient_change", args=[api_client.pk])).content.decode()

    admin_client.post(
        reverse("admin:optout_apiclient_changelist"),
        {"action": "revoke", "_selected_action": [api_client.pk]},
    )
    assert call(client, "get", "/api/v1/objections/changes", key=key).status_code == 401


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("get", "/api/v1/objections/a%00b", None),
        ("get", "/api/v1/objections/someone?purpose=a%00b", None),
        ("get", "/api/v1/objections/export?purpose=a%00b", None),
        ("post", "/api/v1/objections/check", {"subject_ids": ["a\x00b"]}),
        ("post", "/api/v1/objections/check", {"subject_ids": ["\ud800"]}),
    ],
)
def test_text_the_database_cannot_store_is_a_400_not_a_500(client, read_key, method, url, body):
    assert_error(call(client, method, url, key=read_key, body=body), 400)


def test_the_check_answers_ids_that_need_escaping_exactly(client, read_key):
    awkward = 'quo"te\\back/slash é 😀'
    objection_record(subject_id=awkward, source="api")
    unwritable = "new\nline\ttab"  # asked about, never recorded (no write takes control characters)

    ids = [awkward, unwritable]
    body = json.loads(call(client, "post", "/api/v1/objections/check", key=read_key, body={"subject_ids": ids}).content)

    assert [(r["subject_id"], r["objected"]) for r in body["results"]] == [(awkward, True), (unwritable, False)]


@pytest.mark.django_db
def test_a_post_to_an_unknown_api_path_gets_the_json_404(client):
    csrf_client = type(client)(enforce_csrf_checks=True)

    response = csrf_client.post("/api/v1/no-such-thing", data="{}", content_type="application/json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
