"""The audit chain stays one gap-free chain with 8 writer processes appending at once.

Each writer is a real OS process (multiprocessing forkserver: a fresh server process imports
the code once, then forks a clean child per writer) with its own services and pool; half of
its appends are organizations created through the identity service (the event in the same
transaction as the change), half bare `AuditRecorder` appends. All start together at a barrier.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gateway.audit import GENESIS_HASH, AuditAction
from gateway.db.models import AuditEvent, Organization
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock, build_airlock
from gateway.settings import load_settings
from tests.pg import on_both_engines

WRITERS = 8
EVENTS_EACH = 40  # half of them organizations, half bare appends
START_TIMEOUT = 120  # seconds for every writer to import and reach the barrier
RUN_TIMEOUT = 300


def write_events(database_url: str, data_dir: str, writer: int, start: Any) -> None:
    """One writer process: its own services, then EVENTS_EACH appends, each committed."""
    settings = load_settings(
        {"AIRLOCK_DATABASE_URL": database_url, "AIRLOCK_SECRET_KEY": "audit-processes"},
        data_dir=Path(data_dir),
    )
    airlock = build_airlock(settings)
    try:
        start.wait(START_TIMEOUT)
        for i in range(EVENTS_EACH):
            _append(airlock, writer, i)
    finally:
        airlock.close()


def _append(airlock: Airlock, writer: int, i: int) -> None:
    with airlock.db.session() as session:
        if i % 2:
            payload = {"writer": writer, "i": i}
            airlock.audit.record(session, AuditAction.USER_CREATE, actor_id=None, payload=payload)
            session.commit()
        else:
            slug = f"w{writer}-{i}"
            airlock.identity.create_org(
                session, slug=slug, name=slug, hq_country=None, actor_id=None
            )


def run_writers(database_url: str, data_dir: Path) -> list[int | None]:
    """Start WRITERS processes at one barrier; their exit codes."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    start = ctx.Barrier(WRITERS)
    procs = [
        ctx.Process(target=write_events, args=(database_url, str(data_dir), n, start))
        for n in range(WRITERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(RUN_TIMEOUT)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [proc.exitcode for proc in procs]


@on_both_engines
def test_eight_writer_processes_append_one_gap_free_chain(
    airlock: Airlock, database_url: str, tmp_path: Path
) -> None:
    assert run_writers(database_url, tmp_path) == [0] * WRITERS
    total = WRITERS * EVENTS_EACH
    with airlock.db.session() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        report = AuditLogService().verify(session)
        orgs = session.scalar(select(func.count()).select_from(Organization))
    assert [e.seq for e in events] == list(range(1, total + 1))
    assert [e.prev_hash for e in events] == [GENESIS_HASH] + [e.entry_hash for e in events[:-1]]
    assert report.ok and report.checked == total and report.head_seq == total, report
    assert orgs == total // 2
    assert _per_writer_order(events) == {n: list(range(EVENTS_EACH)) for n in range(WRITERS)}


def _per_writer_order(events: list[AuditEvent]) -> dict[int, list[int]]:
    """Each writer's appends in chain order: every one present, in the order it made them."""
    order: dict[int, list[int]] = {}
    for event in events:
        if event.action == AuditAction.USER_CREATE:
            writer, i = event.payload["writer"], event.payload["i"]
        else:
            writer, i = (int(part) for part in event.payload["slug"][1:].split("-"))
        order.setdefault(writer, []).append(i)
    return order
