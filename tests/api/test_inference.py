"""The OpenAI-compatible surface against the reference upstream: authorization, relaying,
streaming, the OpenAI error dialect and the audit of each request."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import urllib3
from flask.testing import FlaskClient
from sqlalchemy import event as sqla_event
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.audit import outbox as outbox_module
from gateway.audit import verify_chain
from gateway.audit.outbox import AuditOutbox
from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent, Grant, KycVerification, Model, Role, utcnow
from gateway.devtools.upstream import ReferenceUpstream, completion_text
from gateway.geo import RequestGeo
from gateway.ratelimit.base import month_of
from gateway.ratelimit.redis import RedisLimiter
from gateway.services.container import Airlock, build_airlock
from gateway.services.inference import CONTENT, go_duration
from gateway.services.upstream import HttpUpstream
from gateway.settings import Settings, load_settings
from tests.api.hubkit import bearer, fresh_model, in_thread
from tests.factories import Actor, World
from tests.pg import on_both_engines
from tests.redis_server import REDIS_URL, throwaway_prefix
from tests.roundtrips import server_round_trips
from tests.services.test_limiter_contract import closed_port

REPO = "acme/chat"
KEY_REF = "AIRLOCK_UPSTREAM_KEY_ACME_CHAT"
POLICY = textwrap.dedent("""\
    model: {repo}
    stage: {stage}
    agreements:
      aup: {{version: 1, text: "Use responsibly."}}
    tiers:
      - name: card
        grants: [metadata]
        requires: {{}}
        opens_in: [research-preview, limited, general]
      - name: chat
        grants: [metadata, inference]
        requires:
          kyc: identity
          agreement: aup@1
          approval: auto
          jurisdiction:
            deny: [pack:us-ofac-comprehensive]
            signals: [nationality, residence_country]
        limits: {{requests_per_minute: 600, tokens_per_minute: 100000}}
        grant_ttl: 30d
        opens_in: [limited, general]
      - name: weights-auto
        grants: [metadata, weights]
        requires: {{kyc: identity, agreement: aup@1, approval: auto}}
        grant_ttl: 30d
        opens_in: [limited, general]
    """)
CHAT = {"model": REPO, "messages": [{"role": "user", "content": "tell me a secret story"}]}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings with the model's upstream credential set in the environment."""
    env = {
        "AIRLOCK_DATABASE_URL": database_url,
        "AIRLOCK_SECRET_KEY": "test-secret",
        KEY_REF: "upstream-secret",
    }
    return load_settings(env, data_dir=tmp_path).with_overrides(public_url="http://airlock.test")


@dataclass
class Inference:
    client: FlaskClient
    world: World
    airlock: Airlock
    publisher: Actor
    reviewer: Actor
    researcher: Actor
    outsider: Actor
    model: Model
    grant: Grant
    upstream_url: str

    def post(self, path: str, body: Any, actor: Actor | None = None) -> TestResponse:
        return self.client.post(f"/v1{path}", json=body, headers=bearer(actor or self.researcher))

    def events(self, body: dict[str, Any], actor: Actor | None = None) -> list[str]:
        response = self.post("/chat/completions", {**body, "stream": True}, actor)
        assert response.status_code == 200, response.get_data()
        assert response.mimetype == "text/event-stream"
        raw = response.get_data(as_text=True)
        assert raw.endswith("\n\n")
        return [e.removeprefix("data: ") for e in raw.split("\n\n") if e]

    def audit(self, action: str) -> list[AuditEvent]:
        with self.airlock.db.session() as s:
            return list(
                s.scalars(
                    select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
                ).all()
            )


@pytest.fixture
def inf(client: FlaskClient, world: World, upstream: ReferenceUpstream) -> Inference:
    world.org("acme")
    world.org("oxbridge", hq="GB")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob", affiliation="oxbridge")
    outsider = world.actor("otto")
    files = {"config.json": b"{}"}
    world.model(publisher, REPO, files=files, policy=POLICY.format(repo=REPO, stage="limited"))
    model = fresh_model(world, REPO)
    world.kyc(reviewer, researcher)
    grant = world.grant(researcher, model, tier="chat")
    with world.airlock.db.session() as s:
        world.airlock.inference.set_upstream(
            s,
            principal=publisher.principal,
            model=world.airlock.publishing.get_model(s, REPO),
            url=upstream.base_url,
            key_ref=KEY_REF,
        )
    return Inference(
        client,
        world,
        world.airlock,
        publisher,
        reviewer,
        researcher,
        outsider,
        model,
        grant,
        upstream.base_url,
    )


def error(response: TestResponse, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["x-request-id"]
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


# -- listing -------------------------------------------------------------------------------------
def test_models_lists_only_models_with_a_live_inference_grant(inf: Inference) -> None:
    response = inf.client.get("/v1/models", headers=bearer(inf.researcher))
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    body = response.get_json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        (REPO, "model", "acme")
    ]
    assert isinstance(body["data"][0]["created"], int)


def test_models_is_empty_without_a_grant_and_for_weights_only_grants(inf: Inference) -> None:
    assert inf.client.get("/v1/models", headers=bearer(inf.outsider)).get_json()["data"] == []
    inf.world.kyc(inf.reviewer, inf.outsider)
    inf.world.grant(inf.outsider, inf.model, tier="weights-auto")
    assert inf.client.get("/v1/models", headers=bearer(inf.outsider)).get_json()["data"] == []


