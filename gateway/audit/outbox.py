"""Audit events that could not be written when they happened, kept on disk until they are.

An inference stream's event is written when the stream ends, after its content reached the
client. If the database refuses it then, dropping it would leave served content unrecorded;
instead the event is spooled here, one JSON file each (written to a temporary name, fsynced,
renamed), and written to the log later by a background thread: at once after the next event
the process records successfully, and every RETRY_SECONDS while any wait (also in a process
that finds files here when it starts).

A file is claimed by renaming it to a name carrying the claiming process's id, so two
processes never write one event twice; a claim left by a process that died is given back
when the next outbox opens the directory. Delivery is at least once: a process that dies
after committing a spooled event and before deleting its file writes it again.

Pure standard library: what an event is (its `record` keyword arguments) is the caller's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".json"
_CLAIM = ".claim-"
RETRY_SECONDS = 10.0  # between background attempts while events wait


class AuditOutbox:
    """The spool directory of one deployment's host (`<data dir>/audit-outbox`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._draining = threading.Lock()
        self._write: Callable[[dict[str, Any]], None] | None = None
        self._retrying: threading.Thread | None = None  # guarded by _state, like _waiting
        self._state = threading.Lock()  # a spool and a drain's "nothing left" never cross
        self._closed = threading.Event()
        self._wake = threading.Event()  # a retry now, not at the next RETRY_SECONDS
        self._give_back_orphans()
        self._waiting = self.count() > 0

    def attach(self, write: Callable[[dict[str, Any]], None]) -> None:
        """How spooled events are written (each in its own transaction). While any wait, a
        background thread tries every RETRY_SECONDS, so they are written even when no new event
        comes to carry them (a gateway restarted with events waiting and no inference traffic).
        """
        self._write = write
        self.retry_waiting()

    def close(self) -> None:
        """Stop the background retries (spooled files stay for the next process)."""
        self._closed.set()
        self._wake.set()

    def nudge(self) -> None:
        """The database just took an event: retry what waits now, on the background thread
        (never on the caller's: a request that succeeds does not pay for a backlog)."""
        if self._waiting:
            self._wake.set()
            self.retry_waiting()

    def retry_waiting(self) -> None:
        """Start the background retries if events wait and none run (a process that finds
        events an earlier one spooled)."""
        if self._write is None or self._closed.is_set():
            return
        with self._state:
            if not self._waiting or self._retrying is not None:
                return
            self._retrying = threading.Thread(target=self._retry, name="audit-outbox", daemon=True)
            self._retrying.start()

    def _retry(self) -> None:
        """Try every RETRY_SECONDS, or at once when nudged; leave only when nothing waits,
        decided under the same lock a spool sets `waiting` under, so an event spooled
        meanwhile starts a new thread."""
        write = self._write
        assert write is not None
        try:
            while True:
                self._wake.wait(RETRY_SECONDS)
                self._wake.clear()
                if self._closed.is_set():
                    return
                try:
                    self.drain(write)
                except OSError:
                    log.exception("the audit outbox could not be read; retrying later")
                with self._state:
                    if not self._waiting:
                        self._retrying = None
                        return
        finally:
            with self._state:
                if self._retrying is threading.current_thread():
                    self._retrying = None

    @property
    def waiting(self) -> bool:
        """Whether events may be waiting: cheap enough to ask after every event written."""
        return self._waiting

    def count(self) -> int:
        """Events spooled and not yet written (claimed ones included)."""
        return len(self._waiting_files())

    def backlog(self) -> tuple[int, float]:
        """How many events wait (claimed ones included) and the seconds since the oldest of
        them was spooled (0.0 when none), from one look at the directory."""
        files = self._waiting_files()
        stamps = [int(p.name[:20]) for p in files if p.name[:20].isdigit()]
        age = max(0.0, (time.time_ns() - min(stamps)) / 1e9) if stamps else 0.0
        return len(files), age

    def _waiting_files(self) -> list[Path]:
        return [p for p in self._listing() if _is_event(p) or _CLAIM in p.name]

    def put(self, event: dict[str, Any]) -> Path:
        """Spool one event (JSON-serializable) durably; its file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{secrets.token_hex(6)}{SUFFIX}"
        temporary = self.directory / f".{name}.tmp"
        data = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.directory / name
        with self._state:  # the file appears and `waiting` turns on together
            os.rename(temporary, final)
            self._waiting = True
        _fsync_directory(self.directory)
        self.retry_waiting()
        return final

    def drain(self, write: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Write spooled events, oldest first, each with `write` (its own transaction; by
        default the attached writer); stop at the first that fails (left spooled). How many
        were written. A thread already draining makes this a no-op."""
        write = write or self._write
        if write is None:
            raise RuntimeError("no writer attached to the audit outbox")
        if not self._draining.acquire(blocking=False):
            return 0
        written = 0
        try:
            for path in sorted(p for p in self._listing() if _is_event(p)):
                claimed = path.with_name(f"{path.name}{_CLAIM}{os.getpid()}")
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    continue  # another process took it
                try:
                    event = json.loads(claimed.read_bytes())
                except ValueError:
                    os.rename(claimed, path.with_name(f"{path.name}.unreadable"))
                    log.error("spooled audit event %s is unreadable; set aside", path.name)
                    continue
                try:
                    write(event)
                except Exception:
                    os.rename(claimed, path)
                    log.warning("a spooled audit event could not be written yet; kept for later")
                    return written
                claimed.unlink()
                written += 1
            with self._state:
                self._waiting = self.count() > 0
            return written
        finally:
            self._draining.release()

    def _listing(self) -> list[Path]:
        return list(self.directory.iterdir()) if self.directory.is_dir() else []

    def _give_back_orphans(self) -> None:
        """Claims of processes that no longer run go back to the spool."""
        for path in self._listing():
            if _CLAIM not in path.name:
                continue
            name, _, pid = path.name.rpartition(_CLAIM)
            if pid.isdigit() and not _running(int(pid)):
                with contextlib.suppress(FileNotFoundError):  # another process gave it back
                    os.rename(path, path.with_name(name))


def _is_event(path: Path) -> bool:
    return path.name.endswith(SUFFIX) and not path.name.startswith(".")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
