"""Readiness: every dependency checked at once, each bounded by the same short timeout.

A check that has not answered by the deadline counts as failed; its thread is left to finish
on its own (each client also has its own socket timeout). What failed is reported by type and
a message with credentials and secrets removed.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu import Connection
from sqlalchemy import Engine, text

from gateway.services.container import Airlock
from gateway.settings import Settings

USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
Check = Callable[[], None]


@dataclass(frozen=True)
class CheckResult:
    """One dependency's state: "ok", "failed", "timeout" or "not_configured"."""

    state: str
    duration_ms: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (no error key when there is none)."""
        out: dict[str, Any] = {"state": self.state, "duration_ms": round(self.duration_ms, 1)}
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Readiness:
    """Every dependency's result; ready only when none failed."""

    checks: dict[str, CheckResult]

    @property
    def ready(self) -> bool:
        """Whether every configured dependency answered in time."""
        return all(c.state in ("ok", "not_configured") for c in self.checks.values())

    @property
    def failed(self) -> list[str]:
        """Names of the dependencies that failed or timed out."""
        return [n for n, c in self.checks.items() if c.state in ("failed", "timeout")]

    def to_dict(self) -> dict[str, Any]:
        """The /readyz body."""
        return {
            "status": "ready" if self.ready else "unavailable",
            "failed": self.failed,
            "checks": {name: result.to_dict() for name, result in self.checks.items()},
        }


class ReadinessProbe:
    """The checks of one process's dependencies, reusing one Redis client between probes."""

    def __init__(self, airlock: Airlock) -> None:
        settings = airlock.settings
        self.timeout = settings.readyz_timeout
        self._secrets = tuple(secrets_of(settings))
        self._redis = (
            redis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
            )
            if settings.redis_url
            else None
        )
        self.checks: dict[str, Check | None] = {
            "database": lambda: database_check(airlock.db.engine),
            "redis": self._ping_redis if self._redis is not None else None,
            "storage": airlock.storage.check,
            "broker": (lambda: broker_check(settings.broker_url or "", self.timeout))
            if settings.broker_url
            else None,
        }

    def run(self) -> Readiness:
        """Run every configured check concurrently; none may take longer than the timeout."""
        deadline = time.monotonic() + self.timeout
        running = {
            name: _Running(check) for name, check in self.checks.items() if check is not None
        }
        results = {
            name: CheckResult("not_configured") for name, c in self.checks.items() if c is None
        }
        for name, job in running.items():
            results[name] = job.wait(deadline, self._secrets)
        return Readiness({name: results[name] for name in self.checks})

    def close(self) -> None:
        """Drop the Redis client's connections."""
        if self._redis is not None:
            self._redis.close()

    def _ping_redis(self) -> None:
        assert self._redis is not None
        self._redis.ping()


class _Running:
    """One check on its own daemon thread."""

    def __init__(self, check: Check) -> None:
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self.finished = 0.0
        self._thread = threading.Thread(target=self._run, args=(check,), daemon=True)
        self._thread.start()

    def _run(self, check: Check) -> None:
        try:
            check()
        except Exception as exc:  # any failure of a dependency is a result, not a crash
            self.error = exc
        self.finished = time.monotonic()

    def wait(self, deadline: float, secrets: tuple[str, ...]) -> CheckResult:
        """This check's result, or "timeout" if it has not finished by `deadline`."""
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            return CheckResult("timeout", (time.monotonic() - self.started) * 1000, "no answer")
        took = (self.finished - self.started) * 1000
        if self.error is None:
            return CheckResult("ok", took)
        return CheckResult("failed", took, describe(self.error, secrets))


def database_check(engine: Engine) -> None:
    """A pooled connection answers SELECT 1."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def broker_check(url: str, timeout: float) -> None:
    """The Celery broker accepts a connection (and, for AMQP, the login)."""
    with Connection(
        url, connect_timeout=timeout, transport_options={"socket_timeout": timeout}
    ) as c:
        c.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=math.ceil(timeout)
        )
        c.default_channel  # noqa: B018 (opening the channel is what talks to a Redis broker)


def describe(exc: BaseException, secrets: Iterable[str]) -> str:
    """`Type: message`, shortened, with URL credentials and known secrets removed."""
    message = USERINFO.sub("***@", str(exc).replace("\n", " "))
    for secret in secrets:
        message = message.replace(secret, "***")
    return f"{type(exc).__name__}: {message}"[:300]


def secrets_of(settings: Settings) -> Iterable[str]:
    """Every secret a dependency's error message could echo back."""
    urls = (settings.database_url, settings.redis_url, settings.broker_url)
    for url in urls:
        if url and (password := urlsplit(url).password):
            yield password
    for value in (settings.secret_key, settings.s3_secret_access_key, settings.metrics_token):
        if value:
            yield value
