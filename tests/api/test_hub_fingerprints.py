"""Marked copies on the Hub surface: every endpoint reports the grantee's own copy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.db.models import AuditEvent, DownloadFingerprint, Grant, RevisionFile, Role
from tests.api.hubkit import bearer, fresh_model, tuned_policy
from tests.factories import Actor, World
from tests.fingerprint.weights import tensors, write_bf16

REPO = "acme/tiny"
WEIGHTS = "model.safetensors"
SETTINGS = "    fingerprint: {positions: 256, min_numel: 4096}\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Scene:
    client: FlaskClient
    world: World
    original: bytes
    rob: Actor
    eve: Actor
    grants: dict[str, Grant]

    def own_copy(self, actor: Actor, path: str = WEIGHTS) -> bytes:
        """What the actor downloads through /resolve and the signed URL."""
        response = self.client.get(f"/{REPO}/resolve/main/{path}", headers=bearer(actor))
        assert response.status_code == 302, response.headers
        blob = self.client.get(response.headers["Location"])
        data = blob.get_data()
        blob.close()
        return data


@pytest.fixture
def scene(client: FlaskClient, world: World, tmp_path: Path) -> Scene:
    """acme/tiny with a bf16 file marked per grant; rob and eve each hold a weights grant."""
    write_bf16(tmp_path / WEIGHTS, tensors())
    original = (tmp_path / WEIGHTS).read_bytes()
    world.org("acme")
    world.org("oxbridge", hq="GB")
    pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
    rita = world.actor("rita", org="acme", role=Role.REVIEWER)
    policy = tuned_policy(REPO, fingerprint=True).replace("    fingerprint: true\n", SETTINGS)
    files = {"config.json": b'{"model_type": "test"}', WEIGHTS: original}
    world.model(pat, REPO, files=files, policy=policy)
    actors, grants = {}, {}
    for name in ("rob", "eve"):
        actors[name] = world.actor(name, affiliation="oxbridge")
        world.kyc(rita, actors[name])
        grants[name] = world.grant(actors[name], fresh_model(world, REPO))  # provisioned now
    return Scene(client, world, original, actors["rob"], actors["eve"], grants)


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
