"""The Hugging Face Hub-compatible surface: metadata, listings, identity and resolve."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select

from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent, DownloadTicket, Grant, utcnow
from tests.api.hubkit import (
    FILES,
    REPO,
    VISIBLE,
    XET_HEADERS,
    Hub,
    bearer,
    fresh_model,
    in_thread,
    make_hub,
    sha256,
)
from tests.factories import World, policy_text
from tests.pg import on_both_engines
from tests.roundtrips import server_round_trips

HEX40 = re.compile(r"^[0-9a-f]{40}$")
APPLY_URL = f"http://airlock.test/api/v1/models/{REPO}/access"


@pytest.fixture
def hub(client: FlaskClient, world: World) -> Hub:
    return make_hub(client, world)


def head_commit(hub: Hub) -> str:
    with hub.world.airlock.db.session() as s:
        model = hub.world.airlock.publishing.get_model(s, REPO)
        assert model.head_revision is not None
        return model.head_revision.commit_id


def assert_hub_error(response, status: int, code: str | None) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.headers)
    assert response.headers.get("X-Error-Code") == code
    assert response.headers["X-Request-Id"]
    message = response.headers["X-Error-Message"]
    if response.request.method != "HEAD":
        assert response.json == {"error": message} or message in response.json["error"]
    return message


# -- model info ----------------------------------------------------------------------------------
def test_model_info_lists_only_the_grants_files(hub: Hub) -> None:
    response = hub.get(f"/api/models/{REPO}", hub.researcher)
    assert response.status_code == 200
    info = response.json
    assert info["id"] == REPO
    assert HEX40.match(info["sha"]) and info["sha"] == head_commit(hub)
    assert [s["rfilename"] for s in info["siblings"]] == VISIBLE
    assert info["gated"] in ("auto", "manual")
    assert info["private"] is False and info["disabled"] is False
    assert info["lastModified"].endswith("Z") and info["createdAt"].endswith("Z")
    assert response.headers["X-Request-Id"]


def test_model_info_with_blobs_carries_sizes_and_lfs_digests(hub: Hub) -> None:
    info = hub.get(f"/api/models/{REPO}/revision/main?blobs=True", hub.researcher).json
    by_name = {s["rfilename"]: s for s in info["siblings"]}
    data = FILES["model.safetensors"]
    entry = by_name["model.safetensors"]
    assert entry["size"] == len(data) and HEX40.match(entry["blobId"])
    assert entry["lfs"]["sha256"] == sha256(data) and entry["lfs"]["size"] == len(data)
    assert entry["lfs"]["pointerSize"] > 100


def test_model_info_at_a_commit_and_unknown_revisions(hub: Hub) -> None:
    commit = head_commit(hub)
    assert hub.get(f"/api/models/{REPO}/revision/{commit}", hub.researcher).json["sha"] == commit
    for rev in ("0" * 40, "v1.0", "refs%2Fpr%2F1", "main%2Fx"):
        response = hub.get(f"/api/models/{REPO}/revision/{rev}", hub.researcher)
        assert_hub_error(response, 404, "RevisionNotFound")


def test_model_info_refuses_anonymous_outsider_and_hides_unknown_models(hub: Hub) -> None:
    message = assert_hub_error(hub.get(f"/api/models/{REPO}"), 401, "GatedRepo")
    assert APPLY_URL in message
    message = assert_hub_error(hub.get(f"/api/models/{REPO}", hub.outsider), 403, "GatedRepo")
    assert "no grant" in message and APPLY_URL in message
    response = hub.get("/api/models/acme/nope", hub.researcher)
    assert_hub_error(response, 404, "RepoNotFound")
    response = hub.get("/api/models/nobody/nope")
    assert_hub_error(response, 404, "RepoNotFound")


def test_internal_models_are_not_found_for_outsiders_and_gated_for_members(hub: Hub) -> None:
    hub.publish("acme/secret", stage="internal")
    for actor in (None, hub.researcher, hub.outsider):
        response = hub.get("/api/models/acme/secret", actor)
        assert_hub_error(response, 404, "RepoNotFound")
        response = hub.head("/acme/secret/resolve/main/config.json", actor)
        assert response.status_code == 404 and response.headers["X-Error-Code"] == "RepoNotFound"
    # the publisher may know the model exists, but holds no weights grant
    response = hub.get("/api/models/acme/secret", hub.publisher)
    assert_hub_error(response, 403, "GatedRepo")


def test_invalid_token_is_401_without_a_gated_code(hub: Hub) -> None:
    response = hub.client.get(
        f"/api/models/{REPO}", headers={"Authorization": "Bearer alk_not-a-real-token"}
    )
    message = assert_hub_error(response, 401, None)
    assert message == "Invalid credentials in Authorization header"


def test_token_without_models_read_scope_is_gated(hub: Hub) -> None:
    narrow = hub.researcher_token([Scope.ACCESS_REQUEST])
    message = assert_hub_error(hub.get(f"/api/models/{REPO}", narrow), 403, "GatedRepo")
    assert "models:read" in message


# -- tree ----------------------------------------------------------------------------------------
def test_tree_root_lists_visible_files_and_synthesized_directories(hub: Hub) -> None:
    response = hub.get(f"/api/models/{REPO}/tree/main", hub.researcher)
    assert response.status_code == 200
    entries = response.json
    assert [(e["type"], e["path"]) for e in entries] == [
        ("file", "config.json"),
        ("file", "model.safetensors"),
        ("directory", "onnx"),
    ]
    config = entries[0]
    data = FILES["config.json"]
    assert config["size"] == len(data) and HEX40.match(config["oid"])
    assert config["lfs"] == {"oid": sha256(data), "size": len(data), "pointerSize": 127}
    assert entries[2]["size"] == 0 and HEX40.match(entries[2]["oid"])
    assert not any("xetHash" in e for e in entries)


@pytest.mark.parametrize("flag", ["true", "True", "TRUE", "1"])
def test_tree_recursive_flag_is_case_insensitive(hub: Hub, flag: str) -> None:
    entries = hub.get(f"/api/models/{REPO}/tree/main?recursive={flag}", hub.researcher).json
    assert [e["path"] for e in entries if e["type"] == "file"] == VISIBLE
    assert [e["path"] for e in entries if e["type"] == "directory"] == ["onnx", "onnx/fp16"]


def test_tree_of_a_subdirectory_including_an_encoded_slash(hub: Hub) -> None:
    entries = hub.get(f"/api/models/{REPO}/tree/main/onnx", hub.researcher).json
    assert [e["path"] for e in entries] == ["onnx/fp16", "onnx/model.safetensors"]
    entries = hub.get(f"/api/models/{REPO}/tree/main/onnx%2Ffp16", hub.researcher).json
    assert [e["path"] for e in entries] == ["onnx/fp16/model.safetensors"]


def test_tree_hides_directories_holding_only_files_outside_the_grant(hub: Hub) -> None:
    entries = hub.get(f"/api/models/{REPO}/tree/main?recursive=true", hub.researcher).json
    assert not any(e["path"].startswith(("docs", "README")) for e in entries)
    response = hub.get(f"/api/models/{REPO}/tree/main/docs", hub.researcher)
    assert_hub_error(response, 404, "EntryNotFound")


def test_tree_paginates_with_absolute_link_headers(hub: Hub) -> None:
    url = f"/api/models/{REPO}/tree/main?recursive=True&expand=False&limit=2"
    seen, pages = [], 0
    while url:
        response = hub.get(url, hub.researcher)
        assert response.status_code == 200
        seen += [e["path"] for e in response.json]
        pages += 1
        link = response.headers.get("Link")
        if link is None:
            break
        match = re.fullmatch(r'<(http://airlock\.test/[^>]+)>; rel="next"', link)
        assert match, link
        assert "recursive=True" in match.group(1)
        parts = urlsplit(match.group(1))
        url = f"{parts.path}?{parts.query}"
    assert pages == 3
    everything = hub.get(f"/api/models/{REPO}/tree/main?recursive=true", hub.researcher).json
    assert seen == [e["path"] for e in everything]


def test_tree_errors(hub: Hub) -> None:
    assert_hub_error(hub.get(f"/api/models/{REPO}/tree/main"), 401, "GatedRepo")
    assert_hub_error(hub.get(f"/api/models/{REPO}/tree/main", hub.outsider), 403, "GatedRepo")
    for rev in ("0" * 40, "refs%2Fpr%2F1", "main%2Fonnx"):
        response = hub.get(f"/api/models/{REPO}/tree/{rev}", hub.researcher)
        assert_hub_error(response, 404, "RevisionNotFound")
    response = hub.get(f"/api/models/{REPO}/tree/main?cursor=%%%", hub.researcher)
    assert response.status_code == 422


# -- paths-info ----------------------------------------------------------------------------------
def test_paths_info_returns_visible_files_and_directories_only(hub: Hub) -> None:
    response = hub.client.post(
        f"/api/models/{REPO}/paths-info/main",
        data={
            "paths": ["config.json", "README.md", "onnx", "docs", "docs/notes.txt", "nope"],
            "expand": "False",
        },
        headers=bearer(hub.researcher),
    )
    assert response.status_code == 200
    assert [(e["type"], e["path"]) for e in response.json] == [
        ("file", "config.json"),
        ("directory", "onnx"),
    ]
    assert response.json[0]["lfs"]["oid"] == sha256(FILES["config.json"])


def test_paths_info_is_gated(hub: Hub) -> None:
    url = f"/api/models/{REPO}/paths-info/main"
    assert_hub_error(hub.client.post(url, data={"paths": "config.json"}), 401, "GatedRepo")
    response = hub.client.post(url, data={"paths": "config.json"}, headers=bearer(hub.outsider))
    assert_hub_error(response, 403, "GatedRepo")


# -- whoami and auth-check -----------------------------------------------------------------------
def test_whoami_shape(hub: Hub) -> None:
    me = hub.get("/api/whoami-v2", hub.researcher).json
    assert me["type"] == "user" and me["name"] == "rob" and me["orgs"] == []
    assert me["auth"]["type"] == "access_token"
    assert me["auth"]["accessToken"]["role"] and me["auth"]["accessToken"]["displayName"]
    publisher = hub.get("/api/whoami-v2", hub.publisher).json
    assert [o["name"] for o in publisher["orgs"]] == ["acme"]


def test_whoami_needs_a_valid_token(hub: Hub) -> None:
    assert_hub_error(hub.get("/api/whoami-v2"), 401, None)
    response = hub.client.get("/api/whoami-v2", headers={"Authorization": "Bearer alk_nope"})
    assert_hub_error(response, 401, None)


def test_auth_check(hub: Hub) -> None:
    assert hub.get(f"/api/models/{REPO}/auth-check", hub.researcher).status_code == 200
    assert_hub_error(hub.get(f"/api/models/{REPO}/auth-check"), 401, "GatedRepo")
    assert_hub_error(hub.get(f"/api/models/{REPO}/auth-check", hub.outsider), 403, "GatedRepo")
    response = hub.get("/api/models/acme/missing/auth-check", hub.researcher)
    assert_hub_error(response, 404, "RepoNotFound")


# -- resolve -------------------------------------------------------------------------------------
def test_head_resolve_answers_metadata_without_redirect_or_ticket(hub: Hub) -> None:
    data = FILES["model.safetensors"]
    response = hub.head(f"/{REPO}/resolve/main/model.safetensors", hub.researcher)
    assert response.status_code == 200
    assert response.headers["X-Repo-Commit"] == head_commit(hub)
    assert response.headers["X-Linked-Etag"] == f'"{sha256(data)}"'
    assert response.headers["ETag"] == f'"{sha256(data)}"'
    assert response.headers["X-Linked-Size"] == str(len(data))
    assert response.headers["Content-Length"] == str(len(data))
    assert "Location" not in response.headers
    assert not any(h in response.headers for h in XET_HEADERS)
    with hub.world.airlock.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DownloadTicket)) == 0


def test_get_resolve_redirects_to_an_absolute_signed_url(hub: Hub) -> None:
    data = FILES["onnx/model.safetensors"]
    response = hub.get(f"/{REPO}/resolve/main/onnx/model.safetensors", hub.researcher)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("http://airlock.test/blobs/")
    assert "s=" in urlsplit(location).query
    assert response.headers["X-Repo-Commit"] == head_commit(hub)
    assert response.headers["X-Linked-Etag"] == f'"{sha256(data)}"'
    assert response.headers["X-Linked-Size"] == str(len(data))
    assert '"downloads_per_day";q=3' in response.headers["RateLimit-Policy"]
    assert '"downloads_per_day";r=2' in response.headers["RateLimit"]
    assert not any(h in response.headers for h in XET_HEADERS)
    parts = urlsplit(location)
    assert hub.fetch(f"{parts.path}?{parts.query}").data == data
    with hub.world.airlock.db.session() as s:
        ticket = s.scalars(select(DownloadTicket)).one()
        assert (ticket.method, ticket.grant_id, ticket.size) == ("GET", hub.grant.id, len(data))
        issued = s.scalars(select(AuditEvent).where(AuditEvent.action == "download:issue")).one()
        assert issued.payload["path"] == "onnx/model.safetensors"


def test_resolve_at_a_commit(hub: Hub) -> None:
    commit = head_commit(hub)
    response = hub.get(f"/{REPO}/resolve/{commit}/config.json", hub.researcher)
    assert response.status_code == 302 and response.headers["X-Repo-Commit"] == commit


def test_resolve_refuses_anonymous_and_outsider_with_gated_repo(hub: Hub) -> None:
    url = f"/{REPO}/resolve/main/model.safetensors"
    for method in (hub.get, hub.head):
        response = method(url)
        assert response.status_code == 401 and response.headers["X-Error-Code"] == "GatedRepo"
        assert APPLY_URL in response.headers["X-Error-Message"]
        response = method(url, hub.outsider)
        assert response.status_code == 403 and response.headers["X-Error-Code"] == "GatedRepo"
        assert "no grant" in response.headers["X-Error-Message"]
    response = hub.client.get(url, headers={"Authorization": "Bearer alk_invalid"})
    assert_hub_error(response, 401, None)


def test_resolve_of_a_file_outside_the_grant_is_entry_not_found(hub: Hub) -> None:
    for path in ("README.md", "docs/notes.txt", "missing.bin"):
        for method in (hub.get, hub.head):
            response = method(f"/{REPO}/resolve/main/{path}", hub.researcher)
            assert response.status_code == 404
            assert response.headers["X-Error-Code"] == "EntryNotFound"
            assert response.headers["X-Repo-Commit"] == head_commit(hub)


def test_resolve_unknown_revisions_and_encoded_slashes(hub: Hub) -> None:
    for rev in ("0" * 40, "v1", "refs%2Fpr%2F1", "main%2Fonnx"):
        response = hub.get(f"/{REPO}/resolve/{rev}/model.safetensors", hub.researcher)
        assert_hub_error(response, 404, "RevisionNotFound")
    response = hub.get(f"/{REPO}/resolve/main%2Fonnx/model.safetensors", hub.outsider)
    assert_hub_error(response, 403, "GatedRepo")  # access is decided before the revision


def test_revoked_grant_is_refused_on_the_very_next_request(hub: Hub) -> None:
    url = f"/{REPO}/resolve/main/config.json"
    assert hub.head(url, hub.researcher).status_code == 200
    with hub.world.airlock.db.session() as s:
        hub.world.airlock.access.revoke_grant(
            s, principal=hub.publisher.principal, grant_id=hub.grant.id, reason="policy breach"
        )
    response = hub.get(url, hub.researcher)
    message = assert_hub_error(response, 403, "GatedRepo")
    assert "revoked" in message and "policy breach" in message
    assert_hub_error(hub.get(f"/api/models/{REPO}", hub.researcher), 403, "GatedRepo")


def test_expired_grant_is_refused(hub: Hub) -> None:
    with hub.world.airlock.db.session() as s:
        s.get_one(Grant, hub.grant.id).expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    response = hub.head(f"/{REPO}/resolve/main/config.json", hub.researcher)
    assert response.status_code == 403 and response.headers["X-Error-Code"] == "GatedRepo"
    assert "expired" in response.headers["X-Error-Message"]
    assert_hub_error(hub.get(f"/api/models/{REPO}/tree/main", hub.researcher), 403, "GatedRepo")


def test_grant_expiring_soon_is_announced_with_hf_warning(hub: Hub) -> None:
    assert (
        "X-HF-Warning" not in hub.head(f"/{REPO}/resolve/main/config.json", hub.researcher).headers
    )
    with hub.world.airlock.db.session() as s:
        s.get_one(Grant, hub.grant.id).expires_at = utcnow() + timedelta(days=2)
        s.commit()
    response = hub.head(f"/{REPO}/resolve/main/config.json", hub.researcher)
    assert response.status_code == 200
    assert response.headers["X-HF-Warning"].startswith("airlock-grant-expiry; ")
    assert APPLY_URL in response.headers["X-HF-Warning"]


def test_frozen_model_is_refused_and_thawing_restores_access(hub: Hub) -> None:
    url = f"/{REPO}/resolve/main/config.json"

    def freeze(frozen: bool) -> None:
        with hub.world.airlock.db.session() as s:
            model = hub.world.airlock.publishing.get_model(s, REPO)
            hub.world.airlock.access.set_frozen(
                s, principal=hub.publisher.principal, model=model, frozen=frozen, reason="incident"
            )

    freeze(True)
    message = assert_hub_error(hub.get(url, hub.researcher), 403, "GatedRepo")
    assert "freeze" in message
    assert hub.head(url, hub.researcher).status_code == 403
    freeze(False)
    assert hub.get(url, hub.researcher).status_code == 302


def test_newly_sanctioned_nationality_is_refused_at_download_time(hub: Hub) -> None:
    hub.world.kyc(hub.reviewer, hub.researcher, country="IR")
    response = hub.head(f"/{REPO}/resolve/main/config.json", hub.researcher)
    assert response.status_code == 403 and response.headers["X-Error-Code"] == "GatedRepo"
    assert any(r["effect"] == "deny" for r in hub.last_denial().payload["reasons"])


def test_downloads_per_day_exhaustion_is_a_readable_refusal_and_head_is_free(hub: Hub) -> None:
    """A quota that frees up in hours is a 403 GatedRepo the researcher reads at once: hub
    clients would otherwise sleep out the whole Retry-After on a 429."""
    url = f"/{REPO}/resolve/main/config.json"
    for _ in range(5):
        assert hub.head(url, hub.researcher).status_code == 200
    for remaining in (2, 1, 0):
        response = hub.get(url, hub.researcher)
        assert response.status_code == 302
        assert f'"downloads_per_day";r={remaining}' in response.headers["RateLimit"]
    response = hub.get(url, hub.researcher)
    assert_hub_error(response, 403, "GatedRepo")
    message = response.headers["X-Error-Message"]
    assert "allowance of 3 downloads a day (downloads_per_day) is used up" in message
    assert "more becomes available in 8 h" in response.headers["X-Error-Message"]
    assert int(response.headers["Retry-After"]) > 3600
    assert "downloads_per_day" in response.headers["RateLimit-Policy"]
    assert '"downloads_per_day";r=0' in response.headers["RateLimit"]
    assert hub.head(url, hub.researcher).status_code == 200  # metadata still answers


def test_no_response_of_the_surface_emits_xet(hub: Hub) -> None:
    urls = [
        f"/api/models/{REPO}",
        f"/api/models/{REPO}/tree/main?recursive=true",
        f"/{REPO}/resolve/main/config.json",
        f"/{REPO}/resolve/main/README.md",
    ]
    for url in urls:
        for method in (hub.get, hub.head):
            response = method(url, hub.researcher)
            assert not any(h in response.headers for h in XET_HEADERS), url
            assert "xet-auth" not in response.headers.get("Link", "")


@pytest.fixture(params=["refused", "silent"])
def unreachable_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis URL nobody answers: nothing listens (down), or a listener that never replies
    (hung or overloaded: the limiter's timeout decides)."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if request.param == "silent":
            listener.listen(8)  # the kernel completes connections; nobody ever reads them
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def test_a_limiter_that_cannot_answer_fails_closed_and_is_audited(
    hub: Hub, unreachable_redis: str
) -> None:
    """503, no ticket, an audited `download:deny`; HEAD consults no limiter and still answers."""
    from gateway.ratelimit import RedisLimiter

    limiter = RedisLimiter(unreachable_redis, timeout=0.1)
    hub.world.airlock.downloads.limiter = limiter
    url = f"/{REPO}/resolve/main/config.json"
    try:
        response = hub.get(url, hub.researcher)
    finally:
        limiter.close()
    message = assert_hub_error(response, 503, None)
    assert "rate limiter is unavailable" in message and "nothing was authorized" in message
    assert response.headers["Retry-After"] and "Location" not in response.headers
    denial = hub.last_denial()
    assert denial.subject_user_id == hub.researcher.user.id and denial.effect == "deny"
    assert denial.payload["grant_id"] == hub.grant.id
    assert [r["code"] for r in denial.payload["reasons"]] == ["rate_limiter_unavailable"]
    with hub.world.airlock.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DownloadTicket)) == 0
    assert hub.head(url, hub.researcher).status_code == 200


def test_a_short_wait_stays_429_with_retry_after(app: Flask) -> None:
    from gateway.api.errors import render
    from gateway.errors import RateLimited

    with app.test_request_context(f"/{REPO}/resolve/main/config.json"):
        app.preprocess_request()
        response = render(RateLimited("slow down", retry_after=30, headers={}))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"


# -- SQLite transactions -------------------------------------------------------------------------
class Writer:
    """Another process's writer: holds SQLite's write lock until it commits (SQLite tests only)."""

    def __init__(self, hub: Hub) -> None:
        path = hub.world.airlock.settings.database_url.split(":///", 1)[1]
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def commit_a_change(self) -> None:
        self.conn.execute("UPDATE organizations SET name = name || '.'")
        self.conn.execute("COMMIT")
        self.conn.close()


@pytest.mark.sqlite
def test_reads_do_not_wait_for_a_writer(hub: Hub) -> None:
    blob = hub.signed_url("config.json")
    writer = Writer(hub)
    try:
        started = time.monotonic()
        assert hub.fetch(blob).status_code == 200
        assert hub.head(f"/{REPO}/resolve/main/config.json", hub.researcher).status_code == 200
        assert hub.get(f"/api/models/{REPO}/tree/main", hub.researcher).status_code == 200
        assert hub.get(f"/api/models/{REPO}", hub.researcher).status_code == 200
        assert hub.get("/api/whoami-v2", hub.researcher).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        writer.commit_a_change()


@pytest.mark.sqlite
def test_get_resolve_queues_for_the_write_lock_before_reading(hub: Hub) -> None:
    writer = Writer(hub)
    response = in_thread(lambda: hub.get(f"/{REPO}/resolve/main/config.json", hub.researcher))
    time.sleep(0.5)
    writer.commit_a_change()  # a GET that had read before this commit could not write after it
    assert response().status_code == 302


@pytest.mark.sqlite
def test_a_refused_read_is_audited_even_when_a_writer_committed_meanwhile(hub: Hub) -> None:
    writer = Writer(hub)
    response = in_thread(lambda: hub.head(f"/{REPO}/resolve/main/config.json", hub.outsider))
    time.sleep(0.5)
    writer.commit_a_change()
    assert_hub_error(response(), 403, "GatedRepo")
    with hub.world.airlock.db.session() as s:
        denied = s.scalars(select(AuditEvent).where(AuditEvent.action == "download:deny")).one()
    assert denied.subject_user_id == hub.outsider.user.id


@pytest.mark.sqlite
def test_a_database_that_stays_locked_is_a_503_and_nothing_is_issued(hub: Hub) -> None:
    engine = hub.world.airlock.db.engine
    engine.dispose()  # new connections wait 0.2 s for a lock instead of 30
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=200"))
    writer = Writer(hub)
    try:
        response = hub.get(f"/{REPO}/resolve/main/config.json", hub.researcher)
    finally:
        writer.commit_a_change()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "Location" not in response.headers
    with hub.world.airlock.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DownloadTicket)) == 0


# -- vetting gate ---------------------------------------------------------------------------------
FLAGGED = "acme/flagged"


def flagged_model(hub: Hub) -> str:
    """A model whose head revision failed vetting (a pickle importing os.system)."""
    import os
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    files = {**FILES, "extra.pkl": pickle.dumps(Evil(), protocol=4)}
    model = hub.world.model(hub.publisher, FLAGGED, files=files, policy=policy_text(FLAGGED))
    hub.world.grant(hub.researcher, fresh_model(hub.world, FLAGGED))
    assert model is not None
    return f"/{FLAGGED}/resolve/main/config.json"


def test_a_revision_that_failed_vetting_is_refused_and_audited(hub: Hub) -> None:
    url = flagged_model(hub)
    for method in (hub.head, hub.get):
        response = method(url, hub.researcher)
        assert_hub_error(response, 403, "GatedRepo")
        assert "failed vetting" in response.headers["X-Error-Message"]
    assert hub.last_denial().payload["reasons"][0]["code"] == "revision_not_vetted"
    with hub.world.airlock.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DownloadTicket)) == 0


def test_a_publisher_override_lets_a_flagged_revision_be_served(hub: Hub) -> None:
    url = flagged_model(hub)
    response = hub.client.post(
        f"/api/v1/models/{FLAGGED}/revisions/main/vetting-override",
        json={"allow": True, "reason": "the pickle is our own test fixture"},
        headers=bearer(hub.publisher),
    )
    assert response.status_code == 200, response.get_json()
    assert hub.get(url, hub.researcher).status_code == 302


def test_a_revision_still_being_vetted_is_503_not_served(hub: Hub) -> None:
    from sqlalchemy import update

    from gateway.db.models import Revision

    url = f"/{REPO}/resolve/main/config.json"
    with hub.world.airlock.db.session() as s:
        s.execute(update(Revision).values(vetting_status="pending"))
        s.commit()
    response = hub.get(url, hub.researcher)
    assert response.status_code == 503
    assert "still being vetted" in response.headers["X-Error-Message"]
    assert response.headers["Retry-After"]


# -- round trips ----------------------------------------------------------------------------------
@on_both_engines
def test_resolve_makes_a_fixed_number_of_round_trips(hub: Hub, tmp_path: Path) -> None:
    """HEAD reads the token, then the model with its grants, facts, policy and revision in one
    statement: on PostgreSQL two statements outside any transaction (each has its own snapshot
    under READ COMMITTED anyway), on SQLite a read-only transaction around them. GET makes the
    same reads, then writes its ticket and its event in one transaction."""
    url = f"/{REPO}/resolve/main/config.json"
    engine = hub.world.airlock.db.engine
    with server_round_trips(engine, tmp_path / "libpq.trace") as sent:
        assert hub.head(url, hub.researcher).status_code == 200  # opens the connections
        assert hub.get(url, hub.researcher).status_code == 302
        sent()
        assert hub.head(url, hub.researcher).status_code == 200
        head = sent()
        assert hub.get(url, hub.researcher).status_code == 302
        get = sent()
    name = engine.dialect.name
    assert len(head) == {"sqlite": 4, "postgresql": 2}[name], "\n".join(head)
    assert len(get) == {"sqlite": 8, "postgresql": 6}[name], "\n".join(get)
