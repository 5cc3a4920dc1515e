"""`airlock demo`: seed a whole staged-access story through the services, then serve it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.auth.tokens import Scope
from gateway.db.models import Model, Organization, Role, User, utcnow
from gateway.errors import InvalidCredentials
from gateway.kyc import KycFacts
from gateway.services.checkpoints import SigningKeyMissing
from gateway.services.container import Airlock
from gateway.services.publishing import ManifestEntry
from gateway.services.web_auth import WebAuthService
from gateway.tasks.jobs import checkpoint_audit
from gateway.tinymodel import write_tiny_model
from policies import KycLevel

log = logging.getLogger(__name__)
REPO = "acme/tiny-llm"
TOKEN_TTL = timedelta(days=30)
LINK_TTL = timedelta(hours=24)
LINK_ROLES = ("publisher", "reviewer", "compliance", "researcher")


@dataclass(frozen=True)
class DemoUser:
    """One seeded person: which org and role, and what their token may do."""

    username: str
    role: Role | None
    scopes: tuple[Scope, ...]
    affiliation: str | None = None


PEOPLE = {
    "publisher": DemoUser(
        "alice",
        Role.PUBLISHER,
        (
            Scope.MODELS_WRITE,
            Scope.POLICIES_WRITE,
            Scope.GRANTS_MANAGE,
            Scope.MODELS_READ,
            Scope.TOKENS_MANAGE,
        ),
    ),
    "reviewer": DemoUser(
        "rita",
        Role.REVIEWER,
        (Scope.REQUESTS_REVIEW, Scope.KYC_RECORD, Scope.GRANTS_MANAGE, Scope.TOKENS_MANAGE),
    ),
    "compliance": DemoUser("carol", Role.COMPLIANCE, (Scope.AUDIT_READ, Scope.TOKENS_MANAGE)),
    "researcher": DemoUser(
        "rob",
        None,
        (Scope.ACCESS_REQUEST, Scope.MODELS_READ, Scope.TOKENS_MANAGE),
        affiliation="oxbridge",
    ),
    "outsider": DemoUser(
        "otto", None, (Scope.ACCESS_REQUEST, Scope.MODELS_READ, Scope.TOKENS_MANAGE)
    ),
}


def demo_policy() -> str:
    """The demo's release policy document."""
    return (resources.files("gateway") / "demo_assets" / "release-policy.yaml").read_text()


def seed(airlock: Airlock, data_dir: Path) -> dict[str, str]:
    """Seed on first run, reuse on later runs; returns a valid token per demo role. A signed
    audit checkpoint then covers every event so far (`airlock audit verify` shows it)."""
    with airlock.db.session() as session:
        if session.scalar(select(Organization.id).where(Organization.slug == "acme")) is None:
            _seed_world(airlock, session, data_dir)
        tokens = _tokens(airlock, session, data_dir / "demo.json")
    try:
        checkpoint_audit(airlock, force=True)
    except SigningKeyMissing as exc:  # a demo on PostgreSQL without a key: serve it unanchored
        log.error("no audit checkpoint: %s", exc)
    return tokens


def _seed_world(airlock: Airlock, session: Session, data_dir: Path) -> None:
    idn = airlock.identity
    acme = idn.create_org(session, slug="acme", name="Acme AI", hq_country="US", actor_id=None)
    uni = idn.create_org(
        session, slug="oxbridge", name="Oxbridge University", hq_country="GB", actor_id=None
    )
    users: dict[str, User] = {}
    for key, person in PEOPLE.items():
        affiliation = uni if person.affiliation else None
        users[key] = idn.create_user(
            session,
            username=person.username,
            email=f"{person.username}@example.org",
            display_name=person.username.title(),
            affiliation=affiliation,
            actor_id=None,
        )
        if person.role:
            idn.add_member(session, org=acme, user=users[key], role=person.role, actor_id=None)
    principals = {
        k: _principal(airlock, session, users[k]) for k in ("publisher", "reviewer", "researcher")
    }
    _publish(airlock, session, principals["publisher"], data_dir / "seed" / "tiny-llm")
    _grant_researcher(airlock, session, acme, users["researcher"], principals)


def wire_upstream(airlock: Airlock, base_url: str) -> None:
    """Point acme/tiny-llm at this run's reference upstream (its port changes every run)."""
    with airlock.db.session() as session:
        publisher = session.scalars(select(User).where(User.username == "alice")).one()
        airlock.inference.set_upstream(
            session,
            principal=_principal(airlock, session, publisher),
            model=airlock.publishing.get_model(session, REPO),
            url=base_url,
            key_ref=None,
        )


def _principal(airlock: Airlock, session: Session, user: User):  # type: ignore[no-untyped-def]
    person = next(p for p in PEOPLE.values() if p.username == user.username)
    issued = airlock.identity.issue_token(
        session,
        user=user,
        name="demo seeding",
        scopes=person.scopes,
        ttl=timedelta(minutes=10),
        actor_id=user.id,
    )
    return airlock.identity.authenticate(session, issued.plaintext)


