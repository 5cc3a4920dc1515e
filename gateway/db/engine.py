"""Engine and session factory for the configured database (SQLite or PostgreSQL)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import InvalidatePoolError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gateway.db.prepared import execute_driver
from gateway.db.sqlite_writers import QueuedConnection, WriterQueue, queue_path
from gateway.sockets import readable_while_idle

# Set by `begin_read_only` around the begin it causes, read by the SQLite begin listener: a flag
# in the context costs less than an execution option (a Connection.execution_options call).
_READ_ONLY: ContextVar[bool] = ContextVar("airlock_read_only", default=False)
CONNECT_TIMEOUT_SECONDS = 10  # an unreachable PostgreSQL fails the request (503) in bounded time
# A row lock held longer than this (a stuck transaction) fails the waiting request with 503 rather
# than holding it forever: the same 30 s as SQLite's busy timeout.
LOCK_TIMEOUT_MS = 30_000
_WAL_RETRY_SECONDS = 0.005


def begin_read_only(session: Session) -> None:
    """Begin `session`'s transaction as one that only reads: on SQLite a deferred `BEGIN`.

    Every other transaction begins `BEGIN IMMEDIATE` and so holds SQLite's write lock from its
    first statement; a read-only one takes none and never waits on writers. A deferred read
    cannot safely turn into a write under concurrent writers (SQLite refuses the upgrade of a
    stale snapshot at once), so code that may write afterwards must end this transaction first
    (commit or rollback); the next one begins immediate again. No effect on PostgreSQL, and
    none once the session's transaction has begun.
    """
    if not session.in_transaction():
        flag = _READ_ONLY.set(True)
        try:
            session.connection()
        finally:
            _READ_ONLY.reset(flag)


def begin_reads(session: Session) -> None:
    """Begin `session`'s work as independent reads: on PostgreSQL no transaction at all (each
    statement commits alone, and under READ COMMITTED each statement of a transaction has its
    own snapshot anyway), which saves the BEGIN and ROLLBACK round trips; on SQLite a read-only
    transaction (`begin_read_only`). End it (commit or rollback) before writing: the next
    transaction is an ordinary one. No effect once the session's transaction has begun."""
    if session.in_transaction():
        return
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    else:
        begin_read_only(session)


def begin_one_statement(session: Session) -> None:
    """On PostgreSQL, let `session`'s next statement be its own transaction (AUTOCOMMIT): for
    a write that is one statement (an audit event on PostgreSQL is one insert, chained by its
    commit trigger), saving the BEGIN and COMMIT round trips. Nothing on SQLite."""
    if not session.in_transaction() and session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


class Database:
    """Owns one engine and hands out sessions; SQLite gets WAL and immediate transactions."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.file = sqlite_file(url)  # None: PostgreSQL or an in-memory SQLite database
        self.engine = _make_engine(url, echo=echo)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        """Whether the embedded SQLite backend is in use."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session closed on exit; callers commit explicitly."""
        session = self.sessionmaker()
        try:
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _make_engine(url: str, *, echo: bool) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        queue = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            queue = WriterQueue(queue_path(path))
        connect_args = {"timeout": 30, "factory": QueuedConnection}
        engine = create_engine(url, echo=echo, connect_args=connect_args)
        _configure_sqlite(engine, queue)
        return engine
    engine = create_engine(
        url,
        echo=echo,
        # A PostgreSQL restart (or failover) leaves every pooled connection dead: each one is
        # checked before it is lent (`_configure_postgres`), and a dead pool is replaced at once,
        # so the first request after a restart already succeeds. While the server is down, the
        # connect error surfaces as OperationalError: a 503, never a 500 (gateway/api/errors.py).
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )
    _configure_postgres(engine)
    return engine


def _configure_postgres(engine: Engine) -> None:
    """A lock wait gives up after LOCK_TIMEOUT_MS, as SQLite's busy timeout does; a pooled
    connection is checked before it is lent (see `_check_idle_connection`)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        dbapi_connection.commit()  # a SET inside a rolled-back transaction would not stick

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        _check_idle_connection(engine, dbapi_connection, record.info.get(_IDLE_SINCE))


_IDLE_SINCE = "airlock_idle_since"
# A connection idle for longer is also pinged (one round trip) before it is lent.
PING_AFTER_IDLE_SECONDS = 30.0


def _check_idle_connection(engine: Engine, dbapi_connection: Any, idle_since: float | None) -> None:
    """Refuse a pooled PostgreSQL connection that died while idle; the pool then replaces it,
    and every connection pooled before (`InvalidatePoolError`: a restart kills them all).

    SQLAlchemy's `pool_pre_ping` pays a round trip on every checkout, twice per inference
    request. This check costs a poll of the socket instead: a server that shuts down or
    restarts, or a backend that is terminated, sends its goodbye and closes the connection,
    which makes the idle socket readable; nothing else arrives on an idle connection of ours
    (no LISTEN). A connection idle for longer than PING_AFTER_IDLE_SECONDS, which may have
    died without a word (a lost peer, a dropped NAT entry), is pinged as before. A connection
    just made (no `idle_since`) is not checked."""
    if idle_since is None:
        return
    dead = (
        dbapi_connection.closed
        or dbapi_connection.broken
        or readable_while_idle(dbapi_connection.fileno())
    )
    if not dead and time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
        try:
            dead = not engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error:
            dead = True
    if dead:
        raise InvalidatePoolError("the server closed this pooled connection")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database (`sqlite://`,
    `sqlite:///:memory:`) or another engine's URL."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    path = parsed.database
    return Path(path) if path and path != ":memory:" else None


def use_wal(cursor: Any) -> None:
    """Put the database behind a sqlite3 `cursor` in WAL mode (a no-op for an in-memory one).

    WAL is recorded in the file, so a database already in it needs no switch and takes no lock
    for one. The switch from a rollback journal needs the exclusive lock: processes opening a
    fresh database at once each hold a read lock while they wait for it, and SQLite refuses
    that deadlock at once instead of waiting out the busy timeout. So the switch is retried,
    until the busy timeout, while the database is locked."""
    deadline = time.monotonic() + LOCK_TIMEOUT_MS / 1000
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if mode in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_WAL_RETRY_SECONDS)


def _configure_sqlite(engine: Engine, queue: WriterQueue | None) -> None:
    """Foreign keys on, WAL, and BEGIN IMMEDIATE so writers queue instead of deadlocking
    (plain BEGIN for transactions begun with `begin_read_only`); writers wait in `queue`.

    BEGIN runs on the DBAPI cursor (`execute_driver`): through `exec_driver_sql` SQLAlchemy's
    statement machinery cost more than SQLite's own work for it, on every request. A locked
    database is still SQLAlchemy's OperationalError; BEGIN is neither echoed nor seen by cursor
    events."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if _READ_ONLY.get():
            execute_driver(connection, "BEGIN")
            return
        driver = connection.connection.driver_connection
        if queue is None or not isinstance(driver, QueuedConnection):
            execute_driver(connection, "BEGIN IMMEDIATE")
            return
        if not queue.acquire():
            raise OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked"))
        driver.hold(queue)
        try:
            execute_driver(connection, "BEGIN IMMEDIATE")
        except BaseException:
            driver.leave()
            raise
