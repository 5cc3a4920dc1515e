"""A model whose weights tier marks each grantee's copy: rob and eve hold weights grants."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from flask.testing import FlaskClient

from gateway.db.models import Grant, Role
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


def build_scene(client: FlaskClient, world: World, tmp_path: Path) -> Scene:
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
