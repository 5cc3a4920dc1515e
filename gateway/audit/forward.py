"""Audit events as OCSF API Activity JSON lines, and the sinks a SIEM reads them from.

Pure: the standard library only. An event is given as a mapping of its stored fields (seq,
occurred_at, action, actor_id, org_id, subject_user_id, model_id, effect, payload, prev_hash,
entry_hash). Sinks: stdout, a file (appended, one line per event) and syslog (RFC 5424 over UDP,
one datagram per event, or TCP with RFC 6587 octet counting). A sink accepts a whole batch or
raises SinkError; the caller advances its cursor only after `send` returned.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

OCSF_VERSION = "1.3.0"
CLASS_UID = 6003  # API Activity
CATEGORY_UID = 6  # Application Activity
PRODUCT = {"name": "Airlock", "vendor_name": "Airlock"}
ACTIVITY_NAMES = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
# Our actions by OCSF activity. A refusal keeps the activity it refused (a denied download is a
# failed Read); an action missing here is forwarded as Other (99), never dropped.
ACTIVITIES: Mapping[str, int] = {
    "audit:prune": DELETE,
    "download:deny": READ,
    "download:issue": READ,
    "grant:create": CREATE,
    "grant:deprovision": DELETE,
    "grant:expire": UPDATE,
    "grant:provision": UPDATE,
    "grant:reinstate": UPDATE,
    "grant:revoke": DELETE,
    "grant:suspend": UPDATE,
    "inference:deny": READ,
    "inference:serve": READ,
    "kyc:start": CREATE,
    "kyc:verify": UPDATE,
    "legal_hold:place": CREATE,
    "legal_hold:release": DELETE,
    "membership:add": CREATE,
    "model:create": CREATE,
    "model:freeze": UPDATE,
    "model:trace": READ,
    "model:unfreeze": UPDATE,
    "model:upstream": UPDATE,
    "org:create": CREATE,
    "pack:deploy": CREATE,
    "policy:apply": UPDATE,
    "request:approve": UPDATE,
    "request:create": CREATE,
    "request:deny": UPDATE,
    "request:reject": UPDATE,
    "request:reset": UPDATE,
    "request:review": UPDATE,
    "revision:commit": CREATE,
    "revision:override": UPDATE,
    "revision:vet": UPDATE,
    "session:create": CREATE,
    "session:deny": OTHER,
    "session:end": DELETE,
    "token:create": CREATE,
    "token:revoke": DELETE,
    "user:create": CREATE,
}
# (status_id, status) by effect: no effect means the recorded change happened.
STATUSES: Mapping[str | None, tuple[int, str]] = {
    None: (1, "Success"),
    "allow": (1, "Success"),
    "deny": (2, "Failure"),
}
OTHER_STATUS = (99, "Other")
REDACTED = "[redacted]"
# Payload keys never forwarded whatever they hold: credentials, signatures and raw KYC data.
SECRET_WORDS = ("password", "secret", "signature", "credential", "authorization", "cookie")
SECRET_KEYS = frozenset({"token", "api_key", "key", "sig", "raw", "document", "evidence", "dob"})
TOKEN_PREFIX = "alk_"  # noqa: S105 (our API tokens start so: such values are redacted)


class SinkError(RuntimeError):
    """The sink did not accept the batch: nothing of it may count as delivered."""


def ocsf_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """One stored audit event in OCSF's API Activity class (version OCSF_VERSION)."""
    action = str(event["action"])
    activity = ACTIVITIES.get(action, OTHER)
    status_id, status = STATUSES.get(event["effect"], OTHER_STATUS)
    found: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity,
        "activity_name": ACTIVITY_NAMES[activity],
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"API Activity: {ACTIVITY_NAMES[activity]}",
        "severity_id": 1,
        "severity": "Informational",
        "time": _epoch_ms(event["occurred_at"]),
        "status_id": status_id,
        "status": status,
        "actor": _actor(event["actor_id"]),
        "api": {"operation": action, "service": {"name": PRODUCT["name"]}},
        "resources": _resources(event),
        "metadata": {
            "version": OCSF_VERSION,
            "product": dict(PRODUCT),
            "log_name": "audit",
            "sequence": event["seq"],
            "uid": event["entry_hash"],
        },
        "unmapped": {
            "effect": event["effect"],
            "org_id": event["org_id"],
            "prev_hash": event["prev_hash"],
            "entry_hash": event["entry_hash"],
            "payload": redact(event["payload"] or {}),
        },
    }
    if status_id == OTHER_STATUS[0]:
        found["status_detail"] = str(event["effect"])
    return found


def ocsf_line(event: Mapping[str, Any]) -> str:
    """The event as one JSON line (no newline), keys sorted."""
    return json.dumps(ocsf_event(event), sort_keys=True, separators=(",", ":"), default=str)


