"""Shared fixtures: an isolated data dir and database per test, migrated once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.db.migrate import upgrade
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings, load_settings
from tests.factories import World


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "airlock.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    """Settings for an isolated deployment under tmp_path."""
    db_path = tmp_path / "airlock.db"
    shutil.copy(migrated_sqlite, db_path)
    return load_settings(
        {"AIRLOCK_DATABASE_URL": f"sqlite:///{db_path}", "AIRLOCK_SECRET_KEY": "test-secret"},
        data_dir=tmp_path,
    ).with_overrides(public_url="http://airlock.test")


@pytest.fixture
def airlock(settings: Settings) -> Iterator[Airlock]:
    """The services of one isolated deployment."""
    services = build_airlock(settings)
    yield services
    services.close()


@pytest.fixture
def app(airlock: Airlock) -> Flask:
    """The gateway app over those services."""
    return create_app(airlock=airlock)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the gateway app."""
    return app.test_client()


@pytest.fixture
def world(airlock: Airlock) -> World:
    """Factories building orgs, users, models and grants through the services."""
    return World(airlock)
