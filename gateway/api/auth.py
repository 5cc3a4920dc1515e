"""Bearer-token authentication (RFC 6750's Authorization header form)."""

from __future__ import annotations

from collections.abc import Callable

from flask import request

from gateway.api.context import unproxied
from gateway.errors import InvalidCredentials
from gateway.services.principal import ANONYMOUS, Principal

INVALID = "Invalid credentials in Authorization header"


class TokenAuthenticator:
    """Resolves the current request's principal; a bad token is an error, none is anonymous."""

    def __init__(self, authenticate: Callable[[str], Principal | None]) -> None:
        self._authenticate = authenticate

    def current(self) -> Principal:
        """The caller: ANONYMOUS without an Authorization header, else a validated token."""
        header = unproxied(request).environ.get("HTTP_AUTHORIZATION")
        if not header:
            return ANONYMOUS
        return self.validate(header)

    def validate(self, header: str) -> Principal:
        """The principal of an `Authorization: Bearer <token>` header, else InvalidCredentials.

        Parsed as Authlib's resource protector parses it (RFC 6749 section 7.1: the type, case
        insensitive, then whitespace, then the token): another scheme, a missing token and an
        unknown, expired or revoked one are all the same 401.
        """
        parts = header.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise InvalidCredentials(INVALID)
        principal = self._authenticate(parts[1])
        if principal is None:
            raise InvalidCredentials(INVALID)
        return principal
