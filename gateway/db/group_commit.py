"""Group commit for SQLite: the writes of many request threads in one immediate transaction.

SQLite admits one writer at a time, so a request that writes holds the database's write lock
from its `BEGIN IMMEDIATE` to its COMMIT, and every other writer of every process waits. Under
load that serialized section, not the CPU, bounds the rate of requests that write (a GET
resolve writes a ticket and its audit event). A `GroupCommit` lets the threads of a process
share it: a request does its reads in its own read-only transaction, ends it, and hands its
writes to `run` as a job. The first thread to arrive becomes the leader: it takes the write
lock once, runs every job queued by then (its own first) in one transaction, commits, and
wakes the others with their results; a thread that arrives while a batch is running waits for
the next batch, which the head of the queue leads. Nobody's work is acknowledged before the
COMMIT that holds it, so an answer never outruns its write.

A job that raises is left out: the batch is rolled back and re-run without it, and the job's
caller gets its exception. A database error (the lock timed out, the disk failed) fails the
whole batch: every job's caller gets it. Either way, the undo callbacks registered by the rolled
back jobs run (a limiter lease taken inside a job is given back).

PostgreSQL needs none of this (row locks let writers overlap): `Database.group_commit` is None
there and callers keep their own transactions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

T = TypeVar("T")

MAX_BATCH = 64
# A follower waits at most this long for its batch: longer than the writer queue's own wait
# (30 s, then "database is locked"), so it only fires if a leader thread vanished.
WAIT_SECONDS = 75.0


class Batch:
    """What a job writes with: the shared connection (inside the batch's transaction), state
    the batch's jobs share (the audit head), and undo callbacks for work outside the database."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state: dict[str, Any] = {}  # per-batch state shared by jobs (the audit head)
        self._undo: list[Callable[[], None]] = []

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Run `undo` if this batch's transaction is rolled back (a lease to give back)."""
        self._undo.append(undo)

    def _rolled_back(self) -> None:
        for undo in reversed(self._undo):
            undo()  # undos are best effort by contract: they never raise


class _Slot(Generic[T]):
    __slots__ = ("done", "error", "job", "lead", "result")

    def __init__(self, job: Callable[[Batch], T]) -> None:
        self.job = job
        self.done = threading.Event()
        self.lead = False
        self.result: T | None = None
        self.error: BaseException | None = None


class _JobFailed(Exception):
    """One job raised: roll the batch back and run it again without that job."""


class GroupCommit:
    """Batches the write jobs of one process's threads into shared immediate transactions."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._mutex = threading.Lock()
        self._queue: list[_Slot[Any]] = []
        self._leading = False
        self._conn: Connection | None = None  # the leaders' connection, one at a time
        self._pid = 0
        self.batches = 0  # transactions committed or failed, for tests and metrics
        self.jobs = 0

    def close(self) -> None:
        """Return the leaders' connection to the pool (a later batch opens another)."""
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()

    def run(self, job: Callable[[Batch], T]) -> T:
        """Run `job` in a shared write transaction; its result once that transaction committed.

        `job` runs on whichever thread leads the batch, with the batch's connection: it must
        only write through it and must not block on anything but the database.
        """
        slot: _Slot[T] = _Slot(job)
        with self._mutex:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            self._wait(slot)
            if not slot.lead:
                return _outcome(slot)
        try:
            self._execute()
        finally:
            with self._mutex:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._leading = False
        return _outcome(slot)

    def _wait(self, slot: _Slot[Any]) -> None:
        """Wait until `slot`'s batch ran or it was made the next leader. A job still queued
        after WAIT_SECONDS is withdrawn (its caller gets "database is locked", a 503); one
        already in a running batch waits for that batch, which the writer queue bounds."""
        while not slot.done.wait(WAIT_SECONDS):
            with self._mutex:
                if slot in self._queue and not slot.lead:
                    self._queue.remove(slot)
                    raise OperationalError("group commit", None, Exception("database is locked"))

    def _take(self) -> list[_Slot[Any]]:
        """The next batch: the queue's head (the leader's own job first), up to max_batch."""
        with self._mutex:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
        return batch

    def _execute(self) -> None:
        """Run the queued jobs in one transaction; retry without a job that raised; wake all.

        The batch is taken once the write lock is held: jobs queued while the leader waited
        for it (another process's batch) join this one. Every slot ends with a result or an
        error, and every follower is woken, whatever happens (the leader's own slot is woken
        too, harmlessly)."""
        pending: list[_Slot[Any]] = []
        try:
            failed = self._attempt(pending)
            while failed is not None:
                failed.done.set()
                pending.remove(failed)
                failed = self._attempt(pending) if pending else None
        except BaseException as exc:  # the database failed the batch: it failed every job
            pending = pending or self._take()  # the lock never came: fail those it was for
            for slot in pending:
                slot.error = exc
            raise
        finally:
            for slot in pending:
                slot.done.set()

    def _attempt(self, pending: list[_Slot[Any]]) -> _Slot[Any] | None:
        """One transaction over `pending` (filled from the queue once the lock is held when
        empty): None when it committed, else the slot whose job raised."""
        conn = self._connection()
        batch = Batch(conn)
        failed: _Slot[Any] | None = None
        try:
            with conn.begin():
                if not pending:
                    pending.extend(self._take())
                self.batches += 1
                self.jobs += len(pending)
                for slot in pending:
                    failed = slot
                    try:
                        slot.result = slot.job(batch)
                    except OperationalError:  # the connection or the lock: the batch's
                        raise
                    except Exception as exc:  # the job's own (a constraint it broke too)
                        slot.error = exc
                        raise _JobFailed from exc
                failed = None
        except _JobFailed:
            batch._rolled_back()
            return failed
        except BaseException:
            batch._rolled_back()
            self.close()  # a connection that failed is not lent again
            raise
        return None

    def _connection(self) -> Connection:
        """The leaders' connection, kept between batches (no pool checkout per batch); a
        forked child opens its own and leaves its parent's alone."""
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated or self._pid != os.getpid():
            conn = self._conn = self.engine.connect()
            self._pid = os.getpid()
        return conn


def _outcome(slot: _Slot[T]) -> T:
    if slot.error is not None:
        raise slot.error
    return slot.result  # type: ignore[return-value]  # set by the batch that committed it
