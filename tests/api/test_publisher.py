"""Publisher API: models, uploads, commits and vetting, release policies, freezes, grants."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from flask.testing import FlaskClient
from sqlalchemy import event, select
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent, MultipartUpload
from gateway.errors import UploadMissing
from gateway.services.container import build_airlock
from gateway.services.publishing import blob_key, load_vetting
from gateway.settings import Settings
from gateway.storage import S3Storage
from gateway.tasks.catalog import SWEEP_TASK
from gateway.tasks.jobs import JOBS
from tests.api.apikit import (
    REPO,
    RIVAL_REPO,
    Api,
    backdate,
    corrupt_safetensors,
    make_api,
    malicious_pickle,
    ok,
    past,
    problem,
    sha256,
)
from tests.factories import Actor, World, policy_text, safetensors_bytes
from tests.s3_servers import S3Server, moto_server

NEW = "acme/fresh"
FILES = {"config.json": b'{"model_type": "test"}', "model.safetensors": safetensors_bytes()}


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    return make_api(client, world)


def audit_actions(api: Api, model_repo: str) -> list[str]:
    with api.world.airlock.db.session() as s:
        model = api.world.airlock.publishing.get_model(s, model_repo)
        return list(
            s.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.model_id == model.id)
                .order_by(AuditEvent.seq)
            )
        )


# -- models ----------------------------------------------------------------------------------------
def test_publisher_creates_a_model_and_it_is_audited(api: Api) -> None:
    body = ok(api.create(NEW), 201)
    assert body["repo_id"] == NEW
    assert body["head"] is None
    assert body["policy_version"] is None
    assert body["frozen"] is False
    assert audit_actions(api, NEW) == ["model:create"]


@pytest.mark.parametrize("who", ["reviewer", "compliance", "researcher", "outsider"])
def test_only_publishers_create_models(api: Api, who: str) -> None:
    problem(api.create(NEW, getattr(api, who)), 403, "forbidden")


def test_a_publisher_of_another_org_cannot_create_models_in_this_one(api: Api) -> None:
    problem(api.create(NEW, api.rival_publisher), 403, "forbidden")
    ok(api.create("globex/fresh", api.rival_publisher), 201)


def test_creating_a_model_needs_a_token(api: Api) -> None:
    response = api.post("/api/v1/models", json={"repo_id": NEW})
    problem(response, 401, "authentication_required")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_publisher_token_without_models_write_cannot_create(api: Api) -> None:
    narrow = api.token(api.publisher, [Scope.POLICIES_WRITE])
    problem(api.create(NEW, narrow), 403, "forbidden")


def test_duplicate_and_unknown_org_models_are_refused(api: Api) -> None:
    problem(api.create(REPO), 409, "conflict")
    problem(api.create("nobody/model"), 422, "invalid_input")
    problem(api.create("Acme/UPPER"), 422, "invalid_input")


def test_internal_models_are_invisible_outside_their_org(api: Api) -> None:
    ok(api.create(NEW), 201)
    ok(api.get(f"/api/v1/models/{NEW}", api.publisher))
    ok(api.get(f"/api/v1/models/{NEW}", api.reviewer))
    problem(api.get(f"/api/v1/models/{NEW}", api.outsider), 404)
    problem(api.get(f"/api/v1/models/{NEW}"), 404)
    problem(api.get(f"/api/v1/models/{NEW}", api.rival_publisher), 404)
    assert ok(api.get(f"/api/v1/models/{REPO}"))["stage"] == "limited"


# -- uploads ---------------------------------------------------------------------------------------
def test_upload_is_streamed_verified_and_idempotent(api: Api) -> None:
    ok(api.create(NEW), 201)
    data = b"some weights"
    assert ok(api.upload(NEW, data)) == {"sha256": sha256(data), "stored": True, "size": len(data)}
    assert ok(api.upload(NEW, data))["stored"] is False


def test_upload_with_a_wrong_sha256_is_refused_and_nothing_is_stored(api: Api) -> None:
    ok(api.create(NEW), 201)
    declared = sha256(b"what I claim")
    response = api.put(
        f"/api/v1/models/{NEW}/blobs/{declared}",
        api.publisher,
        data=b"what I send",
        content_type="application/octet-stream",
    )
    problem(response, 422, "invalid_input")
    manifest = [{"path": "x.bin", "size": 11, "sha256": declared}]
    response = api.post(f"/api/v1/models/{NEW}/commits", api.publisher, json={"files": manifest})
    assert "were not uploaded" in problem(response, 422)["detail"]
    blobs = Path(api.world.airlock.settings.data_dir, "blobs")
    assert not [p for p in blobs.rglob("*") if p.is_file() and declared in p.name]
    assert not list(blobs.rglob(".upload-*"))


def test_upload_name_must_be_a_sha256(api: Api) -> None:
    ok(api.create(NEW), 201)
    response = api.put(f"/api/v1/models/{NEW}/blobs/ABC", api.publisher, data=b"x")
    problem(response, 422, "invalid_input")


@pytest.mark.parametrize("who", ["reviewer", "compliance", "researcher", "rival_publisher"])
def test_only_the_models_publishers_upload(api: Api, who: str) -> None:
    problem(api.upload(REPO, b"bytes", getattr(api, who)), 403, "forbidden")


def test_oversized_upload_is_413_and_nothing_is_stored(settings: Settings) -> None:
    services = build_airlock(settings.with_overrides(max_upload_bytes=1024))
    try:
        client = create_app(airlock=services).test_client()
        api = make_api(client, World(services), publish=False)
        ok(api.create(NEW), 201)
        data = b"x" * 2048
        body = problem(api.upload(NEW, data), 413)
        assert body["code"] == "payload_too_large"
        org_id = api.world.org("acme").id
        assert not services.storage.exists(blob_key(org_id, sha256(data)))
        ok(api.upload(NEW, b"x" * 1024))
    finally:
        services.close()


def test_blobs_of_another_org_cannot_be_committed_by_knowing_their_sha256(api: Api) -> None:
    secret = b"acme's gated weights"
    ok(api.create(NEW), 201)
    assert ok(api.upload(NEW, secret))["stored"] is True
    ok(api.create("globex/copycat", api.rival_publisher), 201)
    response = api.commit("globex/copycat", {"stolen.bin": secret}, api.rival_publisher)
    assert "were not uploaded" in problem(response, 422, "invalid_input")["detail"]
    assert ok(api.upload("globex/copycat", secret, api.rival_publisher))["stored"] is True


# -- commits and vetting ---------------------------------------------------------------------------
def test_commit_creates_a_revision_that_becomes_the_head_and_passes_vetting(api: Api) -> None:
    ok(api.create(NEW), 201)
    revision = api.push(NEW, FILES)
    assert len(revision["commit"]) == 40
    assert {f["path"] for f in revision["files"]} == set(FILES)
    assert ok(api.get(f"/api/v1/models/{NEW}", api.publisher))["head"] == revision["commit"]
    shown = ok(api.get(f"/api/v1/models/{NEW}/revisions/main", api.publisher))
    assert shown["vetting_status"] == "passed"
    assert shown["vetting_report"] == {"files": 2, "problems": []}
    assert ok(api.get(f"/api/v1/models/{NEW}/revisions/{revision['commit']}", api.publisher))
    assert audit_actions(api, NEW)[-2:] == ["revision:commit", "revision:vet"]


@pytest.mark.parametrize(
    ("files", "problem_text"),
    [
        ({"model.safetensors": corrupt_safetensors()}, "tensor data covers"),
        ({"pytorch_model.bin": malicious_pickle()}, "unsafe global"),
    ],
)
def test_vetting_fails_corrupt_safetensors_and_dangerous_pickles(
    api: Api, files: dict[str, bytes], problem_text: str
) -> None:
    ok(api.create(NEW), 201)
    api.push(NEW, files)
    shown = ok(api.get(f"/api/v1/models/{NEW}/revisions/main", api.publisher))
    assert shown["vetting_status"] == "failed"
    assert problem_text in shown["vetting_report"]["problems"][0]["problem"]


def test_pickle_scan_names_the_imported_callable(api: Api) -> None:
    ok(api.create(NEW), 201)
    api.push(NEW, {"model.pkl": malicious_pickle()})
    report = ok(api.get(f"/api/v1/models/{NEW}/revisions/main", api.publisher))["vetting_report"]
    assert any("system" in p["problem"] for p in report["problems"])


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "/etc/passwd", "a\x00b", "dir\\file", "C:/x", "a//b", "./a", "a/", ""],
)
def test_commit_refuses_unsafe_paths(api: Api, path: str) -> None:
    ok(api.create(NEW), 201)
    ok(api.upload(NEW, b"data"))
    manifest = [{"path": path, "size": 4, "sha256": sha256(b"data")}]
    response = api.post(f"/api/v1/models/{NEW}/commits", api.publisher, json={"files": manifest})
    problem(response, 422, "invalid_input")
    assert ok(api.get(f"/api/v1/models/{NEW}", api.publisher))["head"] is None


def test_commit_refuses_duplicate_paths_and_missing_blobs(api: Api) -> None:
    ok(api.create(NEW), 201)
    ok(api.upload(NEW, b"data"))
    entry = {"path": "a.bin", "size": 4, "sha256": sha256(b"data")}
    url = f"/api/v1/models/{NEW}/commits"
    assert (
        "duplicate"
        in problem(api.post(url, api.publisher, json={"files": [entry, entry]}), 422)["detail"]
    )
    missing = {"path": "b.bin", "size": 4, "sha256": sha256(b"never uploaded")}
    problem(api.post(url, api.publisher, json={"files": [entry, missing]}), 422, "invalid_input")
    problem(api.post(url, api.publisher, json={"files": []}), 422, "invalid_input")


@pytest.mark.parametrize("who", ["reviewer", "researcher", "rival_publisher"])
def test_only_the_models_publishers_commit(api: Api, who: str) -> None:
    problem(api.commit(REPO, {"config.json": b'{"model_type": "test"}'}, getattr(api, who)), 403)


def test_revisions_are_shown_to_publishers_only(api: Api) -> None:
    problem(api.get(f"/api/v1/models/{REPO}/revisions/main", api.reviewer), 403)
    problem(api.get(f"/api/v1/models/{REPO}/revisions/main", api.rival_publisher), 403)
    problem(api.get(f"/api/v1/models/{REPO}/revisions/{'0' * 40}", api.publisher), 404)
    problem(api.get(f"/api/v1/models/{REPO}/revisions/nope", api.publisher), 404)


# -- release policies ------------------------------------------------------------------------------
def test_policy_versions_are_created_per_change_and_identical_content_is_a_no_op(
    api: Api,
) -> None:
    ok(api.create(NEW), 201)
    first = ok(api.apply(policy_text(NEW), comment="first"), 201)
    assert (first["version"], first["created"], first["repo_id"]) == (1, True, NEW)
    again = ok(api.apply(policy_text(NEW)), 200)
    assert (again["version"], again["created"]) == (1, False)
    second = ok(api.apply(policy_text(NEW, downloads=5)), 201)
    assert second["version"] == 2
    assert second["sha256"] != first["sha256"]
    history = ok(api.get(f"/api/v1/models/{NEW}/policy/versions", api.publisher))["versions"]
    assert [v["version"] for v in history] == [2, 1]
    assert history[1]["comment"] == "first"
    assert ok(api.get(f"/api/v1/models/{NEW}", api.publisher))["policy_version"] == 2
    assert audit_actions(api, NEW).count("policy:apply") == 2


def test_schema_errors_carry_path_and_line(api: Api) -> None:
    source = policy_text(REPO).replace("kyc: identity", "kyc: telepathy")
    source = source.replace("grant_ttl: 30d", "grant_ttl: forever")
    body = problem(api.apply(source), 422, "policy_invalid")
    assert len(body["errors"]) >= 2
    for error in body["errors"]:
        assert error["path"]
        assert isinstance(error["line"], int)
        assert error["message"]
    lines = source.splitlines()
    assert any("telepathy" in lines[e["line"] - 1] for e in body["errors"])


def test_yaml_syntax_errors_carry_a_line(api: Api) -> None:
    body = problem(api.apply("model: acme/tiny\nstage: [limited\n"), 422, "policy_invalid")
    assert body["errors"]
    assert all(isinstance(e["line"], int) and "path" in e for e in body["errors"])


def test_validate_checks_without_applying(api: Api) -> None:
    result = ok(api.post("/api/v1/policies/validate", json={"source": policy_text(REPO)}))
    assert result["valid"] is True
    assert result["document"]["model"] == REPO
    source = policy_text(REPO).replace("stage: limited", "stage: everywhere")
    problem(api.post("/api/v1/policies/validate", json={"source": source}), 422, "policy_invalid")
    assert ok(api.get(f"/api/v1/models/{REPO}", api.publisher))["policy_version"] == 1


@pytest.mark.parametrize("who", ["rival_publisher", "reviewer", "researcher"])
def test_policies_are_applied_only_by_the_models_publishers(api: Api, who: str) -> None:
    problem(api.apply(policy_text(REPO, downloads=1), getattr(api, who)), 403, "forbidden")
    problem(api.get(f"/api/v1/models/{REPO}/policy/versions", getattr(api, who)), 403)


def test_policy_for_an_unknown_model_is_invalid(api: Api) -> None:
    problem(api.apply(policy_text("acme/ghost")), 422, "invalid_input")


# -- freeze ----------------------------------------------------------------------------------------
def test_freeze_is_audited_and_stops_new_grants(api: Api) -> None:
    url = f"/api/v1/models/{REPO}/freeze"
    body = ok(api.post(url, api.publisher, json={"frozen": True, "reason": "leak suspected"}))
    assert (body["frozen"], body["frozen_reason"]) == (True, "leak suspected")
    api.world.kyc(api.reviewer, api.researcher)
    denied = ok(api.request("weights-auto"), 201)
    assert denied["status"] == "denied"
    assert "model_frozen" in {r["code"] for r in denied["reasons"]}
    ok(api.post(url, api.publisher, json={"frozen": False, "reason": "all clear"}))
    assert audit_actions(api, REPO)[-3:] == ["model:freeze", "request:create", "model:unfreeze"]
    with api.world.airlock.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "model:freeze")).one()
        assert event.payload == {"reason": "leak suspected"}
        assert event.actor_id == api.publisher.user.id


@pytest.mark.parametrize("who", ["reviewer", "rival_publisher", "researcher"])
def test_only_the_models_publishers_freeze(api: Api, who: str) -> None:
    url = f"/api/v1/models/{REPO}/freeze"
    problem(api.post(url, getattr(api, who), json={"frozen": True, "reason": "x"}), 403)
    assert ok(api.get(f"/api/v1/models/{REPO}"))["frozen"] is False


def test_freeze_needs_a_real_reason(api: Api) -> None:
    url = f"/api/v1/models/{REPO}/freeze"
    problem(api.post(url, api.publisher, json={"frozen": True, "reason": "   "}), 422)
    problem(api.post(url, api.publisher, json={"frozen": True}), 422)


# -- grants ----------------------------------------------------------------------------------------
def granted(api: Api) -> int:
    api.world.kyc(api.reviewer, api.researcher)
    return int(ok(api.request("weights-auto"), 201)["grant"]["id"])


def test_grants_are_listed_and_revoked_by_the_models_org(api: Api) -> None:
    grant_id = granted(api)
    listed = ok(api.get(f"/api/v1/models/{REPO}/grants", api.publisher))["grants"]
    assert [(g["id"], g["user"], g["status"]) for g in listed] == [(grant_id, "rob", "active")]
    revoked = ok(
        api.post(f"/api/v1/grants/{grant_id}/revoke", api.reviewer, json={"reason": "misuse"})
    )
    assert (revoked["status"], revoked["end_reason"]) == ("revoked", "misuse")
    mine = ok(api.get("/api/v1/me/grants", api.researcher))["grants"]
    assert mine[0]["status"] == "revoked"
    again = api.post(f"/api/v1/grants/{grant_id}/revoke", api.publisher, json={"reason": "x"})
    problem(again, 409, "conflict")
    assert audit_actions(api, REPO)[-1] == "grant:revoke"


@pytest.mark.parametrize(
    "who", ["rival_publisher", "rival_reviewer", "compliance", "researcher", "outsider"]
)
def test_grants_are_managed_only_in_the_models_org(api: Api, who: str) -> None:
    grant_id = granted(api)
    actor = getattr(api, who)
    response = api.post(f"/api/v1/grants/{grant_id}/revoke", actor, json={"reason": "x"})
    problem(response, 403, "forbidden")
    problem(api.get(f"/api/v1/models/{REPO}/grants", actor), 403, "forbidden")
    assert ok(api.get("/api/v1/me/grants", api.researcher))["grants"][0]["status"] == "active"


def test_revoking_needs_a_token_and_an_existing_grant(api: Api) -> None:
    problem(api.post("/api/v1/grants/1/revoke", json={"reason": "x"}), 401)
    problem(api.post("/api/v1/grants/999/revoke", api.publisher, json={"reason": "x"}), 404)


def test_rival_org_model_is_untouched_by_acme(api: Api) -> None:
    problem(api.commit(RIVAL_REPO, FILES, api.publisher), 403)


# -- vetting overrides -----------------------------------------------------------------------------
def override(api: Api, allow: bool, actor: Any = None, rev: str = "main", **body: Any) -> Any:
    return api.post(
        f"/api/v1/models/{NEW}/revisions/{rev}/vetting-override",
        actor or api.publisher,
        json={"allow": allow, "reason": "reviewed by hand: the flagged pickle is ours", **body},
    )


def servable(api: Api) -> bool:
    with api.world.airlock.db.session() as s:
        model = api.world.airlock.publishing.get_model(s, NEW)
        assert model.head_revision_id is not None
        state = load_vetting(s.connection(), model.head_revision_id)
        assert state is not None
        return state.servable


def test_a_publisher_overrides_failed_vetting_and_takes_it_back_audited(api: Api) -> None:
    ok(api.create(NEW), 201)
    api.push(NEW, {"model.pkl": malicious_pickle()})
    assert not servable(api)
    shown = ok(override(api, True))
    assert shown["vetting_status"] == "failed" and shown["vetting_overridden_at"]
    assert shown["vetting_override_reason"].startswith("reviewed by hand")
    assert servable(api)
    ok(override(api, True))  # already overridden: no second event
    assert ok(override(api, False))["vetting_overridden_at"] is None
    assert not servable(api)
    assert audit_actions(api, NEW)[-2:] == ["revision:override", "revision:override"]


@pytest.mark.parametrize("who", ["reviewer", "compliance", "researcher", "rival_publisher"])
def test_only_the_models_publishers_override_vetting(api: Api, who: str) -> None:
    ok(api.create(NEW), 201)
    api.push(NEW, {"model.pkl": malicious_pickle()})
    response = override(api, True, getattr(api, who))
    assert response.status_code in (403, 404)
    assert not servable(api)
    assert "revision:override" not in audit_actions(api, NEW)


def test_overrides_need_a_reason_and_a_revision_that_did_not_pass(api: Api) -> None:
    ok(api.create(NEW), 201)
    problem(override(api, True, reason=""), 422, "invalid_input")
    clean = api.push(NEW, FILES)
    assert servable(api)
    problem(override(api, True, rev=clean["commit"]), 409, "conflict")
    problem(override(api, True, rev="f" * 40), 404, "revision_not_found")


# -- direct uploads to S3 (presigned multipart PUTs) -----------------------------------------------
PART = 5 * 1024 * 1024
BIG = bytes(range(256)) * (2 * PART // 256) + b"tail"  # three parts: two full, one of 4 bytes


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_api(settings: Settings, moto: S3Server) -> Iterator[Api]:
    """The API over S3 storage (a fresh bucket): acme and globex exist, no models yet."""
    services = build_airlock(
        settings.with_overrides(**moto.overrides(moto.new_bucket()), upload_part_bytes=PART)
    )
    try:
        api = make_api(create_app(airlock=services).test_client(), World(services), publish=False)
        ok(api.create(NEW), 201)
        yield api
    finally:
        services.close()


def start(api: Api, data: bytes, actor: Actor | None = None, repo: str = NEW) -> TestResponse:
    body = {"sha256": sha256(data), "size": len(data)}
    return api.post(f"/api/v1/models/{repo}/uploads", actor or api.publisher, json=body)


def put_parts(api: Api, plan: dict[str, Any], data: bytes, numbers: list[int]) -> None:
    """PUT parts straight to S3 through the presigned URLs the gateway hands out."""
    url = f"/api/v1/models/{NEW}/uploads/{plan['upload_id']}/parts"
    urls = ok(api.post(url, api.publisher, json={"numbers": numbers}))
    for part in urls["parts"]:
        offset = (part["number"] - 1) * plan["part_size"]
        chunk = data[offset : offset + part["size"]]
        request = urllib.request.Request(
            part["url"], data=chunk, method="PUT", headers={"Content-Type": "application/x-bin"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def complete(api: Api, plan: dict[str, Any], actor: Actor | None = None) -> TestResponse:
    url = f"/api/v1/models/{NEW}/uploads/{plan['upload_id']}/complete"
    return api.post(url, actor or api.publisher)


def s3_of(api: Api) -> S3Storage:
    storage = api.world.airlock.storage
    assert isinstance(storage, S3Storage)
    return storage


def main_revision(api: Api) -> Any:
    return ok(api.get(f"/api/v1/models/{NEW}/revisions/main", api.publisher))


def test_s3_uploads_go_straight_to_storage_in_parts_then_commit(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    assert plan["method"] == "multipart"
    assert (plan["part_size"], plan["part_count"], plan["uploaded"]) == (PART, 3, [])
    put_parts(s3_api, plan, BIG, [1, 2, 3])
    assert ok(complete(s3_api, plan)) == {"sha256": sha256(BIG), "size": len(BIG), "stored": True}
    assert ok(start(s3_api, BIG))["method"] == "stored"
    ok(s3_api.commit(NEW, {"big.raw": BIG}), 201)
    assert main_revision(s3_api)["vetting_status"] == "passed"  # vetting re-hashed S3's bytes
    org_id = s3_api.world.orgs["acme"].id
    with s3_of(s3_api).open_read(blob_key(org_id, sha256(BIG))) as stream:
        assert stream.read() == BIG


def test_starting_again_resumes_with_the_parts_storage_already_holds(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, BIG, [2])
    again = ok(start(s3_api, BIG))
    assert again["upload_id"] == plan["upload_id"]
    assert again["uploaded"] == [{"number": 2, "size": PART}]
    put_parts(s3_api, plan, BIG, [1, 3])
    assert ok(complete(s3_api, plan))["size"] == len(BIG)


def test_completion_checks_every_part_is_there_at_its_size(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, BIG[:-1], [3])  # part 3 one byte short
    body = problem(complete(s3_api, plan), 422, "invalid_input")
    assert body["errors"] == [
        {"path": "parts.1", "message": "not uploaded"},
        {"path": "parts.2", "message": "not uploaded"},
        {"path": "parts.3", "message": "has 3 bytes, expected 4"},
    ]
    assert not s3_of(s3_api).exists(blob_key(s3_api.world.orgs["acme"].id, sha256(BIG)))


def test_bytes_that_do_not_match_their_sha256_never_become_servable(s3_api: Api) -> None:
    forged = bytes(len(BIG) - 4) + b"evil"  # the claimed size, other bytes
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, forged, [1, 2, 3])
    ok(complete(s3_api, plan))  # the size matches; the digest is the vetting task's to check
    ok(s3_api.commit(NEW, {"big.raw": BIG}), 201)
    revision = main_revision(s3_api)
    assert revision["vetting_status"] == "failed"
    mismatch = "sha256 of the stored bytes does not match the manifest"
    assert {"path": "big.raw", "problem": mismatch} in revision["vetting_report"]["problems"]

    # Pushing the right bytes again replaces the wrong ones instead of skipping them.
    again = ok(start(s3_api, BIG))
    assert again["method"] == "multipart" and again["uploaded"] == []
    put_parts(s3_api, again, BIG, [1, 2, 3])
    ok(complete(s3_api, again))
    ok(s3_api.commit(NEW, {"big.raw": BIG}), 201)
    assert main_revision(s3_api)["vetting_status"] == "passed"
    assert ok(start(s3_api, BIG))["method"] == "stored"


def test_an_upload_aborted_while_completing_asks_for_a_new_push(
    s3_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload vanishes between listing its parts and completing it: 409, not 503."""
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, BIG, [1, 2, 3])
    storage = s3_of(s3_api)

    def completed_after_an_abort(key: str, upload_id: str, parts: object) -> int:
        storage.abort(key, upload_id)  # S3 answers NoSuchUpload here (moto answers 500)
        raise UploadMissing(f"the multipart upload of {key} is no longer in storage")

    monkeypatch.setattr(storage, "complete", completed_after_an_abort)
    assert "push the file again" in problem(complete(s3_api, plan), 409, "conflict")["detail"]
    monkeypatch.undo()
    assert ok(start(s3_api, BIG))["upload_id"] != plan["upload_id"]  # a fresh push can start


