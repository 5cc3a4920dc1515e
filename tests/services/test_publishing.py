"""PublishingService: models, streamed uploads, manifests, commits and vetting."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.db.models import AuditEvent, Model, Revision, Role
from gateway.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    RevisionNotFound,
)
from gateway.services.container import Airlock
from gateway.services.publishing import ManifestEntry, blob_key, safe_repo_path
from tests.factories import Actor, World, safetensors_bytes


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pat(world: World) -> Actor:
    return world.actor("pat", org="acme", role=Role.PUBLISHER)


@pytest.fixture
def model(airlock: Airlock, pat: Actor) -> Model:
    with airlock.db.session() as s:
        return airlock.publishing.create_model(s, principal=pat.principal, repo_id="acme/m")


def upload(airlock: Airlock, actor: Actor, model: Model, data: bytes, **kw: object) -> dict:  # type: ignore[type-arg]
    with airlock.db.session() as s:
        return airlock.publishing.upload_blob(
            s,
            principal=actor.principal,
            model=s.merge(model),
            sha256=kw.pop("sha256", digest(data)),  # type: ignore[arg-type]
            stream=io.BytesIO(data),
            max_bytes=kw.pop("max_bytes", 1 << 20),  # type: ignore[arg-type]
        )


def commit(airlock: Airlock, actor: Actor, model: Model, files: dict[str, bytes]) -> Revision:
    manifest = [ManifestEntry(p, len(d), digest(d)) for p, d in files.items()]
    with airlock.db.session() as s:
        return airlock.publishing.commit(
            s, principal=actor.principal, model=s.merge(model), manifest=manifest
        )


def publish(airlock: Airlock, actor: Actor, model: Model, files: dict[str, bytes]) -> Revision:
    for data in files.values():
        upload(airlock, actor, model, data)
    return commit(airlock, actor, model, files)


def vetting(airlock: Airlock, revision: Revision) -> tuple[str, list[str]]:
    with airlock.db.session() as s:
        row = s.get_one(Revision, revision.id)
        return row.vetting_status, [p["problem"] for p in row.vetting_report.get("problems", [])]


# -- paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["a", "config.json", "onnx/fp16/model.safetensors", "a..b", ".gitattributes"]
)
def test_safe_paths_are_accepted(path: str) -> None:
    assert safe_repo_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "../x",
        "a/../b",
        "..",
        "/etc/passwd",
        "a\x00b",
        "a\nb",
        "dir\\file",
        "C:/x",
        "c:x",
        "a//b",
        "./a",
        "a/.",
        "a/",
        "x" * 1025,
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput):
        safe_repo_path(path)


# -- models ----------------------------------------------------------------------------------------
def test_create_model_is_for_publishers_of_the_org(
    world: World, airlock: Airlock, pat: Actor
) -> None:
    rival = world.actor("gus", org="globex", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    with airlock.db.session() as s:
        for actor in (rival, reviewer, world.actor("otto")):
            with pytest.raises(Forbidden):
                airlock.publishing.create_model(s, principal=actor.principal, repo_id="acme/x")
        model = airlock.publishing.create_model(s, principal=pat.principal, repo_id="acme/x")
        assert model.repo_id == "acme/x"
        with pytest.raises(Conflict):
            airlock.publishing.create_model(s, principal=pat.principal, repo_id="acme/x")
        for bad in ("acme/", "acme/-x", "nobody/x", "acme/a/b"):
            with pytest.raises(InvalidInput):
                airlock.publishing.create_model(s, principal=pat.principal, repo_id=bad)
        created = s.scalars(select(AuditEvent).where(AuditEvent.action == "model:create")).one()
        assert (created.actor_id, created.model_id) == (pat.user.id, model.id)


# -- uploads ---------------------------------------------------------------------------------------
def test_upload_stores_verified_bytes_once(airlock: Airlock, pat: Actor, model: Model) -> None:
    data = b"weights" * 100
    assert upload(airlock, pat, model, data) == {
        "sha256": digest(data),
        "size": 700,
        "stored": True,
    }
    assert upload(airlock, pat, model, data) == {"sha256": digest(data), "stored": False}
    with airlock.storage.open_read(blob_key(model.org_id, digest(data))) as stream:
        assert stream.read() == data


def test_sha256_mismatch_stores_nothing(airlock: Airlock, pat: Actor, model: Model) -> None:
    claimed = digest(b"claimed")
    with pytest.raises(InvalidInput, match="does not match"):
        upload(airlock, pat, model, b"actual", sha256=claimed)
    assert not airlock.storage.exists(blob_key(model.org_id, claimed))
    assert not list(Path(airlock.settings.data_dir, "blobs").rglob(".upload-*"))


def test_oversized_stream_is_refused_and_stores_nothing(
    airlock: Airlock, pat: Actor, model: Model
) -> None:
    data = b"x" * 5000
    with pytest.raises(PayloadTooLarge):
        upload(airlock, pat, model, data, max_bytes=4999)
    assert not airlock.storage.exists(blob_key(model.org_id, digest(data)))
    assert not list(Path(airlock.settings.data_dir, "blobs").rglob(".upload-*"))
    assert upload(airlock, pat, model, data, max_bytes=5000)["stored"] is True


@pytest.mark.parametrize("name", ["ABC", "0" * 63, "g" * 64, "../" + "0" * 61, "0" * 64 + "/x"])
def test_blob_names_must_be_sha256_hex(
    airlock: Airlock, pat: Actor, model: Model, name: str
) -> None:
    with pytest.raises(InvalidInput):
        upload(airlock, pat, model, b"x", sha256=name)


def test_uploads_need_models_write_in_the_org(world: World, airlock: Airlock, model: Model) -> None:
    for actor in (
        world.actor("gus", org="globex", role=Role.PUBLISHER),
        world.actor("rita", org="acme", role=Role.REVIEWER),
    ):
        with pytest.raises(Forbidden):
            upload(airlock, actor, model, b"x")


def test_blob_namespace_is_per_org(
    world: World, airlock: Airlock, pat: Actor, model: Model
) -> None:
    gus = world.actor("gus", org="globex", role=Role.PUBLISHER)
    with airlock.db.session() as s:
        theirs = airlock.publishing.create_model(s, principal=gus.principal, repo_id="globex/m")
    secret = b"acme only"
    upload(airlock, pat, model, secret)
    with pytest.raises(InvalidInput, match="were not uploaded"):
        commit(airlock, gus, theirs, {"copy.bin": secret})
    assert upload(airlock, gus, theirs, secret)["stored"] is True


# -- commits ---------------------------------------------------------------------------------------
def test_commit_makes_a_vetted_head_revision(airlock: Airlock, pat: Actor, model: Model) -> None:
    files = {"config.json": b"{}", "model.safetensors": safetensors_bytes()}
    revision = publish(airlock, pat, model, files)
    assert len(revision.commit_id) == 40
    assert revision.parent_commit_id is None
    assert vetting(airlock, revision) == ("passed", [])
    with airlock.db.session() as s:
        fresh = airlock.publishing.get_model(s, "acme/m")
        assert airlock.publishing.resolve_revision(s, fresh, "main").id == revision.id
        assert airlock.publishing.resolve_revision(s, fresh, revision.commit_id).id == revision.id
        with pytest.raises(RevisionNotFound):
            airlock.publishing.resolve_revision(s, fresh, "0" * 40)
        with pytest.raises(RevisionNotFound):
            airlock.publishing.resolve_revision(s, fresh, "HEAD~1")
    second = publish(airlock, pat, model, {"README.md": b"# hi"})
    assert second.parent_commit_id == revision.commit_id


def test_commit_keeps_the_head_on_the_callers_instance(airlock: Airlock, pat: Actor) -> None:
    with airlock.db.session() as s:
        model = airlock.publishing.create_model(s, principal=pat.principal, repo_id="acme/h")
        airlock.publishing.upload_blob(
            s,
            principal=pat.principal,
            model=model,
            sha256=digest(b"x"),
            stream=io.BytesIO(b"x"),
            max_bytes=10,
        )
        revision = airlock.publishing.commit(
            s, principal=pat.principal, model=model, manifest=[ManifestEntry("x", 1, digest(b"x"))]
        )
        assert model.head_revision is revision
    with airlock.db.session() as s:
        s.merge(model)
        s.commit()
        assert airlock.publishing.get_model(s, "acme/h").head_revision_id == revision.id


def test_manifest_problems_are_refused(airlock: Airlock, pat: Actor, model: Model) -> None:
    upload(airlock, pat, model, b"data")
    good = ManifestEntry("a.bin", 4, digest(b"data"))
    bad_manifests = [
        [],
        [good, good],
        [good, ManifestEntry("b.bin", 4, digest(b"other"))],
        [ManifestEntry("../a.bin", 4, digest(b"data"))],
        [ManifestEntry("/a.bin", 4, digest(b"data"))],
        [ManifestEntry("a.bin", -1, digest(b"data"))],
        [ManifestEntry("a.bin", 4, "XYZ")],
    ]
    with airlock.db.session() as s:
        for manifest in bad_manifests:
            with pytest.raises(InvalidInput):
                airlock.publishing.commit(
                    s, principal=pat.principal, model=s.merge(model), manifest=manifest
                )
        assert s.scalars(select(Revision)).all() == []


def test_commits_need_models_write_in_the_org(
    world: World, airlock: Airlock, pat: Actor, model: Model
) -> None:
    upload(airlock, pat, model, b"data")
    gus = world.actor("gus", org="globex", role=Role.PUBLISHER)
    with pytest.raises(Forbidden):
        commit(airlock, gus, model, {"a.bin": b"data"})


# -- vetting ---------------------------------------------------------------------------------------
class _Shell:
    def __reduce__(self) -> tuple[object, ...]:
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_pickle_importing_os_system_fails_vetting(
    airlock: Airlock, pat: Actor, model: Model, protocol: int
) -> None:
    revision = publish(airlock, pat, model, {"pytorch_model.bin": pickle.dumps(_Shell(), protocol)})
    status, problems = vetting(airlock, revision)
    assert status == "failed"
    assert any("system" in p for p in problems), problems


def test_plain_state_dict_pickle_passes(airlock: Airlock, pat: Actor, model: Model) -> None:
    revision = publish(airlock, pat, model, {"weights.pkl": pickle.dumps({"w": [1, 2, 3]}, 4)})
    assert vetting(airlock, revision) == ("passed", [])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (safetensors_bytes()[:-4], "tensor data covers"),
        (b"\x01", "shorter than a safetensors header"),
        ((10**9).to_bytes(8, "little") + b"{}", "out of bounds"),
        ((4).to_bytes(8, "little") + b"nope", "not valid JSON"),
        ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    ],
)
def test_corrupt_safetensors_fail_vetting(
    airlock: Airlock, pat: Actor, model: Model, data: bytes, problem: str
) -> None:
    revision = publish(airlock, pat, model, {"model.safetensors": data})
    status, problems = vetting(airlock, revision)
    assert status == "failed"
    assert any(problem in p for p in problems), problems


def test_manifest_size_that_lies_fails_vetting(airlock: Airlock, pat: Actor, model: Model) -> None:
    data = safetensors_bytes()
    upload(airlock, pat, model, data)
    with airlock.db.session() as s:
        revision = airlock.publishing.commit(
            s,
            principal=pat.principal,
            model=s.merge(model),
            manifest=[ManifestEntry("model.safetensors", len(data) + 1, digest(data))],
        )
    status, problems = vetting(airlock, revision)
    assert status == "failed"
    assert any("does not match" in p for p in problems)
    with airlock.db.session() as s:
        vetted = s.scalars(select(AuditEvent).where(AuditEvent.action == "revision:vet")).one()
        assert vetted.effect == "deny"
