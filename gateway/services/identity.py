"""Organizations, users, memberships and API tokens."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope, digests_match, looks_like_token, new_token, token_digest
from gateway.db.models import ApiToken, Membership, Organization, Role, User, utcnow
from gateway.errors import Conflict, Forbidden, InvalidCredentials, InvalidInput, NotFound
from gateway.services.principal import PERSONAL_SCOPES, ROLE_SCOPES, Principal
from gateway.services.rows import TokenRow, load_token

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_TOKEN_DAYS = 366


@dataclass(frozen=True)
class IssuedToken:
    """A newly created token: the plaintext is shown exactly once."""

    token: ApiToken
    plaintext: str


class IdentityService:
    """Creates organizations, users, roles and tokens; authenticates tokens."""

    def __init__(self, *, audit: AuditRecorder) -> None:
        self.audit = audit

    def create_org(
        self,
        session: Session,
        *,
        slug: str,
        name: str,
        hq_country: str | None,
        actor_id: int | None,
    ) -> Organization:
        """A new organization; slugs are unique and URL-safe."""
        _check_slug(slug, "organization")
        if session.scalar(select(Organization.id).where(Organization.slug == slug)):
            raise Conflict(f"organization '{slug}' already exists")
        org = Organization(slug=slug, name=name, hq_country=hq_country)
        session.add(org)
        session.flush()
        self.audit.record(
            session,
            AuditAction.ORG_CREATE,
            actor_id=actor_id,
            org_id=org.id,
            payload={"slug": slug, "hq_country": hq_country},
        )
        session.commit()
        return org

    def create_user(
        self,
        session: Session,
        *,
        username: str,
        email: str,
        display_name: str = "",
        affiliation: Organization | None = None,
        actor_id: int | None,
    ) -> User:
        """A new user."""
        _check_slug(username, "username")
        if session.scalar(select(User.id).where(User.username == username)):
            raise Conflict(f"user '{username}' already exists")
        user = User(
            username=username,
            email=email.lower(),
            display_name=display_name,
            affiliation_org_id=affiliation.id if affiliation else None,
        )
        session.add(user)
        session.flush()
        self.audit.record(
            session,
            AuditAction.USER_CREATE,
            actor_id=actor_id,
            subject_user_id=user.id,
            payload={"username": username},
        )
        session.commit()
        return user

    def add_member(
        self, session: Session, *, org: Organization, user: User, role: Role, actor_id: int | None
    ) -> Membership:
        """Give `user` a role in `org`."""
        member = Membership(org_id=org.id, user_id=user.id, role=str(role))
        session.add(member)
        session.flush()
        self.audit.record(
            session,
            AuditAction.MEMBERSHIP_ADD,
            actor_id=actor_id,
            org_id=org.id,
            subject_user_id=user.id,
            payload={"role": str(role)},
        )
        session.commit()
        return member

    def issue_token(
        self,
        session: Session,
        *,
        user: User,
        name: str,
        scopes: Iterable[Scope],
        ttl: timedelta,
        actor_id: int | None,
    ) -> IssuedToken:
        """A new token for `user`, limited to scopes the user's roles could ever use."""
        wanted = frozenset(Scope(s) for s in scopes)
        if not wanted:
            raise InvalidInput("a token needs at least one scope")
        if not timedelta(minutes=5) <= ttl <= timedelta(days=MAX_TOKEN_DAYS):
            raise InvalidInput(
                f"token lifetime must be between 5 minutes and {MAX_TOKEN_DAYS} days"
            )
        grantable = self.grantable_scopes(session, user)
        if not wanted <= grantable:
            extra = sorted(str(s) for s in wanted - grantable)
            raise Forbidden(f"the user's roles do not permit the scopes {extra}")
        plaintext = new_token()
        token = ApiToken(
            user_id=user.id,
            name=name,
            digest=token_digest(plaintext),
            display_prefix=plaintext[:8],
            scopes=sorted(str(s) for s in wanted),
            expires_at=utcnow() + ttl,
        )
        session.add(token)
        session.flush()
        self.audit.record(
            session,
            AuditAction.TOKEN_CREATE,
            actor_id=actor_id,
            subject_user_id=user.id,
            payload={
                "token_id": token.id,
                "name": name,
                "scopes": token.scopes,
                "expires_at": token.expires_at,
            },
        )
        session.commit()
        return IssuedToken(token, plaintext)

    def create_token(
        self,
        session: Session,
        *,
        principal: Principal,
        name: str,
        scopes: Iterable[Scope],
        ttl: timedelta,
    ) -> IssuedToken:
        """A new token for the caller, never carrying a scope the calling token lacks."""
        user_id = principal.require_scope(Scope.TOKENS_MANAGE)
        wanted = frozenset(Scope(s) for s in scopes)
        beyond = sorted(str(s) for s in wanted - principal.scopes)
        if beyond:
            raise Forbidden(
                f"a token cannot create a token with scopes it lacks itself: {beyond}",
                extra={"scopes": beyond},
            )
        user = session.get_one(User, user_id)
        return self.issue_token(
            session, user=user, name=name, scopes=wanted, ttl=ttl, actor_id=user_id
        )

    def grantable_scopes(self, session: Session, user: User) -> frozenset[Scope]:
        """Personal scopes plus those any of the user's roles allow."""
        roles = session.scalars(select(Membership.role).where(Membership.user_id == user.id))
        scopes = set(PERSONAL_SCOPES)
        for role in roles:
            scopes |= ROLE_SCOPES[Role(role)]
        return frozenset(scopes)

    def revoke_token(self, session: Session, *, principal: Principal, token_id: int) -> ApiToken:
        """Revoke one of the caller's own tokens; effective on the next request."""
        user_id = principal.require_scope(Scope.TOKENS_MANAGE)
        token = session.get(ApiToken, token_id)
        if token is None or token.user_id != user_id:
            raise NotFound("no such token")
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            self.audit.record(
                session,
                AuditAction.TOKEN_REVOKE,
                actor_id=user_id,
                subject_user_id=user_id,
                payload={"token_id": token.id},
            )
            session.commit()
        return token

    def list_tokens(self, session: Session, *, principal: Principal) -> list[ApiToken]:
        """The caller's tokens (never their secrets)."""
        user_id = principal.require_scope(Scope.TOKENS_MANAGE)
        return list(
            session.scalars(
                select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)
            )
        )

    def authenticate(
        self, session: Session, presented: str, *, now: datetime | None = None
    ) -> Principal:
        """Resolve a bearer token to a Principal, or raise InvalidCredentials.

        Read from the database on every call: a revoked token fails on the very next request.
        """
        if not looks_like_token(presented):
            raise InvalidCredentials("Invalid credentials in Authorization header")
        digest = token_digest(presented)
        token = load_token(session.connection(), digest)
        moment = now or utcnow()
        if (
            token is None
            or not digests_match(token.digest, digest)
            or token.revoked_at is not None
            or token.expires_at <= moment
        ):
            raise InvalidCredentials("Invalid credentials in Authorization header")
        return principal_for(token)


def principal_for(token: TokenRow) -> Principal:
    """The principal a valid token stands for."""
    return _principal(
        token.id, token.user_id, token.username, tuple(token.scopes), token.memberships
    )


# Every request of a token builds the same principal from the same row: built once per distinct
# (token, user, name, scopes, memberships), so a changed membership or scope is a new entry. The
# token's validity (digest, expiry, revocation) is still checked on every request, before this.
@functools.lru_cache(maxsize=1024)
def _principal(
    token_id: int,
    user_id: int,
    username: str,
    scopes: tuple[str, ...],
    memberships: tuple[tuple[int, str], ...],
) -> Principal:
    roles: dict[int, set[Role]] = {}
    for org_id, role in memberships:
        roles.setdefault(org_id, set()).add(Role(role))
    return Principal(
        user_id=user_id,
        username=username,
        token_id=token_id,
        scopes=frozenset(Scope(s) for s in scopes),
        # shared by the requests of one token: read-only
        roles=MappingProxyType({org: frozenset(rs) for org, rs in roles.items()}),
    )


def _check_slug(value: str, what: str) -> None:
    if not SLUG.match(value):
        raise InvalidInput(
            f"invalid {what} '{value[:80]}': use lowercase letters, digits and '-' (max 63)"
        )
