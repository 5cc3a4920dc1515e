"""Marked copies on the Hub surface: every endpoint reports the grantee's own copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.db.models import AuditEvent, DownloadFingerprint, RevisionFile
from tests.api.fingerprintkit import REPO, WEIGHTS, Scene, build_scene, sha256
from tests.api.hubkit import bearer
from tests.factories import World


@pytest.fixture
def scene(client: FlaskClient, world: World, tmp_path: Path) -> Scene:
    return build_scene(client, world, tmp_path)


def test_each_grantee_downloads_a_copy_of_their_own_and_the_records_name_it(scene: Scene) -> None:
    rob, eve = scene.own_copy(scene.rob), scene.own_copy(scene.eve)
    assert len(rob) == len(eve) == len(scene.original)
    assert len({rob, eve, scene.original}) == 3
    with scene.world.airlock.db.session() as s:
        records = {r.grant_id: r for r in s.scalars(select(DownloadFingerprint))}
        provisioned = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "grant:provision")
        ).all()
        weights_id = s.scalar(select(RevisionFile.id).where(RevisionFile.path == WEIGHTS))
    assert set(records) == {scene.grants["rob"].id, scene.grants["eve"].id}
    mine = records[scene.grants["rob"].id]
    assert (mine.sha256, mine.size, mine.key_version) == (sha256(rob), len(rob), 1)
    assert mine.file_id == weights_id
    assert mine.params["tensors"] == {f"layers.{i}.weight": 256 for i in range(4)}
    assert mine.params["settings"]["positions"] == 256
    (event,) = [e for e in provisioned if e.payload["grant_id"] == scene.grants["rob"].id]
    entry = next(f for f in event.payload["files"] if f["path"] == WEIGHTS)
    assert entry["sha256"] == sha256(rob) and entry["size"] == len(rob)
    assert entry["fingerprint"] == {"key_version": 1, "tensors": 4, "positions": 1024}
    config = next(f for f in event.payload["files"] if f["path"] == "config.json")
    assert "fingerprint" not in config  # copied exactly: only safetensors carry marks


def test_model_info_tree_paths_info_and_resolve_report_the_callers_copy(scene: Scene) -> None:
    for actor in (scene.rob, scene.eve):
        data = scene.own_copy(actor)
        digest, size, auth = sha256(data), len(data), bearer(actor)
        info = scene.client.get(f"/api/models/{REPO}?blobs=true", headers=auth).json
        (sibling,) = [s for s in info["siblings"] if s["rfilename"] == WEIGHTS]
        assert sibling["size"] == size and sibling["lfs"] == {
            "sha256": digest,
            "size": size,
            "pointerSize": sibling["lfs"]["pointerSize"],
        }
        tree = scene.client.get(f"/api/models/{REPO}/tree/main", headers=auth).json
        (entry,) = [e for e in tree if e["path"] == WEIGHTS]
        assert entry["lfs"]["oid"] == digest and entry["size"] == size
        assert entry["oid"] == sibling["blobId"]
        paths = scene.client.post(
            f"/api/models/{REPO}/paths-info/main", data={"paths": [WEIGHTS]}, headers=auth
        ).json
        assert paths == [entry]
        head = scene.client.head(f"/{REPO}/resolve/main/{WEIGHTS}", headers=auth)
        assert head.headers["X-Linked-Etag"] == head.headers["ETag"] == f'"{digest}"'
        assert head.headers["X-Linked-Size"] == str(size)
    assert sha256(scene.original) not in str(info) + str(tree)


def test_another_grantees_blob_oid_differs_and_the_original_is_never_listed(scene: Scene) -> None:
    oids = set()
    for actor in (scene.rob, scene.eve):
        tree = scene.client.get(f"/api/models/{REPO}/tree/main", headers=bearer(actor)).json
        oids |= {e["oid"] for e in tree if e["path"] == WEIGHTS}
    assert len(oids) == 2


def test_an_outsider_sees_no_copy_and_gets_none(scene: Scene) -> None:
    otto = scene.world.actor("otto")
    response = scene.client.get(f"/api/models/{REPO}/tree/main", headers=bearer(otto))
    assert response.status_code in (401, 403) and response.headers["X-Error-Code"] == "GatedRepo"
    response = scene.client.get(f"/{REPO}/resolve/main/{WEIGHTS}", headers=bearer(otto))
    assert response.status_code == 403 and "Location" not in response.headers
