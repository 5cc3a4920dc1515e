"""Task metrics and worker logs, wired to Celery's signals by `connect_telemetry`.

Task outcomes are counted in the pool process that ran the task. With a prefork pool those are
separate processes, so the worker needs `PROMETHEUS_MULTIPROC_DIR` (one directory per worker
host or container) for its metrics port (`AIRLOCK_WORKER_METRICS_PORT`) to see them all.
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import Token
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    task_revoked,
    worker_init,
    worker_process_shutdown,
    worker_ready,
)
from prometheus_client import REGISTRY, start_http_server

from gateway.observability import metrics
from gateway.observability.logs import REQUEST_ID, use_format
from gateway.settings import Settings

log = logging.getLogger(__name__)
OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry", "REJECTED": "rejected"}
_started: dict[str, tuple[float, Token[str | None]]] = {}


def connect_telemetry(settings: Settings) -> None:
    """Count task outcomes and durations; serve metrics and format logs as the settings say."""
    metrics.check_mode(settings.metrics_dir)
    if settings.worker_metrics_port and settings.metrics_dir is None:
        raise ValueError(
            "AIRLOCK_WORKER_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR: "
            "tasks run in pool processes the port's process cannot see otherwise"
        )
    task_prerun.connect(task_started, weak=False, dispatch_uid="airlock-task-started")
    task_postrun.connect(task_finished, weak=False, dispatch_uid="airlock-task-finished")
    task_revoked.connect(task_was_revoked, weak=False, dispatch_uid="airlock-task-revoked")
    telemetry = WorkerTelemetry(settings)
    worker_init.connect(telemetry.reset, weak=False)
    worker_ready.connect(telemetry.serve, weak=False)
    worker_process_shutdown.connect(telemetry.process_exited, weak=False)
    after_setup_logger.connect(telemetry.format_logs, weak=False)
    after_setup_task_logger.connect(telemetry.format_logs, weak=False)


def task_started(task_id: str, task: Any, **_: Any) -> None:
    """Remember when the task started; its id is the request id of the lines it logs."""
    _started[task_id] = (time.perf_counter(), REQUEST_ID.set(task_id))


def task_finished(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    """Count the run by its final state and record how long it took."""
    started, token = _started.pop(task_id, (None, None))
    if started is not None:
        metrics.TASK_SECONDS.labels(task.name).observe(time.perf_counter() - started)
    metrics.count_task(task.name, OUTCOMES.get(state or "", (state or "unknown").lower()))
    if token is not None:
        REQUEST_ID.reset(token)


def task_was_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    """Count a task that was revoked, expired before it ran, or terminated."""
    name = getattr(sender, "name", None) or getattr(request, "task_name", None) or "unknown"
    outcome = "expired" if expired else "terminated" if terminated else "revoked"
    metrics.count_task(str(name), outcome)


class WorkerTelemetry:
    """The worker-level hooks, which need the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def reset(self, **_: Any) -> None:
        """In the main worker process, before the pool starts: drop an earlier run's samples."""
        if self.settings.metrics_dir is not None:
            metrics.reset_metrics_dir(self.settings.metrics_dir)

    def serve(self, **_: Any) -> None:
        """Serve every pool process's metrics on the worker's metrics port, if one is set."""
        port, directory = self.settings.worker_metrics_port, self.settings.metrics_dir
        if not port:
            return
        registry = metrics.multiprocess_registry(directory) if directory else REGISTRY
        start_http_server(port, registry=registry)
        log.info("worker metrics on port %d", port)

    def process_exited(self, **_: Any) -> None:
        """A pool process is exiting: forget its live gauges (its counters stay counted)."""
        if self.settings.metrics_dir is not None:
            metrics.process_exited(self.settings.metrics_dir, os.getpid())

    def format_logs(self, logger: logging.Logger, **_: Any) -> None:
        """Celery installed its handlers: give them the JSON format when that is chosen."""
        if self.settings.log_format == "json":
            use_format(logger.handlers, "json")
