"""Benchmark audit appends through the hash chain against plain inserts, and offline verification.

1. Appends/s by 8 writer processes through the real `AuditRecorder` (the locked head, the hash
   chain, one event per transaction, as the gateway writes them) next to plain inserts of the
   same rows by the same 8 processes into `audit_plain`, a table of the same shape (`LIKE
   audit_events INCLUDING ALL`: same columns, keys and indexes, no triggers, no chain), one row
   per transaction too. On PostgreSQL the recorder writes a pending row that a deferred trigger
   chains while the transaction commits (migration 0012). For reference, two earlier appends
   run as modes of their own, each locking the head in the middle of the transaction: 0009's
   one-call `audit_append` (installed into the throwaway database from that migration; 0012
   dropped it) and the three-statement append (SQLite's path). The modes alternate for a
   number of rounds; each round starts every writer at one barrier and stops it after a fixed
   time. Target: chained >= 0.5 x plain.
2. Events/s verified offline by `gateway.audit.offline.verify_files` over an export written by
   `gateway.audit.exports` (a chain of N `download:issue` events, a signed checkpoint every
   10,000), as JSON lines (the target: >= 100,000 events/s) and as CSV (for reference).

PostgreSQL only: a throwaway database is created on the server of `AIRLOCK_TEST_POSTGRES_URL`
(default the local `test` database as `postgres`) and dropped at the end, whatever happens. The
database keeps the server's defaults (`synchronous_commit` on: each commit waits for its WAL
flush, as in production). Figures are printed, never asserted; the exit status is non-zero only
when the benchmark itself fails. The whole run is bounded (about 55 s with the defaults).

    make bench-audit               # = .venv/bin/python bench/audit.py
    .venv/bin/python bench/audit.py --seconds 2 --rounds 1 --verify-events 50000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import harness
from harness import BenchError
from sqlalchemy import JSON, MetaData, bindparam, create_engine, insert, text
from sqlalchemy.exc import OperationalError

from gateway.audit import AuditAction, AuditRecorder
from gateway.audit.canonical import GENESIS_HASH, body_of, canonical_json, entry_hash
from gateway.audit.chain import ROW_FIELDS, canonical_pieces
from gateway.audit.chain import _append as three_statement_append
from gateway.audit.exports import write_checkpoints, write_events
from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.notes import Checkpoint, SigningKey, sign_checkpoint
from gateway.audit.offline import verify_files
from gateway.db.engine import Database
from gateway.db.migrate import upgrade
from gateway.db.models import Base, utcnow
from gateway.db.prepared import Prepared
from gateway.services.audit_log import AuditLogService

RATIO_TARGET = 0.5
VERIFY_TARGET = 100_000
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CHAINED = "chained (AuditRecorder)"
ONE_CALL = "chained, 1 call (0009)"
THREE = "chained, 3 statements"
PLAIN = "plain INSERT, no chain"
MODES = (CHAINED, ONE_CALL, THREE, PLAIN)
ONE_CALL_MIGRATION = import_module(
    "gateway.db.migrations.versions.0009_audit_retention_legal_holds"
)
APPEND_CALL = text(
    "SELECT seq FROM audit_append(:head, :middle, :tail, :action, :actor_id, :org_id, "
    ":subject_user_id, :model_id, :effect, :payload)"
).bindparams(bindparam("payload", type_=JSON))
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
            append = {
                CHAINED: _chained,
                ONE_CALL: _one_call,
                THREE: _three_statements,
                PLAIN: _plain,
            }[mode]
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


def _recorded_fields(writer: int, n: int) -> dict[str, Any]:
    """The event's fields as the recorder passes them on (action named, payload canonical)."""
    fields = event_fields(writer, n)
    payload = json.loads(canonical_json(fields["payload"]))
    return fields | {"action": str(AuditAction.DOWNLOAD_ISSUE), "payload": payload}


def _one_call(db: Database, _recorder: AuditRecorder, writer: int, n: int) -> None:
    """PostgreSQL's append before 0012: one call of 0009's audit_append, which locks the head
    in the middle of the transaction (held for the COMMIT round trip too); for reference."""
    fields = _recorded_fields(writer, n)
    head, middle, tail = canonical_pieces(fields)
    with db.session() as session:
        conn = session.connection()
        conn.execute(APPEND_CALL, {**fields, "head": head, "middle": middle, "tail": tail})
        session.commit()