@on_both_engines
def test_models_reads_every_granted_model_in_one_statement(inf: Inference, tmp_path: Path) -> None:
    """The round trips of /v1/models do not grow with the caller's granted models."""
    other = "acme/chat-two"
    inf.world.model(
        inf.publisher, other, files={}, policy=POLICY.format(repo=other, stage="limited")
    )
    inf.world.grant(inf.researcher, fresh_model(inf.world, other), tier="chat")
    with server_round_trips(inf.airlock.db.engine, tmp_path / "libpq.trace") as sent:
        listed = inf.client.get("/v1/models", headers=bearer(inf.researcher)).get_json()["data"]
        sent()
        assert inf.client.get("/v1/models", headers=bearer(inf.researcher)).status_code == 200
        found = sent()
    assert [m["id"] for m in listed] == [REPO, other]
    expected = {"sqlite": 4, "postgresql": 2}[inf.airlock.db.engine.dialect.name]
    assert len(found) == expected, "\n".join(found)  # token, models; no ping (see below)


def test_models_needs_a_valid_key(inf: Inference) -> None:
    error(inf.client.get("/v1/models"), 401, "invalid_api_key")
    bad = "alk_" + "x" * 40
    found = error(
        inf.client.get("/v1/models", headers={"Authorization": f"Bearer {bad}"}),
        401,
        "invalid_api_key",
    )
    assert bad not in json.dumps(found)


# -- chat completions ----------------------------------------------------------------------------
def test_chat_completion_is_relayed_and_audited_without_its_text(inf: Inference) -> None:
    response = inf.post("/chat/completions", {**CHAT, "max_tokens": 4})
    assert response.status_code == 200, response.get_data()
    assert response.headers["x-request-id"]
    body = response.get_json()
    assert body["choices"][0]["message"]["content"] == completion_text("tell me a secret story", 4)
    assert body["usage"]["total_tokens"] == 9
    [event] = inf.audit("inference:serve")
    assert event.subject_user_id == inf.researcher.user.id
    assert event.payload["tier"] == "chat"
    assert event.payload["tokens_used"] == 9
    assert event.payload["upstream_status"] == 200
    assert "secret" not in json.dumps(event.payload)


def test_an_answer_reaches_the_client_as_the_upstream_sent_it(
    inf: Inference, upstream: ReferenceUpstream
) -> None:
    response = inf.post("/chat/completions", {**CHAT, "max_tokens": 4})
    assert response.mimetype == "application/json"
    sent = upstream.seen[-1].body
    direct = urllib3.request("POST", upstream.base_url + "/chat/completions", json=sent)
    assert response.get_data() == direct.data  # its bytes, not a re-serialization


