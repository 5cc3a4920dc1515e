"""PolicyService: validation with paths and lines, versioning, idempotence and authorization."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.db.models import AuditEvent, Model, PolicyVersion, Role
from gateway.errors import Conflict, Forbidden, InvalidInput, PolicyInvalid
from gateway.services.container import Airlock
from tests.factories import Actor, World, policy_text


@pytest.fixture
def pat(world: World) -> Actor:
    return world.actor("pat", org="acme", role=Role.PUBLISHER)


@pytest.fixture
def model(airlock: Airlock, pat: Actor) -> Model:
    with airlock.db.session() as s:
        return airlock.publishing.create_model(s, principal=pat.principal, repo_id="acme/m")


def apply(
    airlock: Airlock, actor: Actor, source: str, comment: str = ""
) -> tuple[PolicyVersion, bool]:
    with airlock.db.session() as s:
        return airlock.policies.apply(s, principal=actor.principal, source=source, comment=comment)


def test_every_issue_has_a_path_and_a_line(airlock: Airlock) -> None:
    source = policy_text("acme/m").replace("kyc: identity", "kyc: telepathy")
    source = source.replace("opens_in: [limited, general]", "opens_in: [someday]", 1)
    with pytest.raises(PolicyInvalid) as caught:
        airlock.policies.validate(source)
    errors = caught.value.extra["errors"]
    assert len(errors) >= 2
    lines = source.splitlines()
    for error in errors:
        assert error["path"].startswith("tiers[")
        assert error["message"]
        assert error["line"] is not None
    assert any("telepathy" in lines[e["line"] - 1] for e in errors)
    assert any("someday" in lines[e["line"] - 1] for e in errors)


@pytest.mark.parametrize(
    "source",
    [
        "model: [unclosed",
        "",
        "just text",
        "model: acme/m\nstage: limited\ntiers: !!python/object:os.system {}\n",
        "model: acme/m\nstage: limited\ntiers: " + "9" * 5000 + "\n",
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        ),
    ],
    ids=["syntax", "empty", "scalar", "python-tag", "huge-int", "alias-bomb"],
)
def test_malformed_documents_are_policy_invalid(airlock: Airlock, source: str) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        airlock.policies.validate(source)
    assert caught.value.extra["errors"]
    assert all("path" in e and "line" in e for e in caught.value.extra["errors"])


def test_oversized_documents_are_refused(airlock: Airlock) -> None:
    with pytest.raises(InvalidInput):
        airlock.policies.validate("# " + "é" * 200_000)


def test_versions_are_kept_content_hashed_and_audited(
    airlock: Airlock, pat: Actor, model: Model
) -> None:
    first, created = apply(airlock, pat, policy_text("acme/m"), "initial")
    assert (first.version, created) == (1, True)
    same, created = apply(airlock, pat, policy_text("acme/m"), "again")
    assert (same.id, created) == (first.id, False)
    second, created = apply(airlock, pat, policy_text("acme/m", downloads=7))
    assert (second.version, created) == (2, True)
    assert second.content_sha256 != first.content_sha256
    back, created = apply(airlock, pat, policy_text("acme/m"))
    assert (back.version, created) == (3, True)
    with airlock.db.session() as s:
        fresh = airlock.publishing.get_model(s, "acme/m")
        history = airlock.policies.history(s, principal=pat.principal, model=fresh)
        assert [v.version for v in history] == [3, 2, 1]
        assert history[-1].comment == "initial"
        assert fresh.policy_version_id == back.id
        applied = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "policy:apply").order_by(AuditEvent.seq)
        ).all()
        assert [e.payload["version"] for e in applied] == [1, 2, 3]
        assert [e.payload["previous"] for e in applied] == [None, 1, 2]


def test_current_policy_is_the_latest_and_required(
    airlock: Airlock, pat: Actor, model: Model
) -> None:
    with airlock.db.session() as s:
        fresh = s.merge(model)
        assert airlock.policies.current(fresh) is None
        with pytest.raises(Conflict):
            airlock.policies.require_current(fresh)
    apply(airlock, pat, policy_text("acme/m", stage="general"))
    with airlock.db.session() as s:
        fresh = airlock.publishing.get_model(s, "acme/m")
        version, policy = airlock.policies.require_current(fresh)
        assert (version.version, str(policy.stage)) == (1, "general")


def test_only_the_models_publishers_apply_or_read_history(
    world: World, airlock: Airlock, model: Model
) -> None:
    apply(airlock, world.actor("pat2", org="acme", role=Role.PUBLISHER), policy_text("acme/m"))
    for actor in (
        world.actor("gus", org="globex", role=Role.PUBLISHER),
        world.actor("rita", org="acme", role=Role.REVIEWER),
        world.actor("carl", org="acme", role=Role.COMPLIANCE),
        world.actor("otto"),
    ):
        with pytest.raises(Forbidden):
            apply(airlock, actor, policy_text("acme/m", downloads=1))
        with airlock.db.session() as s, pytest.raises(Forbidden):
            airlock.policies.history(s, principal=actor.principal, model=s.merge(model))
    with airlock.db.session() as s:
        assert len(s.scalars(select(PolicyVersion)).all()) == 1


def test_a_policy_must_name_an_existing_model(airlock: Airlock, pat: Actor) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        apply(airlock, pat, policy_text("acme/ghost"))