def redact(value: Any) -> Any:
    """A copy of a payload without secrets: secret-named keys and token-shaped strings."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _secret(str(k), v) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and TOKEN_PREFIX in value:
        return REDACTED
    return value


def _secret(key: str, value: Any) -> bool:
    lowered = key.lower()
    if lowered.endswith(("_id", "_ref")) or type(value) is int or value is None:
        return False  # ids, references and counts (prompt_tokens) name secrets, they are none
    return (
        lowered in SECRET_KEYS
        or lowered.endswith("key")  # api_key, upstream_api_key, private_key
        or any(word in lowered for word in SECRET_WORDS)
        or "token" in lowered
    )


def _epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _actor(actor_id: int | None) -> dict[str, Any]:
    if actor_id is None:
        return {"app_name": PRODUCT["name"]}
    return {"user": {"uid": str(actor_id)}}


def _resources(event: Mapping[str, Any]) -> list[dict[str, str]]:
    found = []
    if event["model_id"] is not None:
        found.append({"type": "model", "uid": str(event["model_id"])})
    if event["subject_user_id"] is not None:
        found.append({"type": "user", "uid": str(event["subject_user_id"])})
    return found


# -- sinks -------------------------------------------------------------------------------------
class Sink(Protocol):
    """Where forwarded lines go; `send` returns once every line was accepted."""

    def send(self, lines: Sequence[str]) -> None:
        """Deliver the lines in order, or raise SinkError."""

    def close(self) -> None:
        """Release the connection or file."""


class StdoutSink:
    """One line per event on standard output (a container's log collector picks it up)."""

    def send(self, lines: Sequence[str]) -> None:
        """Write and flush."""
        try:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
        except OSError as exc:
            raise SinkError(f"stdout: {exc}") from exc

    def close(self) -> None:
        """Nothing to release."""


class FileSink:
    """Appends one line per event to a file, flushed to disk before `send` returns."""

    def __init__(self, path: str) -> None:
        self.path = path

    def send(self, lines: Sequence[str]) -> None:
        """Append, flush and fsync."""
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SinkError(f"{self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Nothing held between batches."""


SYSLOG_PRI = 13 * 8 + 6  # facility 13 (log audit), severity 6 (informational)
SYSLOG_TIMEOUT = 5.0


class SyslogSink:
    """RFC 5424 messages, over UDP (one datagram each) or TCP (RFC 6587 octet counting)."""

    def __init__(self, transport: str, host: str, port: int, *, hostname: str | None = None):
        self.transport, self.address = transport, (host, port)
        self.hostname = hostname or socket.gethostname() or "-"
        self._sock: socket.socket | None = None

    def send(self, lines: Sequence[str]) -> None:
        """Send every message; a socket error drops the connection and raises SinkError."""
        messages = [self.message(line) for line in lines]
        try:
            sock = self._connected()
            if self.transport == "udp":
                for message in messages:
                    sock.sendto(message, self.address)
            else:
                sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
        except OSError as exc:
            self.close()
            raise SinkError(
                f"syslog {self.transport}://{self.address[0]}:{self.address[1]}: {exc}"
            ) from exc

    def message(self, line: str) -> bytes:
        """One RFC 5424 message: header, no structured data, the JSON as MSG."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        header = f"<{SYSLOG_PRI}>1 {stamp} {self.hostname} airlock {os.getpid()} audit -"
        return f"{header} {line}".encode()

    def _connected(self) -> socket.socket:
        if self._sock is None:
            if self.transport == "udp":
                self._sock = socket.socket(_family(self.address[0]), socket.SOCK_DGRAM)
            else:
                self._sock = socket.create_connection(self.address, timeout=SYSLOG_TIMEOUT)
            self._sock.settimeout(SYSLOG_TIMEOUT)
        return self._sock

    def close(self) -> None:
        """Close the socket; the next batch opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_sink(spec: str) -> Sink:
    """The sink AIRLOCK_AUDIT_FORWARD names: stdout, file:/path, syslog+udp|tcp://host:port."""
    if spec == "stdout":
        return StdoutSink()
    if spec.startswith("file:"):
        path = spec.removeprefix("file:").removeprefix("//")
        if not path.startswith("/"):
            raise ValueError(f"AIRLOCK_AUDIT_FORWARD: file sink needs an absolute path: {spec!r}")
        return FileSink(path)
    parts = urlsplit(spec)
    if parts.scheme in ("syslog+udp", "syslog+tcp") and parts.hostname and parts.port:
        return SyslogSink(parts.scheme.removeprefix("syslog+"), parts.hostname, parts.port)
    raise ValueError(
        "AIRLOCK_AUDIT_FORWARD must be stdout, file:/path, syslog+udp://host:port or "
        f"syslog+tcp://host:port, not {spec!r}"
    )


def lines_of(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The OCSF lines of several events, in order."""
    return [ocsf_line(event) for event in events]