def test_stream_with_usage_ends_with_the_usage_chunk(inf: Inference) -> None:
    found = inf.events({**CHAT, "max_tokens": 3, "stream_options": {"include_usage": True}})
    assert found[-1] == "[DONE]"
    chunks = [json.loads(e) for e in found[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == completion_text("tell me a secret story", 3)
    [event] = inf.audit("inference:serve")
    assert event.payload["tokens_used"] == 8


def test_stream_without_usage_hides_the_usage_chunk_but_audits_usage(inf: Inference) -> None:
    found = inf.events({**CHAT, "max_tokens": 2})
    assert found[-1] == "[DONE]"
    assert all(json.loads(e)["choices"] for e in found[:-1])
    [event] = inf.audit("inference:serve")
    assert event.payload["tokens_used"] == 7
    assert event.payload["usage_reported"] is True


def test_completions_and_embeddings_are_relayed(inf: Inference) -> None:
    completion = inf.post("/completions", {"model": REPO, "prompt": "a b", "max_tokens": 2})
    assert completion.get_json()["choices"][0]["text"] == completion_text("a b", 2)
    embedding = inf.post("/embeddings", {"model": REPO, "input": ["a b c"]})
    assert embedding.get_json()["usage"]["prompt_tokens"] == 3
    assert len(inf.audit("inference:serve")) == 2


# -- refusals ------------------------------------------------------------------------------------
def test_no_key_and_revoked_key_are_401(inf: Inference) -> None:
    error(inf.client.post("/v1/chat/completions", json=CHAT), 401, "invalid_api_key")
    with inf.airlock.db.session() as s:
        inf.airlock.identity.revoke_token(
            s, principal=inf.researcher.principal, token_id=inf.researcher.principal.token_id or 0
        )
        s.commit()
    error(inf.post("/chat/completions", CHAT), 401, "invalid_api_key")
    assert inf.audit("inference:serve") == []


def test_model_outside_the_grant_is_403_model_not_permitted(inf: Inference) -> None:
    found = error(inf.post("/chat/completions", CHAT, inf.outsider), 403, "model_not_permitted")
    assert "no live grant" in found["message"]
    [denial] = inf.audit("inference:deny")
    assert denial.subject_user_id == inf.outsider.user.id
    assert denial.payload["reasons"][0]["code"] == "no_grant"


def test_a_token_without_models_read_is_refused_though_its_user_holds_the_grant(
    inf: Inference,
) -> None:
    with inf.airlock.db.session() as s:
        user = s.merge(inf.researcher.user)
        issued = inf.airlock.identity.issue_token(
            s,
            user=user,
            name="narrow",
            scopes={Scope.ACCESS_REQUEST},
            ttl=timedelta(hours=1),
            actor_id=user.id,
        )
        principal = inf.airlock.identity.authenticate(s, issued.plaintext)
    narrow = Actor(inf.researcher.user, issued.plaintext, principal)
    found = error(inf.post("/chat/completions", CHAT, narrow), 403, "model_not_permitted")
    assert "models:read" in found["message"]
    [denial] = inf.audit("inference:deny")
    assert [r["code"] for r in denial.payload["reasons"]] == ["token_scope_missing"]
    assert inf.client.get("/v1/models", headers=bearer(narrow)).get_json()["data"] == []
    assert inf.audit("inference:serve") == []


def test_weights_grant_does_not_give_inference(inf: Inference) -> None:
    inf.world.kyc(inf.reviewer, inf.outsider)
    inf.world.grant(inf.outsider, inf.model, tier="weights-auto")
    error(inf.post("/chat/completions", CHAT, inf.outsider), 403, "model_not_permitted")


def test_expired_grant_is_refused(inf: Inference) -> None:
    with inf.airlock.db.session() as s:
        s.get_one(Grant, inf.grant.id).expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    error(inf.post("/chat/completions", CHAT), 403, "model_not_permitted")
    assert inf.client.get("/v1/models", headers=bearer(inf.researcher)).get_json()["data"] == []


def test_frozen_model_is_refused(inf: Inference) -> None:
    with inf.airlock.db.session() as s:
        inf.airlock.access.set_frozen(
            s,
            principal=inf.publisher.principal,
            model=inf.airlock.publishing.get_model(s, REPO),
            frozen=True,
            reason="x",
        )
    found = error(inf.post("/chat/completions", CHAT), 403, "model_not_permitted")
    assert "freeze" in found["message"]


def change_kyc(inf: Inference, **values: Any) -> None:
    """Change the researcher's verification in place, as time or a provider's late correction
    would, before any re-evaluation has caught up: each request re-checks the live facts."""
    with inf.airlock.db.session() as s:
        s.execute(
            update(KycVerification)
            .where(KycVerification.user_id == inf.researcher.user.id)
            .values(**values)
        )
        s.commit()


def test_sanctioned_nationality_is_jurisdiction_blocked(inf: Inference) -> None:
    change_kyc(inf, nationality="IR")
    error(inf.post("/chat/completions", CHAT), 403, "jurisdiction_blocked")


def test_lapsed_kyc_is_kyc_required(inf: Inference) -> None:
    change_kyc(inf, expires_at=utcnow() - timedelta(days=1))
    error(inf.post("/chat/completions", CHAT), 403, "kyc_required")


def test_unknown_model_is_404(inf: Inference) -> None:
    error(inf.post("/chat/completions", {**CHAT, "model": "acme/nope"}), 404, "model_not_found")
    error(inf.post("/chat/completions", {**CHAT, "model": "nope"}), 404, "model_not_found")


def test_internal_model_is_invisible_to_outsiders(inf: Inference) -> None:
    files = {"config.json": b"{}"}
    policy = POLICY.format(repo="acme/secret", stage="internal")
    inf.world.model(inf.publisher, "acme/secret", files=files, policy=policy)
    body = {**CHAT, "model": "acme/secret"}
    error(inf.post("/chat/completions", body, inf.outsider), 404, "model_not_found")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "JSON object"),
        ([1], "JSON object"),
        ({"messages": []}, "model parameter"),
        ({**CHAT, "stream": True, "stream_options": "yes"}, "stream_options"),
    ],
)
def test_bad_bodies_are_400(inf: Inference, body: Any, fragment: str) -> None:
    if isinstance(body, str):
        response = inf.client.post(
            "/v1/chat/completions",
            data=body,
            headers={**bearer(inf.researcher), "Content-Type": "application/json"},
        )
    else:
        response = inf.post("/chat/completions", body)
    assert fragment in error(response, 400, "invalid_request_error")["message"]


def test_unknown_path_speaks_the_openai_dialect(inf: Inference) -> None:
    error(inf.client.get("/v1/nothing", headers=bearer(inf.researcher)), 404, "not_found")


# -- upstream failures ---------------------------------------------------------------------------
def test_upstream_failure_before_streaming_is_502_or_503(inf: Inference) -> None:
    error(
        inf.post("/chat/completions", {**CHAT, "airlock_test": {"fail": 500}}),
        502,
        "upstream_error",
    )
    body = {**CHAT, "stream": True, "airlock_test": {"fail": 503}}
    error(inf.post("/chat/completions", body), 503, "upstream_error")
    statuses = [e.payload["upstream_status"] for e in inf.audit("inference:serve")]
    assert statuses == [502, 503]


def test_upstream_stall_is_504(inf: Inference) -> None:
    inf.airlock.inference.upstream = HttpUpstream(timeout=0.2)
    body = {**CHAT, "airlock_test": {"stall": 1}}
    error(inf.post("/chat/completions", body), 504, "upstream_error")


def test_cut_stream_ends_with_an_error_event(inf: Inference) -> None:
    found = inf.events({**CHAT, "airlock_test": {"cut_after": 2}})
    assert len(found) == 3
    assert "[DONE]" not in found
    assert json.loads(found[-1])["error"]["code"] == "upstream_error"
    [event] = inf.audit("inference:serve")
    assert event.payload["upstream_status"] == 502
    assert event.payload["usage_reported"] is False
    # charged the prompt estimate and the two words delivered, not the reservation
    assert event.payload["tokens_used"] == 6 + 2 < event.payload["tokens_reserved"]


@pytest.mark.sqlite
def test_an_answer_whose_audit_event_cannot_be_written_is_withheld(inf: Inference) -> None:
    """The database stays locked by another writer while the upstream works: the answer is
    503, never delivered unrecorded; the next request, the lock gone, is served and audited."""
    body = {**CHAT, "airlock_test": {"stall": 1}}
    withheld = locked_while(inf, lambda: inf.post("/chat/completions", body))
    error(withheld, 503, "service_unavailable")
    assert "withheld" in withheld.json["error"]["message"]
    assert "choices" not in withheld.get_data(as_text=True)
    assert inf.audit("inference:serve") == []
    served = inf.post("/chat/completions", CHAT)
    assert served.status_code == 200 and served.json["choices"]
    assert len(inf.audit("inference:serve")) == 1


