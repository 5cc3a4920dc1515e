"""Group commit on SQLite: many threads' writes in shared transactions, each acknowledged only
after the COMMIT that holds it; a failing job is left out, a failing database fails them all."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from gateway.audit import AuditAction
from gateway.db import group_commit, sqlite_writers
from gateway.db.engine import Database
from gateway.db.group_commit import Batch, GroupCommit
from gateway.db.models import AuditEvent
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock, group_commit_for

pytestmark = pytest.mark.sqlite


@pytest.fixture
def group(airlock: Airlock) -> GroupCommit:
    found = airlock.downloads.group
    assert found is not None, "a SQLite file database gets a group commit"
    return found


def appender(airlock: Airlock, n: int) -> Callable[[Batch], int]:
    """A job appending one audit event that names `n`; returns `n`."""

    def job(batch: Batch) -> int:
        airlock.audit.record(
            batch, AuditAction.MODEL_TRACE, actor_id=None, effect="allow", payload={"n": n}
        )
        return n

    return job


def events(airlock: Airlock) -> list[int]:
    with airlock.db.session() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        return [e.payload["n"] for e in rows if e.action == "model:trace"]


def chain_ok(airlock: Airlock) -> bool:
    with airlock.db.session() as session:
        return AuditLogService().verify(session).ok


def in_threads(count: int, work: Callable[[int], object]) -> dict[int, object]:
    """Run work(0..count-1) on as many threads; each outcome (result or exception) by index."""
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = work(i)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == count, "a thread did not finish"
    return outcomes


def behind_held_batch(
    held: Callable[[int], None], count: int, work: Callable[[int], object]
) -> dict[int, object]:
    """Queue `count` jobs (work(0..count-1), each on its thread) behind the held first batch,
    then let it go; each outcome by index."""
    releaser = threading.Thread(target=held, args=(count,))
    releaser.start()
    outcomes = in_threads(count, work)
    releaser.join(10)
    return outcomes


@pytest.fixture
def held(group: GroupCommit) -> Iterator[Callable[[int], None]]:
    """Hold the first batch's transaction open until `n` more jobs are queued behind it."""
    gate = threading.Event()

    def wait_for_queue(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(group._queue) < n:
            assert time.monotonic() < deadline, "the jobs never queued"
            time.sleep(0.005)
        gate.set()

    running = threading.Event()

    def blocker(batch: Batch) -> int:
        running.set()
        gate.wait(10)
        return -1

    holder = threading.Thread(target=group.run, args=(blocker,))
    holder.start()
    assert running.wait(10), "the first batch never began"
    yield wait_for_queue
    gate.set()
    holder.join(10)


def test_jobs_queued_behind_a_batch_share_the_next_transaction(
    airlock: Airlock, group: GroupCommit, held: Callable[[int], None]
) -> None:
    before = group.batches  # the blocker's batch has begun
    outcomes = behind_held_batch(held, 20, lambda i: group.run(appender(airlock, i)))
    assert outcomes == {i: i for i in range(20)}
    assert sorted(events(airlock)) == list(range(20))
    assert group.batches - before == 1, "one transaction for all twenty"
    assert chain_ok(airlock)


def test_jobs_queued_while_the_leader_waits_for_the_lock_join_its_batch(
    airlock: Airlock, group: GroupCommit
) -> None:
    path = Path(airlock.db.engine.url.database or "")
    queue = next(q for q in sqlite_writers._QUEUES if q.checkpointer.database == path)
    assert queue.acquire(), "another writer (this test) holds the write lock"
    before = group.batches
    try:
        leader = threading.Thread(target=group.run, args=(appender(airlock, 0),))
        leader.start()
        deadline = time.monotonic() + 10
        while not group._leading:
            assert time.monotonic() < deadline
            time.sleep(0.001)

        def queue_one(i: int) -> int:
            return group.run(appender(airlock, i))

        threads = [threading.Thread(target=queue_one, args=(i,)) for i in range(1, 6)]
        for thread in threads:
            thread.start()
        while len(group._queue) < 6:  # the leader's job and five more, all waiting
            assert time.monotonic() < deadline, "the jobs never queued"
            time.sleep(0.001)
    finally:
        queue.release()
    for thread in [leader, *threads]:
        thread.join(10)
    assert sorted(events(airlock)) == list(range(6))
    assert group.batches - before == 1, "the jobs that queued meanwhile joined the batch"
    assert chain_ok(airlock)


def test_many_threads_form_one_gap_free_chain(airlock: Airlock, group: GroupCommit) -> None:
    outcomes = in_threads(
        16, lambda i: [group.run(appender(airlock, i * 10 + k)) for k in range(10)]
    )
    assert all(isinstance(v, list) and len(v) == 10 for v in outcomes.values())
    assert sorted(events(airlock)) == sorted(i * 10 + k for i in range(16) for k in range(10))
    assert chain_ok(airlock)
    assert group.jobs >= 160


def test_a_job_that_raises_is_left_out_and_the_others_commit(
    airlock: Airlock, group: GroupCommit, held: Callable[[int], None]
) -> None:
    undone: list[int] = []

    def job(i: int) -> Callable[[Batch], int]:
        inner = appender(airlock, i)

        def run(batch: Batch) -> int:
            batch.on_rollback(lambda: undone.append(i))
            inner(batch)
            if i == 3:
                raise ValueError("job 3 fails after writing")
            return i

        return run

    outcomes = behind_held_batch(held, 6, lambda i: group.run(job(i)))
    assert isinstance(outcomes.pop(3), ValueError)
    assert outcomes == {i: i for i in (0, 1, 2, 4, 5)}
    assert sorted(events(airlock)) == [0, 1, 2, 4, 5], "job 3's event was rolled back"
    assert 3 in undone, "the failed job's undo ran"
    assert chain_ok(airlock)


def test_a_database_failure_fails_every_job_of_the_batch(
    airlock: Airlock, group: GroupCommit, held: Callable[[int], None]
) -> None:
    undone: list[int] = []

    def job(i: int) -> Callable[[Batch], int]:
        def run(batch: Batch) -> int:
            batch.on_rollback(lambda: undone.append(i))
            appender(airlock, i)(batch)
            if i == 2:
                batch.conn.execute(text("SELECT * FROM no_such_table"))
            return i

        return run

    outcomes = behind_held_batch(held, 4, lambda i: group.run(job(i)))
    assert all(isinstance(v, OperationalError) for v in outcomes.values()), outcomes
    assert events(airlock) == []
    assert sorted(undone) == [0, 1, 2], "the undos of the jobs that ran (3 never did)"
    assert group.run(appender(airlock, 99)) == 99, "the next batch works"
    assert events(airlock) == [99]


def test_a_job_still_queued_after_the_wait_is_withdrawn(
    airlock: Airlock,
    group: GroupCommit,
    held: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(group_commit, "WAIT_SECONDS", 0.2)
    with pytest.raises(OperationalError, match="database is locked"):
        group.run(appender(airlock, 1))
    assert group._queue == [], "the withdrawn job left the queue"
    monkeypatch.setattr(group_commit, "WAIT_SECONDS", 75.0)
    held(0)  # the first batch ends
    assert group.run(appender(airlock, 2)) == 2
    assert events(airlock) == [2], "the withdrawn job never ran"


def test_only_a_sqlite_file_gets_a_group_commit(
    airlock: Airlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert group_commit_for(airlock.db) is not None
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # an in-memory URL once left a lock file in the working dir
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql+psycopg://airlock@127.0.0.1:1/x"):
        database = Database(url)  # no connection is made
        try:
            assert database.file is None, url
            assert group_commit_for(database) is None, url
        finally:
            database.dispose()
    assert list(cwd.iterdir()) == []
