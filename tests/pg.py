"""PostgreSQL for the tests: one migrated database per run, emptied before each test; and a
private throwaway cluster for tests that must stop or restart the server.

The server is the machine's (`AIRLOCK_TEST_POSTGRES_URL`, default the local `test` database as
`postgres`). Unreachable, the tests that need it are skipped outside CI and fail in CI.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import Engine, MetaData, create_engine, insert, text
from sqlalchemy.exc import OperationalError

from gateway.db.migrate import upgrade
from tests.ports import free_port

ADMIN_URL = os.environ.get(
    "AIRLOCK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HOW_TO_START = (
    "start PostgreSQL (e.g. `pg_ctlcluster 15 main start`, trust auth, a database named "
    "'test') or point AIRLOCK_TEST_POSTGRES_URL at a server where the role may create databases"
)
LOCK_TIMEOUT = "5s"
CLUSTER_TIMEOUT = 60  # seconds for any initdb / pg_ctl step of a private cluster

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


def _postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian layout, else on PATH)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _missing(what: str) -> NoReturn:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set, so this is an error: {what}")
    pytest.skip(what)


class PrivateCluster:
    """A PostgreSQL server of the test's own (initdb + pg_ctl), which it may stop and restart.

    Never the machine's shared server. As root, every command runs as the `postgres` OS user
    (initdb refuses root); the data directory and the Unix socket live in `root`.
    """

    def __init__(self, bin_dir: Path, root: Path, *, run_as: list[str]) -> None:
        self.bin_dir, self.root, self.run_as = bin_dir, root, run_as
        self.port = free_port()
        self.data = root / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        argv = [*self.run_as, str(self.bin_dir / tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT)
        if done.returncode:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} {args[0]} failed: {done.stderr or done.stdout}\n{tail}")

    def init(self) -> None:
        """Create the cluster: trust auth for the `postgres` role, no fsync (throwaway data)."""
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def _ctl(self, action: str, *extra: str) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c shared_buffers=16MB"
        )
        log = str(self.root / "server.log")
        self._pg("pg_ctl", action, "-D", str(self.data), "-o", options, "-l", log, "-w", *extra)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("start", "-t", str(CLUSTER_TIMEOUT))

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect every client, then shut down cleanly)."""
        self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")

    def restart(self) -> None:
        """Stop (fast) and start again: every existing connection is cut."""
        self._ctl("restart", "-m", "fast", "-t", str(CLUSTER_TIMEOUT))


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A running private cluster, removed afterwards; skipped (failed in CI) without binaries."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        _missing(
            "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
            "apt-get install postgresql"
        )
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="airlock-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            _missing("running as root, the private cluster needs a `postgres` OS user")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    cluster = PrivateCluster(bin_dir, root, run_as=run_as)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with suppress(RuntimeError, subprocess.TimeoutExpired):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
