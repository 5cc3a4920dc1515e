"""provision_download on a marking tier: each grant's copy marked once, recorded once; a file
that cannot be marked is never served unmarked."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.db.models import AuditEvent, DownloadFingerprint, Grant, Role, StagedFile
from gateway.services.container import Airlock
from gateway.services.provisioning import UnmarkableFile
from gateway.settings import Settings
from gateway.tasks import jobs
from tests.api.hubkit import fresh_model, tuned_policy
from tests.factories import Actor, World, safetensors_bytes
from tests.workers.conftest import digest
from tests.workers.test_tasks import storage_root

REPO = "acme/tiny"
MARKED = "    fingerprint: {files: ['*.safetensors'], positions: 64, min_numel: 4096}\n"


def publish(airlock: Airlock, files: dict[str, bytes]) -> tuple[World, Actor, Actor]:
    world = World(airlock)
    world.org("oxbridge", hq="GB")
    pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
    rita = world.actor("rita", org="acme", role=Role.REVIEWER)
    policy = tuned_policy(REPO, fingerprint=True).replace("    fingerprint: true\n", MARKED)
    world.model(pat, REPO, files=files, policy=policy)
    rob = world.actor("rob", affiliation="oxbridge")
    world.kyc(rita, rob)
    return world, rob, rita


def test_provisioning_twice_marks_records_and_audits_each_copy_once(
    quiet_airlock: Airlock, settings: Settings
) -> None:
    original = safetensors_bytes(8192)  # one F32 tensor of 8192 values
    world, rob, _ = publish(quiet_airlock, {"model.safetensors": original, "config.json": b"{}"})
    grant = world.grant(rob, fresh_model(world, REPO))
    for _ in range(2):
        jobs.provision_download(quiet_airlock, grant_id=grant.id)
    with quiet_airlock.db.session() as s:
        (staged,) = s.scalars(select(StagedFile).where(StagedFile.grant_id == grant.id)).all()
        (record,) = s.scalars(select(DownloadFingerprint)).all()
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "grant:provision")).all()
        provisioned = s.get_one(Grant, grant.id).provisioned_at
    copy = (storage_root(settings) / staged.storage_key).read_bytes()
    assert len(copy) == len(original) and copy != original  # config.json is served shared
    assert record.sha256 == staged.sha256 == digest(copy) and record.params["tensors"] == {"w": 64}
    assert provisioned is not None and len(events) == 1


def test_a_safetensors_file_that_cannot_be_marked_is_never_staged(
    quiet_airlock: Airlock,
) -> None:
    world, rob, _ = publish(quiet_airlock, {"model.safetensors": b"\xff" * 64})
    grant = world.grant(rob, fresh_model(world, REPO))
    with pytest.raises(UnmarkableFile, match=r"model\.safetensors cannot be marked"):
        jobs.provision_download(quiet_airlock, grant_id=grant.id)
    with quiet_airlock.db.session() as s:
        assert not s.scalars(select(StagedFile)).all()
        assert s.get_one(Grant, grant.id).provisioned_at is None  # its downloads keep waiting


def test_a_file_with_no_tensor_to_mark_is_an_exact_copy_that_names_nobody(
    quiet_airlock: Airlock, settings: Settings
) -> None:
    original = safetensors_bytes(64)  # under min_numel
    world, rob, _ = publish(quiet_airlock, {"model.safetensors": original})
    grant = world.grant(rob, fresh_model(world, REPO))
    jobs.provision_download(quiet_airlock, grant_id=grant.id)
    with quiet_airlock.db.session() as s:
        (staged,) = s.scalars(select(StagedFile)).all()
        assert not s.scalars(select(DownloadFingerprint)).all()
    assert (storage_root(settings) / staged.storage_key).read_bytes() == original
