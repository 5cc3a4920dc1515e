"""Processes opening one SQLite database at once all get a working WAL connection.

WAL is a property of the file: the first connection switches a rollback-journal database to
it, and that switch needs the exclusive lock. Several processes opening a fresh database at
once each hold a read lock while they wait for it; SQLite refuses such a deadlock at once,
without waiting out the busy timeout, so a naive `PRAGMA journal_mode=WAL` on connect failed
in one of them ("database is locked"; seen in CI with eight writer processes).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.db.engine import Database
from gateway.db.migrate import upgrade

pytestmark = pytest.mark.sqlite

OPENERS = 8
ROUNDS = 6


def open_and_write(url: str, opener: int, start: Any) -> None:
    """One process: a new engine, its first connection made right after the barrier."""
    database = Database(url)
    start.wait(60)
    with database.session() as session:
        session.execute(text("INSERT INTO t VALUES (:i)"), {"i": opener})
        session.commit()
    database.dispose()


def rollback_journal_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (i INTEGER)")
    conn.close()
    assert journal_mode(path) == "delete"


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_processes_opening_a_fresh_database_at_once_all_connect(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    for round_ in range(ROUNDS):  # the race is narrow: a few fresh databases in a row
        path = tmp_path / f"fresh-{round_}.db"
        rollback_journal_database(path)
        start = ctx.Barrier(OPENERS)
        procs = [
            ctx.Process(target=open_and_write, args=(f"sqlite:///{path}", n, start))
            for n in range(OPENERS)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0] * OPENERS, f"round {round_}"
        assert journal_mode(path) == "wal"
        with sqlite3.connect(path) as conn:
            assert sorted(r[0] for r in conn.execute("SELECT i FROM t")) == list(range(OPENERS))
        conn.close()


def test_a_migrated_database_is_left_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "migrated.db"
    upgrade(f"sqlite:///{path}")
    assert journal_mode(path) == "wal"


def test_an_in_memory_database_still_connects() -> None:
    database = Database("sqlite://")
    with database.session() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar_one() == "memory"
    database.dispose()