@pytest.mark.sqlite
def test_a_streams_event_the_database_refuses_is_spooled_then_written(inf: Inference) -> None:
    """A stream's content reached the client before its event could be written: the event
    waits in the outbox and is written, chained, right after the next event that succeeds
    (on the outbox's own thread, not the request's)."""
    outbox = inf.airlock.inference.outbox
    assert outbox is not None and outbox.count() == 0
    body = {**CHAT, "stream": True, "airlock_test": {"delay": 0.1}}
    response = locked_while(inf, lambda: _read(inf.post("/chat/completions", body)))
    assert response.status_code == 200
    assert response.get_data(as_text=True).endswith("data: [DONE]\n\n")
    assert inf.audit("inference:serve") == [] and outbox.count() == 1

    assert inf.post("/chat/completions", CHAT).status_code == 200  # nudges the outbox's thread
    deadline = time.monotonic() + 5  # well before its own next try (RETRY_SECONDS, 10 s)
    while outbox.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    events = inf.audit("inference:serve")
    assert outbox.count() == 0
    assert [e.payload.get("chunks_delivered") for e in events] == [None, 16]
    late = events[1].payload
    assert late["spooled_at"] and late["tokens_used"] > 0 and late["upstream_status"] == 200
    assert events[1].actor_id == inf.researcher.user.id
    with inf.airlock.db.session() as s:
        assert verify_chain(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()).ok


def locked_while(inf: Inference, call: Callable[[], TestResponse]) -> TestResponse:
    """Run `call` (a request whose upstream takes a second) in a thread; 0.3 s in, when it has
    been admitted (reads only), another connection takes SQLite's write lock and holds it until
    the call has returned. The app's connections give up on the lock after 0.2 s."""
    engine = inf.airlock.db.engine
    engine.dispose()
    sqla_event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=200"))
    path = inf.airlock.settings.database_url.split(":///", 1)[1]
    answer = in_thread(call)
    time.sleep(0.3)
    writer = sqlite3.connect(path, timeout=30, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        return answer()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def _read(response: TestResponse) -> TestResponse:
    response.get_data()  # the whole stream, as a client reads it
    return response


def test_unreachable_upstream_is_503(inf: Inference) -> None:
    with inf.airlock.db.session() as s:
        inf.airlock.inference.set_upstream(
            s,
            principal=inf.publisher.principal,
            model=inf.airlock.publishing.get_model(s, REPO),
            url="http://127.0.0.1:9/v1",
            key_ref=None,
        )
    error(inf.post("/chat/completions", CHAT), 503, "upstream_error")


def test_the_upstream_credential_never_reaches_a_log_an_error_or_the_audit(
    inf: Inference, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")  # every library's debug lines too
    caplog.set_level("DEBUG", logger="gateway")
    inf.airlock.inference.upstream = HttpUpstream(timeout=0.2)
    bodies = [
        inf.post("/chat/completions", CHAT),
        inf.post("/chat/completions", {**CHAT, "airlock_test": {"fail": 500}}),
        inf.post("/chat/completions", {**CHAT, "airlock_test": {"stall": 1}}),
        inf.post("/chat/completions", {**CHAT, "stream": True, "airlock_test": {"cut_after": 1}}),
    ]
    assert [b.status_code for b in bodies] == [200, 502, 504, 200]
    answers = [b.get_data(as_text=True) for b in bodies]  # reads the stream to its end
    audited = [json.dumps(e.payload) for e in inf.audit("inference:serve")]
    assert len(audited) == 4
    for text in [*answers, *audited, caplog.text]:
        assert "upstream-secret" not in text


def test_unset_credential_fails_closed(inf: Inference) -> None:
    with inf.airlock.db.session() as s:
        inf.airlock.inference.set_upstream(
            s,
            principal=inf.publisher.principal,
            model=inf.airlock.publishing.get_model(s, REPO),
            url=inf.airlock.settings.public_url,
            key_ref="AIRLOCK_UPSTREAM_KEY_MISSING",
        )
    found = error(inf.post("/chat/completions", CHAT), 503, "upstream_error")
    assert "credential" in found["message"]


# -- publisher configuration ---------------------------------------------------------------------
def test_publisher_sets_the_upstream_and_never_sees_a_secret(inf: Inference) -> None:
    url = f"/api/v1/models/{REPO}/upstream"
    body = {"url": "https://vllm.internal:8000/v1/", "key_ref": KEY_REF}
    response = inf.client.put(url, json=body, headers=bearer(inf.publisher))
    assert response.status_code == 200, response.get_data()
    assert response.get_json() == {
        "repo_id": REPO,
        "url": "https://vllm.internal:8000/v1",
        "key_ref": KEY_REF,
        "model": None,
        "prompt_digests": False,
    }
    assert "upstream-secret" not in response.get_data(as_text=True)
    [event] = inf.audit("model:upstream")[-1:]
    assert event.payload == {
        "upstream_url": "https://vllm.internal:8000/v1",
        "key_ref": KEY_REF,
        "upstream_model": None,
        "prompt_digests": False,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://host/v1"},
        {"url": "http://user:pw@host/v1"},
        {"url": "http://host/v1?key=x"},
        {"url": "http://host/v1", "key_ref": "AIRLOCK_SECRET_KEY"},
        {"url": "http://host/v1", "key_ref": "AIRLOCK_UPSTREAM_KEY_lower"},
    ],
)
def test_bad_upstream_settings_are_422(inf: Inference, body: dict[str, str]) -> None:
    url = f"/api/v1/models/{REPO}/upstream"
    response = inf.client.put(url, json=body, headers=bearer(inf.publisher))
    assert response.status_code == 422
    assert response.get_json()["code"] == "invalid_input"


def test_only_the_models_publishers_set_its_upstream(inf: Inference) -> None:
    url = f"/api/v1/models/{REPO}/upstream"
    body = {"url": "http://evil.example/v1"}
    assert inf.client.put(url, json=body, headers=bearer(inf.researcher)).status_code == 403
    assert inf.client.put(url, json=body).status_code == 401
    inf.world.org("other")
    stranger = inf.world.actor("sam", org="other", role=Role.PUBLISHER)
    assert inf.client.put(url, json=body, headers=bearer(stranger)).status_code == 403


# -- limits --------------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def limiter_kind(request: pytest.FixtureRequest, inf: Inference) -> Iterator[str]:
    """The in-process limiter, or the shared Redis one under a throwaway key prefix."""
    if request.param == "memory":
        yield "memory"
        return
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix, timeout=2.0)
        inf.airlock.inference.limiter = limiter
        try:
            yield "redis"
        finally:
            limiter.close()


