"""SQLite writers queue for the write lock instead of sleeping through it.

SQLite lets one writer in at a time. A connection that finds the lock taken sleeps in its busy
handler and polls again after 1, 2, 5, 10, ... up to 100 ms, however soon the lock was freed:
under load, waiting writers sleep through free locks, and the tail latency of every request
that writes grows to hundreds of milliseconds. So before `BEGIN IMMEDIATE` a writer takes this
queue first: a thread lock among the threads of a process, which wakes the next thread the
moment the holder commits or rolls back, then an exclusive `flock` on a file beside the
database among processes, polled every millisecond at most. SQLite's own lock and busy
timeout stay underneath, unchanged, for writers that do not use the queue (another program,
the sqlite3 shell).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

WAIT_SECONDS = 30.0  # as long as SQLite's busy timeout: then "database is locked", a 503
POLL_SECONDS = 0.001
CHECK_EVERY = 32  # commits between two looks at the WAL's size
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # checkpoint past this (SQLite's own default: 1000 pages)

log = logging.getLogger(__name__)


class WriterQueue:
    """One writer at a time across the threads and processes that open one database file."""

    def __init__(self, lock_path: Path) -> None:
        self._path = lock_path
        self._fd = -1
        self.checkpointer = Checkpointer(database_of(lock_path))
        self._open()
        _QUEUES.add(self)

    def _open(self) -> None:
        # A descriptor inherited across fork would share its flock with the parent, and a
        # thread lock could be inherited held: a forked child opens its own (see below).
        # Closing the inherited copy leaves the parent's lock alone; unlocking it would not.
        if self._fd >= 0:
            os.close(self._fd)
        self._threads = threading.Lock()
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.checkpointer.reset()

    def __del__(self) -> None:
        # With its engine gone: close the lock file (no holder is left to lose its lock).
        if self._fd >= 0:
            os.close(self._fd)

    def acquire(self, timeout: float = WAIT_SECONDS) -> bool:
        """Wait for the queue; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            if self._lock_file(deadline):
                return True
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    def _lock_file(self, deadline: float) -> bool:
        # flock has no timeout, so another process's writer is polled for, but every
        # POLL_SECONDS at most, not after SQLite's growing sleeps of up to 100 ms.
        pause = POLL_SECONDS / 16
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, POLL_SECONDS)

    def release(self) -> None:
        """Let the next writer in."""
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


class Checkpointer:
    """Checkpoints a WAL database from a thread of its own, so that no writer pays for it.

    SQLite checkpoints on its own inside the COMMIT that takes the WAL past 1000 pages: that
    writer copies the WAL into the database file and syncs it while it still holds the write
    lock (and the queue), so every other writer waits for the disk. Connections that write
    through the queue turn that off (`wal_autocheckpoint=0`, see `QueuedConnection.hold`);
    instead, every CHECK_EVERY commits a writer looks at the WAL's size and, past
    WAL_LIMIT_BYTES, wakes this process's checkpoint thread, which runs a PASSIVE checkpoint on
    its own connection: that takes no write lock, and writers go on appending meanwhile. When
    the last connection to the database closes, SQLite checkpoints what is left, as before.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.wal = database.with_name(database.name + "-wal")
        self.runs = 0  # checkpoints run by this process (for tests)
        self.reset()

    def reset(self) -> None:
        """Forget this process's thread: a forked child starts its own when needed."""
        self._commits = 0
        self._wake = threading.Event()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """A writer committed: now and then, look at the WAL and wake the thread if it is big."""
        self._commits += 1
        if self._commits % CHECK_EVERY:
            return
        try:
            size = os.stat(self.wal).st_size
        except OSError:
            return
        if size >= WAL_LIMIT_BYTES:
            self._ensure_thread()
            self._wake.set()

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name=f"sqlite-checkpoint {self.database.name}", daemon=True
                )
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        wake = self._wake
        conn = sqlite3.connect(self.database, timeout=WAIT_SECONDS, isolation_level=None)
        try:
            while True:
                wake.wait()
                wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:  # the next wake-up tries again
                    log.warning("WAL checkpoint of %s failed: %s", self.database.name, exc)
        finally:
            conn.close()


_QUEUES: weakref.WeakSet[WriterQueue] = weakref.WeakSet()


def _reopen_in_child() -> None:
    for queue in list(_QUEUES):
        queue._open()


os.register_at_fork(after_in_child=_reopen_in_child)


class QueuedConnection(sqlite3.Connection):
    """A sqlite3 connection that leaves the writer queue when its transaction ends."""

    queue: WriterQueue | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = None
        self.checkpoints_handed = False

    def hold(self, queue: WriterQueue) -> None:
        """Note that this connection's transaction holds `queue` until it ends (the first
        time, hand its checkpoints to the queue's checkpointer)."""
        if not self.checkpoints_handed:
            self.execute("PRAGMA wal_autocheckpoint=0")
            self.checkpoints_handed = True
        self.queue = queue

    def commit(self) -> None:
        """Commit, then let the next writer in."""
        queue = self.queue
        try:
            super().commit()
        finally:
            self.leave()
        if queue is not None:
            queue.checkpointer.committed()

    def rollback(self) -> None:
        """Roll back, then let the next writer in."""
        try:
            super().rollback()
        finally:
            self.leave()

    def close(self) -> None:
        """Close (SQLite rolls back an open transaction), then let the next writer in."""
        try:
            super().close()
        finally:
            self.leave()

    def leave(self) -> None:
        """Let the next writer in, if this connection's transaction held the queue."""
        queue, self.queue = self.queue, None
        if queue is not None:
            queue.release()


def queue_path(database: Path) -> Path:
    """The lock file beside `database` (like SQLite's own `-wal` and `-shm` files)."""
    return database.with_name(database.name + QUEUE_SUFFIX)


def database_of(lock_path: Path) -> Path:
    """The database file a queue's lock file stands beside."""
    return lock_path.with_name(lock_path.name.removesuffix(QUEUE_SUFFIX))


QUEUE_SUFFIX = "-writers"
