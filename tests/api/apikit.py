"""A small world for the /api/v1 tests: two organizations, each with every role, and researchers."""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from gateway.auth.tokens import Scope
from gateway.db.models import Base, Role, utcnow
from tests.factories import Actor, World, policy_text, safetensors_bytes

REPO = "acme/tiny"
RIVAL_REPO = "globex/giant"
PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}
FORM = {"intended_use": "evaluation"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bearer(actor: Actor | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {actor.token}"} if actor else {}


def problem(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem-details response and return its body."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json", response.mimetype
    body = response.get_json(force=True)
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["type"].endswith("/" + body["code"])
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body


def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    return response.get_json()


def corrupt_safetensors() -> bytes:
    """A header whose tensor claims more bytes than the file holds."""
    good = safetensors_bytes()
    return good[:-16]


class _RunsShell:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("echo pwned",))


def malicious_pickle() -> bytes:
    """A pickle that would call os.system on load (building it runs nothing)."""
    return pickle.dumps(_RunsShell(), protocol=4)


@dataclass
class Api:
    """Every actor the /api/v1 tests need, and helpers to call the API as one of them."""

    client: FlaskClient
    world: World
    publisher: Actor
    reviewer: Actor
    compliance: Actor
    researcher: Actor
    outsider: Actor
    rival_publisher: Actor
    rival_reviewer: Actor
    rival_compliance: Actor

    def call(self, method: str, url: str, actor: Actor | None = None, **kw: Any) -> TestResponse:
        headers = {**bearer(actor), **kw.pop("headers", {})}
        return self.client.open(url, method=method, headers=headers, **kw)

    def get(self, url: str, actor: Actor | None = None, **kw: Any) -> TestResponse:
        return self.call("GET", url, actor, **kw)

    def post(self, url: str, actor: Actor | None = None, **kw: Any) -> TestResponse:
        return self.call("POST", url, actor, **kw)

    def put(self, url: str, actor: Actor | None = None, **kw: Any) -> TestResponse:
        return self.call("PUT", url, actor, **kw)

    def delete(self, url: str, actor: Actor | None = None, **kw: Any) -> TestResponse:
        return self.call("DELETE", url, actor, **kw)

    # -- publishing through the API --------------------------------------------------------------
    def create(self, repo: str, actor: Actor | None = None) -> TestResponse:
        return self.post("/api/v1/models", actor or self.publisher, json={"repo_id": repo})

    def upload(self, repo: str, data: bytes, actor: Actor | None = None) -> TestResponse:
        return self.put(
            f"/api/v1/models/{repo}/blobs/{sha256(data)}",
            actor or self.publisher,
            data=data,
            content_type="application/octet-stream",
        )

    def commit(
        self, repo: str, files: dict[str, bytes], actor: Actor | None = None
    ) -> TestResponse:
        manifest = [{"path": p, "size": len(d), "sha256": sha256(d)} for p, d in files.items()]
        return self.post(
            f"/api/v1/models/{repo}/commits", actor or self.publisher, json={"files": manifest}
        )

    def push(self, repo: str, files: dict[str, bytes], actor: Actor | None = None) -> Any:
        """Upload every file and commit them; returns the revision."""
        for data in files.values():
            assert self.upload(repo, data, actor).status_code == 200
        return ok(self.commit(repo, files, actor), 201)

    def apply(self, source: str, actor: Actor | None = None, **kw: Any) -> TestResponse:
        return self.post("/api/v1/policies", actor or self.publisher, json={"source": source, **kw})

    # -- access through the API ------------------------------------------------------------------
    def request(
        self, tier: str, actor: Actor | None = None, repo: str = REPO, **body: Any
    ) -> TestResponse:
        payload = {"tier": tier, "agreement": "aup@1", "form": FORM, **body}
        return self.post(f"/api/v1/models/{repo}/access", actor or self.researcher, json=payload)

    def review(
        self, request_id: int, verdict: str, actor: Actor | None = None, note: str = ""
    ) -> TestResponse:
        return self.post(
            f"/api/v1/requests/{request_id}/review",
            actor or self.reviewer,
            json={"verdict": verdict, "note": note},
        )

    def token(
        self, actor: Actor, scopes: list[Scope], ttl: timedelta = timedelta(hours=1)
    ) -> Actor:
        """Another token of `actor`'s user with exactly `scopes`."""
        identity = self.world.airlock.identity
        with self.world.airlock.db.session() as s:
            user = s.merge(actor.user)
            issued = identity.issue_token(
                s, user=user, name="narrow", scopes=set(scopes), ttl=ttl, actor_id=user.id
            )
            principal = identity.authenticate(s, issued.plaintext)
        return Actor(actor.user, issued.plaintext, principal)


def audit_events(api: Api, caller: Actor, **params: Any) -> list[dict[str, Any]]:
    """The audit search's events as `caller` reads them: one page, asserted to be the last."""
    body = ok(api.get(f"/api/v1/audit?{urlencode(params)}", caller))
    assert body["next_cursor"] is None
    return body["events"]  # type: ignore[no-any-return]


def make_api(client: FlaskClient, world: World, *, publish: bool = True) -> Api:
    """Orgs acme and globex, each with a publisher, reviewer and compliance officer; researchers.

    With `publish`, acme/tiny (limited stage, three tiers) and globex/giant exist with policies.
    """
    world.org("acme")
    world.org("globex", hq="DE")
    world.org("oxbridge", hq="GB")
    api = Api(
        client,
        world,
        publisher=world.actor("pat", org="acme", role=Role.PUBLISHER),
        reviewer=world.actor("rita", org="acme", role=Role.REVIEWER),
        compliance=world.actor("carl", org="acme", role=Role.COMPLIANCE),
        researcher=world.actor("rob", affiliation="oxbridge"),
        outsider=world.actor("otto"),
        rival_publisher=world.actor("gus", org="globex", role=Role.PUBLISHER),
        rival_reviewer=world.actor("gina", org="globex", role=Role.REVIEWER),
        rival_compliance=world.actor("gil", org="globex", role=Role.COMPLIANCE),
    )
    if publish:
        world.model(api.publisher, REPO)
        world.model(api.rival_publisher, RIVAL_REPO, policy=policy_text(RIVAL_REPO))
    return api


def backdate(world: World, entity: type[Base], row_id: int, **fields: Any) -> None:
    """Move timestamps of a row (e.g. `expires_at`) as the passage of time would."""
    with world.airlock.db.session() as s:
        s.execute(update(entity).where(entity.id == row_id).values(**fields))  # type: ignore[attr-defined]
        s.commit()


def past(seconds: int = 1) -> Any:
    return utcnow() - timedelta(seconds=seconds)


def stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
