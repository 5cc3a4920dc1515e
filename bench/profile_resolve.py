"""Profile the resolve path in-process (Flask test client, cProfile): where a request's time goes.

Run alone: `.venv/bin/python bench/profile_resolve.py [HEAD|GET] [--requests N]`.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from gateway.app import create_app
from gateway.services.container import build_airlock

# The stages of one resolve, outermost first: (label, file suffix, function name).
STAGES = (
    ("whole request (Flask WSGI app)", "flask/app.py", "wsgi_app"),
    ("hub.resolve view", "gateway/api/hub.py", "resolve"),
    ("  authenticate token (principal)", "gateway/api/context.py", "principal"),
    ("    identity.authenticate", "gateway/services/identity.py", "authenticate"),
    ("  downloads.open_revision", "gateway/services/downloads.py", "open_revision"),
    ("    publishing.get_model", "gateway/services/publishing.py", "get_model"),
    ("    downloads.weights_access", "gateway/services/downloads.py", "weights_access"),
    ("      access.require_visible", "gateway/services/access.py", "require_visible"),
    ("      downloads.usable_grants", "gateway/services/downloads.py", "usable_grants"),
    ("      downloads._recheck", "gateway/services/downloads.py", "_recheck"),
    ("        access.subject", "gateway/services/access.py", "subject"),
    ("        access.decide (policy engine)", "gateway/services/access.py", "decide"),
    ("    publishing.resolve_revision", "gateway/services/publishing.py", "resolve_revision"),
    ("  downloads.find_file", "gateway/services/downloads.py", "find_file"),
    ("  downloads.issue_ticket", "gateway/services/downloads.py", "issue_ticket"),
    ("    audit.record", "gateway/audit/chain.py", "record"),
    ("teardown (close session)", "gateway/api/context.py", "close_session"),
    ("all SQL statements (ORM + driver)", "sqlalchemy/orm/session.py", "_execute_internal"),
    ("  lazy loads of relationships", "sqlalchemy/orm/strategies.py", "_load_for_state"),
    ("  sqlite3/psycopg execute", "~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
    ("session commit", "sqlalchemy/orm/session.py", "commit"),
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """Per-request time, statements per request, and the cProfile stats of the loop."""

    method: str
    requests: int
    ms_per_request: float
    statements: float
    stats: pstats.Stats

    def calls_per_request(self, requests: int) -> float:
        """Python function calls per request: a CPU cost proxy that a busy machine cannot skew."""
        return self.stats.total_calls / requests  # type: ignore[attr-defined,no-any-return]

    def total(self) -> float:
        """Total profiled time (sum of every function's own time)."""
        return sum(row[2] for row in self.stats.stats.values())  # type: ignore[attr-defined]

    def cumulative(self, suffix: str, name: str) -> float:
        """Cumulative seconds of a function (0 when it never ran)."""
        found = 0.0
        for (file, _line, func), row in self.stats.stats.items():  # type: ignore[attr-defined]
            if func == name and file.endswith(suffix):
                found = max(found, row[3])
        return found

    def stage_lines(self) -> list[str]:
        """One line per stage: cumulative % of the request's profiled time."""
        total = self.total()
        lines = []
        for label, suffix, name in STAGES:
            seconds = self.cumulative(suffix, name)
            if seconds:
                lines.append(f"  {label:44s} {100 * seconds / total:5.1f} %")
        return lines

    def hot_lines(self, count: int = 12) -> list[str]:
        """The functions with the most own time, as % of the profiled total."""
        total = self.total()
        rows = sorted(
            self.stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda item: item[1][2],
            reverse=True,
        )
        lines = []
        for (file, line, func), row in rows[:count]:
            where = _short(file, line)
            lines.append(f"  {100 * row[2] / total:5.1f} %  {func}  ({where})")
        return lines


def _short(file: str, line: int) -> str:
    if file == "~":
        return "builtin"
    for marker in ("site-packages/", f"{ROOT}/", "/gateway/", "/policies/"):
        if marker in file:
            return file.split(marker, 1)[-1] + f":{line}"
    return f"{file}:{line}"


def profile_resolve(
    settings_env: dict[str, str], token: str, path: str, *, method: str, requests: int
) -> Profile:
    """Time then profile `requests` resolves through the real app (no network, no server)."""
    from gateway.settings import load_settings

    airlock = build_airlock(load_settings(settings_env))
    try:
        client = create_app(airlock=airlock).test_client()
        headers = {"Authorization": f"Bearer {token}"}

        def once() -> None:
            response = client.open(path, method=method, headers=headers)
            if response.status_code not in (200, 302):
                raise RuntimeError(f"{method} {path} answered {response.status_code}")

        for _ in range(50):
            once()
        statements = _count_statements(airlock.db.engine, once, 20)
        best = _best_batch(once, requests)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            once()
        profiler.disable()
        return Profile(method, requests, 1000 * best, statements, pstats.Stats(profiler))
    finally:
        airlock.close()


def _best_batch(once: Callable[[], None], requests: int, batches: int = 5) -> float:
    """CPU seconds per request of the fastest of a few batches (robust to a busy machine)."""
    size = max(1, requests // batches)
    timings = []
    for _ in range(batches):
        started = time.process_time()
        for _ in range(size):
            once()
        timings.append((time.process_time() - started) / size)
    return min(timings)


def _count_statements(engine: Engine, once: Callable[[], None], runs: int) -> float:
    """SQL statements the driver ran per request, BEGIN included, COMMIT and ROLLBACK not.

    Counted by sqlite3's trace callback, so the hot reads that run on the DBAPI cursor
    (`gateway/services/rows.py`, no SQLAlchemy cursor events) are counted too.
    """
    seen = [0]

    def count(statement: str) -> None:
        if not statement.lstrip().upper().startswith(("COMMIT", "ROLLBACK")):
            seen[0] += 1

    engine.dispose()  # every connection from now on is traced

    def trace(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.set_trace_callback(count)

    event.listen(engine, "connect", trace)
    try:
        for _ in range(runs):
            once()
    finally:
        event.remove(engine, "connect", trace)
        engine.dispose()
    return seen[0] / runs


def report(profile: Profile) -> str:
    """The profile as text: per-request cost, stages, hottest functions."""
    head = (
        f"{profile.method} resolve in-process: {profile.ms_per_request:.2f} ms CPU/request "
        f"(unprofiled, best of 5 batches), {profile.statements:.0f} SQL statements/request "
        f"(incl. BEGIN), {profile.calls_per_request(profile.requests):.0f} Python calls/request"
    )
    return "\n".join(
        [
            head,
            "  cumulative share of profiled time by stage:",
            *profile.stage_lines(),
            "  most own time (self, excluding callees):",
            *profile.hot_lines(),
        ]
    )


def main() -> None:
    """Seed a throwaway demo (SQLite) and profile HEAD or GET resolve."""
    from world import SMALL_FILE, build_world

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("method", nargs="?", default="HEAD", choices=["HEAD", "GET"])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="airlock-profile-") as tmp:
        world = build_world(Path(tmp) / "data", database_url=None, big_bytes=0)
        found = profile_resolve(
            world.env,
            world.researcher_token,
            world.resolve_path(SMALL_FILE),
            method=args.method,
            requests=args.requests,
        )
        print(report(found))


if __name__ == "__main__":
    main()
