"""Shared fixtures: an isolated data dir and database per test.

Which database: tests under `tests/services`, `tests/api` and `tests/workers` run on PostgreSQL
(one database per pytest run, migrated once, emptied before each test); every other test that
asks for one (the embedded path: CLI, demo server, storage) gets a copy of a migrated SQLite
file. A test overrides its directory's default with `@pytest.mark.sqlite` or
`@pytest.mark.postgres`, or runs once on each with `@on_both_engines` from `tests.pg`. The
markers are set on every test that uses the `database_url` fixture, so `-m "not postgres"`
runs without a PostgreSQL server.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.db.migrate import upgrade
from gateway.demo import seed
from gateway.devtools.upstream import ReferenceUpstream
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings, load_settings
from tests.factories import World
from tests.pg import ResettableDatabase, resettable_database

TESTS = Path(__file__).parent
ENGINES = ("postgres", "sqlite")
ON_POSTGRES_BY_DEFAULT = ("services", "api", "workers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that uses a database with the engine it runs on."""
    for item in items:
        if "database_url" not in getattr(item, "fixturenames", ()):
            continue
        engine = _engine_of(item)
        if not item.get_closest_marker(engine):
            item.add_marker(engine)


def _engine_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "db_engine" in callspec.params:
        return str(callspec.params["db_engine"])
    marked = [engine for engine in ENGINES if item.get_closest_marker(engine)]
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked both sqlite and postgres")
    if marked:
        return marked[0]
    parts = item.path.relative_to(TESTS).parts
    return "postgres" if parts[0] in ON_POSTGRES_BY_DEFAULT else "sqlite"


@pytest.fixture
def db_engine(request: pytest.FixtureRequest) -> str:
    """`postgres` or `sqlite`: the engine this test runs on (see the module docstring)."""
    if hasattr(request, "param"):
        return str(request.param)
    return "postgres" if request.node.get_closest_marker("postgres") else "sqlite"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "airlock.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[ResettableDatabase]:
    """This run's PostgreSQL database, migrated once (skips or fails when unreachable)."""
    with resettable_database() as database:
        yield database


@pytest.fixture
def database_url(db_engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty database of this test's engine."""
    if db_engine == "postgres":
        database: ResettableDatabase = request.getfixturevalue("postgres_database")
        database.reset()
        return database.url
    migrated: Path = request.getfixturevalue("migrated_sqlite")
    db_path = tmp_path / "airlock.db"
    shutil.copy(migrated, db_path)
    return f"sqlite:///{db_path}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for an isolated deployment under tmp_path."""
    return load_settings(
        {"AIRLOCK_DATABASE_URL": database_url, "AIRLOCK_SECRET_KEY": "test-secret"},
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


@pytest.fixture(scope="module")
def seeded_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo data dir seeded once per test module through the services (`airlock demo`'s data)."""
    root = tmp_path_factory.mktemp("demo")
    demo_settings = load_settings({}, data_dir=root)
    upgrade(demo_settings.database_url)
    demo_airlock = build_airlock(demo_settings)
    seed(demo_airlock, root)
    demo_airlock.close()
    return root


@pytest.fixture(scope="module")
def upstream() -> Iterator[ReferenceUpstream]:
    """The reference OpenAI-compatible upstream on a loopback port, one per test module."""
    server = ReferenceUpstream().start()
    yield server
    server.stop()