def _three_statements(db: Database, _recorder: AuditRecorder, writer: int, n: int) -> None:
    """The recorder's other path (SQLite's, and PostgreSQL's before audit_append): lock the
    head, insert, move the head, three round trips under the lock; for reference."""
    fields = _recorded_fields(writer, n)
    with db.session() as session:
        three_statement_append(session.connection(), fields)
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
    plan = [mode for _ in range(rounds) for mode in MODES]
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
def offline_rate(workdir: Path, events: int, rounds: int) -> list[str]:
    """Events/s verified by gateway.audit.offline over an export (JSONL and CSV), printed."""
    started = time.perf_counter()
    files = write_export(workdir, events)
    found = [
        f"export of {events} events written in {time.perf_counter() - started:.1f} s "
        f"({files.checkpoints} signed checkpoints, one per {CHECKPOINT_EVERY} events)"
    ]
    for fmt, path, tries in (("jsonl", files.jsonl, rounds), ("csv", files.csv, 1)):
        times = []
        for _ in range(tries):
            started = time.perf_counter()
            report = verify_files(path, [files.notes], [files.key.verifier()])
            times.append(time.perf_counter() - started)
            if not report.ok or report.events != events:
                raise BenchError(f"the offline verifier refused the export: {report}")
        rate, median = events / min(times), events / statistics.median(times)
        verdict = "met" if rate >= VERIFY_TARGET else "MISSED"
        note = f"target >= {VERIFY_TARGET}: {verdict}" if fmt == "jsonl" else "reference"
        found.append(f"{fmt:<5} best {rate:>9.0f} events/s, median {median:>9.0f} ({note})")
    return found


CHECKPOINT_EVERY = 10_000  # AIRLOCK_AUDIT_CHECKPOINT_EVENTS's default


@dataclass(frozen=True)
class Export:
    """A synthetic export: the same events as JSONL and CSV, the signed checkpoints, the key."""

    jsonl: Path
    csv: Path
    notes: Path
    checkpoints: int
    key: Any


def write_export(workdir: Path, events: int) -> Export:
    """A chain of `events` download events built as the recorder builds them, a checkpoint
    signed every CHECKPOINT_EVERY events and at the end, written by gateway.audit.exports."""

    key, frontier, notes, rows = SigningKey.generate("bench-audit"), Frontier(), [], []
    prev, start = GENESIS_HASH, utcnow()
    for seq in range(1, events + 1):
        fields = event_fields(seq % 8, seq)
        row = {"seq": seq, "occurred_at": start + timedelta(microseconds=seq * 37), **fields}
        row |= {"action": "download:issue", "prev_hash": prev}
        row["entry_hash"] = prev = entry_hash(prev, body_of(row))
        row["occurred_at"] = body_of(row)["occurred_at"]
        rows.append(row)
        frontier.append(leaf_hash(bytes.fromhex(prev)))
        if seq % CHECKPOINT_EVERY == 0 or seq == events:
            cp = Checkpoint("bench/audit", seq, frontier.root(), prev, start.replace(microsecond=0))
            notes.append(sign_checkpoint(cp, key))
    found = Export(
        workdir / "events.jsonl",
        workdir / "events.csv",
        workdir / "checkpoints.notes",
        len(notes),
        key,
    )
    write_events(rows, found.jsonl, "jsonl")
    write_events(rows, found.csv, "csv")
    write_checkpoints(notes, found.notes)
    return found


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
            conn.execute(text(ONE_CALL_MIGRATION.APPEND_FUNCTION))  # the reference mode's
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
            f"  round {n // len(MODES) + 1}  {rnd.mode:<26} {rnd.events:>7} events in "
            f"{rnd.seconds:5.2f} s  {rnd.rate:>8.0f}/s"
        )
    chained = statistics.median(r.rate for r in found if r.mode == CHAINED)
    plain = statistics.median(r.rate for r in found if r.mode == PLAIN)
    one = statistics.median(r.rate for r in found if r.mode == ONE_CALL)
    three = statistics.median(r.rate for r in found if r.mode == THREE)
    ratio = chained / plain
    verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
    print(
        f"  median: chained {chained:.0f}/s, plain {plain:.0f}/s, ratio {ratio:.2f} "
        f"(target >= {RATIO_TARGET}: {verdict}); references: 1 call (0009) {one:.0f}/s, "
        f"ratio {one / plain:.2f}; 3 statements {three:.0f}/s, ratio {three / plain:.2f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are what `make bench-audit` runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writers", type=int, default=8, help="writer processes")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode")
    parser.add_argument("--verify-events", type=int, default=100_000, help="0: skip")
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
    print(f"machine: {harness.machine('SQLAlchemy', 'psycopg')}")
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
                for line in offline_rate(Path(workdir), args.verify_events, args.rounds + 1):
                    print(f"  {line}")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
