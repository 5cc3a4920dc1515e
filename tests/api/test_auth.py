"""Bearer headers go through Authlib's resource protector: the token string it accepts
reaches the lookup, every other header is the same 401."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from authlib.oauth2.rfc6749 import ResourceProtector  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.errors import OAuth2Error  # type: ignore[import-untyped]
from authlib.oauth2.rfc6750 import BearerTokenValidator  # type: ignore[import-untyped]

from gateway.api.auth import TokenAuthenticator
from gateway.errors import InvalidCredentials
from gateway.services.principal import Principal

TOKEN = "alk_" + "a" * 43
KNOWN = Principal(user_id=7, username="ann", token_id=3)
HEADERS = [
    f"Bearer {TOKEN}",
    f"bearer {TOKEN}",
    f"BEARER {TOKEN}",
    f"Bearer  {TOKEN}",
    f"Bearer\t{TOKEN}",
    f" Bearer {TOKEN}",
    f"Bearer {TOKEN} ",
    f"Bearer {TOKEN} extra",
    f"Bearer{TOKEN}",
    f"Token {TOKEN}",
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer ",
    "Bearer not-a-token",
    "alk_",
]


def _ours(header: str) -> str | None:
    """The token string our authenticator looks up for `header`, or None for a 401."""
    seen: list[str] = []

    def lookup(token: str) -> Principal | None:
        seen.append(token)
        return KNOWN if token == TOKEN else None

    try:
        assert TokenAuthenticator(lookup).validate(header) is KNOWN
    except InvalidCredentials:
        return None
    return seen[-1]


def _authlibs(header: str) -> str | None:
    """The token string Authlib's protector accepts for `header`, or None for an error."""
    seen: list[str] = []

    class Validator(BearerTokenValidator):  # type: ignore[misc]
        def authenticate_token(self, token_string: str) -> object | None:
            seen.append(token_string)
            if token_string != TOKEN:
                return None
            return SimpleNamespace(
                is_expired=lambda: False, is_revoked=lambda: False, get_scope=lambda: ""
            )

    protector = ResourceProtector()
    protector.register_token_validator(Validator())
    try:
        protector.validate_request(None, SimpleNamespace(headers={"Authorization": header}))
    except OAuth2Error:
        return None
    return seen[-1]


@pytest.mark.parametrize("header", HEADERS)
def test_the_header_is_parsed_as_authlib_parses_it(header: str) -> None:
    assert _ours(header) == _authlibs(header)


def test_only_the_known_token_is_accepted() -> None:
    accepted = [h for h in HEADERS if _ours(h) is not None]
    assert f"Bearer {TOKEN}" in accepted and f"bearer {TOKEN}" in accepted
    assert "Basic dXNlcjpwYXNz" not in accepted and f"Token {TOKEN}" not in accepted
