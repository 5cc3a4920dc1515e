"""SQLite writers wait in a kernel queue (thread lock + flock), released when transactions end."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from gateway.db.engine import Database, begin_read_only
from gateway.db.sqlite_writers import WriterQueue, queue_path


def _database(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'w.db'}")
    with database.session() as session:
        session.execute(text("CREATE TABLE t (n INTEGER NOT NULL)"))
        session.commit()
    return database


def _queue_is_free(tmp_path: Path) -> bool:
    """Whether another process could take the queue now (flock is per open file)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return bool(pool.apply(_try_take, (str(queue_path(tmp_path / "w.db")),)))


def _try_take(path: str) -> bool:
    return WriterQueue(Path(path)).acquire(timeout=0.2)


def test_a_write_transaction_holds_the_queue_until_commit(tmp_path: Path) -> None:
    database = _database(tmp_path)
    with database.session() as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        assert not _queue_is_free(tmp_path)
        session.commit()
        assert _queue_is_free(tmp_path)
    database.dispose()


def test_rollback_and_close_release_the_queue(tmp_path: Path) -> None:
    database = _database(tmp_path)
    with database.session() as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        session.rollback()
        assert _queue_is_free(tmp_path)
        session.execute(text("INSERT INTO t VALUES (2)"))
    assert _queue_is_free(tmp_path)  # closed with its transaction open
    with database.session() as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    database.dispose()


def test_read_only_transactions_never_take_the_queue(tmp_path: Path) -> None:
    database = _database(tmp_path)
    with database.session() as session:
        begin_read_only(session)
        session.execute(text("SELECT count(*) FROM t")).scalar_one()
        assert _queue_is_free(tmp_path)
    database.dispose()


def test_a_lock_held_outside_the_queue_fails_begin_as_operational_error(tmp_path: Path) -> None:
    """BEGIN runs on the DBAPI cursor: a locked database is still SQLAlchemy's OperationalError
    (a 503), the failed writer leaves the queue, and the next one gets in once the lock is gone."""
    database = _database(tmp_path)
    event.listen(database.engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=50"))
    database.engine.dispose()
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)  # not in the queue
    other.execute("BEGIN IMMEDIATE")
    try:
        with database.session() as session, pytest.raises(OperationalError, match="locked"):
            session.execute(text("INSERT INTO t VALUES (1)"))
        assert _queue_is_free(tmp_path)
        with database.session() as session:
            begin_read_only(session)  # a deferred BEGIN takes no lock: reads go on
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
    with database.session() as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        session.commit()
    database.dispose()


def test_a_writer_of_the_same_process_waits_then_gives_up(tmp_path: Path) -> None:
    queue = WriterQueue(tmp_path / "q")
    assert queue.acquire()
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(queue.acquire(timeout=0.2)))
    waiter.start()
    waiter.join()
    assert outcome == [False]
    queue.release()
    assert queue.acquire(timeout=0.2)
    queue.release()


def _append_rows(url: str, rows: int) -> None:
    database = Database(url)
    threads = [threading.Thread(target=_append, args=(database, rows)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database.dispose()


def _append(database: Database, rows: int) -> None:
    for _ in range(rows):
        with database.session() as session:
            last = session.execute(text("SELECT coalesce(max(n), 0) FROM t")).scalar_one()
            session.execute(text("INSERT INTO t VALUES (:n)"), {"n": last + 1})
            session.commit()


def test_processes_and_threads_write_one_after_another(tmp_path: Path) -> None:
    """Read-then-write transactions from 3 processes x 4 threads: no lost update, no error."""
    database = _database(tmp_path)
    url = database.url
    database.dispose()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_rows, args=(url, 25)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    check = Database(url)
    with check.session() as session:
        values = session.execute(text("SELECT n FROM t ORDER BY n")).scalars().all()
    check.dispose()
    assert values == list(range(1, 3 * 4 * 25 + 1))


def _child_takes(queue: WriterQueue, result: Any, hold: Any) -> None:
    result.put(queue.acquire(timeout=0.2))
    hold.wait(timeout=30)


def test_sibling_processes_forked_from_one_parent_queue_behind_each_other(
    tmp_path: Path,
) -> None:
    """gunicorn forks its workers from one master: they must not share one flock via its fd."""
    queue = WriterQueue(tmp_path / "q")
    ctx = multiprocessing.get_context("fork")
    result, hold = ctx.SimpleQueue(), ctx.Event()
    first = ctx.Process(target=_child_takes, args=(queue, result, hold))
    first.start()
    assert result.get() is True
    second = ctx.Process(target=_child_takes, args=(queue, result, hold))
    second.start()
    assert result.get() is False  # the first still holds the queue
    hold.set()
    for child in (first, second):
        child.join(timeout=30)
        assert child.exitcode == 0
