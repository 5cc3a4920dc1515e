"""The audit checkpoint task: due or not, run twice, keys from the settings or generated."""

from __future__ import annotations

import logging
import stat

import pytest
from sqlalchemy import select

from gateway.audit.notes import SigningKey, open_checkpoint
from gateway.db.models import AuditCheckpoint
from gateway.services.checkpoints import KEY_FILE, SigningKeyMissing, verifier_keys
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings
from gateway.tasks import jobs
from tests.factories import record_events

KEY = SigningKey.generate("airlock.test-audit")


def sizes(airlock: Airlock) -> list[int]:
    with airlock.db.session() as session:
        return list(session.scalars(select(AuditCheckpoint.tree_size).order_by("tree_size")))


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.with_overrides(
        audit_signing_key=KEY.to_text(), audit_checkpoint_events=5, audit_checkpoint_seconds=3600
    )


def test_the_task_twice_signs_one_checkpoint_when_due(keyed: Settings) -> None:
    assert "PRIVATE" not in repr(keyed)
    airlock = build_airlock(keyed)
    try:
        record_events(airlock, 3)
        for _ in range(2):
            jobs.checkpoint_audit(airlock)  # the first checkpoint is due at once
        assert sizes(airlock) == [3]
        record_events(airlock, 4)  # fewer than 5 new events, within the hour: not due
        jobs.checkpoint_audit(airlock)
        assert sizes(airlock) == [3]
        record_events(airlock, 1)
        for _ in range(2):
            jobs.checkpoint_audit(airlock)
        assert sizes(airlock) == [3, 8]
        with airlock.db.session() as session:
            note = session.get_one(AuditCheckpoint, 8).note
        assert open_checkpoint(note, [KEY.verifier()]).origin == "airlock.test/audit"
    finally:
        airlock.close()


def test_without_a_key_in_production_the_task_fails_and_signs_nothing(settings: Settings) -> None:
    airlock = build_airlock(settings)  # PostgreSQL, no AIRLOCK_AUDIT_SIGNING_KEY
    try:
        record_events(airlock, 2)
        with pytest.raises(SigningKeyMissing, match="AIRLOCK_AUDIT_SIGNING_KEY"):
            jobs.checkpoint_audit(airlock)
        assert sizes(airlock) == []
        assert not (settings.data_dir / KEY_FILE).exists()
    finally:
        airlock.close()


@pytest.mark.sqlite
def test_embedded_defaults_generate_a_key_once_and_say_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    airlock = build_airlock(settings)
    try:
        record_events(airlock, 2)
        with caplog.at_level(logging.WARNING, logger="gateway.services.checkpoints"):
            jobs.checkpoint_audit(airlock)
        path = settings.data_dir / KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "generated an audit signing key" in caplog.text
        assert "PRIVATE" not in caplog.text
        record_events(airlock, 1)
        jobs.checkpoint_audit(airlock, force=True)
        assert sizes(airlock) == [2, 3]
        (verifier,) = verifier_keys(settings)
        with airlock.db.session() as session:
            for row in session.scalars(select(AuditCheckpoint)):
                open_checkpoint(row.note, [verifier])
    finally:
        airlock.close()
