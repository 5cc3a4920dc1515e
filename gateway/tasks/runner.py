"""Task runners: tasks take ids, are enqueued after commit, and are safe to run twice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
_PENDING = "airlock_pending_tasks"


class TaskRunner(Protocol):
    """Sends a named task with JSON-serializable keyword arguments (ids, not objects)."""

    def send(self, name: str, kwargs: dict[str, Any]) -> None:
        """Run or enqueue the task."""
        ...


class InProcessRunner:
    """The embedded default: runs each registered task synchronously, in this process."""

    def __init__(self) -> None:
        self.tasks: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, func: Callable[..., Any]) -> None:
        """Make `func` runnable under the stable task name `name`."""
        self.tasks[name] = func

    def send(self, name: str, kwargs: dict[str, Any]) -> None:
        """Run the task now; a failure is logged, never raised into the caller's request."""
        try:
            self.tasks[name](**kwargs)
        except Exception:
            log.exception("task %s failed", name)


def enqueue_after_commit(
    session: Session, runner: TaskRunner, name: str, kwargs: dict[str, Any]
) -> None:
    """Queue a task to be sent only once the session's transaction commits."""
    pending: list[tuple[TaskRunner, str, dict[str, Any]]] = session.info.setdefault(_PENDING, [])
    # Listen for the session's lifetime: a `once` listener stays registered after it fires, so
    # registering it again is a no-op and tasks enqueued after a first commit were never sent.
    if not event.contains(session, "after_commit", _flush):
        event.listen(session, "after_commit", _flush)
        event.listen(session, "after_rollback", _discard)
    pending.append((runner, name, kwargs))


def _flush(session: Session) -> None:
    for runner, name, kwargs in session.info.pop(_PENDING, []):
        runner.send(name, kwargs)


def _discard(session: Session) -> None:
    session.info.pop(_PENDING, None)
