"""Worker fixtures: a scene with a fingerprinting tier, a recording runner, a claimed Redis db."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from gateway.db.models import AuditEvent, Grant, Model, Role, StagedFile
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings
from tests.factories import Actor, World, policy_text, safetensors_bytes

REDIS_URL = os.environ.get("AIRLOCK_TEST_BROKER_URL", "redis://127.0.0.1:6379")
CLAIM_KEY = "airlock:test:broker-claim"
FILES = {
    "config.json": b'{"model_type": "test"}',
    "model.safetensors": safetensors_bytes(256),
    "README.md": b"# card\n",
}
COVERED = ("config.json", "model.safetensors")  # weights-auto's files: globs


def fingerprint_policy(repo: str) -> str:
    """The factories' policy with `fingerprint: true` on the weights-auto tier."""
    text = policy_text(repo)
    marked = text.replace("    grant_ttl: 30d\n", "    grant_ttl: 30d\n    fingerprint: true\n", 1)
    assert marked != text
    return marked


class RecordingRunner:
    """A runner that only records what was sent (tests then run the jobs themselves)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, name: str, kwargs: dict[str, Any]) -> None:
        self.sent.append((name, kwargs))


class Scene:
    """acme publishes acme/tiny with a fingerprinting weights tier; rob is a verified researcher."""

    def __init__(self, airlock: Airlock, *, fingerprint: bool = True) -> None:
        self.airlock = airlock
        self.world = World(airlock)
        self.pat = self.world.actor("pat", org="acme", role=Role.PUBLISHER)
        self.rita = self.world.actor("rita", org="acme", role=Role.REVIEWER)
        self.rob = self.world.actor("rob")
        policy = fingerprint_policy("acme/tiny") if fingerprint else None
        self.model = self.world.model(self.pat, "acme/tiny", files=dict(FILES), policy=policy)
        self.world.kyc(self.rita, self.rob)

    def grant(self, actor: Actor | None = None) -> Grant:
        return self.world.grant(actor or self.rob, self.model)

    def get_grant(self, grant_id: int) -> Grant:
        with self.airlock.db.session() as s:
            return s.get_one(Grant, grant_id)

    def staged(self, grant_id: int) -> list[StagedFile]:
        with self.airlock.db.session() as s:
            return list(
                s.scalars(
                    select(StagedFile)
                    .where(StagedFile.grant_id == grant_id)
                    .order_by(StagedFile.file_id)
                )
            )

    def events(self, action: str) -> int:
        with self.airlock.db.session() as s:
            return s.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
            )

    def head_revision_id(self) -> int:
        with self.airlock.db.session() as s:
            head = s.get_one(Model, self.model.id).head_revision_id
            assert head is not None
            return head


def blob_files(root: Path) -> list[Path]:
    """Every file under a local storage root (temporaries included)."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def recorder() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def quiet_airlock(settings: Settings, recorder: RecordingRunner) -> Iterator[Airlock]:
    """Services whose tasks are recorded, not run: each test runs the jobs itself."""
    services = build_airlock(settings, runner=recorder)
    yield services
    services.close()


@contextmanager
def claimed_redis_db() -> Iterator[str]:
    """A Redis database nobody else uses during the test (claimed by a key), flushed after."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"Redis is required in CI and unreachable: {exc}") from exc
        pytest.skip("Redis is not reachable (start it, or set AIRLOCK_TEST_BROKER_URL)")
    token = secrets.token_hex(8)
    for number in range(14, 0, -1):  # 0 is the default and 15 the limiter tests' database
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        if not client.set(CLAIM_KEY, token, nx=True, ex=600):
            continue
        if client.dbsize() > 1:  # somebody's data: leave it alone
            client.delete(CLAIM_KEY)
            continue
        try:
            yield f"{REDIS_URL}/{number}"
        finally:
            client.flushdb()
            client.close()
        return
    pytest.fail("no free Redis database to use as a broker")
