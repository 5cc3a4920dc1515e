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
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

WAIT_SECONDS = 30.0  # as long as SQLite's busy timeout: then "database is locked", a 503
POLL_SECONDS = 0.001


class WriterQueue:
    """One writer at a time across the threads and processes that open one database file."""

    def __init__(self, lock_path: Path) -> None:
        self._path = lock_path
        self._fd = -1
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

    def hold(self, queue: WriterQueue) -> None:
        """Note that this connection's transaction holds `queue` until it ends."""
        self.queue = queue

    def commit(self) -> None:
        """Commit, then let the next writer in."""
        try:
            super().commit()
        finally:
            self.leave()

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
    return database.with_name(database.name + "-writers")
