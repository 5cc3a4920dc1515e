"""PostgreSQL outages: the gateway rides out a restart and fails closed while it cannot go on.

A private throwaway cluster (never the machine's shared server) is restarted under a running
app. The pool checks each connection before lending it (a poll of its socket, a ping after a
long idle), so the first request after a restart already succeeds; while the server is down,
requests are 503 with a problem body (fail closed), and they succeed again as soon as it is
back. On the shared test database: a row lock held past the lock timeout is a 503 too, with
nothing issued (PostgreSQL's counterpart of the SQLite busy-timeout test in test_hub.py); a
backend killed while its connection idles in the pool is replaced, without a round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, event, func, select, text
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.db import engine as engine_module
from gateway.db.migrate import upgrade
from gateway.db.models import DownloadTicket
from gateway.services.container import Airlock, build_airlock
from gateway.settings import load_settings
from tests.api.hubkit import REPO, Hub, make_hub
from tests.factories import Actor, World
from tests.pg import PrivateCluster, private_cluster

pytestmark = pytest.mark.postgres


@pytest.fixture
def hub(client: FlaskClient, world: World) -> Hub:
    return make_hub(client, world)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    with private_cluster() as running:
        upgrade(running.url)
        yield running


@pytest.fixture
def private_airlock(cluster: PrivateCluster, tmp_path: Path) -> Iterator[Airlock]:
    settings = load_settings(
        {"AIRLOCK_DATABASE_URL": cluster.url, "AIRLOCK_SECRET_KEY": "restart-test"},
        data_dir=tmp_path,
    )
    services = build_airlock(settings)
    yield services
    services.close()


def whoami(client: FlaskClient, actor: Actor) -> TestResponse:
    return client.get("/api/v1/me", headers={"Authorization": f"Bearer {actor.token}"})


@pytest.mark.slow
def test_requests_succeed_across_a_postgresql_restart(
    cluster: PrivateCluster, private_airlock: Airlock
) -> None:
    rob = World(private_airlock).actor("rob")
    client = create_app(airlock=private_airlock).test_client()
    assert whoami(client, rob).json["username"] == "rob"
    pool = private_airlock.db.engine.pool
    assert pool.checkedin() >= 1  # connections that will go stale

    cluster.restart()
    after = whoami(client, rob)
    assert after.status_code == 200, after.get_data(as_text=True)
    assert after.json["username"] == "rob"


@pytest.mark.slow
def test_requests_are_503_while_postgresql_is_down_and_succeed_once_it_is_back(
    cluster: PrivateCluster, private_airlock: Airlock
) -> None:
    rob = World(private_airlock).actor("rob")
    client = create_app(airlock=private_airlock).test_client()
    assert whoami(client, rob).status_code == 200

    cluster.stop()
    down = whoami(client, rob)
    assert down.status_code == 503
    assert down.headers["Content-Type"] == "application/problem+json"
    assert down.headers["Retry-After"]
    assert down.json is not None
    assert down.json["code"] == "service_unavailable"
    assert "database is unavailable" in down.json["detail"]

    cluster.start()
    back = whoami(client, rob)
    assert back.status_code == 200, back.get_data(as_text=True)


def test_a_lock_held_past_the_lock_timeout_is_a_503_and_nothing_is_issued(hub: Hub) -> None:
    engine = hub.world.airlock.db.engine
    engine.dispose()  # new connections wait 0.2 s for a lock instead of 30
    event.listen(engine, "connect", _short_lock_timeout)
    holder = create_engine(hub.world.airlock.settings.database_url)
    try:
        with holder.connect() as conn:  # another process's transaction, stuck holding the head
            conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
            response = hub.get(f"/{REPO}/resolve/main/config.json", hub.researcher)
            conn.rollback()
    finally:
        holder.dispose()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "Location" not in response.headers
    with hub.world.airlock.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DownloadTicket)) == 0


def _short_lock_timeout(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = 200")
    dbapi_connection.commit()


def test_gateway_connections_wait_at_most_30_s_for_a_lock(airlock: Airlock) -> None:
    with airlock.db.session() as s:
        assert s.scalar(text("SHOW lock_timeout")) == "30s"


def signed_in(airlock: Airlock) -> tuple[FlaskClient, Actor]:
    """A client of the app and a user whose first request went through (connections pooled)."""
    rob = World(airlock).actor("rob")
    client = create_app(airlock=airlock).test_client()
    assert whoami(client, rob).status_code == 200
    return client, rob


def _backend_pids(airlock: Airlock) -> set[int]:
    """The server processes behind the pool's idle connections."""
    pool = airlock.db.engine.pool
    conns = [pool.connect() for _ in range(pool.checkedin())]
    try:
        return {conn.driver_connection.info.backend_pid for conn in conns}  # type: ignore[union-attr]
    finally:
        for conn in conns:
            conn.close()


def test_a_pooled_connection_killed_by_the_server_is_replaced_before_it_is_lent(
    airlock: Airlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rob = signed_in(airlock)
    pids = _backend_pids(airlock)
    assert pids
    killer = create_engine(airlock.settings.database_url)
    try:
        with killer.connect() as conn:
            for pid in pids:
                assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    finally:
        killer.dispose()
    pings = _count_pings(monkeypatch)
    after = whoami(client, rob)
    assert after.status_code == 200, after.get_data(as_text=True)
    assert not pids & _backend_pids(airlock), "a killed connection was lent again"
    assert pings == [], "the dead connections were found without a round trip"


def test_a_healthy_idle_connection_is_lent_without_a_round_trip(
    airlock: Airlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rob = signed_in(airlock)
    before = _backend_pids(airlock)
    pings = _count_pings(monkeypatch)
    for _ in range(3):
        assert whoami(client, rob).status_code == 200
    assert pings == []
    assert _backend_pids(airlock) == before, "healthy connections were replaced"


def test_a_connection_idle_for_long_is_pinged_before_it_is_lent(
    airlock: Airlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rob = signed_in(airlock)
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    pings = _count_pings(monkeypatch)
    assert whoami(client, rob).status_code == 200
    assert pings, "a connection idle past the limit was lent unchecked"


def _count_pings(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record each ping the pool makes (the dialect's own ping still runs)."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    seen: list[object] = []
    real = PGDialect_psycopg.do_ping

    def counting(self: PGDialect_psycopg, dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return real(self, dbapi_connection)

    monkeypatch.setattr(PGDialect_psycopg, "do_ping", counting)
    return seen


def test_connections_past_descriptor_1024_are_checked_too(
    airlock: Airlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy process holds many files: select() cannot watch a descriptor past 1024 and the
    check must not mistake that for a dead connection."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:  # room for the filler: raise the soft limit up to the hard one
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.fail(f"this test needs 2048 open files; the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        airlock.db.engine.dispose()  # the next connection gets a descriptor past the filler
        client, rob = signed_in(airlock)
        before = _backend_pids(airlock)
        pings = _count_pings(monkeypatch)
        assert whoami(client, rob).status_code == 200
        assert _backend_pids(airlock) == before and pings == []
        pool = airlock.db.engine.pool
        conn = pool.connect()
        try:
            assert conn.driver_connection.fileno() > 1024  # type: ignore[union-attr]
        finally:
            conn.close()
    finally:
        for fd in filler:
            os.close(fd)
