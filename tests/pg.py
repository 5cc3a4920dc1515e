"""PostgreSQL for the tests: one migrated database per run, emptied before each test.

The server is the machine's (`AIRLOCK_TEST_POSTGRES_URL`, default the local `test` database as
`postgres`). Unreachable, the tests that need it are skipped outside CI and fail in CI.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import pytest
from sqlalchemy import Engine, MetaData, create_engine, insert, text
from sqlalchemy.exc import OperationalError

from gateway.db.migrate import upgrade

ADMIN_URL = os.environ.get(
    "AIRLOCK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HOW_TO_START = (
    "start PostgreSQL (e.g. `pg_ctlcluster 15 main start`, trust auth, a database named "
    "'test') or point AIRLOCK_TEST_POSTGRES_URL at a server where the role may create databases"
)
LOCK_TIMEOUT = "5s"

# Tests that should run once on each engine: `@on_both_engines` (the `db_engine` fixture).
on_both_engines = pytest.mark.parametrize("db_engine", ["sqlite", "postgres"], indirect=True)


def unreachable(exc: Exception) -> NoReturn:
    """Skip (outside CI) or fail (in CI) a test that needs PostgreSQL."""
    message = f"PostgreSQL is not reachable ({type(exc).__name__}): {HOW_TO_START}"
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set, so this is an error: {message}") from exc
    pytest.skip(message)


def database_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    admin = create_engine(
        ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    name = f"airlock_t_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # A test database need not survive a crash: commits skip the WAL flush (~2.5 ms each).
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    except OperationalError as exc:
        admin.dispose()
        unreachable(exc)
    try:
        yield database_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class ResettableDatabase:
    """A database migrated once to head, brought back to that state by `reset` before a test.

    `reset` deletes every row and restarts every sequence in one transaction with
    `session_replication_role = replica` (no triggers, so neither the append-only audit triggers
    nor foreign keys interfere; the postgres role is a superuser here), then puts back the rows
    the migrations seeded (the audit chain head). DELETE, not TRUNCATE: on these near-empty tables
    it is about 2 ms against 35 ms for one TRUNCATE of all sixteen tables.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        upgrade(url)
        self.engine: Engine = create_engine(url, pool_size=1, max_overflow=0)
        self.metadata = MetaData()
        try:
            self.metadata.reflect(self.engine)
            self.tables = [t for t in self.metadata.tables.values() if t.name != "alembic_version"]
            with self.engine.connect() as conn:
                self.seeds = self._read_seeds(conn)
                self.script = self._reset_script(conn)
        except BaseException:
            self.engine.dispose()
            raise

    def _read_seeds(self, conn: Any) -> list[tuple[str, list[dict[str, Any]]]]:
        seeds = []
        for table in self.tables:  # no order needed: no foreign key is checked in a reset
            rows = [dict(row._mapping) for row in conn.execute(table.select())]
            if rows:
                seeds.append((table.name, rows))
        return seeds

    def _reset_script(self, conn: Any) -> str:
        sequences = conn.execute(
            text("SELECT schemaname, sequencename, last_value FROM pg_sequences")
        ).all()
        deletes = [f'DELETE FROM "{table.name}"' for table in self.tables]
        restarts = [
            f'ALTER SEQUENCE "{schema}"."{name}" RESTART'
            if last is None
            else f'SELECT setval(\'"{schema}"."{name}"\', {int(last)}, true)'
            for schema, name, last in sequences
        ]
        return ";\n".join([f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'", *deletes, *restarts])

    def reset(self) -> None:
        """Empty the database back to its freshly migrated rows."""
        try:
            self._reset()
        except OperationalError as exc:
            if "lock timeout" not in str(exc):
                raise
            stuck = self._terminate_other_connections()
            pytest.fail(
                f"an earlier test left {stuck} connection(s) to the test database holding locks "
                "(closed now); close every Airlock/engine a test builds"
            )

    def _reset(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.exec_driver_sql(self.script)
            for name, rows in self.seeds:
                conn.execute(insert(self.metadata.tables[name]), rows)

    def _terminate_other_connections(self) -> int:
        with self.engine.begin() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )

    def dispose(self) -> None:
        """Close this helper's own connection."""
        self.engine.dispose()


@contextmanager
def resettable_database() -> Iterator[ResettableDatabase]:
    """A throwaway database migrated to head, for one whole pytest run."""
    with throwaway_database() as url:
        database = ResettableDatabase(url)
        try:
            yield database
        finally:
            database.dispose()
