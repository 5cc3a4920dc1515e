"""WAL checkpoints run on a thread of their own, never inside a writer's COMMIT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.db import sqlite_writers
from gateway.db.engine import Database

pytestmark = pytest.mark.sqlite


def write_rows(database: Database, count: int) -> None:
    for i in range(count):
        with database.session() as session:
            session.execute(text("INSERT INTO t VALUES (:i, :pad)"), {"i": i, "pad": "x" * 3000})
            session.commit()


@pytest.fixture
def database(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'w.db'}")
    with database.session() as session:
        session.execute(text("CREATE TABLE t (i INTEGER, pad TEXT)"))
        session.commit()
    return database


def test_writers_never_checkpoint_inside_their_commit(
    database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite_writers, "WAL_LIMIT_BYTES", 1 << 40)  # the thread never wakes
    write_rows(database, 1500)  # a page each: SQLite's own checkpoint would run at 1000
    # Checkpointed at 1000 pages, the WAL would be reused from its start and stay near 4 MB.
    assert (tmp_path / "w.db-wal").stat().st_size > 1400 * 4096, "a writer checkpointed"
    assert (tmp_path / "w.db").stat().st_size < 100 * 4096, "nothing was copied back yet"
    database.dispose()


def test_the_checkpoint_thread_copies_the_wal_back(
    database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite_writers, "CHECK_EVERY", 1)
    monkeypatch.setattr(sqlite_writers, "WAL_LIMIT_BYTES", 64 * 1024)
    write_rows(database, 100)
    queue = next(q for q in sqlite_writers._QUEUES if q.checkpointer.database == tmp_path / "w.db")
    checkpointer = queue.checkpointer
    deadline = time.monotonic() + 30
    # every commit past the limit wakes the thread: the last wake-up copies the last rows
    while (tmp_path / "w.db").stat().st_size < 100 * 3000:
        assert time.monotonic() < deadline, "the rows never reached the database file"
        time.sleep(0.01)
    assert checkpointer.runs >= 1
    with database.session() as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 100
    database.dispose()
