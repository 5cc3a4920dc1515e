"""The principal a request acts as: user, token scopes and organization roles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.auth.tokens import Scope
from gateway.db.models import Role
from gateway.errors import AuthenticationRequired, Forbidden

ROLE_SCOPES: Mapping[Role, frozenset[Scope]] = {
    Role.OWNER: frozenset(Scope),
    Role.PUBLISHER: frozenset({Scope.MODELS_WRITE, Scope.POLICIES_WRITE, Scope.GRANTS_MANAGE}),
    Role.REVIEWER: frozenset({Scope.REQUESTS_REVIEW, Scope.KYC_RECORD, Scope.GRANTS_MANAGE}),
    Role.COMPLIANCE: frozenset({Scope.AUDIT_READ}),
}
PERSONAL_SCOPES = frozenset({Scope.ACCESS_REQUEST, Scope.MODELS_READ, Scope.TOKENS_MANAGE})


@dataclass(frozen=True)
class Principal:
    """Who is calling; anonymous when `user_id` is None."""

    user_id: int | None = None
    username: str | None = None
    token_id: int | None = None
    scopes: frozenset[Scope] = frozenset()
    roles: Mapping[int, frozenset[Role]] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        """Whether a valid token identified the caller."""
        return self.user_id is not None

    def require_user(self) -> int:
        """The caller's user id, or AuthenticationRequired."""
        if self.user_id is None:
            raise AuthenticationRequired("this operation needs an API token")
        return self.user_id

    def require_scope(self, scope: Scope) -> int:
        """The user id if the token carries `scope`, else Forbidden."""
        user_id = self.require_user()
        if scope not in self.scopes:
            raise Forbidden(f"the token lacks the scope '{scope}'", extra={"scope": str(scope)})
        return user_id

    def require_org_scope(self, org_id: int, scope: Scope) -> int:
        """The user id if the token has `scope` and a role in `org_id` allows it."""
        user_id = self.require_scope(scope)
        if not any(scope in ROLE_SCOPES[role] for role in self.roles.get(org_id, ())):
            raise Forbidden(
                f"no role in this organization permits '{scope}'", extra={"scope": str(scope)}
            )
        return user_id

    def is_member(self, org_id: int) -> bool:
        """Whether the caller holds any role in `org_id`."""
        return bool(self.roles.get(org_id))

    def orgs_with_scope(self, scope: Scope) -> set[int]:
        """Organizations where the caller's roles and token allow `scope`."""
        if scope not in self.scopes:
            return set()
        return {o for o, rs in self.roles.items() if any(scope in ROLE_SCOPES[r] for r in rs)}


ANONYMOUS = Principal()
