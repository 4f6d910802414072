"""The OpenAPI schema, the offline docs, and Schemathesis against the live server:
no 5xx and no response that breaks the schema, for any generated request."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from optout.models import ApiClient, ApiScope
from optout.services import objection_record, objection_withdraw

SCHEMA_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.django_db
def test_the_schema_documents_every_v1_endpoint_with_bearer_auth(client):
    response = client.get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = response.json()
    assert set(schema["paths"]) == {
        "/api/v1/objections",
        "/api/v1/objections/changes",
        "/api/v1/objections/check",
        "/api/v1/objections/export",
        "/api/v1/objections/subject",
        "/api/v1/objections/{subject_id}",
        "/api/v1/subjects/{subject_id}/notices",
        "/api/v1/notices/{notice_id}/events",
        "/api/v1/audience",
    }
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for path in schema["paths"].values():
        for operation in path.values():
            assert {"401", "403", "429"} <= set(operation["responses"])


@pytest.mark.django_db
def test_the_docs_page_loads_everything_from_this_server(client):
    page = client.get("/api/docs/").content.decode()

    assert "swagger-ui" in page
    assert "https://" not in page and "http://" not in page.replace("http://testserver", "")


@pytest.fixture
def api_key(purpose, settings) -> str:
    settings.DEMUR_API_THROTTLE_RATE = ""  # Schemathesis sends hundreds of requests
    objection_record(subject_id="someone", source="in-app")
    objection_record(subject_id="someone-else", source="gpc")
    objection_withdraw(subject_id="someone-else", source="api")
    return ApiClient.objects.create_key(name="schemathesis", scopes=list(ApiScope.values))[1]


@pytest.mark.slow
def test_the_api_keeps_to_its_schema(live_server, api_key):
    """Every operation, with generated valid and invalid input, through real HTTP.

    The strategies are driven here rather than with schemathesis.pytest.from_fixture,
    whose lazy loader does not run under pytest 9."""
    api = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 9

    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(
                base_url=live_server.url, headers={"Authorization": f"Bearer {api_key}"}, checks=SCHEMA_CHECKS
            )

        check()
