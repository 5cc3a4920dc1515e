"""Upload ids are handles clients hold: SQLite must not hand a deleted upload's id out again."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from gateway.db.models import MultipartUpload, Role
from tests.factories import World


def _upload(world: World, org_id: int, model_id: int, user_id: int, sha: str) -> int:
    with world.airlock.db.session() as session:
        upload = MultipartUpload(
            org_id=org_id,
            model_id=model_id,
            sha256=sha * 64,
            size=1,
            part_size=1,
            storage_key="k",
            storage_upload_id="u",
            created_by_id=user_id,
        )
        session.add(upload)
        session.commit()
        return upload.id


@pytest.mark.sqlite
def test_a_deleted_uploads_id_is_never_reused(world: World) -> None:
    org = world.org("acme")
    publisher = world.actor("alice", org="acme", role=Role.PUBLISHER)
    model = world.model(publisher)
    first = _upload(world, org.id, model.id, publisher.user.id, "a")
    with world.airlock.db.session() as session:
        session.execute(delete(MultipartUpload).where(MultipartUpload.id == first))
        session.commit()
    assert _upload(world, org.id, model.id, publisher.user.id, "b") > first
