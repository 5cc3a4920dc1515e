"""The OpenAPI document of /api/v1 is valid OpenAPI 3.1, and the API honours it under fuzzing."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.specs.openapi.definitions import OPENAPI_31

from gateway.api.spec import openapi_document
from gateway.auth.tokens import Scope
from gateway.db.models import Role
from tests.api.apikit import REPO, RIVAL_REPO, make_api
from tests.factories import World

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
# Every route of the /api/v1 blueprints must be documented (and nothing else).
UNDOCUMENTED = {"/api/v1/openapi.json"}
# Generated cases mostly miss existing models; steer some towards real ones (and a rival's).
KNOWN_REPOS = [REPO, RIVAL_REPO, "acme/missing"]
FUZZ_SCOPES = [
    s
    for s in Scope
    if s not in (Scope.TOKENS_MANAGE,)  # keep the fuzzer from revoking itself
]


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()  # type: ignore[no-any-return]


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_document_validates_against_the_openapi_31_schema(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    errors = [str(e) for e in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(document)]
    assert errors == []


def test_every_component_schema_is_valid_json_schema(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_operations_are_unique_and_described(document: dict[str, Any]) -> None:
    ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/api/v1/")
        placeholders = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            assert method in METHODS
            ids.append(op["operationId"])
            assert op["summary"]
            assert op["tags"]
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == placeholders, (path, method)
            assert any(code.startswith("2") for code in op["responses"])
            problem = op["responses"]["422"]["content"]["application/problem+json"]
            assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
            if "security" in op:
                assert op["security"] == [{"bearer": []}]
    assert len(ids) == len(set(ids))


def test_every_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    documented = {
        (re.sub(r"{(\w+)}", r"<\1>", path), method.upper())
        for path, item in document["paths"].items()
        for method in item
    }
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"<\1>", rule.rule)
        if not path.startswith("/api/v1/") or path in UNDOCUMENTED:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
            assert (path, method) in documented, (path, method)


def test_scopes_in_the_document_are_real(document: dict[str, Any]) -> None:
    for item in document["paths"].values():
        for op in item.values():
            for scope in re.findall(r"[a-z]+:[a-z]+", op.get("description", "")):
                assert scope in set(Scope)


# -- fuzzing ---------------------------------------------------------------------------------------
# The document is static (built from the declared endpoints), so it is loaded once here and each
# operation becomes its own test; test_served_document_is_the_fuzzed_one ties it to the live one.
schema = schemathesis.openapi.from_dict(openapi_document("Airlock API", "1"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture
def publisher_headers(app: Flask, world: World) -> dict[str, str]:
    """Publish two models; authenticate as acme's publisher, also made its reviewer and
    compliance officer so that every operation's success path is reachable."""
    api = make_api(app.test_client(), world)
    with world.airlock.db.session() as s:
        for role in (Role.REVIEWER, Role.COMPLIANCE):
            world.airlock.identity.add_member(
                s,
                org=s.merge(world.org("acme")),
                user=s.merge(api.publisher.user),
                role=role,
                actor_id=None,
            )
    return {"Authorization": f"Bearer {api.token(api.publisher, FUZZ_SCOPES).token}"}


def test_served_document_is_the_fuzzed_one(document: dict[str, Any]) -> None:
    assert document == openapi_document("Airlock API", "1")


@schema.parametrize()
@schema.given(repo=st.sampled_from([None, *KNOWN_REPOS]))
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    # The app and its database are shared by the examples of one operation on purpose.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_never_fails_and_matches_its_document(
    case: Any, repo: str | None, app: Flask, publisher_headers: dict[str, str]
) -> None:
    if repo and {"org", "name"} <= set(case.path_parameters or {}):
        org, name = repo.split("/")
        case.path_parameters.update(org=org, name=name)
    case.call_and_validate(app=app, headers=publisher_headers, checks=CHECKS)
