"""The audit outbox: events spooled to files, written later, once each, oldest first."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import outbox as outbox_module
from gateway.audit.outbox import AuditOutbox


def event(n: int) -> dict[str, Any]:
    return {"action": "inference:serve", "payload": {"n": n}}


def test_spooled_events_are_written_oldest_first_and_their_files_removed(tmp_path: Path) -> None:
    outbox = AuditOutbox(tmp_path / "outbox")
    assert not outbox.waiting and outbox.count() == 0
    for n in range(5):
        outbox.put(event(n))
    assert outbox.waiting and outbox.count() == 5
    written: list[dict[str, Any]] = []
    assert outbox.drain(written.append) == 5
    assert [e["payload"]["n"] for e in written] == [0, 1, 2, 3, 4]
    assert not outbox.waiting and outbox.count() == 0
    assert list((tmp_path / "outbox").iterdir()) == []


def test_a_write_that_fails_leaves_that_event_and_the_later_ones_spooled(tmp_path: Path) -> None:
    outbox = AuditOutbox(tmp_path)
    for n in range(3):
        outbox.put(event(n))
    written: list[int] = []

    def write(found: dict[str, Any]) -> None:
        if found["payload"]["n"] == 1:
            raise RuntimeError("database is locked")
        written.append(found["payload"]["n"])

    assert outbox.drain(write) == 1
    assert written == [0] and outbox.waiting and outbox.count() == 2
    assert outbox.drain(lambda found: written.append(found["payload"]["n"])) == 2
    assert written == [0, 1, 2] and outbox.count() == 0


def test_files_are_private_and_hold_the_event_as_json(tmp_path: Path) -> None:
    outbox = AuditOutbox(tmp_path / "outbox")
    path = outbox.put(event(7))
    assert json.loads(path.read_text()) == event(7)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "outbox").stat().st_mode) == 0o700
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == [path.name]  # no temporary left


def test_two_outboxes_draining_one_directory_write_each_event_once(tmp_path: Path) -> None:
    for n in range(200):
        AuditOutbox(tmp_path).put(event(n))
    written: list[int] = []
    lock = threading.Lock()

    def write(found: dict[str, Any]) -> None:
        with lock:
            written.append(found["payload"]["n"])

    drainers = [AuditOutbox(tmp_path) for _ in range(4)]  # as four processes would
    threads = [threading.Thread(target=d.drain, args=(write,)) for d in drainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(written) == list(range(200))
    assert AuditOutbox(tmp_path).count() == 0


def _claim_and_die(directory: str) -> None:
    def write(_found: dict[str, Any]) -> None:
        os._exit(0)  # killed while writing: its claim stays behind

    AuditOutbox(Path(directory)).drain(write)


def test_a_claim_left_by_a_dead_process_is_given_back(tmp_path: Path) -> None:
    AuditOutbox(tmp_path).put(event(1))
    child = multiprocessing.get_context("spawn").Process(target=_claim_and_die, args=(tmp_path,))
    child.start()
    child.join(60)
    assert [p.name for p in tmp_path.iterdir() if ".claim-" in p.name], "nothing was claimed"
    reopened = AuditOutbox(tmp_path)
    assert reopened.waiting
    written: list[dict[str, Any]] = []
    assert reopened.drain(written.append) == 1
    assert written == [event(1)] and reopened.count() == 0


def test_an_unreadable_file_is_set_aside_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = AuditOutbox(tmp_path)
    outbox.put(event(1))
    (tmp_path / "00000000000000000000-bad.json").write_text("{not json")
    written: list[dict[str, Any]] = []
    assert outbox.drain(written.append) == 1
    assert written == [event(1)]
    assert [p.name for p in tmp_path.iterdir()] == ["00000000000000000000-bad.json.unreadable"]
    assert "unreadable" in caplog.text


def test_waiting_events_are_retried_in_the_background_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "RETRY_SECONDS", 0.02)
    outbox = AuditOutbox(tmp_path)
    written: list[dict[str, Any]] = []
    refusals = [RuntimeError("database is locked")] * 3  # down for the first three tries

    def write(found: dict[str, Any]) -> None:
        if refusals:
            raise refusals.pop()
        written.append(found)

    outbox.attach(write)
    outbox.put(event(1))  # no later event comes to carry it
    deadline = time.monotonic() + 10
    while outbox.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written == [event(1)] and outbox.count() == 0 and not outbox.waiting
    outbox.close()
    outbox.put(event(2))  # closed: nothing retries any more
    time.sleep(0.1)
    assert written == [event(1)] and outbox.count() == 1


def test_events_spooled_while_the_retry_thread_finishes_are_not_stranded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spools racing the background thread's "nothing left, stop": every event is written."""
    monkeypatch.setattr(outbox_module, "RETRY_SECONDS", 0.001)
    outbox = AuditOutbox(tmp_path)
    written: list[int] = []
    lock = threading.Lock()

    def write(found: dict[str, Any]) -> None:
        with lock:
            written.append(found["payload"]["n"])

    outbox.attach(write)

    def spool(first: int) -> None:
        for n in range(first, first + 50):
            outbox.put(event(n))
            time.sleep(0.001)

    spoolers = [threading.Thread(target=spool, args=(k * 50,)) for k in range(4)]
    for thread in spoolers:
        thread.start()
    for thread in spoolers:
        thread.join()
    deadline = time.monotonic() + 20
    while len(written) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    outbox.close()
    assert sorted(written) == list(range(200)) and outbox.count() == 0


def test_a_nudge_retries_at_once_on_the_background_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "RETRY_SECONDS", 60.0)
    outbox = AuditOutbox(tmp_path)
    written: list[tuple[dict[str, Any], str]] = []
    outbox.attach(lambda found: written.append((found, threading.current_thread().name)))
    outbox.put(event(1))
    time.sleep(0.05)
    assert written == []  # its own next try is a minute away
    outbox.nudge()
    deadline = time.monotonic() + 5
    while outbox.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written == [(event(1), "audit-outbox")]
    outbox.close()
