"""A small world for the Hub and blob surfaces: one gated model, a grantee and an outsider."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent, Grant, Model, Role
from tests.factories import Actor, World, policy_text, safetensors_bytes

REPO = "acme/tiny"
FILES = {
    "config.json": b'{"model_type": "test"}',
    "model.safetensors": safetensors_bytes(),
    "onnx/model.safetensors": safetensors_bytes(16),
    "onnx/fp16/model.safetensors": safetensors_bytes(8),
    "README.md": b"# card\n",
    "docs/notes.txt": b"internal notes\n",
}
VISIBLE = [
    "config.json",
    "model.safetensors",
    "onnx/fp16/model.safetensors",
    "onnx/model.safetensors",
]
XET_HEADERS = ("X-Xet-Hash", "X-Xet-Refresh-Route", "X-Xet-Cas-Url", "X-Xet-Access-Token")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bearer(actor: Actor | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {actor.token}"} if actor else {}


def tuned_policy(
    repo: str = REPO,
    *,
    downloads: int = 3,
    concurrent: int | None = None,
    fingerprint: bool = False,
    ttl: str | None = None,
) -> str:
    """The factories' policy with the weights-auto tier tuned: a concurrent_downloads limit,
    per-recipient copies, another signed-URL TTL."""
    text = policy_text(repo, downloads=downloads)
    limits, extra = "bytes_per_day: 1GB}", "    grant_ttl: 30d\n"
    assert text.count(limits) == 1 and text.count(extra) == 1
    if concurrent is not None:
        text = text.replace(limits, f"bytes_per_day: 1GB, concurrent_downloads: {concurrent}}}")
    tuned = extra + ("    fingerprint: true\n" if fingerprint else "")
    tuned += f"    signed_url_ttl: {ttl}\n" if ttl else ""
    return text.replace(extra, tuned)


@dataclass
class Hub:
    """The actors and model every Hub test starts from."""

    client: FlaskClient
    world: World
    publisher: Actor
    reviewer: Actor
    researcher: Actor
    outsider: Actor
    model: Model
    grant: Grant

    def get(self, url: str, actor: Actor | None = None, **kw: object) -> TestResponse:
        return self.client.get(url, headers={**bearer(actor), **kw.pop("headers", {})}, **kw)  # type: ignore[arg-type]

    def head(self, url: str, actor: Actor | None = None, **kw: object) -> TestResponse:
        return self.client.head(url, headers={**bearer(actor), **kw.pop("headers", {})}, **kw)  # type: ignore[arg-type]

    def fetch(self, url: str, method: str = "GET", **kw: object) -> TestResponse:
        """A fully read and closed response (blob bodies are open files until closed)."""
        response = self.client.open(url, method=method, **kw)  # type: ignore[arg-type]
        response.get_data()
        response.close()
        return response

    def signed_url(self, path: str = "model.safetensors", actor: Actor | None = None) -> str:
        """The path and query of the blob URL /resolve redirects a GET to."""
        response = self.get(f"/{REPO}/resolve/main/{path}", actor or self.researcher)
        assert response.status_code == 302, response.headers
        location = urlsplit(response.headers["Location"])
        return f"{location.path}?{location.query}"

    def publish(self, repo: str, **policy: object) -> Model:
        return self.world.model(
            self.publisher, repo, files=FILES, policy=policy_text(repo, **policy)
        )  # type: ignore[arg-type]

    def apply_policy(self, source: str) -> None:
        """Apply a new version of a model's policy as the publisher."""
        with self.world.airlock.db.session() as s:
            self.world.airlock.policies.apply(s, principal=self.publisher.principal, source=source)

    def last_denial(self) -> AuditEvent:
        """The newest `download:deny` audit event."""
        with self.world.airlock.db.session() as s:
            return s.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "download:deny")
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            ).one()

    def researcher_token(self, scopes: list[Scope]) -> Actor:
        """Another token of the researcher, with other scopes."""
        with self.world.airlock.db.session() as s:
            user = s.merge(self.researcher.user)
            issued = self.world.airlock.identity.issue_token(
                s,
                user=user,
                name="narrow",
                scopes=set(scopes),
                ttl=timedelta(hours=1),
                actor_id=user.id,
            )
            principal = self.world.airlock.identity.authenticate(s, issued.plaintext)
        return Actor(self.researcher.user, issued.plaintext, principal)


def fresh_model(world: World, repo: str) -> Model:
    """The model as a new session loads it.

    The instance World.model returns still holds `head_revision` loaded as None from before the
    commit (PublishingService.commit sets only the foreign key); merging it, as World.grant does,
    would write that None back and drop the model's head.
    """
    with world.airlock.db.session() as s:
        return world.airlock.publishing.get_model(s, repo)


def make_hub(client: FlaskClient, world: World, policy: str | None = None) -> Hub:
    """Publish acme/tiny (3 downloads a day, or `policy`), verify the researcher and grant them
    weights."""
    world.org("acme")
    world.org("oxbridge", hq="GB")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob", affiliation="oxbridge")
    outsider = world.actor("otto")
    world.model(publisher, REPO, files=FILES, policy=policy or policy_text(REPO, downloads=3))
    model = fresh_model(world, REPO)
    world.kyc(reviewer, researcher)
    grant = world.grant(researcher, model)
    return Hub(client, world, publisher, reviewer, researcher, outsider, model, grant)


def in_thread(call: Callable[[], TestResponse]) -> Callable[[], TestResponse]:
    """Start `call` now; the returned function waits for its response."""
    found: list[TestResponse] = []
    thread = threading.Thread(target=lambda: found.append(call()))
    thread.start()

    def wait() -> TestResponse:
        thread.join(timeout=60)
        assert found, "the request did not finish"
        return found[0]

    return wait
