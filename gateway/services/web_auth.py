"""Browser sign-in: server-side web sessions, one-time login links and OIDC account matching."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gateway.audit import AuditAction
from gateway.audit.facets import RefusalCode
from gateway.auth.tokens import Scope
from gateway.db.models import LoginLink, Membership, OidcIdentity, Role, User, WebSession, utcnow
from gateway.errors import Forbidden, InvalidCredentials
from gateway.services.identity import IdentityService
from gateway.services.principal import PERSONAL_SCOPES, ROLE_SCOPES, Principal
from gateway.settings import Settings

PENDING_TTL = timedelta(minutes=10)  # an OIDC sign-in must finish within this
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often
LINK_PREFIX = "all_"  # airlock login link
MAX_SECRET_LENGTH = 200
USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
AUDIT_METHODS = {"link": "login_link", "oidc": "oidc"}  # session method -> audited method
SESSION_REF_HEX = 12  # the audited session reference: a prefix of the stored digest, no more


class UnknownAccount(Forbidden):
    """A verified identity that matches no Airlock account (none is created silently)."""

    code = "unknown_account"
    title = "No Airlock account"


def digest(secret: str) -> bytes:
    """The SHA-256 digest a session id or link is stored and looked up by."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True)
class ActiveSession:
    """A resumed browser session: who, since when, and its pending data."""

    id: int
    user_id: int | None
    data: Mapping[str, Any]
    expires_at: datetime


