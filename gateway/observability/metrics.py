"""Prometheus metrics of gateway and worker processes, and their exposition.

The metric objects live at module level, as prometheus_client expects. Under gunicorn or a
prefork Celery worker every process counts in its own memory unless `PROMETHEUS_MULTIPROC_DIR`
is set before the process starts: then each process writes its samples to files in that
directory and `exposition` merges the files of every process, dead ones included.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily

SURFACES = {
    "access": "api",
    "blobs": "blobs",
    "compliance": "api",
    "health": "health",
    "hub": "hub",
    "inference": "inference",
    "publisher": "api",
    "webhooks": "webhooks",
    "web": "ui",
}
P = ParamSpec("P")
R = TypeVar("R")
METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"})

HTTP_REQUESTS = Counter(
    "airlock_http_requests",
    "HTTP requests answered, by surface, method and status.",
    ["surface", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "airlock_http_request_duration_seconds",
    "Time from the request's arrival to its response headers, by surface.",
    ["surface"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_IN_PROGRESS = Gauge(
    "airlock_http_requests_in_progress",
    "Requests being handled now, by surface.",
    ["surface"],
    multiprocess_mode="livesum",
)
DECISIONS = Counter(
    "airlock_decisions",
    "Audited decisions, by audit action and effect.",
    ["action", "effect"],
)
DECISION_REASONS = Counter(
    "airlock_decision_reasons",
    "Reasons given in audited decisions, by audit action, decision effect and reason code.",
    ["action", "effect", "reason"],
)
LIMITER_SECONDS = Histogram(
    "airlock_ratelimit_check_duration_seconds",
    "Time of one rate-limiter admission, by outcome (allowed, refused, unavailable).",
    ["outcome"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
TASKS = Counter(
    "airlock_tasks",
    "Background task runs finished, by task name and outcome (success, failure, retry, ...).",
    ["task", "outcome"],
)
TASK_SECONDS = Histogram(
    "airlock_task_duration_seconds",
    "Run time of background tasks, by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)


@functools.cache
def surface_of(endpoint: str | None) -> str:
    """The metrics surface of a request routed to `endpoint` ("blueprint.view"); else "other".

    Scrapes of /metrics are their own surface, so they never inflate the health checks' counts.
    Cached: endpoints are the app's fixed set of view names (or None).
    """
    if endpoint == "health.metrics":
        return "metrics"
    return SURFACES.get((endpoint or "").split(".", 1)[0], "other")


def observe_request(surface: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    verb = method if method in METHODS else "other"  # normalized first: the cache stays bounded
    _requests_child(surface, verb, status).inc()
    _seconds_child(surface).observe(seconds)


def in_progress(surface: str) -> Gauge:
    """The in-progress gauge child of `surface`."""
    return _in_progress_child(surface)


# Label children looked up once per label set, not per request (`.labels()` costs a lock, a
# tuple of validated strings and a dict lookup each time). The sets are small and fixed: a
# handful of surfaces, seven methods plus "other", and the HTTP statuses the app answers.
@functools.cache
def _requests_child(surface: str, verb: str, status: int) -> Counter:
    return HTTP_REQUESTS.labels(surface, verb, str(status))


@functools.cache
def _seconds_child(surface: str) -> Histogram:
    return HTTP_SECONDS.labels(surface)


@functools.cache
def _in_progress_child(surface: str) -> Gauge:
    return HTTP_IN_PROGRESS.labels(surface)


def count_decision(action: str, effect: str, payload: Mapping[str, Any] | None) -> None:
    """Count one audited decision and each of its reasons' codes."""
    DECISIONS.labels(action, effect).inc()
    for code in _reason_codes(payload or {}):
        DECISION_REASONS.labels(action, effect, code).inc()


def _reason_codes(payload: Mapping[str, Any]) -> list[str]:
    decision = payload.get("decision")
    reasons = payload.get("reasons")
    if reasons is None and isinstance(decision, Mapping):
        reasons = decision.get("reasons")
    if not isinstance(reasons, Sequence):
        return []
    return [str(r.get("code"))[:64] for r in reasons if isinstance(r, Mapping) and r.get("code")]


def count_task(task: str, outcome: str) -> None:
    """Count one finished task run."""
    TASKS.labels(task, outcome).inc()


def timed_admission(acquire: Callable[P, R]) -> Callable[P, R]:
    """Wrap a limiter's `acquire` to time each admission by outcome (allowed, refused,
    unavailable: it raised)."""

    @functools.wraps(acquire)
    def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            result = acquire(*args, **kwargs)
            outcome = "allowed" if getattr(result, "allowed", False) else "refused"
            return result
        finally:
            _admission(outcome).observe(time.perf_counter() - started)

    return timed


@functools.cache
def _admission(outcome: str) -> Histogram:
    """The histogram child of one outcome, looked up once (admissions are a hot path)."""
    return LIMITER_SECONDS.labels(outcome)


def multiprocess_enabled() -> bool:
    """Whether prometheus_client writes samples to files (PROMETHEUS_MULTIPROC_DIR at start)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def check_mode(metrics_dir: Path | None) -> None:
    """Refuse a configuration where the settings and prometheus_client disagree on the mode."""
    if metrics_dir is not None and not multiprocess_enabled():
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR was not in the environment when prometheus_client loaded"
        )
    if metrics_dir is not None and not metrics_dir.is_dir():
        raise RuntimeError(f"the metrics directory {metrics_dir} does not exist")


class Spool(Protocol):
    """What the audit outbox tells about itself (gateway/audit/outbox.py)."""

    def backlog(self) -> tuple[int, float]: ...


class SpoolCollector:
    """The audit outbox's backlog, read from its directory when scraped: the same figures in
    every process of a host, so nothing is merged across processes."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Two gauges: events waiting, and the age of the oldest."""
        waiting, oldest = self.spool.backlog()
        yield GaugeMetricFamily(
            "airlock_audit_outbox_events",
            "Audit events spooled because the database refused them, not yet written.",
            value=waiting,
        )
        yield GaugeMetricFamily(
            "airlock_audit_outbox_oldest_age_seconds",
            "Seconds since the oldest spooled audit event was refused (0 when none waits).",
            value=oldest,
        )


def exposition(metrics_dir: Path | None, spool: Spool | None = None) -> tuple[bytes, str]:
    """The text exposition of this process, or of every process sharing `metrics_dir`, with
    the audit outbox's backlog when given."""
    registry = REGISTRY if metrics_dir is None else multiprocess_registry(metrics_dir)
    body = generate_latest(registry)
    if spool is not None:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(SpoolCollector(spool))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


def multiprocess_registry(metrics_dir: Path) -> CollectorRegistry:
    """A registry merging the sample files of every process under `metrics_dir`."""
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return registry


def reset_metrics_dir(metrics_dir: Path) -> None:
    """Create `metrics_dir` and drop sample files of an earlier run (start of a server only)."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)


def process_exited(metrics_dir: Path, pid: int) -> None:
    """Forget the live gauges of a process that exited; its counters stay in the totals."""
    prometheus_multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