def test_part_urls_are_only_for_parts_of_the_upload(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    url = f"/api/v1/models/{NEW}/uploads/{plan['upload_id']}/parts"
    body = problem(s3_api.post(url, s3_api.publisher, json={"numbers": [1, 4]}), 422)
    assert body["errors"] == [{"path": "numbers", "message": "no part 4"}]
    problem(s3_api.post(url, s3_api.publisher, json={"numbers": [0]}), 422, "invalid_input")
    problem(s3_api.post(url, s3_api.publisher, json={"numbers": []}), 422, "invalid_input")
    other = f"/api/v1/models/{NEW}/uploads/999/parts"
    problem(s3_api.post(other, s3_api.publisher, json={"numbers": [1]}), 404, "not_found")


def test_upload_requests_are_validated(s3_api: Api, settings: Settings) -> None:
    url = f"/api/v1/models/{NEW}/uploads"
    for body in ({"sha256": "ABC", "size": 1}, {"sha256": sha256(b"x"), "size": -1}, {}):
        problem(s3_api.post(url, s3_api.publisher, json=body), 422, "invalid_input")
    huge = {"sha256": sha256(b"x"), "size": settings.max_upload_bytes + 1}
    problem(s3_api.post(url, s3_api.publisher, json=huge), 413, "payload_too_large")


def test_streamed_uploads_are_refused_when_blobs_live_in_s3(s3_api: Api) -> None:
    body = problem(s3_api.upload(NEW, b"bytes"), 409, "conflict")
    assert "/uploads" in body["detail"]


@pytest.mark.parametrize(
    ("who", "status"),
    [("reviewer", 403), ("compliance", 403), ("researcher", 403), ("rival_publisher", 404)],
)
def test_only_the_models_publishers_start_or_finish_direct_uploads(
    s3_api: Api, who: str, status: int
) -> None:
    """Roles without models:write are refused; another org does not even see the model."""
    actor = getattr(s3_api, who)
    problem(start(s3_api, BIG, actor), status)
    plan = ok(start(s3_api, BIG))
    problem(complete(s3_api, plan, actor), status)
    url = f"/api/v1/models/{NEW}/uploads/{plan['upload_id']}/parts"
    problem(s3_api.post(url, actor, json={"numbers": [1]}), status)


def test_direct_uploads_need_a_token(s3_api: Api) -> None:
    response = s3_api.post(f"/api/v1/models/{NEW}/uploads", json={"sha256": "0" * 64, "size": 1})
    problem(response, 401, "authentication_required")
    problem(s3_api.post(f"/api/v1/models/{NEW}/uploads/1/complete"), 401)


def test_an_upload_id_of_another_org_is_not_found(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    ok(s3_api.create("globex/own", s3_api.rival_publisher), 201)
    url = f"/api/v1/models/globex/own/uploads/{plan['upload_id']}/complete"
    problem(s3_api.post(url, s3_api.rival_publisher), 404, "not_found")


def test_the_sweep_aborts_abandoned_uploads(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, BIG, [1])
    storage = s3_of(s3_api)
    assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")
    sweep = JOBS[SWEEP_TASK]
    sweep(s3_api.world.airlock)
    assert ok(start(s3_api, BIG))["upload_id"] == plan["upload_id"]  # young: kept
    backdate(s3_api.world, MultipartUpload, plan["upload_id"], created_at=past(73 * 3600))
    sweep(s3_api.world.airlock)
    assert not storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")
    fresh = ok(start(s3_api, BIG))
    assert fresh["upload_id"] != plan["upload_id"] and fresh["uploaded"] == []


def unreachable_storage(
    storage: S3Storage, operation: str, when: Callable[[dict[str, Any]], bool]
) -> Callable[[], None]:
    """Make `operation` calls whose parameters satisfy `when` fail as an unreachable endpoint
    (botocore's own error, before the request is sent); the function that lifts it."""

    def fail(params: dict[str, Any], **_: Any) -> None:
        if when(params):
            raise EndpointConnectionError(endpoint_url=storage.client.meta.endpoint_url)

    name = f"before-parameter-build.s3.{operation}"
    storage.client.meta.events.register(name, fail)
    return lambda: storage.client.meta.events.unregister(name, fail)


def test_a_retry_after_a_failed_delete_refuses_the_wrong_sized_object_again(
    s3_api: Api,
) -> None:
    """Another writer replaces the assembled object; deleting it fails once (503); the retry
    still refuses it (422) and deletes it, instead of reporting it as stored."""
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, BIG, [1, 2, 3])
    storage = s3_of(s3_api)
    key = blob_key(s3_api.world.orgs["acme"].id, sha256(BIG))

    def replaced(**_: Any) -> None:
        storage.put_stream(key, io.BytesIO(b"other"), max_bytes=100)

    storage.client.meta.events.register("after-call.s3.CompleteMultipartUpload", replaced)
    failures = [1]
    unreachable_storage(storage, "DeleteObject", lambda _: bool(failures and failures.pop()))
    problem(complete(s3_api, plan), 503, "storage_unavailable")
    assert storage.exists(key) and not failures
    body = problem(complete(s3_api, plan), 422, "invalid_input")
    assert body["detail"] == f"the assembled object has 5 bytes, not {len(BIG)}"
    assert not storage.exists(key)
    fresh = ok(start(s3_api, BIG))
    assert fresh["method"] == "multipart" and fresh["upload_id"] != plan["upload_id"]


def test_a_retry_after_completion_reports_the_object_already_stored(s3_api: Api) -> None:
    plan = ok(start(s3_api, BIG))
    put_parts(s3_api, plan, BIG, [1, 2, 3])
    storage = s3_of(s3_api)
    with s3_api.world.airlock.db.session() as s:
        upload = s.get_one(MultipartUpload, plan["upload_id"])
        storage.complete(
            upload.storage_key,
            upload.storage_upload_id,
            storage.parts(upload.storage_key, upload.storage_upload_id),
        )  # as a first try that completed, then lost its answer and its commit
    assert ok(complete(s3_api, plan)) == {"sha256": sha256(BIG), "size": len(BIG), "stored": False}


def test_one_upload_the_store_fails_to_abort_does_not_stop_the_sweep(
    s3_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    plans = [ok(start(s3_api, data)) for data in (BIG, b"other bytes")]
    for plan in plans:
        backdate(s3_api.world, MultipartUpload, plan["upload_id"], created_at=past(73 * 3600))
    storage = s3_of(s3_api)
    with s3_api.world.airlock.db.session() as s:
        stuck = s.get_one(MultipartUpload, plans[0]["upload_id"]).storage_upload_id
    lift = unreachable_storage(storage, "AbortMultipartUpload", lambda p: p["UploadId"] == stuck)
    sweep = JOBS[SWEEP_TASK]
    sweep(s3_api.world.airlock)
    left = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [stuck]
    assert f"could not abort the multipart upload {stuck}" in caplog.text
    with s3_api.world.airlock.db.session() as s:
        assert list(s.scalars(select(MultipartUpload.id))) == [plans[0]["upload_id"]]
    lift()
    sweep(s3_api.world.airlock)  # the next sweep tries it again
    assert not storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")


def test_an_upload_whose_record_fails_to_commit_is_aborted(s3_api: Api) -> None:
    """The database fails as the upload is recorded: 503, and no orphan upload in the bucket."""
    engine = s3_api.world.airlock.db.engine

    def lost(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO multipart_uploads"):
            raise conn.dialect.dbapi.OperationalError("server closed the connection unexpectedly")

    event.listen(engine, "before_cursor_execute", lost)
    try:
        problem(start(s3_api, BIG), 503)
    finally:
        event.remove(engine, "before_cursor_execute", lost)
    storage = s3_of(s3_api)
    assert not storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")
    assert ok(start(s3_api, BIG))["method"] == "multipart"


def test_local_storage_answers_stream_then_stored(api: Api) -> None:
    ok(api.create(NEW), 201)
    assert ok(start(api, b"bytes"))["method"] == "stream"
    ok(api.upload(NEW, b"bytes"))
    assert ok(start(api, b"bytes"))["method"] == "stored"