def set_limits(inf: Inference, limits: str) -> None:
    """Apply a new version of the policy with the chat tier's limits replaced."""
    source = POLICY.format(repo=REPO, stage="limited").replace(
        "{requests_per_minute: 600, tokens_per_minute: 100000}", limits
    )
    with inf.airlock.db.session() as s:
        inf.airlock.policies.apply(s, principal=inf.publisher.principal, source=source)


def test_success_carries_the_six_ratelimit_headers(inf: Inference) -> None:
    response = inf.post("/chat/completions", {**CHAT, "max_tokens": 4})
    assert response.headers["x-ratelimit-limit-requests"] == "600"
    assert response.headers["x-ratelimit-remaining-requests"] == "599"
    assert response.headers["x-ratelimit-reset-requests"] == "100ms"
    assert response.headers["x-ratelimit-limit-tokens"] == "100000"
    reserved = int(response.headers["x-ratelimit-limit-tokens"]) - int(
        response.headers["x-ratelimit-remaining-tokens"]
    )
    [event] = inf.audit("inference:serve")
    assert reserved == event.payload["tokens_reserved"] == 6 + 4  # 22 bytes / 4 + max_tokens
    assert response.headers["x-ratelimit-reset-tokens"].endswith("ms")


def test_requests_over_the_minute_limit_are_429_and_consume_nothing(
    inf: Inference, limiter_kind: str
) -> None:
    set_limits(inf, "{requests_per_minute: 2}")
    assert inf.post("/chat/completions", CHAT).status_code == 200
    assert inf.post("/chat/completions", CHAT).status_code == 200
    refused = inf.post("/chat/completions", CHAT)
    found = error(refused, 429, "rate_limit_exceeded")
    assert found["message"].startswith(f"Rate limit reached for {REPO} on requests per min (RPM)")
    assert int(refused.headers["Retry-After"]) >= 1
    assert int(refused.headers["retry-after-ms"]) > 0
    assert "x-should-retry" not in refused.headers
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    [denial] = inf.audit("inference:deny")
    assert denial.payload["reasons"][0]["code"] == "rate_limited"
    assert len(inf.audit("inference:serve")) == 2


def test_request_larger_than_the_whole_limit_is_told_not_to_retry(
    inf: Inference, limiter_kind: str
) -> None:
    set_limits(inf, "{tokens_per_minute: 50}")
    refused = inf.post("/chat/completions", {**CHAT, "max_tokens": 100})
    found = error(refused, 429, "rate_limit_exceeded")
    assert found["message"].startswith("Request too large")
    assert refused.headers["x-should-retry"] == "false"
    assert inf.post("/chat/completions", {**CHAT, "max_tokens": 4}).status_code == 200


def test_the_cap_is_injected_and_usage_reconciles_the_reservation(
    inf: Inference, limiter_kind: str
) -> None:
    set_limits(inf, "{tokens_per_minute: 200}")
    first = inf.post("/chat/completions", CHAT)
    assert first.status_code == 200
    [event] = inf.audit("inference:serve")
    assert event.payload["tokens_reserved"] == 200  # the prompt estimate + the injected cap
    assert event.payload["tokens_used"] == 5 + 16
    # Without reconciliation the whole minute's budget would still be reserved.
    second = inf.post("/chat/completions", {**CHAT, "stream": True, "max_tokens": 100})
    assert second.status_code == 200, second.get_data()
    second.get_data()
    assert inf.audit("inference:serve")[-1].payload["tokens_used"] == 5 + 16


def test_concurrent_requests_are_leases_freed_when_a_stream_is_dropped(
    inf: Inference, limiter_kind: str
) -> None:
    set_limits(inf, "{concurrent_requests: 1}")
    held = inf.client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers=bearer(inf.researcher),
        buffered=False,
    )
    assert held.status_code == 200
    refused = inf.post("/chat/completions", CHAT)
    assert "concurrent requests" in error(refused, 429, "rate_limit_exceeded")["message"]
    # a slot frees when a request ends: retry soon, not at the lease's expiry (minutes)
    assert (refused.headers["Retry-After"], refused.headers["retry-after-ms"]) == ("1", "1000")
    held.close()  # the client goes away without reading a byte
    assert inf.post("/chat/completions", CHAT).status_code == 200
    statuses = [e.payload["upstream_status"] for e in inf.audit("inference:serve")]
    assert statuses == ["client_disconnected", 200]


