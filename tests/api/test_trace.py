"""The trace API: publishers and compliance attribute a leaked file; nobody else may ask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from safetensors.numpy import save_file
from sqlalchemy import select

from gateway.db.models import AuditEvent, Role
from tests.api.fingerprintkit import REPO, Scene, build_scene, sha256
from tests.api.hubkit import bearer
from tests.factories import Actor, World
from tests.fingerprint.weights import bf16_to_f32, read_bits

URL = f"/api/v1/models/{REPO}/trace"


@pytest.fixture
def scene(client: FlaskClient, world: World, tmp_path: Path) -> Scene:
    return build_scene(client, world, tmp_path)


def publisher(scene: Scene) -> Actor:
    return scene.world.actor("pat2", org="acme", role=Role.PUBLISHER)


def post(scene: Scene, actor: Actor | None, data: bytes, query: str = "") -> dict:  # type: ignore[type-arg]
    headers = {**bearer(actor), "Content-Type": "application/octet-stream"}
    response = scene.client.post(URL + query, data=data, headers=headers)
    return {"status": response.status_code, **(response.json or {})}


def upcast_resaved(copy: bytes, tmp_path: Path) -> bytes:
    """The copy re-saved as fp32 with other metadata and tensor order."""
    path = tmp_path / "copy.safetensors"
    path.write_bytes(copy)
    values = read_bits(path)
    floats = {
        n: bf16_to_f32(v).reshape(128, 256) if n.startswith("layers.") else v
        for n, v in values.items()
        if n != "norm.weight"
    }
    save_file(dict(reversed(floats.items())), str(path), metadata={"note": "fine"})
    return path.read_bytes()


def test_a_verbatim_copy_is_named_by_its_digest_and_its_mark_and_audited(scene: Scene) -> None:
    copy, pat = scene.own_copy(scene.rob), publisher(scene)
    report = post(scene, pat, copy)
    rob, eve = scene.grants["rob"].id, scene.grants["eve"].id
    assert report["status"] == 200 and report["verdict"] == "attributed"
    assert report["attributed"] == [rob] and report["threshold"] == 6.0
    (exact,) = report["exact"]
    assert exact["grant_id"] == rob and exact["username"] == "rob"
    top, other = report["ranked"]
    assert (top["grant_id"], other["grant_id"]) == (rob, eve)
    assert top["z"] == pytest.approx(np.sqrt(top["compared"]), abs=0.01) and top["z"] > 30
    assert abs(other["z"]) < 6
    cora = scene.world.actor("cora", org="acme", role=Role.COMPLIANCE)
    assert post(scene, cora, copy)["attributed"] == [rob]  # compliance may trace too
    with scene.world.airlock.db.session() as s:
        trace = select(AuditEvent).where(AuditEvent.action == "model:trace")
        events = s.scalars(trace.order_by(AuditEvent.seq)).all()
    assert [e.actor_id for e in events] == [pat.user.id, cora.user.id]
    assert events[-1].payload["suspects"] == [sha256(copy)]
    assert events[-1].payload["attributed"] == [rob]


def test_a_resaved_upcast_copy_is_attributed_by_its_mark_and_the_original_to_nobody(
    scene: Scene, tmp_path: Path
) -> None:
    leaked, pat = upcast_resaved(scene.own_copy(scene.eve), tmp_path), publisher(scene)
    report = post(scene, pat, leaked, "?revision=main")
    assert report["status"] == 200 and report["exact"] == []
    assert report["attributed"] == [scene.grants["eve"].id]
    assert report["ranked"][0]["z"] >= 6 > report["ranked"][1]["z"]
    report = post(scene, pat, scene.original)
    assert report["verdict"] == "inconclusive" and report["attributed"] == []
    assert all(f["z"] == 0 for f in report["ranked"])


def test_only_the_models_publishers_and_compliance_may_trace(scene: Scene) -> None:
    refused = [
        (None, 401),
        (scene.rob, 403),  # a grantee
        (scene.world.actor("olga", org="globex", role=Role.PUBLISHER), 403),  # another org
        (scene.world.actor("rina", org="acme", role=Role.REVIEWER), 403),  # no trace scope
    ]
    copy = scene.own_copy(scene.rob)
    for actor, status in refused:
        report = post(scene, actor, copy)
        assert report["status"] == status, (actor, report)
        assert "ranked" not in report and "exact" not in report
    with scene.world.airlock.db.session() as s:
        assert not s.scalars(select(AuditEvent).where(AuditEvent.action == "model:trace")).all()


def test_bad_suspects_models_and_revisions_are_clear_4xx(scene: Scene) -> None:
    pat = publisher(scene)
    report = post(scene, pat, b"\xff" * 64)
    assert report["status"] == 422 and report["code"] == "invalid_input"
    assert "not a safetensors file" in report["detail"]
    truncated = post(scene, pat, scene.original[: len(scene.original) // 2])
    assert truncated["status"] == 422 and "is truncated" in truncated["detail"]
    response = scene.client.post("/api/v1/models/acme/nope/trace", data=b"x", headers=bearer(pat))
    assert response.status_code == 404
    assert post(scene, pat, scene.original, "?revision=" + "0" * 40)["status"] == 404
    airlock = scene.world.airlock
    airlock.settings = airlock.settings.with_overrides(max_upload_bytes=1000)
    assert post(scene, pat, scene.original)["status"] == 413
