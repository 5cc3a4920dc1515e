"""SIEM forwarding: OCSF API Activity lines without secrets, the sinks, at-least-once delivery."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.audit import AuditAction
from gateway.audit.forward import (
    ACTIVITIES,
    FileSink,
    SinkError,
    SyslogSink,
    ocsf_event,
    ocsf_line,
    open_sink,
)
from gateway.db.models import AuditForwardCursor
from gateway.services.container import Airlock
from gateway.services.forwarding import ForwardingService
from tests.factories import record_events
from tests.pg import on_both_engines

SECRET_TOKEN = "alk_" + "s3cr3t" * 6
RAW_KYC = "P<USADOE<<JANE<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<"


def stored(action: str, effect: str | None = None, **fields: Any) -> dict[str, Any]:
    """An event as the forwarder reads it from the database."""
    return {
        "seq": 7,
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "action": action,
        "actor_id": 3,
        "org_id": 1,
        "subject_user_id": 4,
        "model_id": 9,
        "effect": effect,
        "payload": {},
        "prev_hash": "ab" * 32,
        "entry_hash": "cd" * 32,
        **fields,
    }


@pytest.mark.parametrize(
    ("action", "effect", "activity", "status_id"),
    [
        ("org:create", None, 1, 1),
        ("download:issue", "allow", 2, 1),
        ("download:deny", "deny", 2, 2),
        ("request:review", "review", 3, 99),
        ("grant:revoke", None, 4, 1),
        ("audit:prune", None, 4, 1),
        ("legal_hold:place", None, 1, 1),
        ("something:new", None, 99, 1),
    ],
)
def test_each_action_kind_maps_to_an_api_activity(
    action: str, effect: str | None, activity: int, status_id: int
) -> None:
    found = ocsf_event(stored(action, effect))
    assert (found["class_uid"], found["category_uid"]) == (6003, 6)
    assert found["activity_id"] == activity
    assert found["type_uid"] == 6003 * 100 + activity
    assert found["status_id"] == status_id
    assert found["time"] == 1767323045678
    assert found["actor"] == {"user": {"uid": "3"}}
    assert found["api"]["operation"] == action
    assert found["metadata"]["product"] == {"name": "Airlock", "vendor_name": "Airlock"}
    assert found["metadata"]["version"] == "1.3.0"
    assert (found["metadata"]["sequence"], found["metadata"]["uid"]) == (7, "cd" * 32)
    assert found["unmapped"]["entry_hash"] == "cd" * 32
    assert {"type": "model", "uid": "9"} in found["resources"]


def test_every_audit_action_has_an_activity() -> None:
    assert {str(a) for a in AuditAction} <= set(ACTIVITIES)


def test_a_system_event_names_the_product_as_actor() -> None:
    assert ocsf_event(stored("grant:expire", actor_id=None))["actor"] == {"app_name": "Airlock"}


def test_no_secret_reaches_a_forwarded_line() -> None:
    payload = {
        "token": SECRET_TOKEN,
        "token_id": 12,
        "prompt_tokens": 31,
        "note": f"pasted {SECRET_TOKEN} by mistake",
        "signature": "c2lnbmF0dXJl",
        "upstream_api_key": "sk-live-123",
        "kyc": {"raw": {"mrz": RAW_KYC}, "document": RAW_KYC, "level": "L2"},
        "files": [{"client_secret": "hush"}],
    }
    line = ocsf_line(stored("kyc:verify", "allow", payload=payload))
    for secret in (SECRET_TOKEN, "c2lnbmF0dXJl", "sk-live-123", RAW_KYC, "hush"):
        assert secret not in line
    unmapped = json.loads(line)["unmapped"]["payload"]
    assert unmapped["token_id"] == 12 and unmapped["kyc"]["level"] == "L2"
    assert unmapped["prompt_tokens"] == 31


@pytest.mark.parametrize(
    "spec", ["", "syslog://h:1", "syslog+udp://host", "file:relative/path", "http://siem"]
)
def test_an_unknown_sink_is_refused_clearly(spec: str) -> None:
    with pytest.raises(ValueError, match="AIRLOCK_AUDIT_FORWARD"):
        open_sink(spec)


def test_a_malformed_sink_stops_the_process_at_start(tmp_path: Path) -> None:
    from gateway.services.container import build_airlock
    from gateway.settings import load_settings

    env = {"AIRLOCK_AUDIT_FORWARD": "syslog://siem:514", "AIRLOCK_SECRET_KEY": "x"}
    with pytest.raises(ValueError, match="AIRLOCK_AUDIT_FORWARD"):
        build_airlock(load_settings(env, data_dir=tmp_path))


def test_syslog_over_udp_sends_one_rfc5424_datagram_per_event() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        sink = open_sink(f"syslog+udp://127.0.0.1:{listener.getsockname()[1]}")
        sink.send([ocsf_line(stored("org:create")), ocsf_line(stored("grant:revoke"))])
        sink.close()
        messages = [listener.recv(65535).decode() for _ in range(2)]
    assert [_rfc5424(m)["api"]["operation"] for m in messages] == ["org:create", "grant:revoke"]


def test_syslog_over_tcp_frames_messages_by_octet_count() -> None:
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        reader = threading.Thread(target=_read_all, args=(server, received))
        reader.start()
        sink = SyslogSink("tcp", "127.0.0.1", server.getsockname()[1], hostname="gw1")
        lines = [ocsf_line(stored("download:issue", "allow", seq=n)) for n in (1, 2, 3)]
        sink.send(lines)
        sink.close()
        reader.join(10)
    frames = _octet_frames(b"".join(received))
    assert [_rfc5424(f.decode())["metadata"]["sequence"] for f in frames] == [1, 2, 3]
    assert all(f.split(b" ")[2] == b"gw1" for f in frames)


def test_a_closed_syslog_port_is_a_sink_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(SinkError):
        SyslogSink("tcp", "127.0.0.1", port).send(["{}"])


# -- delivery from the cursor -------------------------------------------------------------------
class DyingSink:
    """A SIEM that accepts `accept` batches, then goes away (before or after accepting one)."""

    def __init__(self, path: Path, *, accept: int, die_after_accepting: bool) -> None:
        self.file, self.accept, self.after = FileSink(str(path)), accept, die_after_accepting

    def send(self, lines: Sequence[str]) -> None:
        if self.accept == 0:
            if self.after:
                self.file.send(lines)
                raise Crash("the process died after the sink accepted the batch")
            raise SinkError("connection refused")
        self.accept -= 1
        self.file.send(lines)

    def close(self) -> None:
        pass


class Crash(BaseException):
    """The forwarding process stops dead (nothing after this runs)."""


def delivered(path: Path) -> list[int]:
    return [json.loads(line)["metadata"]["sequence"] for line in path.read_text().splitlines()]


@on_both_engines
def test_a_refused_batch_is_sent_again_by_the_next_run(airlock: Airlock, tmp_path: Path) -> None:
    record_events(airlock, 25)
    out = tmp_path / "siem.jsonl"
    service = ForwardingService(batch=10)
    with pytest.raises(SinkError):
        service.forward(airlock.db, DyingSink(out, accept=1, die_after_accepting=False))
    assert service.cursor(airlock.db) == 10
    done = ForwardingService(batch=10).forward(airlock.db, FileSink(str(out)))
    assert (done.events, done.cursor) == (15, 25)
    assert delivered(out) == list(range(1, 26))  # no loss, no duplicate


@on_both_engines
def test_a_crash_after_acceptance_duplicates_at_most_one_batch(
    airlock: Airlock, tmp_path: Path
) -> None:
    record_events(airlock, 25)
    out = tmp_path / "siem.jsonl"
    with pytest.raises(Crash):
        ForwardingService(batch=10).forward(
            airlock.db, DyingSink(out, accept=1, die_after_accepting=True)
        )
    ForwardingService(batch=10).forward(airlock.db, FileSink(str(out)))
    assert delivered(out) == [*range(1, 21), *range(11, 26)]  # batch 11..20 twice
    record_events(airlock, 2)
    ForwardingService(batch=10).forward(airlock.db, FileSink(str(out)))
    assert delivered(out)[-3:] == [25, 26, 27]
    with airlock.db.session() as session:
        assert session.scalar(select(AuditForwardCursor.seq)) == 27


def test_forwarding_is_off_by_default(airlock: Airlock, tmp_path: Path) -> None:
    from gateway.tasks import jobs

    assert airlock.settings.audit_forward is None
    record_events(airlock, 3)
    jobs.forward_audit(airlock)
    assert ForwardingService().cursor(airlock.db) == 0


def test_the_task_forwards_to_the_configured_file(airlock: Airlock, tmp_path: Path) -> None:
    from gateway.tasks import jobs

    out = tmp_path / "audit.jsonl"
    airlock.settings = airlock.settings.with_overrides(audit_forward=f"file:{out}")
    record_events(airlock, 3)
    jobs.forward_audit(airlock)
    jobs.forward_audit(airlock)  # twice: nothing new, nothing sent
    assert delivered(out) == [1, 2, 3]


def _rfc5424(message: str) -> dict[str, Any]:
    pri_version, _stamp, _host, app, _pid, msgid, sd, body = message.split(" ", 7)
    assert (pri_version, app, msgid, sd) == ("<110>1", "airlock", "audit", "-")
    return json.loads(body)  # type: ignore[no-any-return]


def _read_all(server: socket.socket, into: list[bytes]) -> None:
    server.settimeout(10)
    conn, _ = server.accept()
    with conn:
        while chunk := conn.recv(65536):
            into.append(chunk)


def _octet_frames(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    return frames
