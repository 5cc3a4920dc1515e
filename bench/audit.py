"""Benchmark audit appends through the hash chain against plain inserts, and offline verification.

1. Appends/s by 8 writer processes through the real `AuditRecorder` (the locked head, the hash
   chain, one event per transaction, as the gateway writes them) next to plain inserts of the
   same rows by the same 8 processes into `audit_plain`, a table of the same shape (`LIKE
   audit_events INCLUDING ALL`: same columns, keys and indexes, no triggers, no chain), one row
   per transaction too. The modes alternate for a number of rounds; each round starts every
   writer at one barrier and stops it after a fixed time. Target: chained >= 0.5 x plain.
2. Events/s verified offline by `gateway.audit.offline` over an export of a chain of N events
   with signed checkpoints (no database). Target: >= 100,000 events/s. Printed as unavailable
   while that module is not there.

PostgreSQL only: a throwaway database is created on the server of `AIRLOCK_TEST_POSTGRES_URL`
(default the local `test` database as `postgres`) and dropped at the end, whatever happens. The
database keeps the server's defaults (`synchronous_commit` on: each commit waits for its WAL
flush, as in production). Figures are printed, never asserted; the exit status is non-zero only
when the benchmark itself fails. The whole run is bounded (about 40 s with the defaults).

    make bench-audit               # = .venv/bin/python bench/audit.py
    .venv/bin/python bench/audit.py --seconds 2 --rounds 1 --verify-events 50000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import queue
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import harness
from harness import BenchError
from sqlalchemy import MetaData, bindparam, create_engine, insert, text
from sqlalchemy.exc import OperationalError

from gateway.audit import AuditAction, AuditRecorder
from gateway.audit.canonical import GENESIS_HASH, body_of, canonical_json, entry_hash
from gateway.audit.chain import ROW_FIELDS
from gateway.db.engine import Database
from gateway.db.migrate import upgrade
from gateway.db.models import Base, utcnow
from gateway.db.prepared import Prepared
from gateway.services.audit_log import AuditLogService

RATIO_TARGET = 0.5
VERIFY_TARGET = 100_000
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CHAINED = "chained (AuditRecorder)"
PLAIN = "plain INSERT, no chain"
START_TIMEOUT = 60.0  # seconds for every writer to import and reach the barrier
PLAIN_TABLE = Base.metadata.tables["audit_events"].to_metadata(MetaData(), name="audit_plain")
_PLAIN_INSERT = Prepared(insert(PLAIN_TABLE).values({k: bindparam(k) for k in ROW_FIELDS}))
SEQ_STRIDE = 10**12  # plain rows: writer w numbers its rows w * SEQ_STRIDE + 1, + 2, ...


def event_fields(writer: int, n: int) -> dict[str, Any]:
    """A `download:issue` event shaped like the gateway's (ids, tier, commit, path, sha256)."""
    return {
        "actor_id": 1000 + writer,
        "org_id": 1,
        "subject_user_id": 1000 + writer,
        "model_id": 7,
        "effect": "allow",
        "payload": {
            "ticket_id": f"{writer}-{n}",
            "grant_id": 40 + writer,
            "tier": "weights-vetted",
            "commit": "9f2c" * 10,
            "path": "model-00001-of-00004.safetensors",
            "sha256": "ab" * 32,
        },
    }


# -- the writers (each a process of its own) ---------------------------------------------------
def writer_main(
    url: str, writer: int, plan: list[str], seconds: float, barrier: Any, out: Any
) -> None:
    """One writer process: for each round of `plan`, wait at the barrier, append for `seconds`."""
    db = Database(url)
    recorder = AuditRecorder()
    made = 0
    try:
        for round_no, mode in enumerate(plan):
            barrier.wait(START_TIMEOUT)
            append = _chained if mode == CHAINED else _plain
            count, started = 0, time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                count += 1
                made += 1  # numbers rows across rounds: plain rows never reuse a key
                append(db, recorder, writer, made)
            out.put((round_no, mode, writer, count, time.perf_counter() - started))
    finally:
        db.dispose()


def _chained(db: Database, recorder: AuditRecorder, writer: int, n: int) -> None:
    with db.session() as session:
        recorder.record(session, AuditAction.DOWNLOAD_ISSUE, **event_fields(writer, n))
        session.commit()


def _plain(db: Database, _recorder: AuditRecorder, writer: int, n: int) -> None:
    """The same row as the recorder builds (content, hashes), inserted with no head and no lock."""
    row: dict[str, Any] = {"seq": writer * SEQ_STRIDE + n, "occurred_at": utcnow()}
    fields = event_fields(writer, n)
    row |= fields | {"action": str(AuditAction.DOWNLOAD_ISSUE), "prev_hash": GENESIS_HASH}
    row["payload"] = json.loads(canonical_json(fields["payload"]))
    row["entry_hash"] = entry_hash(GENESIS_HASH, body_of(row))
    with db.session() as session:
        _PLAIN_INSERT.all(session.connection(), row)
        session.commit()


@dataclass(frozen=True)
class Round:
    """One timed round of one mode: events committed by all writers over the slowest's time."""

    mode: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        """Committed events per second."""
        return self.events / self.seconds


