"""Bad input never yields a 5xx; every error on /api/v1 is problem+json with a stable code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.services.container import build_airlock
from gateway.settings import load_settings
from tests.api.apikit import REPO, Api, make_api, ok, problem, sha256
from tests.factories import World


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    return make_api(client, world)


def send(api: Api, method: str, url: str, **kw: Any) -> Any:
    return api.call(method, url, api.publisher, **kw)


def raw_json(api: Api, method: str, url: str, data: bytes | str) -> Any:
    return send(api, method, url, data=data, content_type="application/json")


# -- bodies ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b'{"repo_id": "acme/x",}',
        b"",
        b"null",
        b"[]",
        b'"acme/x"',
        b"NaN",
        b'{"repo_id": "acme/\xff\xfe"}',
        b"\xef\xbb\xbf" + b'{"repo_id": "acme/x"',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"repo_id": ' + b"9" * 5000 + b"}",
        b'{"repo_id": "acme/x", "repo_id": 1}',
    ],
    ids=lambda d: repr(d[:24]),
)
def test_malformed_json_is_422(api: Api, data: bytes) -> None:
    problem(raw_json(api, "POST", "/api/v1/models", data), 422, "invalid_input")


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", '{"repo_id": "acme/x"}'),
        ("application/x-www-form-urlencoded", "repo_id=acme/x"),
        ("multipart/form-data; boundary=x", "--x--"),
        ("application/xml", "<repo_id>acme/x</repo_id>"),
    ],
)
def test_non_json_content_types_are_422(api: Api, content_type: str, data: str) -> None:
    response = send(api, "POST", "/api/v1/models", data=data, content_type=content_type)
    assert "JSON" in problem(response, 422, "invalid_input")["detail"]


@pytest.mark.parametrize(
    ("url", "body", "path"),
    [
        ("/api/v1/models", {"repo_id": 123}, "repo_id"),
        ("/api/v1/models", {"repo_id": ["acme/x"]}, "repo_id"),
        ("/api/v1/models", {}, "repo_id"),
        ("/api/v1/models", {"repo_id": "acme/x", "owner": "me"}, "owner"),
        ("/api/v1/models", {"repo_id": "acme/x", "description": 5}, "description"),
        (f"/api/v1/models/{REPO}/freeze", {"frozen": "yes", "reason": "x"}, "frozen"),
        (f"/api/v1/models/{REPO}/freeze", {"frozen": 1, "reason": "x"}, "frozen"),
        (f"/api/v1/models/{REPO}/commits", {"files": [{"path": "a", "size": "4"}]}, "files.0.size"),
        (f"/api/v1/models/{REPO}/commits", {"files": [{"path": "a", "size": -1}]}, "files.0.size"),
        (f"/api/v1/models/{REPO}/commits", {"files": "a.bin"}, "files"),
        ("/api/v1/policies", {"source": ["model: acme/tiny"]}, "source"),
        ("/api/v1/policies", {"source": ""}, "source"),
        ("/api/v1/me/tokens", {"name": "x", "scopes": "models:write"}, "scopes"),
        ("/api/v1/me/tokens", {"name": "x", "scopes": ["models:write"], "ttl": 3}, "ttl"),
        (f"/api/v1/models/{REPO}/access", {"tier": "card", "form": {"a": {"b": 1}}}, "form.a"),
        (f"/api/v1/models/{REPO}/access", {"tier": "card", "form": {"a": 2**60}}, "form.a"),
    ],
)
def test_wrong_types_missing_and_extra_fields_are_422_with_paths(
    api: Api, url: str, body: dict[str, Any], path: str
) -> None:
    found = problem(send(api, "POST", url, json=body), 422, "invalid_input")
    assert any(e["path"].startswith(path) for e in found["errors"]), found["errors"]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/api/v1/requests/1/review", {"verdict": "maybe"}),
        ("POST", "/api/v1/kyc/manual", {"username": "rob", "org": "acme", "level": "psychic"}),
        (
            "POST",
            "/api/v1/kyc/manual",
            {"username": "rob", "org": "acme", "level": "email", "nationality": "gb"},
        ),
        ("POST", "/api/v1/me/tokens", {"name": "x", "scopes": ["root"]}),
        ("GET", "/api/v1/audit?effect=perhaps", None),
        ("GET", "/api/v1/requests?status=lost", None),
    ],
)
def test_unknown_enum_values_are_422(api: Api, method: str, url: str, body: Any) -> None:
    actor = api.compliance if "audit" in url else api.reviewer
    response = api.call(method, url, actor, json=body) if body else api.call(method, url, actor)
    problem(response, 422, "invalid_input")


# -- sizes -----------------------------------------------------------------------------------------
@pytest.fixture
def small_body_api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    """An app configured through AIRLOCK_MAX_BODY_BYTES=4096."""
    settings = load_settings(
        {
            "AIRLOCK_DATABASE_URL": database_url,
            "AIRLOCK_SECRET_KEY": "test-secret",
            "AIRLOCK_MAX_BODY_BYTES": "4096",
        },
        data_dir=tmp_path,
    )
    services = build_airlock(settings)
    try:
        yield make_api(create_app(airlock=services).test_client(), World(services), publish=False)
    finally:
        services.close()


def test_bodies_over_the_configured_limit_are_413(small_body_api: Api) -> None:
    api = small_body_api
    big = json.dumps({"repo_id": "acme/x", "description": "d" * 5000})
    body = problem(raw_json(api, "POST", "/api/v1/models", big), 413, "payload_too_large")
    assert body["title"]
    fits = json.dumps({"repo_id": "acme/x", "description": "d" * 3000})
    ok(raw_json(api, "POST", "/api/v1/models", fits), 201)


def test_huge_body_on_the_default_limit_is_413(api: Api) -> None:
    huge = b'{"source": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    problem(raw_json(api, "POST", "/api/v1/policies", huge), 413, "payload_too_large")


def test_field_limits_are_enforced(api: Api) -> None:
    response = send(
        api, "POST", "/api/v1/models", json={"repo_id": "acme/x", "description": "d" * 10_001}
    )
    problem(response, 422, "invalid_input")
    many = {"tier": "card", "form": {f"k{i}": "v" for i in range(51)}}
    problem(send(api, "POST", f"/api/v1/models/{REPO}/access", json=many), 422)


# -- text that no database stores ------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"repo_id": "acme/x", "description": "nul \x00 inside"},
        {"repo_id": "acme/x\x00"},
        {"repo_id": "acme/x", "description": "\ud800 lone surrogate"},
    ],
    ids=["nul-description", "nul-repo", "surrogate"],
)
def test_nul_and_lone_surrogates_in_bodies_are_422(api: Api, body: dict[str, str]) -> None:
    problem(send(api, "POST", "/api/v1/models", json=body), 422, "invalid_input")


def test_nul_in_form_keys_is_422(api: Api) -> None:
    body = {"tier": "card", "form": {"in\x00tended": "x"}}
    problem(send(api, "POST", f"/api/v1/models/{REPO}/access", json=body), 422, "invalid_input")


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/models/acme/ti%00ny",
        "/api/v1/models/ac%00me/tiny/access",
        "/api/v1/models/acme/tiny/revisions/ma%00in",
        f"/api/v1/models/acme/tiny/blobs/{'0' * 63}%00",
    ],
)
def test_nul_in_path_parameters_is_rejected(api: Api, url: str) -> None:
    method = "PUT" if "/blobs/" in url else "GET"
    response = send(api, method, url, data=b"x", content_type="application/octet-stream")
    problem(response, 422, "invalid_input")


@pytest.mark.parametrize(
    "query",
    ["action=%00", "actor=a%00b", "repo_id=acme/%00", "since=%00", "limit=%00", "cursor=1%002"],
)
def test_nul_in_query_strings_is_rejected(api: Api, query: str) -> None:
    problem(api.get(f"/api/v1/audit?{query}", api.compliance), 422, "invalid_input")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/models/%ff%fe/tiny"),
        ("GET", "/api/v1/models/acme/%c3%28"),
        ("GET", "/api/v1/audit?action=%ff%fe"),
        ("GET", "/api/v1/audit?%ff=1"),
        ("GET", "/api/v1/requests?repo_id=acme/%e2%82"),
    ],
)
def test_invalid_utf8_in_urls_is_a_client_error(api: Api, method: str, url: str) -> None:
    response = api.call(method, url, api.compliance if "audit" in url else api.reviewer)
    assert 200 <= response.status_code < 500
    if response.status_code >= 400:
        problem(response, response.status_code)


# -- paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/models/acme/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/models/../../etc/passwd",
        "/api/v1/models/acme/tiny/revisions/..%2F..%2Fmain",
        "/api/v1/models/acme/tiny/revisions/%2e%2e",
    ],
)
def test_traversal_in_urls_finds_nothing(api: Api, url: str) -> None:
    response = api.get(url, api.publisher)
    assert response.status_code in (404, 422)
    problem(response, response.status_code)


def test_traversal_in_uploaded_blob_names_is_refused(api: Api) -> None:
    for name in ("..%2F..%2Fsecret", "%2e%2e", "../" + sha256(b"x")):
        response = api.put(f"/api/v1/models/{REPO}/blobs/{name}", api.publisher, data=b"x")
        assert response.status_code in (404, 422), name
        problem(response, response.status_code)


@pytest.mark.parametrize(
    "url",
    [
        f"/api/v1/grants/{10**30}/revoke",
        "/api/v1/grants/-1/revoke",
        "/api/v1/requests/" + "9" * 5000,
        "/api/v1/me/tokens/1.5",
    ],
)
def test_out_of_range_ids_are_404(api: Api, url: str) -> None:
    method = "DELETE" if "/tokens/" in url else ("POST" if "revoke" in url else "GET")
    response = api.call(method, url, api.publisher, json={"reason": "x"})
    problem(response, 404)


# -- routing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["/api/v1/nope", "/api/v1/models/acme", "/api/v2/models", "/nope", "/api/v1/models/a/b/c/d"],
)
def test_unknown_routes_are_404_problem_json(api: Api, url: str) -> None:
    problem(api.get(url, api.publisher), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("DELETE", "/api/v1/models", {"POST"}),
        ("GET", "/api/v1/policies", {"POST"}),
        ("PATCH", f"/api/v1/models/{REPO}", {"GET", "HEAD", "OPTIONS"}),
        ("PUT", "/api/v1/audit", {"GET", "HEAD", "OPTIONS"}),
        ("POST", "/api/v1/me/tokens/1", {"DELETE"}),
    ],
)
def test_wrong_methods_are_405_with_allow(
    api: Api, method: str, url: str, allowed: set[str]
) -> None:
    response = api.call(method, url, api.publisher)
    problem(response, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_errors_carry_the_request_id(api: Api) -> None:
    response = api.client.get("/api/v1/nope", headers={"X-Request-Id": "trace-123"})
    assert problem(response, 404)["request_id"] == "trace-123"
    assert response.headers["X-Request-Id"] == "trace-123"
