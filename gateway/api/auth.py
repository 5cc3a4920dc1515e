"""Bearer-token authentication through Authlib's resource-protection machinery."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import ResourceProtector, TokenMixin  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.errors import OAuth2Error  # type: ignore[import-untyped]
from authlib.oauth2.rfc6750 import BearerTokenValidator  # type: ignore[import-untyped]
from flask import request
from werkzeug.datastructures import Headers

from gateway.api.context import unproxied
from gateway.errors import InvalidCredentials
from gateway.services.principal import ANONYMOUS, Principal

INVALID = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class AirlockToken(TokenMixin):  # type: ignore[misc]
    """An authenticated token as Authlib sees it; expiry and revocation were checked on lookup."""

    principal: Principal

    def check_client(self, client: object) -> bool:
        return False

    def get_scope(self) -> str:
        return " ".join(sorted(self.principal.scopes))

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False


class AirlockBearerValidator(BearerTokenValidator):  # type: ignore[misc]
    """Looks `alk_` tokens up by digest; unknown, expired and revoked ones are all just invalid."""

    def __init__(self, authenticate: Callable[[str], Principal | None]) -> None:
        super().__init__(realm="airlock")
        self._authenticate = authenticate

    def authenticate_token(self, token_string: str) -> AirlockToken | None:
        principal = self._authenticate(token_string)
        return AirlockToken(principal) if principal is not None else None


@dataclass(frozen=True)
class _HeadersOnly:
    """The part of a request Authlib's protector reads (never the body)."""

    headers: Mapping[str, str] | Headers


class TokenAuthenticator:
    """Resolves the current request's principal; a bad token is an error, none is anonymous."""

    def __init__(self, authenticate: Callable[[str], Principal | None]) -> None:
        self.protector = ResourceProtector()
        self.protector.register_token_validator(AirlockBearerValidator(authenticate))

    def current(self) -> Principal:
        """The caller: ANONYMOUS without an Authorization header, else a validated token."""
        header = unproxied(request).environ.get("HTTP_AUTHORIZATION")
        if not header:
            return ANONYMOUS
        return self.validate(header)

    def validate(self, header: str) -> Principal:
        """The principal of an `Authorization: Bearer <token>` header, else InvalidCredentials
        (another scheme, a missing token and an unknown, expired or revoked one alike)."""
        try:
            token = self.protector.validate_request(None, _HeadersOnly({"Authorization": header}))
        except OAuth2Error as exc:
            raise InvalidCredentials(INVALID) from exc
        principal: Principal = token.principal
        return principal
