"""A body sent with Transfer-Encoding: chunked (no Content-Length) is refused with 411 by
every API write, through a real gunicorn and a raw socket: Django reads CONTENT_LENGTH
bytes of a body, so such a body would otherwise be read as empty."""

from __future__ import annotations

import http.client
import json
import os
import socket
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from campaigns.models import Recipient
from optout.models import ApiClient, ApiScope, ObjectionEvent
from tests import web_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


WRITES = [
    ("/api/v1/objections", {"subject_id": "chunked-1", "source": "in-app"}),
    ("/api/v1/objections/check", {"subject_ids": ["chunked-1"]}),
    ("/api/v1/audience", {"recipients": [{"subject_id": "chunked-1", "email": "c@example.com", "language": "en", "country": "DE"}]}),
    ("/api/v1/notices/1/events", {"event": "shown"}),
]  # fmt: skip


@pytest.fixture
def gunicorn(tmp_path):
    """One gunicorn master with one sync worker on a free port, on the test database."""
    source = urlsplit(os.environ["DATABASE_URL"])
    url = urlunsplit(source._replace(path="/" + connection.settings_dict["NAME"]))
    with web_server.gunicorn(url, tmp_path / "gunicorn.log") as port:
        yield port


def send(port: int, raw: bytes) -> tuple[int, bytes]:
    """Write `raw` as it is on a connection of its own; the answer's status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def chunked(path: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    middle = len(body) // 2
    pieces = [body[:middle], body[middle:]]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def sized(path: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


@pytest.fixture
def key(purpose) -> str:
    return ApiClient.objects.create_key(name="platform", scopes=list(ApiScope.values))[1]


@pytest.mark.parametrize(("path", "body"), WRITES, ids=[path for path, _ in WRITES])
def test_a_chunked_write_is_refused_with_411_and_changes_nothing(gunicorn, key, path, body):
    status, answer = send(gunicorn, chunked(path, key, json.dumps(body).encode()))

    assert status == 411, answer
    error = json.loads(answer)["error"]
    assert error["code"] == "length_required" and "Content-Length" in error["message"]
    assert not ObjectionEvent.objects.exists() and not Recipient.objects.exists()


def test_the_same_write_with_a_content_length_is_read(gunicorn, key):
    body = json.dumps(WRITES[0][1]).encode()

    status, answer = send(gunicorn, sized("/api/v1/objections", key, body))

    assert status == 201, answer
    assert ObjectionEvent.objects.get().subject_id == "chunked-1"


def test_a_chunked_write_without_a_key_is_still_a_401(gunicorn, purpose):
    status, answer = send(gunicorn, chunked("/api/v1/objections", "nope", b'{"subject_id": "x"}'))

    assert status == 401 and json.loads(answer)["error"]["code"] == "authentication_failed"