def test_bad_max_tokens_is_400(inf: Inference) -> None:
    response = inf.post("/chat/completions", {**CHAT, "max_tokens": 0})
    assert "max_tokens" in error(response, 400, "invalid_request_error")["message"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.012, "12ms"), (1, "1s"), (2.844, "2.844s"), (360, "6m0s"), (3600, "1h0m0s")],
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_an_unreachable_limiter_fails_closed(inf: Inference) -> None:
    inf.airlock.inference.limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0")
    found = error(inf.post("/chat/completions", CHAT), 503, "rate_limiter_unavailable")
    assert "rate limiter" in found["message"]
    [denial] = inf.audit("inference:deny")
    assert denial.payload["reasons"][0]["code"] == "rate_limiter_unavailable"
    assert inf.audit("inference:serve") == []


def test_a_client_leaving_mid_stream_ends_the_upstream_request_and_frees_its_lease(
    inf: Inference,
) -> None:
    set_limits(inf, "{concurrent_requests: 1}")
    body = {**CHAT, "stream": True, "airlock_test": {"delay": 0.01}}
    held = inf.client.post(
        "/v1/chat/completions", json=body, headers=bearer(inf.researcher), buffered=False
    )
    first = next(iter(held.response))
    assert first.startswith(b"data: {")
    assert inf.post("/chat/completions", CHAT).status_code == 429
    held.close()  # the client goes away after one event
    assert inf.post("/chat/completions", CHAT).status_code == 200
    left, done = inf.audit("inference:serve")
    assert left.payload["upstream_status"] == "client_disconnected"
    # no usage seen: charged the prompt estimate and the one content chunk sent, not the cap
    assert left.payload["tokens_used"] == 6 + 1 and left.payload["chunks_delivered"] == 1
    assert left.payload["usage_reported"] is False
    assert done.payload["upstream_status"] == 200


