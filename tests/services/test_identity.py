"""IdentityService: organizations, users, memberships, tokens and authentication."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway.auth.tokens import Scope, token_digest
from gateway.db.models import ApiToken, AuditEvent, Role, utcnow
from gateway.errors import Conflict, Forbidden, InvalidCredentials, InvalidInput, NotFound
from gateway.services.container import Airlock
from gateway.services.principal import ANONYMOUS, Principal
from tests.factories import Actor, World


def actions(airlock: Airlock) -> list[str]:
    with airlock.db.session() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_orgs_and_users_are_unique_slugged_and_audited(world: World, airlock: Airlock) -> None:
    world.org("acme")
    with airlock.db.session() as s:
        with pytest.raises(Conflict):
            airlock.identity.create_org(
                s, slug="acme", name="Again", hq_country=None, actor_id=None
            )
        for bad in ("Acme", "-acme", "ac me", "a" * 64, "", "acme/x"):
            with pytest.raises(InvalidInput):
                airlock.identity.create_org(s, slug=bad, name="x", hq_country=None, actor_id=None)
        airlock.identity.create_user(s, username="ann", email="ANN@Example.org", actor_id=None)
        with pytest.raises(Conflict):
            airlock.identity.create_user(s, username="ann", email="b@example.org", actor_id=None)
        with pytest.raises(InvalidInput):
            airlock.identity.create_user(s, username="../ann", email="c@example.org", actor_id=None)
    assert actions(airlock) == ["org:create", "user:create"]


def test_authenticate_resolves_scopes_and_roles(world: World, airlock: Airlock) -> None:
    pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
    with airlock.db.session() as s:
        principal = airlock.identity.authenticate(s, pat.token)
    assert principal.user_id == pat.user.id
    assert principal.username == "pat"
    assert Scope.MODELS_WRITE in principal.scopes
    assert principal.roles == {world.org("acme").id: frozenset({Role.PUBLISHER})}


def test_a_new_membership_shows_in_the_next_principal_of_the_same_token(
    world: World, airlock: Airlock
) -> None:
    """Principals are reused per token row: a role added since is in the very next one."""
    pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
    with airlock.db.session() as s:
        first = airlock.identity.authenticate(s, pat.token)
        assert airlock.identity.authenticate(s, pat.token) == first
    with pytest.raises(TypeError):
        first.roles[0] = frozenset()  # type: ignore[index]  # shared: read-only
    other = world.org("other")
    with airlock.db.session() as s:
        airlock.identity.add_member(s, org=other, user=pat.user, role=Role.REVIEWER, actor_id=None)
    with airlock.db.session() as s:
        after = airlock.identity.authenticate(s, pat.token)
    assert after.roles == {
        world.org("acme").id: frozenset({Role.PUBLISHER}),
        other.id: frozenset({Role.REVIEWER}),
    }


@pytest.mark.parametrize("token", ["", "Bearer x", "alk_short", "alk_" + "A" * 43, "x" * 300])
def test_unknown_and_malformed_tokens_are_invalid(
    world: World, airlock: Airlock, token: str
) -> None:
    world.actor("ann")
    with airlock.db.session() as s, pytest.raises(InvalidCredentials):
        airlock.identity.authenticate(s, token)


def test_expired_tokens_are_invalid(world: World, airlock: Airlock) -> None:
    ann = world.actor("ann", ttl=timedelta(hours=1))
    with airlock.db.session() as s:
        airlock.identity.authenticate(s, ann.token, now=utcnow() + timedelta(minutes=59))
        with pytest.raises(InvalidCredentials):
            airlock.identity.authenticate(s, ann.token, now=utcnow() + timedelta(hours=1))


def test_tokens_are_stored_only_as_digests(world: World, airlock: Airlock) -> None:
    ann = world.actor("ann")
    with airlock.db.session() as s:
        row = s.scalars(select(ApiToken)).one()
    assert row.digest == token_digest(ann.token)
    assert ann.token not in repr(row.__dict__)
    assert row.display_prefix == ann.token[:8]


def test_issued_scopes_must_be_permitted_by_roles(world: World, airlock: Airlock) -> None:
    ann = world.actor("ann")
    with airlock.db.session() as s:
        user = s.merge(ann.user)
        with pytest.raises(Forbidden):
            airlock.identity.issue_token(
                s,
                user=user,
                name="x",
                scopes=[Scope.MODELS_WRITE],
                ttl=timedelta(days=1),
                actor_id=None,
            )
        with pytest.raises(InvalidInput):
            airlock.identity.issue_token(
                s, user=user, name="x", scopes=[], ttl=timedelta(days=1), actor_id=None
            )
        for ttl in (timedelta(minutes=4), timedelta(days=367)):
            with pytest.raises(InvalidInput):
                airlock.identity.issue_token(
                    s, user=user, name="x", scopes=[Scope.ACCESS_REQUEST], ttl=ttl, actor_id=None
                )


def narrow(world: World, actor: Actor, scopes: set[Scope]) -> Principal:
    with world.airlock.db.session() as s:
        issued = world.airlock.identity.issue_token(
            s,
            user=s.merge(actor.user),
            name="n",
            scopes=scopes,
            ttl=timedelta(hours=1),
            actor_id=None,
        )
        return world.airlock.identity.authenticate(s, issued.plaintext)


def test_a_token_creates_tokens_only_within_its_own_scopes(world: World, airlock: Airlock) -> None:
    pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
    caller = narrow(world, pat, {Scope.TOKENS_MANAGE, Scope.MODELS_READ})
    writer = narrow(world, pat, {Scope.MODELS_WRITE})
    with airlock.db.session() as s:
        with pytest.raises(Forbidden, match="lacks itself"):
            airlock.identity.create_token(
                s, principal=caller, name="up", scopes=[Scope.MODELS_WRITE], ttl=timedelta(days=1)
            )
        issued = airlock.identity.create_token(
            s, principal=caller, name="same", scopes=[Scope.MODELS_READ], ttl=timedelta(days=1)
        )
        assert issued.token.scopes == ["models:read"]
        with pytest.raises(Forbidden):
            airlock.identity.create_token(
                s,
                principal=writer,
                name="x",
                scopes=[Scope.MODELS_WRITE],
                ttl=timedelta(days=1),
            )
        with pytest.raises(Exception, match="needs an API token"):
            airlock.identity.create_token(
                s, principal=ANONYMOUS, name="x", scopes=[Scope.MODELS_READ], ttl=timedelta(days=1)
            )


def test_revocation_is_immediate_own_only_and_audited(world: World, airlock: Airlock) -> None:
    ann = world.actor("ann")
    bob = world.actor("bob")
    with airlock.db.session() as s:
        with pytest.raises(NotFound):
            airlock.identity.revoke_token(
                s, principal=bob.principal, token_id=ann.principal.token_id or 0
            )
        airlock.identity.authenticate(s, ann.token)
        revoked = airlock.identity.revoke_token(
            s, principal=ann.principal, token_id=ann.principal.token_id or 0
        )
        assert revoked.revoked_at is not None
        airlock.identity.revoke_token(
            s, principal=ann.principal, token_id=ann.principal.token_id or 0
        )
        with pytest.raises(InvalidCredentials):
            airlock.identity.authenticate(s, ann.token)
    assert actions(airlock).count("token:revoke") == 1


def test_listing_tokens_needs_the_scope_and_shows_only_own(world: World, airlock: Airlock) -> None:
    ann = world.actor("ann")
    world.actor("bob")
    without = narrow(world, ann, {Scope.ACCESS_REQUEST})
    with airlock.db.session() as s:
        listed = airlock.identity.list_tokens(s, principal=ann.principal)
        assert [t.user_id for t in listed] == [ann.user.id, ann.user.id]
        with pytest.raises(Forbidden):
            airlock.identity.list_tokens(s, principal=without)


def test_principal_org_scope_needs_both_token_scope_and_role(world: World) -> None:
    pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
    acme, globex = world.org("acme").id, world.org("globex").id
    assert pat.principal.require_org_scope(acme, Scope.MODELS_WRITE) == pat.user.id
    with pytest.raises(Forbidden):
        pat.principal.require_org_scope(globex, Scope.MODELS_WRITE)
    with pytest.raises(Forbidden):
        pat.principal.require_org_scope(acme, Scope.REQUESTS_REVIEW)
    without = narrow(world, pat, {Scope.POLICIES_WRITE})
    with pytest.raises(Forbidden):
        without.require_org_scope(acme, Scope.MODELS_WRITE)
    assert without.orgs_with_scope(Scope.MODELS_WRITE) == set()
    assert pat.principal.orgs_with_scope(Scope.MODELS_WRITE) == {acme}
