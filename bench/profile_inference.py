"""Profile one inference request in-process (Flask test client, cProfile): SQL statements and
where the time goes, on SQLite or a throwaway PostgreSQL database.

Run alone: `.venv/bin/python bench/profile_inference.py [--postgres] [--requests N]`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inference import BODY, PATH, _world
from profile_resolve import Profile, _short
from resolve import DEFAULT_PG_ADMIN, postgres_database
from sqlalchemy import Engine, event
from world import environment

from gateway.app import create_app
from gateway.db import prepared
from gateway.devtools.upstream import ReferenceUpstream
from gateway.services.container import build_airlock
from gateway.settings import load_settings

STAGES = (
    ("whole request (Flask WSGI app)", "flask/app.py", "wsgi_app"),
    ("  authenticate token (principal)", "gateway/api/context.py", "principal"),
    ("  admit", "gateway/services/inference.py", "admit"),
    ("    load_access", "gateway/services/rows.py", "load_access"),
    ("    policies.current_for", "gateway/services/policy.py", "current_for"),
    ("    access.decide", "gateway/services/access.py", "decide"),
    ("    _target (upstream config)", "gateway/services/inference.py", "_target"),
    ("  charge (limiter)", "gateway/services/inference.py", "charge"),
    ("  complete (upstream call)", "gateway/services/inference.py", "complete"),
    ("    upstream send", "gateway/services/upstream.py", "send"),
    ("    _finish (settle + audit)", "gateway/services/inference.py", "_finish"),
    ("      audit.record", "gateway/audit/chain.py", "record"),
    ("      session commit", "sqlalchemy/orm/session.py", "commit"),
    ("teardown (close session)", "gateway/api/context.py", "close_session"),
)


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    """Every statement sent to the server, SQLAlchemy's and the prebuilt ones (BEGIN implicit)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    original = prepared._Plan.run

    def run(plan: Any, conn: Any, params: Any) -> Any:
        seen.append(plan.sql)
        return original(plan, conn, params)

    event.listen(engine, "before_cursor_execute", before)
    prepared._Plan.run = run  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        prepared._Plan.run = original  # type: ignore[method-assign]
        event.remove(engine, "before_cursor_execute", before)


def main() -> None:
    """Seed the demo, wire an in-process reference upstream, profile chat completions."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument(
        "--postgres", nargs="?", const=os.environ.get("AIRLOCK_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN)
    )
    args = parser.parse_args()
    upstream = ReferenceUpstream().start()
    try:
        with tempfile.TemporaryDirectory(prefix="airlock-profile-") as tmp:
            if args.postgres:
                with postgres_database(args.postgres) as database:
                    _profile(Path(tmp), upstream.base_url, database, args.requests)
            else:
                _profile(Path(tmp), upstream.base_url, None, args.requests)
    finally:
        upstream.stop()


def _profile(root: Path, upstream: str, database: str | None, requests: int) -> None:
    token = _world(root, upstream, database)
    airlock = build_airlock(load_settings(environment(root, database)))
    try:
        client = create_app(airlock=airlock).test_client()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = json.loads(BODY)

        def once() -> None:
            response = client.post(PATH, json=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{PATH} answered {response.status_code}: {response.data!r}")

        for _ in range(50):
            once()
        with counted(airlock.db.engine) as seen:
            once()
        print(f"{len(seen)} statements per request (transaction control and pings not shown):")
        for sql in seen:
            print("   ", " ".join(sql.split())[:150])
        cpu = _best(once, requests)
        wall = _best(once, requests, clock=time.perf_counter)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            once()
        profiler.disable()
        found = Profile("POST", requests, 1000 * cpu, len(seen), pstats.Stats(profiler))
        print(f"CPU {1000 * cpu:.3f} ms/request (the in-process upstream's included), ", end="")
        print(f"wall {1000 * wall:.3f} ms/request (best batch)")
        print("\n".join(_stage_lines(found, requests)))
        print("  most own time:")
        print("\n".join(found.hot_lines(15)))
    finally:
        airlock.close()


ROUND_TRIPS = ("wait", "_exec_command", "execute", "do_ping")  # psycopg's, and the pool's ping


def _stage_lines(found: Profile, requests: int) -> list[str]:
    """Milliseconds (profiled) and share per stage; psycopg's calls per request."""
    total = found.total()
    lines = []
    for label, suffix, name in STAGES:
        seconds = found.cumulative(suffix, name)
        if seconds:
            ms = 1000 * seconds / requests
            lines.append(f"  {label:40s} {ms:7.3f} ms  {100 * seconds / total:5.1f} %")
    for (file, line, func), row in found.stats.stats.items():  # type: ignore[attr-defined]
        if func in ROUND_TRIPS and "psycopg" in file + func and row[1] >= requests:
            where = _short(file, line)
            lines.append(f"    {row[1] / requests:5.1f} calls/request  {func} ({where})")
    return lines


def _best(
    once: Callable[[], None], requests: int, clock: Callable[[], float] = time.process_time
) -> float:
    size = max(1, requests // 5)
    timings = []
    for _ in range(5):
        started = clock()
        for _ in range(size):
            once()
        timings.append((clock() - started) / size)
    return min(timings)


if __name__ == "__main__":
    main()
