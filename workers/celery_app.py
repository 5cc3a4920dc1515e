"""The Celery app of the workers: `make_celery(settings)` builds it; importing this does nothing.

Run it with `airlock worker` and `airlock beat` (the same AIRLOCK_* settings as the gateway).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings
from gateway.tasks.broker import CeleryRunner, configure
from gateway.tasks.catalog import (
    CHECKPOINT_TASK,
    CHECKPOINT_TICK_SECONDS,
    FORWARD_TASK,
    FORWARD_TICK_SECONDS,
    PRUNE_INTERVAL_SECONDS,
    PRUNE_TASK,
    QUEUES,
    RESCREEN_INTERVAL_SECONDS,
    RESCREEN_TASK,
    SPECS,
    SWEEP_INTERVAL_SECONDS,
    SWEEP_TASK,
)
from workers.tasks import register_tasks
from workers.telemetry import connect_telemetry


class WorkerServices:
    """The worker process's Airlock, built on its first task (after the pool has forked)."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._airlock: Airlock | None = None
        self._lock = threading.Lock()

    def get(self) -> Airlock:
        """Build the services once per process, then reuse them for every task."""
        with self._lock:
            if self._airlock is None:
                self._airlock = build_airlock(self.settings, runner=CeleryRunner(self.app))
            return self._airlock

    def forget_inherited(self, **_: Any) -> None:
        """In a freshly forked child: drop the parent's pooled connections without closing them."""
        with self._lock:
            if self._airlock is not None:
                self._airlock.db.engine.dispose(close=False)
                self._airlock = None

    def close(self, **_: Any) -> None:
        """Release this process's connections (the pool child is exiting)."""
        with self._lock:
            if self._airlock is not None:
                self._airlock.close()
                self._airlock = None


def make_celery(settings: Settings) -> Celery:
    """The worker app: shared broker configuration, the tasks, and the beat schedule."""
    if not settings.broker_url:
        raise ValueError("AIRLOCK_BROKER_URL is not set: tasks run in-process, no worker needed")
    app = Celery("airlock")
    configure(app, settings)
    app.conf.update(
        beat_schedule={
            "sweep-grants": _every(SWEEP_TASK, SWEEP_INTERVAL_SECONDS),
            "rescreen-grants": _every(RESCREEN_TASK, RESCREEN_INTERVAL_SECONDS, expires=3600),
            "checkpoint-audit": _every(CHECKPOINT_TASK, CHECKPOINT_TICK_SECONDS),
            "forward-audit": _every(FORWARD_TASK, FORWARD_TICK_SECONDS),
            "prune-audit": _every(PRUNE_TASK, PRUNE_INTERVAL_SECONDS, expires=3600),
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
    )
    services = WorkerServices(settings, app)
    register_tasks(app, services.get)
    worker_process_init.connect(services.forget_inherited, weak=False)
    worker_process_shutdown.connect(services.close, weak=False)
    connect_telemetry(settings)
    return app


def _every(task: str, seconds: int, *, expires: int | None = None) -> dict[str, Any]:
    """A beat entry: `task` on its queue every `seconds`, dropped unless run within `expires`
    (default: the interval, as the next run supersedes it)."""
    options = {"queue": SPECS[task].queue, "expires": seconds if expires is None else expires}
    return {"task": task, "schedule": float(seconds), "options": options}


def run_worker(
    settings: Settings, *, queues: Sequence[str] = QUEUES, concurrency: int | None = None
) -> None:
    """Consume `queues` until stopped (Celery's worker_main)."""
    argv = ["worker", f"--loglevel={settings.log_level}", f"--queues={','.join(queues)}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    make_celery(settings).worker_main(argv)


def run_beat(settings: Settings) -> None:
    """Send the periodic tasks (one beat per deployment)."""
    app = make_celery(settings)
    app.Beat(loglevel=settings.log_level, schedule=app.conf.beat_schedule_filename).run()