def _publish(airlock: Airlock, session: Session, publisher: Any, directory: Path) -> None:
    write_tiny_model(directory)
    pub = airlock.publishing
    model = pub.create_model(
        session,
        principal=publisher,
        repo_id=REPO,
        description="A tiny Llama-shaped model for the Airlock demo.",
    )
    manifest = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with path.open("rb") as stream:
            pub.upload_blob(
                session,
                principal=publisher,
                model=model,
                sha256=digest,
                stream=stream,
                max_bytes=airlock.settings.max_upload_bytes,
            )
        manifest.append(ManifestEntry(path.relative_to(directory).as_posix(), len(data), digest))
    pub.commit(
        session,
        principal=publisher,
        model=model,
        manifest=manifest,
        message="Initial release of tiny-llm",
    )
    airlock.policies.apply(
        session, principal=publisher, source=demo_policy(), comment="demo: three tiers"
    )


def _grant_researcher(
    airlock: Airlock,
    session: Session,
    acme: Organization,
    researcher: User,
    principals: dict[str, Any],
) -> None:
    facts = KycFacts(
        provider="manual",
        provider_ref=f"manual-demo-{researcher.id}",
        status="approved",
        level=KycLevel.INSTITUTION,
        nationality="GB",
        residence_country="GB",
        document_country="GB",
        sanctions_hit=False,
        screened_at=utcnow(),
        expires_at=utcnow() + timedelta(days=365),
    )
    airlock.access.record_kyc(
        session,
        principal=principals["reviewer"],
        org=acme,
        user=researcher,
        facts=facts,
        notes="Passport and university staff card checked on a video call.",
    )
    model = session.scalar(select(Model).where(Model.name == "tiny-llm"))
    assert model is not None
    outcome = airlock.access.request_access(
        session,
        principal=principals["researcher"],
        model=model,
        tier="weights-vetted",
        form={
            "affiliation": "Oxbridge University",
            "intended_use": "Interpretability research",
            "compute_environment": "on-premises",
        },
        agreement="acme-research-aup@2",
        request_country=None,
    )
    airlock.access.review(
        session,
        principal=principals["reviewer"],
        request_id=outcome.request.id,
        approve=True,
        note="Institution verified; research plan is sound.",
    )


def _tokens(airlock: Airlock, session: Session, demo_json: Path) -> dict[str, str]:
    """Reuse still-valid tokens from an earlier demo.json; issue fresh ones otherwise."""
    previous = _read_tokens(demo_json)
    tokens = {}
    for key, person in PEOPLE.items():
        token = previous.get(key)
        if token and _still_valid(airlock, session, token):
            tokens[key] = token
            continue
        user = session.scalars(select(User).where(User.username == person.username)).one()
        tokens[key] = airlock.identity.issue_token(
            session, user=user, name="demo", scopes=person.scopes, ttl=TOKEN_TTL, actor_id=user.id
        ).plaintext
    return tokens


def _read_tokens(path: Path) -> dict[str, str]:
    try:
        found = json.loads(path.read_text()).get("tokens", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in found.items() if isinstance(v, str)}


def _still_valid(airlock: Airlock, session: Session, token: str) -> bool:
    try:
        airlock.identity.authenticate(session, token, now=utcnow() + timedelta(days=1))
    except InvalidCredentials:
        return False
    return True


def login_links(airlock: Airlock, endpoint: str) -> dict[str, str]:
    """A fresh one-time browser sign-in link per role (every start; valid for a day)."""
    service = WebAuthService.from_settings(airlock.settings, identity=airlock.identity)
    links = {}
    with airlock.db.session() as session:
        for key in LINK_ROLES:
            username = PEOPLE[key].username
            user = session.scalars(select(User).where(User.username == username)).one()
            token = service.issue_link(session, user=user, ttl=LINK_TTL)
            links[key] = f"{endpoint}/ui/login/link?token={token}"
    return links


def write_demo_json(
    path: Path,
    endpoint: str,
    tokens: dict[str, str],
    links: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The public contract scripts rely on: endpoint, tokens per role, models, login links."""
    models = {"weights": REPO, "inference": REPO}
    document = {"endpoint": endpoint, "tokens": tokens, "models": models}
    if links is not None:
        document["login_links"] = links
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.chmod(0o600)
    return document


def how_to(document: dict[str, Any]) -> str:
    """The how-to the demo prints: the client commands, then a browser sign-in link per role."""
    endpoint, tokens = document["endpoint"], document["tokens"]
    links = [
        f"In the browser, as the {role} (one use, 24 h): {link}"
        for role, link in document.get("login_links", {}).items()
    ]
    return "\n".join(
        [
            f"Airlock demo serving at {endpoint} (tokens in demo.json)",
            f"HF_ENDPOINT={endpoint} HF_TOKEN={tokens['researcher']} hf download {REPO}",
            f"curl -H 'Authorization: Bearer {tokens['researcher']}' {endpoint}/api/v1/me/grants",
            *links,
        ]
    )
