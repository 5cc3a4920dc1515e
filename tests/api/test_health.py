"""Operations endpoints: liveness, readiness naming what failed, Prometheus metrics, access logs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.observability.readiness import ReadinessProbe
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings, load_settings
from tests.api.hubkit import REPO, bearer, make_hub
from tests.factories import World
from tests.ports import free_port, silent_port
from tests.s3_servers import S3Server, moto_server
from tests.workers.conftest import claimed_redis_db

PASSWORD = "hunter2-not-for-logs"
EFFECTS = ("allow", "deny", "review")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung dependency)."""
    with silent_port() as port:
        yield port


def app_with(settings: Settings, **overrides: object) -> tuple[Flask, Airlock]:
    services = build_airlock(settings.with_overrides(**overrides))
    return create_app(airlock=services), services


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_healthz_answers_while_the_process_lives(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_ready_when_every_configured_dependency_answers(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready" and body["failed"] == []
    states = {name: check["state"] for name, check in body["checks"].items()}
    assert states == {
        "database": "ok",
        "redis": "not_configured",
        "storage": "ok",
        "broker": "not_configured",
    }


def test_readyz_names_each_failed_dependency_without_its_credentials(settings: Settings) -> None:
    app, services = app_with(
        settings,
        redis_url=f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
        broker_url=f"amqp://airlock:{PASSWORD}@127.0.0.1:{free_port()}//",
    )
    try:
        response = app.test_client().get("/readyz")
    finally:
        services.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert sorted(body["failed"]) == ["broker", "redis"]
    assert body["checks"]["database"]["state"] == "ok"
    assert body["checks"]["redis"]["error"].startswith("ConnectionError")
    assert PASSWORD not in response.get_data(as_text=True)


def test_settings_repr_masks_url_passwords_and_keys(settings: Settings) -> None:
    shown = repr(
        settings.with_overrides(
            database_url=f"postgresql+psycopg://airlock:{PASSWORD}@db/airlock",
            redis_url=f"redis://:{PASSWORD}@redis:6379/0",
            broker_url=f"amqp://airlock:{PASSWORD}@mq//",
            s3_secret_access_key=PASSWORD,
            metrics_token=PASSWORD,
        )
    )
    assert PASSWORD not in shown
    assert "redis://:***@redis:6379/0" in shown
    assert "amqp://airlock:***@mq//" in shown


def test_readyz_fails_when_storage_cannot_be_written(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "blobs-to-lose"
    app, services = app_with(settings, storage_url=f"file://{root}")
    root.rmdir()  # the volume went away after start
    try:
        response = app.test_client().get("/readyz")
    finally:
        services.close()
    assert response.status_code == 503
    body = response.get_json()
    assert body["failed"] == ["storage"]
    assert body["checks"]["storage"]["error"].startswith("StorageUnavailable")


def test_readyz_fails_when_the_database_is_down(settings: Settings) -> None:
    url = f"postgresql+psycopg://airlock:{PASSWORD}@127.0.0.1:{free_port()}/airlock"
    app, services = app_with(settings, database_url=url)
    try:
        response = app.test_client().get("/readyz")
    finally:
        services.close()
    assert response.status_code == 503
    body = response.get_json()
    assert body["failed"] == ["database"]
    assert body["checks"]["database"]["error"].startswith("OperationalError")
    assert PASSWORD not in response.get_data(as_text=True)


def test_a_hung_dependency_is_reported_as_failed_within_the_timeout(
    settings: Settings, silent_server: int
) -> None:
    app, services = app_with(
        settings, redis_url=f"redis://127.0.0.1:{silent_server}/0", readyz_timeout=0.2
    )
    try:
        response = app.test_client().get("/readyz")
    finally:
        services.close()
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["state"] in ("timeout", "failed")


def test_checks_run_concurrently(airlock: Airlock) -> None:
    """Two checks that each wait for the other to start: only a concurrent run passes both."""
    both_started = threading.Barrier(2, timeout=5)
    probe = ReadinessProbe(airlock)
    probe.timeout = 10
    probe.checks = {"first": both_started.wait, "second": both_started.wait, "third": None}
    result = probe.run()
    assert result.ready, result.to_dict()
    assert result.to_dict()["checks"]["third"]["state"] == "not_configured"


def test_metrics_count_requests_by_surface_and_status(client: FlaskClient, world: World) -> None:
    hub = make_hub(client, world)
    labels = {"surface": "hub", "method": "GET", "status": "302"}
    before = value("airlock_http_requests_total", **labels)
    missing_before = value("airlock_http_requests_total", surface="api", method="GET", status="404")
    allowed_before = value("airlock_ratelimit_check_duration_seconds_count", outcome="allowed")
    assert hub.get(f"/{REPO}/resolve/main/config.json", hub.researcher).status_code == 302
    assert client.get("/api/v1/models/acme/nope").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert value("airlock_http_requests_total", **labels) == before + 1
    assert value("airlock_http_requests_total", surface="api", method="GET", status="404") == (
        missing_before + 1
    )
    assert value("airlock_ratelimit_check_duration_seconds_count", outcome="allowed") == (
        allowed_before + 1
    )
    assert "airlock_http_request_duration_seconds_bucket" in text
    assert 'airlock_http_requests_total{method="GET",status="302",surface="hub"}' in text


def created_decisions() -> dict[str, float]:
    return {e: value("airlock_decisions_total", action="request:create", effect=e) for e in EFFECTS}


def test_metrics_count_decisions_by_effect_and_reason(client: FlaskClient, world: World) -> None:
    hub = make_hub(client, world)
    denials = value("airlock_decisions_total", action="download:deny", effect="deny")
    response = hub.get(f"/{REPO}/resolve/main/config.json", hub.outsider)
    assert response.status_code in (401, 403)
    codes = {r["code"] for r in hub.last_denial().payload["reasons"]}
    assert value("airlock_decisions_total", action="download:deny", effect="deny") == denials + 1
    for code in codes:
        assert value(
            "airlock_decision_reasons_total", action="download:deny", effect="deny", reason=code
        ), code
    tier = hub.get(f"/api/v1/models/{REPO}/access", hub.researcher).get_json()["tiers"][0]
    before = created_decisions()
    asked = client.post(
        f"/api/v1/models/{REPO}/access", json={"tier": tier["name"]}, headers=bearer(hub.researcher)
    ).get_json()
    effect = asked["effect"]
    assert created_decisions() == before | {effect: before[effect] + 1}
    assert asked["reasons"]
    for reason in asked["reasons"]:
        labels = {"action": "request:create", "effect": effect, "reason": reason["code"]}
        assert value("airlock_decision_reasons_total", **labels) >= 1, reason


def test_metrics_token_is_required_when_configured(settings: Settings) -> None:
    app, services = app_with(settings, metrics_token="metrics-secret")
    client = app.test_client()
    try:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
        right = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret"})
    finally:
        services.close()
    assert right.status_code == 200
    assert right.content_type.startswith("text/plain")


def test_access_log_lines_carry_request_ids_and_never_tokens_or_signatures(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app, services = app_with(settings, log_format="json")
    client = app.test_client()
    try:
        hub = make_hub(client, World(services))
        capsys.readouterr()
        redirect = hub.get(
            f"/{REPO}/resolve/main/config.json?download=1",
            hub.researcher,
            headers={"X-Request-Id": "trace-abc-123"},
        )
        location = urlsplit(redirect.headers["Location"])
        signature = parse_qs(location.query)["s"][0]
        blob = hub.fetch(f"{location.path}?{location.query}")
        listed = client.get("/api/v1/me/grants", headers=bearer(hub.outsider))
        logged = capsys.readouterr().err
    finally:
        services.close()
    assert redirect.status_code == 302 and blob.status_code == 200
    assert redirect.headers["X-Request-Id"] == "trace-abc-123"
    assert listed.status_code == 200
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert [(a["method"], a["status"]) for a in access] == [
        ("GET", 302),
        ("GET", 200),
        ("GET", 200),
    ]
    first, second, third = access
    assert first["request_id"] == "trace-abc-123"
    assert first["path"] == f"/{REPO}/resolve/main/config.json"
    assert first["surface"] == "hub" and first["principal_id"] == hub.researcher.user.id
    assert second["path"] == location.path and "?" not in second["path"]
    assert third["principal_id"] == hub.outsider.user.id
    assert second["request_id"] != first["request_id"]
    for secret in (hub.researcher.token, hub.outsider.token, signature):
        assert secret not in logged


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def test_readyz_with_every_production_backend(settings: Settings, s3: S3Server) -> None:
    """Redis limits, a Redis broker and S3 storage all answer: ready, each check named ok."""
    bucket = s3.new_bucket()
    with claimed_redis_db() as redis_url:
        s3_settings = load_settings(s3.env(bucket), data_dir=settings.data_dir)
        app, services = app_with(
            settings,
            redis_url=redis_url,
            broker_url=redis_url,
            storage_url=s3_settings.storage_url,
            s3_endpoint_url=s3_settings.s3_endpoint_url,
            s3_region=s3_settings.s3_region,
            s3_addressing_style="path",
            s3_access_key_id=s3.access_key,
            s3_secret_access_key=s3.secret_key,
        )
        try:
            ready = app.test_client().get("/readyz")
            s3.client().delete_bucket(Bucket=bucket)
            gone = app.test_client().get("/readyz")
        finally:
            services.close()
    assert ready.status_code == 200, ready.get_json()
    states = {name: check["state"] for name, check in ready.get_json()["checks"].items()}
    assert states == {"database": "ok", "redis": "ok", "storage": "ok", "broker": "ok"}
    assert gone.status_code == 503
    assert gone.get_json()["failed"] == ["storage"]
    assert bucket in gone.get_json()["checks"]["storage"]["error"]


def test_text_logs_carry_the_request_id_too(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app, services = app_with(settings, log_format="text")
    try:
        capsys.readouterr()
        app.test_client().get("/healthz?token=not-logged", headers={"X-Request-Id": "trace-t1"})
        logged = capsys.readouterr().err
    finally:
        services.close()
    line = next(line for line in logged.splitlines() if "gateway.access" in line)
    assert "[trace-t1] GET /healthz 200" in line
    assert "not-logged" not in logged


def test_an_unknown_log_format_is_refused_at_start(tmp_path: Path) -> None:
    env = {"AIRLOCK_LOG_FORMAT": "xml", "AIRLOCK_SECRET_KEY": "x"}
    with pytest.raises(ValueError, match="AIRLOCK_LOG_FORMAT must be one of json, text"):
        load_settings(env, data_dir=tmp_path)


def test_metrics_show_the_audit_outbox_backlog(airlock: Airlock, client: FlaskClient) -> None:
    def scraped() -> dict[str, float]:
        text = client.get("/metrics").get_data(as_text=True)
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("airlock_audit_outbox_")
        }

    assert scraped() == {
        "airlock_audit_outbox_events": 0.0,
        "airlock_audit_outbox_oldest_age_seconds": 0.0,
    }
    outbox = airlock.audit_outbox
    outbox.put({"action": "inference:serve", "payload": {}})
    outbox.put({"action": "inference:serve", "payload": {}})
    time.sleep(0.05)
    found = scraped()
    assert found["airlock_audit_outbox_events"] == 2.0
    assert 0.05 <= found["airlock_audit_outbox_oldest_age_seconds"] < 60
