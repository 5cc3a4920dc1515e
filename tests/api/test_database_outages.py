"""The gateway rides out a PostgreSQL restart: no gateway restart, no 500, no stale connection.

A private throwaway cluster (never the machine's shared server) is restarted under a running
app. The pool checks each connection before lending it (`pool_pre_ping`), so the first request
after a restart already succeeds; while the server is down, requests are 503 with a problem body
(fail closed), and they succeed again as soon as it is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.db.migrate import upgrade
from gateway.services.container import Airlock, build_airlock
from gateway.settings import load_settings
from tests.factories import Actor, World
from tests.pg import PrivateCluster, private_cluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


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
