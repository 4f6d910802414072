"""Property tests: random tokens and random bodies never reach a 5xx and never record
an objection."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from django.core import signing
from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from optout.links import OBJECT_SALT, STATUS_SALT, UNSUBSCRIBE_SALT, LinkClaims, make_token
from optout.models import ObjectionEvent

pytestmark = pytest.mark.django_db

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROUTES = ["t", "status", "verify", "unsubscribe"]
SALTS = {"t": OBJECT_SALT, "status": STATUS_SALT, "verify": "demur.optout.verify", "unsubscribe": UNSUBSCRIBE_SALT}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
# Payloads with a valid signature but any shape: what a leaked signing key, or a bug in
# an older link builder, could produce.
signed_payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"s": json_values, "p": st.sampled_from(["ai-training", "nope"]) | json_values, "l": json_values},
        optional={"c": json_values, "v": json_values, "e": json_values},
    ),
)
form_keys = st.sampled_from(["email", "country", "account_id", "reason", "action", "confirm", "List-Unsubscribe"])
bodies = st.dictionaries(form_keys | st.text(max_size=10), st.text(max_size=300), max_size=6)


def _no_failure(response) -> None:
    assert response.status_code < 500, response.content[:500]
    assert b"Traceback" not in response.content
    assert ObjectionEvent.objects.count() == 0


@PROPERTY
@given(route=st.sampled_from(ROUTES), token=st.text(min_size=1, max_size=300), body=bodies)
def test_it_survives_random_tokens(purpose, route, token, body):
    cache.clear()
    url = f"/en/optout/{route}/{quote(token, safe='')}/"
    for response in (Client().get(url), Client().post(url, body)):
        if response.status_code != 404:  # a token with an encoded slash matches no route
            _no_failure(response)


@PROPERTY
# Found by this test: a NUL in a signed subject id reached PostgreSQL (which refuses it) as a 500.
@example(route="t", payload={"s": "user\x00", "p": "ai-training", "l": "en"}, body={})
@example(route="status", payload={"s": "user-1", "p": "ai-training", "l": "en", "e": "a\x00@example.com"}, body={})
@given(route=st.sampled_from(ROUTES), payload=signed_payloads, body=bodies)
def test_it_survives_signed_tokens_with_any_payload(purpose, route, payload, body):
    cache.clear()
    url = f"/en/optout/{route}/{signing.dumps(payload, salt=SALTS[route])}/"
    _no_failure(Client().get(url))
    _no_failure(Client().post(url, body))  # no "object" field: the link page must not record


@PROPERTY
@given(body=bodies)
def test_it_survives_random_public_form_posts(purpose, body):
    cache.clear()
    _no_failure(Client().post("/en/optout/", body))


@PROPERTY
@given(raw=st.binary(max_size=2000), content_type=st.sampled_from([
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "multipart/form-data",
    "text/plain", "application/json", "application/x-www-form-urlencoded; charset=utf-16",
]))  # fmt: skip
def test_it_survives_garbage_bodies(purpose, raw, content_type):
    cache.clear()
    token = make_token(LinkClaims("user-9", "ai-training", "en", email="x@example.com"), salt=OBJECT_SALT)
    for url in ("/en/optout/", f"/en/optout/t/{token}/", f"/en/optout/status/{token}/"):
        _no_failure(Client().generic("POST", url, raw, content_type=content_type))
