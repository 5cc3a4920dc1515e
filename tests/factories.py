"""Test factories: build a world through the same services real flows use, never raw rows."""

from __future__ import annotations

import hashlib
import io
import textwrap
from dataclasses import dataclass, field
from datetime import timedelta

from gateway.audit import AuditAction
from gateway.auth.tokens import Scope
from gateway.db.models import Grant, Model, Organization, Role, User
from gateway.kyc import KycFacts
from gateway.services.container import Airlock
from gateway.services.principal import Principal
from gateway.services.publishing import ManifestEntry
from policies import KycLevel

ALL_PERSONAL = [Scope.ACCESS_REQUEST, Scope.MODELS_READ, Scope.TOKENS_MANAGE]
ROLE_TOKEN_SCOPES = {
    Role.PUBLISHER: [
        Scope.MODELS_WRITE,
        Scope.POLICIES_WRITE,
        Scope.GRANTS_MANAGE,
        Scope.MODELS_READ,
    ],
    Role.REVIEWER: [Scope.REQUESTS_REVIEW, Scope.KYC_RECORD, Scope.GRANTS_MANAGE],
    Role.COMPLIANCE: [Scope.AUDIT_READ],
    Role.OWNER: list(Scope),
}

POLICY = textwrap.dedent("""\
    model: {repo}
    stage: {stage}
    agreements:
      aup: {{version: 1, text: "Use responsibly."}}
    forms:
      research:
        - {{name: intended_use, type: text, required: true, max_length: 500}}
    tiers:
      - name: card
        grants: [metadata]
        requires: {{}}
        opens_in: [research-preview, limited, general]
      - name: weights-auto
        grants: [metadata, weights]
        files: ["*.safetensors", "config.json"]
        requires:
          kyc: identity
          agreement: aup@1
          approval: auto
          jurisdiction:
            deny: [pack:us-ofac-comprehensive]
            signals: [nationality, residence_country]
        limits: {{downloads_per_day: {downloads}, bytes_per_day: 1GB}}
        grant_ttl: 30d
        opens_in: [limited, general]
      - name: weights-manual
        grants: [metadata, weights]
        requires:
          kyc: institution
          agreement: aup@1
          form: research
          approval: {{mode: manual, reviewers: {reviewers}}}
        grant_ttl: 90d
        opens_in: [limited, general]
    """)


def policy_text(
    repo: str, *, stage: str = "limited", downloads: int = 100, reviewers: int = 1
) -> str:
    """A three-tier test policy for `repo`."""
    return POLICY.format(repo=repo, stage=stage, downloads=downloads, reviewers=reviewers)


@dataclass
class Actor:
    """A user with a token, as tests act through it."""

    user: User
    token: str
    principal: Principal


@dataclass
class World:
    """Helpers that build orgs, users, models and grants through the services."""

    airlock: Airlock
    counter: int = 0
    orgs: dict[str, Organization] = field(default_factory=dict)

    def _session(self):  # type: ignore[no-untyped-def]
        return self.airlock.db.sessionmaker()

    def org(self, slug: str = "acme", hq: str | None = "US") -> Organization:
        if slug in self.orgs:
            return self.orgs[slug]
        with self._session() as s:
            self.orgs[slug] = self.airlock.identity.create_org(
                s, slug=slug, name=slug.title(), hq_country=hq, actor_id=None
            )
        return self.orgs[slug]

    def actor(
        self,
        name: str,
        *,
        org: str | None = None,
        role: Role | None = None,
        scopes: list[Scope] | None = None,
        affiliation: str | None = None,
        ttl: timedelta = timedelta(days=1),
    ) -> Actor:
        svc = self.airlock.identity
        with self._session() as s:
            aff = s.merge(self.org(affiliation)) if affiliation else None
            user = svc.create_user(
                s, username=name, email=f"{name}@example.org", affiliation=aff, actor_id=None
            )
            if org and role:
                svc.add_member(s, org=s.merge(self.org(org)), user=user, role=role, actor_id=None)
            wanted = scopes or ([*ROLE_TOKEN_SCOPES[role], *ALL_PERSONAL] if role else ALL_PERSONAL)
            issued = svc.issue_token(
                s, user=user, name="test", scopes=set(wanted), ttl=ttl, actor_id=user.id
            )
            principal = svc.authenticate(s, issued.plaintext)
        return Actor(user, issued.plaintext, principal)

    def model(
        self,
        publisher: Actor,
        repo: str = "acme/tiny",
        files: dict[str, bytes] | None = None,
        policy: str | None = None,
    ) -> Model:
        files = files or {
            "config.json": b'{"model_type": "test"}',
            "model.safetensors": safetensors_bytes(),
            "README.md": b"# card\n",
        }
        pub = self.airlock.publishing
        with self._session() as s:
            model = pub.create_model(s, principal=publisher.principal, repo_id=repo)
            for data in files.values():
                pub.upload_blob(
                    s,
                    principal=publisher.principal,
                    model=model,
                    sha256=hashlib.sha256(data).hexdigest(),
                    stream=io.BytesIO(data),
                    max_bytes=1 << 30,
                )
            manifest = [
                ManifestEntry(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()
            ]
            pub.commit(s, principal=publisher.principal, model=model, manifest=manifest)
            self.airlock.policies.apply(
                s, principal=publisher.principal, source=policy or policy_text(repo)
            )
            return model

    def kyc(
        self,
        reviewer: Actor,
        subject: Actor,
        *,
        org: str = "acme",
        level: KycLevel = KycLevel.INSTITUTION,
        country: str = "GB",
        expires_in: timedelta = timedelta(days=365),
    ) -> None:
        from gateway.db.models import utcnow

        with self._session() as s:
            facts = KycFacts(
                provider="manual",
                provider_ref=f"t{self.counter}",
                status="approved",
                level=level,
                nationality=country,
                residence_country=country,
                document_country=country,
                expires_at=utcnow() + expires_in,
            )
            self.counter += 1
            self.airlock.access.record_kyc(
                s,
                principal=reviewer.principal,
                org=s.merge(self.org(org)),
                user=s.merge(subject.user),
                facts=facts,
                notes="test",
            )

    def grant(self, researcher: Actor, model: Model, tier: str = "weights-auto") -> Grant:
        with self._session() as s:
            outcome = self.airlock.access.request_access(
                s,
                principal=researcher.principal,
                model=s.merge(model),
                tier=tier,
                form={"intended_use": "evaluation"},
                agreement="aup@1",
                request_country=None,
            )
            assert outcome.grant is not None, outcome.decision.to_dict()
            return outcome.grant


def record_events(airlock: Airlock, count: int, **fields: int) -> None:
    """`count` filler audit events (user:create, payloads {"i": 0} onwards), committed at once."""
    with airlock.db.session() as session:
        for i in range(count):
            airlock.audit.record(
                session, AuditAction.USER_CREATE, actor_id=None, payload={"i": i}, **fields
            )
        session.commit()


def safetensors_bytes(values: int = 64) -> bytes:
    """A tiny valid safetensors file with one F32 tensor."""
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, values * 4]}})
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + struct.pack(f"<{values}f", *range(values))