def run_writers(url: str, *, writers: int, rounds: int, seconds: float) -> list[Round]:
    """Start `writers` processes once; alternate chained and plain rounds among them."""
    plan = [mode for _ in range(rounds) for mode in (CHAINED, PLAIN)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(writers), ctx.Queue()
    procs = [
        ctx.Process(target=writer_main, args=(url, w, plan, seconds, barrier, out))
        for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    try:
        found = [_result(out, procs, START_TIMEOUT + seconds) for _ in range(writers * len(plan))]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if any(proc.exitcode for proc in procs):
        raise BenchError(f"a writer failed: exit codes {[p.exitcode for p in procs]}")
    return [
        Round(
            mode,
            sum(f[3] for f in found if f[0] == n),
            max(f[4] for f in found if f[0] == n),
        )
        for n, mode in enumerate(plan)
    ]


def _result(out: Any, procs: list[Any], timeout: float) -> tuple[int, str, int, int, float]:
    """The next writer's figures; a writer that died or a run that hangs is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(queue.Empty):
            found: tuple[int, str, int, int, float] = out.get(timeout=0.5)
            return found
        if any(proc.exitcode for proc in procs):
            raise BenchError(f"a writer failed: exit codes {[p.exitcode for p in procs]}")
    raise BenchError(f"the writers did not report within {timeout:.0f} s")


# -- the offline verifier ----------------------------------------------------------------------
def offline_rate(workdir: Path, events: int) -> str:
    """Events/s verified by gateway.audit.offline, or why that cannot be measured yet."""
    if importlib.util.find_spec("gateway.audit.offline") is None:
        return "unavailable: gateway/audit/offline.py is not there yet"
    return "gateway/audit/offline.py is there, but this benchmark does not drive it yet"


# -- the run -----------------------------------------------------------------------------------
@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A throwaway database on the server, migrated to head; dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"airlock_bench_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        raise BenchError(f"PostgreSQL is not reachable at {admin_url}: {exc}") from exc
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE audit_plain (LIKE audit_events INCLUDING ALL)"))
            settings = conn.execute(text("SHOW synchronous_commit")).scalar_one()
        engine.dispose()
        print(
            f"database: {name} on {admin_url.rsplit('@', 1)[-1].rsplit('/', 1)[0]}, "
            f"synchronous_commit = {settings}"
        )
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def check_chain(url: str) -> int:
    """The appended chain still verifies (the benchmark measured real, correct appends)."""
    db = Database(url)
    try:
        with db.session() as session:
            report = AuditLogService().verify(session)
    finally:
        db.dispose()
    if not report.ok:
        raise BenchError(f"the chain written by the benchmark does not verify: {report}")
    return report.checked


def print_rounds(found: list[Round]) -> None:
    """Each round, then the median of each mode and their ratio."""
    for n, rnd in enumerate(found):
        print(
            f"  round {n // 2 + 1}  {rnd.mode:<26} {rnd.events:>7} events in "
            f"{rnd.seconds:5.2f} s  {rnd.rate:>8.0f}/s"
        )
    chained = statistics.median(r.rate for r in found if r.mode == CHAINED)
    plain = statistics.median(r.rate for r in found if r.mode == PLAIN)
    ratio = chained / plain
    verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
    print(
        f"  median: chained {chained:.0f}/s, plain {plain:.0f}/s, ratio {ratio:.2f} "
        f"(target >= {RATIO_TARGET}: {verdict})"
    )


def machine() -> str:
    """What this ran on, for the report."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{pages / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLAlchemy {version('sqlalchemy')}, "
        f"psycopg {version('psycopg')}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are what `make bench-audit` runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writers", type=int, default=8, help="writer processes")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode")
    parser.add_argument("--verify-events", type=int, default=200_000, help="0: skip")
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get("AIRLOCK_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN),
        help="a database URL on the server where a throwaway database is created",
    )
    args = parser.parse_args(argv)
    if not 0 < args.writers <= 32 or not 0 < args.seconds <= 30 or not 0 < args.rounds <= 5:
        parser.error("--writers in (0, 32], --seconds in (0, 30], --rounds in (0, 5]")
    if not 0 <= args.verify_events <= 2_000_000:
        parser.error("--verify-events in [0, 2000000]")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, report, clean up; 1 on errors (never on missed targets)."""
    args = parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"background: {harness.machine_busy(1.0):.2f} of {os.cpu_count()} CPUs busy before "
        "start (other tenants of this machine; compare ratios, not absolute figures)"
    )
    try:
        with postgres_database(args.postgres_admin_url) as url:
            print(
                f"\n[append] {args.writers} writer processes, one event per transaction, "
                f"{args.rounds} x {args.seconds:.0f} s per mode, alternating"
            )
            print_rounds(
                run_writers(url, writers=args.writers, rounds=args.rounds, seconds=args.seconds)
            )
            print(f"  the chain verifies: {check_chain(url)} events, gap-free")
        if args.verify_events:
            print(f"\n[offline verify] {args.verify_events} events, no database")
            with tempfile.TemporaryDirectory(prefix="airlock-bench-audit-") as workdir:
                print(f"  {offline_rate(Path(workdir), args.verify_events)}")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
