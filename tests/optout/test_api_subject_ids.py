"""Every subject id that can be written can be read: what POST /api/v1/objections takes,
GET /api/v1/objections/subject?subject_id= answers, whatever characters it holds, and
the path form GET /api/v1/objections/{subject_id} still answers every id it can carry."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.optout.test_api import READ, WRITE, assert_error, call, make_key

pytestmark = pytest.mark.django_db

# Ids a path segment cannot carry: a slash, or the name of another endpoint.
UNROUTABLE = ["a/b", "changes", "export", "check", "subject", "/leading", "trailing/", ".", ".."]
AWKWARD = [
    "%2F",
    "%252F",
    "a?b#c&d=e",
    "x" * 128,
    "é" * 128,
    "Zoë Åström",
    "用户-42",
    "ユーザー",
    "مستخدم",
    "👤😀",
    " spaced ",
    'quo"te\\back',
    "+1 (555) 0100",
]
# Ids no write takes, and so no read either.
UNWRITABLE = ["", "x" * 129, "a\nb", "tab\there", "nul\x00", "bell\x07", "zero\u200bwidth", "no\u00a0break"]


@pytest.fixture
def keys(purpose) -> tuple[str, str]:
    return make_key(READ)[1], make_key(WRITE, name="platform")[1]


def record(client, key: str, subject_id) -> object:
    return call(client, "post", "/api/v1/objections", key=key, body={"subject_id": subject_id, "source": "in-app"})


def lookup(client, key: str, subject_id: str, **params):
    return client.get(
        "/api/v1/objections/subject", {"subject_id": subject_id, **params}, HTTP_AUTHORIZATION=f"Bearer {key}"
    )


@pytest.mark.parametrize("subject_id", UNROUTABLE + AWKWARD)
def test_every_id_recorded_through_the_api_is_read_back_by_the_query_form(client, keys, subject_id):
    read_key, write_key = keys
    recorded = record(client, write_key, subject_id)
    assert recorded.status_code == 201, recorded.content

    response = lookup(client, read_key, subject_id)

    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    assert (body["subject_id"], body["purpose"], body["objected"]) == (subject_id, "ai-training", True)
    assert [event["action"] for event in body["history"]] == ["objected"]
    assert body["history"][0]["source"] == "in-app"


@pytest.mark.parametrize("subject_id", [s for s in AWKWARD if "/" not in s] + ["someone"])
def test_the_path_form_still_reads_every_id_a_path_segment_can_carry(client, keys, subject_id):
    read_key, write_key = keys
    record(client, write_key, subject_id)

    by_path = call(client, "get", f"/api/v1/objections/{quote(subject_id, safe='')}", key=read_key)

    assert by_path.status_code == 200, by_path.content
    assert json.loads(by_path.content) == json.loads(lookup(client, read_key, subject_id).content)
    assert json.loads(by_path.content)["objected"] is True


def test_the_path_form_cannot_read_the_ids_that_collide_but_the_query_form_can(client, keys):
    read_key, write_key = keys
    record(client, write_key, "a/b")
    record(client, write_key, "export")

    assert call(client, "get", "/api/v1/objections/a/b", key=read_key).status_code == 404
    assert call(client, "get", "/api/v1/objections/a%2Fb", key=read_key).status_code == 404
    export = call(client, "get", "/api/v1/objections/export", key=read_key)
    assert b'"next_cursor"' in b"".join(export.streaming_content)  # the export, not the subject
    assert json.loads(lookup(client, read_key, "a/b").content)["objected"] is True
    assert json.loads(lookup(client, read_key, "export").content)["objected"] is True


@pytest.mark.parametrize("subject_id", UNWRITABLE)
def test_an_id_no_write_takes_is_refused_by_the_write_and_by_both_reads(client, keys, subject_id):
    read_key, write_key = keys

    assert_error(record(client, write_key, subject_id), 400, "invalid")
    assert_error(lookup(client, read_key, subject_id), 400, "bad_subject_id")
    if subject_id and "\x00" not in subject_id:
        path = f"/api/v1/objections/{quote(subject_id, safe='')}"
        assert_error(call(client, "get", path, key=read_key), 400, "bad_subject_id")


@pytest.mark.parametrize("subject_id", UNROUTABLE + AWKWARD + UNWRITABLE + [12, None, ["a"]])
def test_the_write_and_the_query_form_take_the_same_ids(client, keys, subject_id):
    read_key, write_key = keys
    written = record(client, write_key, subject_id).status_code
    read = lookup(client, read_key, subject_id).status_code if isinstance(subject_id, str) else 400

    assert (written in (200, 201)) == (read == 200), (written, read)


def test_the_query_form_wants_exactly_one_subject_id(client, keys):
    read_key, _ = keys
    auth = {"HTTP_AUTHORIZATION": f"Bearer {read_key}"}

    assert_error(client.get("/api/v1/objections/subject", **auth), 400, "bad_subject_id")
    twice = client.get("/api/v1/objections/subject?subject_id=a&subject_id=b", **auth)
    assert_error(twice, 400, "bad_subject_id")
    assert_error(lookup(client, read_key, "a", purpose="nope"), 400, "unknown_purpose")
    assert json.loads(lookup(client, read_key, "never-seen").content)["objected"] is False


def test_the_query_form_needs_the_read_scope(client, keys):
    _, write_key = keys

    assert_error(lookup(client, write_key, "a"), 403)
    assert_error(client.get("/api/v1/objections/subject", {"subject_id": "a"}), 401)


def test_the_services_refuse_what_the_api_would_not_read(purpose):
    from optout.services import LedgerError, objection_record

    for subject_id in UNWRITABLE:
        with pytest.raises(LedgerError):
            objection_record(subject_id=subject_id, source="api")


def test_a_subject_id_with_a_slash_can_ask_for_its_in_app_notices(client, purpose):
    """The audience takes such ids too (campaigns.audience)."""
    key = make_key("notices:read", name="platform")[1]

    response = call(client, "get", "/api/v1/subjects/team/7/notices", key=key)

    assert response.status_code == 200, response.content
    assert json.loads(response.content) == {"notices": []}