@dataclass(frozen=True)
class WebAuthService:
    """Starts, resumes and ends browser sessions; issues and redeems login links."""

    identity: IdentityService
    secret_key: str
    idle: timedelta
    lifetime: timedelta
    link_ttl: timedelta

    @classmethod
    def from_settings(cls, settings: Settings, *, identity: IdentityService) -> WebAuthService:
        """The service with the configured timeouts and the deployment's secret key."""
        return cls(
            identity=identity,
            secret_key=settings.secret_key,
            idle=timedelta(minutes=settings.web_idle_minutes),
            lifetime=timedelta(hours=settings.web_max_hours),
            link_ttl=timedelta(minutes=settings.login_link_minutes),
        )

    # -- sessions ------------------------------------------------------------------------------
    def start(
        self,
        session: Session,
        *,
        user_id: int | None,
        method: str | None,
        issuer: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> str:
        """A new session (signed in, and audited as session:create, when `user_id` is set)
        holding `data`; returns the cookie's random id."""
        plaintext = secrets.token_urlsafe(32)
        now = utcnow()
        ttl = self.lifetime if user_id is not None else PENDING_TTL
        found = digest(plaintext)
        # Sessions past their end are swept here, by index, instead of by a periodic task.
        session.execute(delete(WebSession).where(WebSession.expires_at <= now))
        if user_id is not None:
            payload = {
                "method": AUDIT_METHODS.get(method or "", method),
                "session": found.hex()[:SESSION_REF_HEX],
            }
            if issuer is not None:
                payload["issuer"] = issuer
            self._record(session, AuditAction.SESSION_CREATE, user_id, payload)
        session.add(
            WebSession(
                digest=found,
                user_id=user_id,
                method=method,
                data=dict(data or {}),
                created_at=now,
                last_seen_at=now,
                expires_at=now + ttl,
            )
        )
        session.commit()
        return plaintext

    def resume(self, session: Session, plaintext: str | None) -> ActiveSession | None:
        """The live session behind a cookie value, or None (unknown, idle or past its end)."""
        if not plaintext or len(plaintext) > MAX_SECRET_LENGTH:
            return None
        row = session.scalar(select(WebSession).where(WebSession.digest == digest(plaintext)))
        now = utcnow()
        if row is None or row.expires_at <= now or row.last_seen_at + self.idle <= now:
            return None
        if now - row.last_seen_at >= TOUCH_EVERY:
            row.last_seen_at = now
            session.commit()
        return ActiveSession(row.id, row.user_id, dict(row.data or {}), row.expires_at)

    def save_data(self, session: Session, session_id: int, data: Mapping[str, Any]) -> None:
        """Replace a session's pending data (OIDC state, flash messages)."""
        session.execute(
            update(WebSession).where(WebSession.id == session_id).values(data=dict(data))
        )
        session.commit()

    def end(self, session: Session, session_id: int) -> None:
        """Sign one browser out (audited as session:end when it was signed in)."""
        user_id = session.scalar(
            delete(WebSession).where(WebSession.id == session_id).returning(WebSession.user_id)
        )
        if user_id is not None:
            payload = {"scope": "this", "ended": 1}
            self._record(session, AuditAction.SESSION_END, user_id, payload)
        session.commit()

    def end_all(self, session: Session, user_id: int) -> int:
        """Sign the user out everywhere (audited as session:end); returns how many ended."""
        result = session.execute(delete(WebSession).where(WebSession.user_id == user_id))
        ended = int(result.rowcount or 0)  # type: ignore[attr-defined]
        payload = {"scope": "everywhere", "ended": ended}
        self._record(session, AuditAction.SESSION_END, user_id, payload)
        session.commit()
        return ended

    def _record(
        self,
        session: Session,
        action: AuditAction,
        user_id: int,
        payload: Mapping[str, Any],
        *,
        effect: str | None = None,
    ) -> None:
        """One personal session event: the person acts on their own sign-in."""
        self.identity.audit.record(
            session,
            action,
            actor_id=user_id,
            subject_user_id=user_id,
            effect=effect,
            payload=payload,
        )

    def csrf_token(self, plaintext: str) -> str:
        """The session's CSRF token: an HMAC of its id, so nothing more is stored."""
        key = self.secret_key.encode("utf-8")
        return hmac.new(key, b"csrf\0" + plaintext.encode("utf-8"), "sha256").hexdigest()

    def csrf_valid(self, plaintext: str, presented: str | None) -> bool:
        """Constant-time check of a form's CSRF token against the session's."""
        return bool(presented) and hmac.compare_digest(
            self.csrf_token(plaintext).encode(), (presented or "").encode()
        )

    def principal(self, session: Session, user_id: int) -> Principal:
        """The principal a signed-in browser acts as: every scope the user's roles allow."""
        user = session.get_one(User, user_id)
        roles: dict[int, set[Role]] = {}
        scopes = set(PERSONAL_SCOPES)
        for org_id, role in session.execute(
            select(Membership.org_id, Membership.role).where(Membership.user_id == user_id)
        ):
            roles.setdefault(org_id, set()).add(Role(role))
            scopes |= ROLE_SCOPES[Role(role)]
        return Principal(
            user_id=user.id,
            username=user.username,
            scopes=frozenset(Scope(s) for s in scopes),
            roles={org: frozenset(rs) for org, rs in roles.items()},
        )

    # -- login links ---------------------------------------------------------------------------
    def issue_link(
        self,
        session: Session,
        *,
        user: User,
        ttl: timedelta | None = None,
        actor_id: int | None = None,
    ) -> str:
        """A one-time sign-in secret for `user` (the URL path's last part); stored hashed."""
        plaintext = LINK_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        session.add(
            LoginLink(
                digest=digest(plaintext),
                user_id=user.id,
                created_by_id=actor_id,
                created_at=now,
                expires_at=now + (ttl or self.link_ttl),
            )
        )
        session.commit()
        return plaintext

    def redeem_link(self, session: Session, plaintext: str) -> int:
        """The user a valid, unused, unexpired link signs in; it is spent at once."""
        if not plaintext.startswith(LINK_PREFIX) or len(plaintext) > MAX_SECRET_LENGTH:
            raise InvalidCredentials("this sign-in link is not valid")
        now = utcnow()
        found = digest(plaintext)
        user_id: int | None = session.scalar(
            update(LoginLink)
            .where(
                LoginLink.digest == found, LoginLink.used_at.is_(None), LoginLink.expires_at > now
            )
            .values(used_at=now)
            .returning(LoginLink.user_id)
        )
        if user_id is None:
            session.rollback()
            self._deny_link(session, found)
            raise InvalidCredentials("this sign-in link is not valid, was used, or has expired")
        session.commit()
        return user_id

    def _deny_link(self, session: Session, found: bytes) -> None:
        """Audit a refused link whose owner is known (used or expired) as session:deny; a
        link that matches nothing names nobody and is not recorded."""
        link = session.scalar(select(LoginLink).where(LoginLink.digest == found))
        if link is None:
            return
        used = link.used_at is not None
        code = RefusalCode.LOGIN_LINK_USED if used else RefusalCode.LOGIN_LINK_EXPIRED
        reason = {"code": str(code)}
        payload = {"method": "login_link", "reasons": [reason]}
        self._record(session, AuditAction.SESSION_DENY, link.user_id, payload, effect="deny")
        session.commit()

    # -- OpenID Connect ------------------------------------------------------------------------
    def match_oidc(
        self,
        session: Session,
        *,
        issuer: str,
        claims: Mapping[str, Any],
        allow_signup: bool,
    ) -> int:
        """The user an ID token's claims sign in: a stored (issuer, subject) link, else a
        verified email (then linked); unknown people only with `allow_signup`."""
        subject = str(claims.get("sub") or "")
        if not subject:
            raise InvalidCredentials("the ID token names no subject")
        link = session.scalar(
            select(OidcIdentity).where(
                OidcIdentity.issuer == issuer, OidcIdentity.subject == subject
            )
        )
        if link is not None:
            link.last_login_at = utcnow()
            session.commit()
            return link.user_id
        email = _verified_email(claims)
        user = session.scalar(select(User).where(User.email == email)) if email else None
        if user is None and allow_signup and email:
            user = self._sign_up(session, email, claims)
        if user is None:
            unverified = bool(claims.get("email")) and email is None
            self._deny_oidc(session, issuer, subject, unverified=unverified)
            raise UnknownAccount(_unknown_message(claims, email))
        session.add(
            OidcIdentity(user_id=user.id, issuer=issuer, subject=subject, last_login_at=utcnow())
        )
        session.commit()
        return user.id

    def _deny_oidc(self, session: Session, issuer: str, subject: str, *, unverified: bool) -> None:
        """Audit a verified identity refused for want of an account (or of a verified email) as
        session:deny. It names no Airlock user, so the event carries the issuer and a digest of
        the subject, never the email: repeated attempts by one identity share the digest."""
        session.rollback()
        code = RefusalCode.OIDC_EMAIL_UNVERIFIED if unverified else RefusalCode.OIDC_UNKNOWN_ACCOUNT
        identity = hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()[:16]
        payload = {
            "method": "oidc",
            "issuer": issuer,
            "subject_sha256": identity,
            "reasons": [{"code": str(code)}],
        }
        self.identity.audit.record(
            session, AuditAction.SESSION_DENY, actor_id=None, effect="deny", payload=payload
        )
        session.commit()

    def _sign_up(self, session: Session, email: str, claims: Mapping[str, Any]) -> User:
        local = email.split("@")[0].lower()
        base = "".join(c if c in USERNAME_CHARS else "-" for c in local)[:40]
        username = (base.strip("-") or "user")[:40] + "-" + secrets.token_hex(3)
        return self.identity.create_user(
            session,
            username=username,
            email=email,
            display_name=str(claims.get("name") or "")[:200],
            actor_id=None,
        )


def _verified_email(claims: Mapping[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        return None
    return email.strip().lower() or None


def _unknown_message(claims: Mapping[str, Any], email: str | None) -> str:
    if claims.get("email") and email is None:
        return (
            "Your identity provider has not verified your email address, so Airlock cannot "
            "match it to an account. Verify it there, or ask an administrator to link you."
        )
    return (
        "You signed in, but no Airlock account belongs to this identity. Ask an administrator "
        "of your organization to create one with your email address."
    )