# -- monthly token quota -------------------------------------------------------------------------
def test_a_spent_monthly_quota_is_insufficient_quota_until_the_month_ends(
    inf: Inference, limiter_kind: str
) -> None:
    set_limits(inf, "{requests_per_minute: 600, tokens_per_minute: 1000, tokens_per_month: 30}")
    for _ in range(3):  # each reserves 6 + 4 and is charged the 5 + 4 it used
        assert inf.post("/chat/completions", {**CHAT, "max_tokens": 4}).status_code == 200
    refused = inf.post("/chat/completions", {**CHAT, "max_tokens": 4})  # 27 + 10 > 30
    found = error(refused, 429, "insufficient_quota")
    assert found["type"] == "insufficient_quota"
    assert "Used 27, Requested 10" in found["message"]
    assert refused.headers["x-should-retry"] == "false"
    until_end = month_of(time.time())[1]
    assert int(refused.headers["Retry-After"]) == pytest.approx(until_end, abs=3)
    assert int(refused.headers["retry-after-ms"]) == pytest.approx(until_end * 1000, abs=3000)
    # the x-ratelimit headers still describe the minute
    assert refused.headers["x-ratelimit-limit-tokens"] == "1000"
    assert refused.headers["x-ratelimit-limit-requests"] == "600"
    [denial] = inf.audit("inference:deny")
    assert denial.payload["reasons"][0]["code"] == "token_quota_exhausted"
    assert (denial.payload["grant_id"], denial.payload["tier"]) == (inf.grant.id, "chat")
    # the refusal consumed nothing: 27 + 2 still fits
    hi = {"model": REPO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert inf.post("/chat/completions", hi).status_code == 200


def test_a_request_larger_than_the_whole_month_is_refused_the_same_way(inf: Inference) -> None:
    set_limits(inf, "{tokens_per_month: 8}")
    refused = inf.post("/chat/completions", {**CHAT, "max_tokens": 4})
    found = error(refused, 429, "insufficient_quota")
    assert found["message"].startswith(f"Request too large for {REPO} on tokens per month")
    assert refused.headers["x-should-retry"] == "false"
    assert int(refused.headers["Retry-After"]) == pytest.approx(month_of(time.time())[1], abs=3)
    assert inf.post("/chat/completions", {**CHAT, "max_tokens": 2}).status_code == 200


# -- several grants ------------------------------------------------------------------------------
SECOND_TIER = """\
  - name: chat-lite
    grants: [metadata, inference]
    requires: {{kyc: identity, agreement: aup@1, approval: auto}}
    limits: {limits}
    grant_ttl: 30d
    opens_in: [limited, general]
"""


@pytest.mark.parametrize(
    ("chat", "lite", "applies"),
    [
        ("{tokens_per_minute: 500}", "{tokens_per_minute: 1000}", "chat-lite"),
        ("{tokens_per_minute: 5000}", "{tokens_per_minute: 1000}", "chat"),
        ("{tokens_per_minute: 500}", "{tokens_per_minute: 9000, tokens_per_month: 10000}", "chat"),
        ("{tokens_per_minute: 700}", "{tokens_per_minute: 700}", "chat-lite"),  # the newest
    ],
)
def test_of_several_grants_the_one_with_the_most_room_applies(
    inf: Inference, chat: str, lite: str, applies: str
) -> None:
    source = POLICY.format(repo=REPO, stage="limited").replace(
        "{requests_per_minute: 600, tokens_per_minute: 100000}", chat
    )
    with inf.airlock.db.session() as s:
        source += SECOND_TIER.format(limits=lite)
        inf.airlock.policies.apply(s, principal=inf.publisher.principal, source=source)
    newer = inf.world.grant(inf.researcher, fresh_model(inf.world, REPO), tier="chat-lite")
    assert inf.post("/chat/completions", {**CHAT, "max_tokens": 2}).status_code == 200
    [event] = inf.audit("inference:serve")
    grant = {"chat": inf.grant.id, "chat-lite": newer.id}[applies]
    assert (event.payload["grant_id"], event.payload["tier"]) == (grant, applies)


# -- the upstream's own model name ---------------------------------------------------------------
SERVED_AS = "meta-llama/Llama-3.1-8B-Instruct"


def set_options(inf: Inference, **options: Any) -> None:
    body = {"url": inf.upstream_url, "key_ref": KEY_REF, **options}
    response = inf.client.put(
        f"/api/v1/models/{REPO}/upstream", json=body, headers=bearer(inf.publisher)
    )
    assert response.status_code == 200, response.get_data()


def test_the_upstreams_model_name_is_sent_and_renamed_back(
    inf: Inference, upstream: ReferenceUpstream
) -> None:
    set_options(inf, model=SERVED_AS)
    answer = inf.post("/chat/completions", CHAT)
    assert answer.status_code == 200
    assert upstream.seen[-1].body["model"] == SERVED_AS
    assert answer.get_json()["model"] == REPO
    assert SERVED_AS not in answer.get_data(as_text=True)
    embedded = inf.post("/embeddings", {"model": REPO, "input": "two words"})
    assert embedded.get_json()["model"] == REPO


def test_a_stream_is_renamed_chunk_by_chunk(inf: Inference, upstream: ReferenceUpstream) -> None:
    set_options(inf, model=SERVED_AS)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    held = inf.client.post(
        "/v1/chat/completions",
        json={**body, "airlock_test": {"delay": 0.01}},
        headers=bearer(inf.researcher),
        buffered=False,
    )
    first = next(iter(held.response))  # relayed before the upstream has finished
    assert json.loads(first.removeprefix(b"data: "))["model"] == REPO
    held.close()
    found = inf.events(body)
    assert upstream.seen[-1].body["model"] == SERVED_AS
    chunks = [json.loads(e) for e in found[:-1]]
    assert len(chunks) == 18 and {c["model"] for c in chunks} == {REPO}
    assert SERVED_AS not in "".join(found)


def test_a_bad_upstream_model_name_is_422(inf: Inference) -> None:
    body = {"url": "http://host/v1", "model": "has spaces"}
    url = f"/api/v1/models/{REPO}/upstream"
    response = inf.client.put(url, json=body, headers=bearer(inf.publisher))
    assert response.status_code == 422 and response.get_json()["code"] == "invalid_input"


# -- prompt digests ------------------------------------------------------------------------------
def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_no_digests_by_default(inf: Inference) -> None:
    inf.post("/chat/completions", CHAT)
    inf.events(CHAT)
    for event in inf.audit("inference:serve"):
        assert not {"prompt_sha256", "completion_sha256"} & set(event.payload)


def test_digests_hash_what_was_sent_and_delivered(inf: Inference) -> None:
    set_options(inf, prompt_digests=True)
    messages = [{"role": "user", "content": "héllo there, a secret"}]
    answer = inf.post("/chat/completions", {"model": REPO, "messages": messages}).get_json()
    streamed = inf.events({"model": REPO, "messages": messages, "max_tokens": 5})
    text = "".join(
        c["choices"][0]["delta"].get("content", "") for c in map(json.loads, streamed[:-1])
    )
    inf.post("/completions", {"model": REPO, "prompt": "once upon"})
    plain, stream, completion = inf.audit("inference:serve")
    prompt = sha256(canonical({"messages": messages}))
    assert plain.payload["prompt_sha256"] == stream.payload["prompt_sha256"] == prompt
    content = answer["choices"][0]["message"]["content"]
    assert plain.payload["completion_sha256"] == sha256(content)
    assert stream.payload["completion_sha256"] == sha256(text) and len(text.split()) == 5
    assert completion.payload["prompt_sha256"] == sha256(canonical({"prompt": "once upon"}))
    for event in (plain, stream, completion):
        assert "secret" not in json.dumps(event.payload) and content not in json.dumps(
            event.payload
        )


# -- a client leaving mid-stream -----------------------------------------------------------------
def test_a_client_leaving_is_charged_what_was_delivered(inf: Inference) -> None:
    set_limits(inf, "{tokens_per_month: 20}")
    body = {**CHAT, "stream": True, "max_tokens": 12, "airlock_test": {"delay": 0.01}}
    held = inf.client.post(
        "/v1/chat/completions", json=body, headers=bearer(inf.researcher), buffered=False
    )
    events = iter(held.response)
    for _ in range(3):
        assert next(events).startswith(b"data: {")
    held.close()
    [left] = inf.audit("inference:serve")
    assert left.payload["tokens_reserved"] == 6 + 12
    assert left.payload["chunks_delivered"] == 3 and left.payload["tokens_used"] == 6 + 3
    refused = inf.post("/chat/completions", {**CHAT, "max_tokens": 10})
    assert "Used 9, Requested 16" in error(refused, 429, "insufficient_quota")["message"]


# -- the upstream's credential -------------------------------------------------------------------
@pytest.fixture
def keyed(inf: Inference) -> Iterator[ReferenceUpstream]:
    """A reference upstream that wants the model's credential as its API key."""
    server = ReferenceUpstream(api_key="upstream-secret").start()
    inf.upstream_url = server.base_url
    yield server
    server.stop()


def test_the_credential_is_sent_as_bearer_and_the_callers_token_never_is(
    inf: Inference, keyed: ReferenceUpstream
) -> None:
    set_options(inf)
    assert inf.post("/chat/completions", CHAT).status_code == 200
    assert inf.events(CHAT)[-1] == "[DONE]"
    assert len(keyed.seen) == 2
    for seen in keyed.seen:
        assert seen.headers["Authorization"] == "Bearer upstream-secret"
        assert not any(inf.researcher.token in v for v in seen.headers.values())
        assert inf.researcher.token not in json.dumps(seen.body)


def test_a_wrong_credential_is_502_and_a_missing_one_503_without_secrets(
    inf: Inference, keyed: ReferenceUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    inf.airlock.inference.keys = {KEY_REF: "not-the-key"}
    set_options(inf)
    refused = error(inf.post("/chat/completions", CHAT), 502, "upstream_error")
    assert "refused the gateway's credential" in refused["message"]
    set_options(inf, key_ref="AIRLOCK_UPSTREAM_KEY_MISSING")
    seen = len(keyed.seen)
    found = error(inf.post("/chat/completions", CHAT), 503, "upstream_error")
    assert found["message"] == f"{REPO}'s upstream credential is not set"
    assert len(keyed.seen) == seen  # nothing was sent upstream
    for text in (json.dumps(refused), json.dumps(found), caplog.text):
        assert "upstream-secret" not in text and "not-the-key" not in text


@pytest.mark.parametrize(
    ("chunk", "counted"),
    [
        ({"choices": [{"delta": {"content": " word"}}]}, True),
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, False),
        ({"choices": [{"index": 0, "text": "a", "logprobs": None}]}, True),
        ({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{"}}]}}]}, True),
        ({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": None}, False),
        ({"choices": [{"delta": {}, "logprobs": {"content": [{"token": "x"}]}}]}, False),
        ({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, False),
    ],
)
def test_content_bearing_chunks(chunk: dict[str, Any], counted: bool) -> None:
    for separators in ((",", ":"), (", ", ": ")):  # servers differ in spacing
        event = b"data: " + json.dumps(chunk, separators=separators).encode() + b"\n\n"
        assert bool(CONTENT.search(event)) is counted


def test_the_sdk_reads_a_spent_quota_as_insufficient_quota_and_tries_once(inf: Inference) -> None:
    set_limits(inf, "{tokens_per_month: 12}")
    assert inf.post("/chat/completions", {**CHAT, "max_tokens": 2}).status_code == 200  # 7 used
    attempts: list[httpx2.Request] = []
    http = httpx2.Client(
        transport=httpx2.WSGITransport(app=inf.client.application),
        event_hooks={"request": [attempts.append]},
    )
    sdk = openai.OpenAI(
        base_url="http://airlock.test/v1", api_key=inf.researcher.token, http_client=http
    )
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=REPO, messages=CHAT["messages"], max_tokens=4)
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert len(attempts) == 1


@on_both_engines
def test_an_inference_request_makes_a_fixed_number_of_round_trips(
    inf: Inference, tmp_path: Path
) -> None:
    """Admission reads the token, then the model with its grants, facts, policy and upstream in
    one statement; the audit event is written in its own transaction. SQLite: BEGIN, 2 reads,
    ROLLBACK, BEGIN IMMEDIATE, the audit's 2 statements (the head read and the insert, whose
    trigger moves the head), COMMIT. PostgreSQL: 2 reads outside a transaction, the audit's
    insert as its own transaction (a pooled connection is checked by polling its socket, not
    by a ping)."""
    with server_round_trips(inf.airlock.db.engine, tmp_path / "libpq.trace") as sent:
        assert inf.post("/chat/completions", CHAT).status_code == 200  # opens the connections
        sent()
        assert inf.post("/chat/completions", CHAT).status_code == 200
        found = sent()
    expected = {"sqlite": 8, "postgresql": 3}[inf.airlock.db.engine.dialect.name]
    assert len(found) == expected, "\n".join(found)
    with inf.airlock.db.session() as s:  # both events were chained
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert [e.action for e in events[-2:]] == ["inference:serve"] * 2
        assert verify_chain(events).ok


def test_a_served_request_records_the_country_its_decision_used(inf: Inference) -> None:
    proxy, header = "10.0.0.5", "X-Airlock-Country"
    inf.airlock.geo = RequestGeo(trusted_proxies=(proxy,), header=header)
    headers = {**bearer(inf.researcher), header: "DE"}
    for peer in (proxy, "127.0.0.1"):  # from anyone but the proxy the header is a spoof
        response = inf.client.post(
            "/v1/chat/completions", json=CHAT, headers=headers, environ_base={"REMOTE_ADDR": peer}
        )
        assert response.status_code == 200, response.get_data(as_text=True)
    countries = [e.payload.get("request_country") for e in inf.audit("inference:serve")]
    assert countries == ["DE", None]


def test_events_spooled_before_a_restart_are_written_without_new_traffic(
    inf: Inference, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "RETRY_SECONDS", 0.05)
    left = AuditOutbox(inf.airlock.settings.data_dir / "audit-outbox")  # a process now gone
    payload = {"tokens_used": 7, "upstream_status": 200, "spooled_at": "2026-11-27T00:00:00"}
    user = inf.researcher.user.id
    left.put(
        {
            "action": "inference:serve",
            "actor_id": user,
            "org_id": inf.model.org_id,
            "subject_user_id": user,
            "model_id": inf.model.id,
            "effect": "allow",
            "payload": payload,
        }
    )
    restarted = build_airlock(inf.airlock.settings)
    try:
        create_app(airlock=restarted)  # and no request at all
        deadline = time.monotonic() + 10
        while not inf.audit("inference:serve") and time.monotonic() < deadline:
            time.sleep(0.02)
        [event] = inf.audit("inference:serve")
        assert event.payload == payload and event.actor_id == user
        assert restarted.audit_outbox.count() == 0
    finally:
        restarted.close()
