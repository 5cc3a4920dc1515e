"""The task functions, each run twice: the second run changes nothing and audits nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.db.models import Grant, Revision, RevisionFile, utcnow
from gateway.services.container import Airlock
from gateway.services.provisioning import TEMP_SUFFIX, load_staging, staged_key
from gateway.settings import Settings
from gateway.tasks import jobs
from gateway.tasks.catalog import PROVISION_TASK, VET_TASK
from tests.workers.conftest import (
    COVERED,
    FILES,
    RecordingRunner,
    Scene,
    blob_files,
    digest,
)


@pytest.fixture
def scene(quiet_airlock: Airlock) -> Scene:
    return Scene(quiet_airlock)


def storage_root(settings: Settings) -> Path:
    return Path(settings.storage_url.removeprefix("file://"))


def run_twice(job: object, airlock: Airlock, **kwargs: object) -> None:
    for _ in range(2):
        job(airlock, **kwargs)  # type: ignore[operator]


# -- vetting ---------------------------------------------------------------------------------------
def test_vet_revision_twice_records_one_outcome(scene: Scene, recorder: RecordingRunner) -> None:
    revision_id = scene.head_revision_id()
    assert (VET_TASK, {"revision_id": revision_id}) in recorder.sent
    run_twice(jobs.vet_revision, scene.airlock, revision_id=revision_id)
    with scene.airlock.db.session() as s:
        revision = s.get_one(Revision, revision_id)
        assert revision.vetting_status == "passed"
        assert revision.vetting_report == {"files": 3, "problems": []}
    assert scene.events("revision:vet") == 1


def test_vet_revision_of_a_missing_revision_does_nothing(scene: Scene) -> None:
    run_twice(jobs.vet_revision, scene.airlock, revision_id=10_000)
    assert scene.events("revision:vet") == 0


def test_in_process_runner_vets_on_commit(airlock: Airlock) -> None:
    scene = Scene(airlock)
    with airlock.db.session() as s:
        assert s.get_one(Revision, scene.head_revision_id()).vetting_status == "passed"
    assert scene.events("revision:vet") == 1


# -- provisioning ----------------------------------------------------------------------------------
def test_creating_a_fingerprinting_grant_enqueues_provisioning(
    scene: Scene, recorder: RecordingRunner
) -> None:
    grant = scene.grant()
    assert grant.provisioned_at is None
    assert recorder.sent[-1] == (PROVISION_TASK, {"grant_id": grant.id})


def test_provision_download_twice_stages_each_covered_file_once(
    scene: Scene, settings: Settings
) -> None:
    grant = scene.grant()
    run_twice(jobs.provision_download, scene.airlock, grant_id=grant.id)
    staged = scene.staged(grant.id)
    with scene.airlock.db.session() as s:
        paths = {f.id: f.path for f in s.query(RevisionFile)}
    assert sorted(paths[row.file_id] for row in staged) == sorted(COVERED)
    root = storage_root(settings)
    for row in staged:
        assert row.storage_key == staged_key(scene.model.org_id, grant.id, row.file_id)
        assert (root / row.storage_key).read_bytes() == FILES[paths[row.file_id]]
        assert row.sha256 == digest(FILES[paths[row.file_id]])
    assert not [p for p in blob_files(root) if p.name.endswith(TEMP_SUFFIX) or ".upload-" in p.name]
    assert scene.get_grant(grant.id).provisioned_at is not None
    assert scene.events("grant:provision") == 1


def test_a_crashed_run_leaves_nothing_a_rerun_does_not_replace(
    scene: Scene, settings: Settings
) -> None:
    grant = scene.grant()
    root = storage_root(settings)
    with scene.airlock.db.session() as s:
        plan = scene.airlock.provisioning.plan(s, grant_id=grant.id)
    assert plan is not None and len(plan.pending) == 2
    # The state a SIGKILL can leave: a temporary copy, and a published copy never recorded.
    first, second = plan.pending
    for key, junk in ((first.key + TEMP_SUFFIX, b"half a cop"), (second.key, b"unrecorded")):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(junk)
    jobs.provision_download(scene.airlock, grant_id=grant.id)
    for item in plan.pending:
        assert (root / item.key).read_bytes() == FILES[item.path]
        assert not (root / (item.key + TEMP_SUFFIX)).exists()
    assert len(scene.staged(grant.id)) == 2
    assert scene.events("grant:provision") == 1


def test_provisioning_skips_revoked_grants(scene: Scene) -> None:
    airlock = scene.airlock
    grant = scene.grant()
    with airlock.db.session() as s:
        airlock.access.revoke_grant(s, principal=scene.pat.principal, grant_id=grant.id, reason="x")
    run_twice(jobs.provision_download, airlock, grant_id=grant.id)
    assert scene.staged(grant.id) == []
    assert scene.events("grant:provision") == 0


def test_non_fingerprinting_grants_are_ready_at_once(
    settings: Settings, recorder: RecordingRunner, quiet_airlock: Airlock
) -> None:
    scene = Scene(quiet_airlock, fingerprint=False)
    grant = scene.grant()
    assert grant.provisioned_at is not None
    assert all(name != PROVISION_TASK for name, _ in recorder.sent)
    jobs.provision_download(quiet_airlock, grant_id=grant.id)
    assert scene.staged(grant.id) == []
    assert scene.events("grant:provision") == 0


def test_downloads_read_the_staged_key_or_provisioning_state(scene: Scene) -> None:
    grant = scene.grant()
    with scene.airlock.db.session() as s:
        file_id = s.query(RevisionFile.id).filter(RevisionFile.path == "config.json").scalar()
        assert load_staging(s.connection(), grant.id, file_id).key is None  # type: ignore[union-attr]
        assert not load_staging(s.connection(), grant.id, file_id).provisioned  # type: ignore[union-attr]
    jobs.provision_download(scene.airlock, grant_id=grant.id)
    with scene.airlock.db.session() as s:
        staging = load_staging(s.connection(), grant.id, file_id)
        assert staging is not None and staging.provisioned
        assert staging.key == staged_key(scene.model.org_id, grant.id, file_id)
        assert staging.sha256 == digest(FILES["config.json"])
        assert load_staging(s.connection(), 10_000, file_id) is None


def test_request_provisioning_enqueues_once_per_round(
    scene: Scene, recorder: RecordingRunner
) -> None:
    grant = scene.grant()
    jobs.provision_download(scene.airlock, grant_id=grant.id)
    recorder.sent.clear()
    with scene.airlock.db.session() as s:
        service = scene.airlock.provisioning
        assert service.request_provisioning(s, grant_id=grant.id, revision_id=None)
        assert not service.request_provisioning(s, grant_id=grant.id, revision_id=None)
    assert recorder.sent == [(PROVISION_TASK, {"grant_id": grant.id, "revision_id": None})]
    jobs.provision_download(scene.airlock, grant_id=grant.id)
    assert scene.get_grant(grant.id).provisioned_at is not None
    assert scene.events("grant:provision") == 2  # a second provisioning round, audited


# -- sweeps ----------------------------------------------------------------------------------------
def age(airlock: Airlock, grant_id: int, **values: object) -> None:
    with airlock.db.session() as s:
        s.execute(update(Grant).where(Grant.id == grant_id).values(**values))
        s.commit()


def test_sweep_twice_expires_and_deletes_copies_once(scene: Scene, settings: Settings) -> None:
    grant = scene.grant()
    jobs.provision_download(scene.airlock, grant_id=grant.id)
    keys = [row.storage_key for row in scene.staged(grant.id)]
    past = utcnow() - timedelta(minutes=1)
    age(scene.airlock, grant.id, expires_at=past)
    run_twice(jobs.sweep_grants, scene.airlock)
    ended = scene.get_grant(grant.id)
    assert ended.status == "expired" and ended.ended_at == past
    assert scene.events("grant:expire") == 1
    assert scene.staged(grant.id) == []
    assert not any((storage_root(settings) / key).exists() for key in keys)
    assert scene.events("grant:deprovision") == 1


def test_sweep_deletes_copies_of_revoked_grants(scene: Scene, settings: Settings) -> None:
    grant = scene.grant()
    jobs.provision_download(scene.airlock, grant_id=grant.id)
    with scene.airlock.db.session() as s:
        scene.airlock.access.revoke_grant(
            s, principal=scene.pat.principal, grant_id=grant.id, reason="left the lab"
        )
    run_twice(jobs.sweep_grants, scene.airlock)
    assert scene.staged(grant.id) == []
    assert scene.events("grant:deprovision") == 1
    assert scene.events("grant:expire") == 0


def test_frozen_models_lose_copies_and_get_them_back_on_request(
    scene: Scene, recorder: RecordingRunner, settings: Settings
) -> None:
    airlock = scene.airlock
    grant = scene.grant()
    jobs.provision_download(airlock, grant_id=grant.id)
    with airlock.db.session() as s:
        model = airlock.publishing.get_model(s, "acme/tiny")
        airlock.access.set_frozen(
            s, principal=scene.pat.principal, model=model, frozen=True, reason="leak"
        )
    run_twice(jobs.sweep_grants, airlock)
    assert scene.staged(grant.id) == []
    assert scene.get_grant(grant.id).status == "active"
    jobs.provision_download(airlock, grant_id=grant.id)  # frozen: nothing is staged
    assert scene.staged(grant.id) == []
    with airlock.db.session() as s:
        model = airlock.publishing.get_model(s, "acme/tiny")
        airlock.access.set_frozen(
            s, principal=scene.pat.principal, model=model, frozen=False, reason="ok"
        )
        assert airlock.provisioning.request_provisioning(s, grant_id=grant.id)
    jobs.provision_download(airlock, grant_id=grant.id)
    assert len(scene.staged(grant.id)) == 2


def test_sweep_resends_work_whose_task_was_lost(scene: Scene, recorder: RecordingRunner) -> None:
    grant = scene.grant()
    revision_id = scene.head_revision_id()
    recorder.sent.clear()
    jobs.sweep_grants(scene.airlock)
    assert recorder.sent == []  # too recent: a worker may still be on it
    long_ago = utcnow() - timedelta(hours=2)
    age(scene.airlock, grant.id, granted_at=long_ago)
    with scene.airlock.db.session() as s:
        s.execute(update(Revision).where(Revision.id == revision_id).values(created_at=long_ago))
        s.commit()
    jobs.sweep_grants(scene.airlock)
    assert recorder.sent == [
        (PROVISION_TASK, {"grant_id": grant.id}),
        (VET_TASK, {"revision_id": revision_id}),
    ]
