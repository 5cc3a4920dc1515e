"""A small OpenID Connect provider on loopback, built from Authlib's own server components.

It stands in for an institution's identity provider and speaks the real wire format:
discovery document, JWKS, the authorization code flow with PKCE (S256), client_secret_basic at
the token endpoint, and RS256-signed ID tokens. The authorization endpoint consents at once as
`provider.user`. `provider.mode` makes it misbehave in one way for negative tests.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify
from joserfc.jwk import RSAKey

from tests.ports import serving

CLIENT_ID = "airlock-web"
CLIENT_SECRET = "s3cret-for-tests"
KID = "test-key-1"


@dataclass
class Client(ClientMixin):
    """The one registered client: Airlock."""

    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return CLIENT_ID

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "email", "profile"}
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, CLIENT_SECRET)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    """An issued authorization code and what it was issued for."""

    code: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    user: dict[str, Any]
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class Provider:
    """The provider's state: keys, codes, the consenting user and the misbehaviour mode."""

    def __init__(self) -> None:
        self.key, self.other_key = _keys()
        self.codes: dict[str, Code] = {}
        self.client = Client([])
        self.user: dict[str, Any] = {}
        self.mode = "honest"
        self.issuer = ""

    def sign_in_as(self, sub: str, email: str, *, verified: bool = True) -> None:
        """Who consents at the authorization endpoint next."""
        self.user = {"sub": sub, "email": email, "email_verified": verified, "name": sub}


@functools.cache
def _keys() -> tuple[RSAKey, RSAKey]:
    """The signing key and an impostor's key under the same kid (made once per process)."""
    return (
        RSAKey.generate_key(2048, parameters={"kid": KID, "use": "sig"}, private=True),
        RSAKey.generate_key(2048, parameters={"kid": KID}, private=True),
    )


def _grant_for(provider: Provider) -> type[grants.AuthorizationCodeGrant]:
    class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]

        def save_authorization_code(self, code: str, request: Any) -> None:
            data = request.payload.data
            provider.codes[code] = Code(
                code=code,
                redirect_uri=request.payload.redirect_uri,
                scope=request.payload.scope,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                user=dict(request.user),
            )

        def query_authorization_code(self, code: str, client: Any) -> Code | None:
            return provider.codes.get(code)

        def delete_authorization_code(self, authorization_code: Code) -> None:
            provider.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
            return authorization_code.user

    return CodeGrant


def _openid_for(provider: Provider) -> OpenIDCode:
    class IdTokens(OpenIDCode):  # type: ignore[misc]
        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return any(c.nonce == nonce for c in provider.codes.values())

        def resolve_client_private_key(self, client: Any) -> RSAKey:
            return provider.other_key if provider.mode == "wrong_signature" else provider.key

        def get_client_algorithm(self, client: Any) -> str:
            return "RS256"

        def get_encode_header(self, client: Any) -> dict[str, str]:
            return {"alg": "RS256", "kid": KID}

        def get_client_claims(self, client: Any) -> dict[str, Any]:
            now = int(time.time())
            aud = "someone-else" if provider.mode == "wrong_audience" else CLIENT_ID
            claims: dict[str, Any] = {"iss": provider.issuer, "aud": [aud]}
            if provider.mode == "expired":
                claims.update(iat=now - 7200, exp=now - 3600)
            return claims

        def get_authorization_code_claims(self, authorization_code: Code) -> dict[str, Any]:
            claims: dict[str, Any] = super().get_authorization_code_claims(authorization_code)
            if provider.mode == "no_nonce":
                claims.pop("nonce", None)
            elif provider.mode == "wrong_nonce":
                claims["nonce"] = "not-the-nonce-airlock-sent"
            return claims

        def generate_user_info(self, user: dict[str, Any], scope: str) -> UserInfo:
            return UserInfo(user)

    return IdTokens(require_nonce=True)


def build_app(provider: Provider) -> Flask:
    """The provider's Flask app."""
    app = Flask("oidc-provider")
    server = AuthorizationServer(
        app,
        query_client=lambda cid: provider.client if cid == CLIENT_ID else None,
        save_token=lambda token, request: None,
    )
    extensions = [CodeChallenge(required=True), _openid_for(provider)]
    server.register_grant(_grant_for(provider), extensions)

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Any:
        base = provider.issuer
        return jsonify(
            issuer=base,
            authorization_endpoint=f"{base}/authorize",
            token_endpoint=f"{base}/token",
            jwks_uri=f"{base}/jwks",
            response_types_supported=["code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            code_challenge_methods_supported=["S256"],
            token_endpoint_auth_methods_supported=["client_secret_basic"],
            scopes_supported=["openid", "email", "profile"],
        )

    @app.get("/jwks")
    def jwks() -> Any:
        return jsonify(keys=[provider.key.as_dict(private=False)])

    @app.get("/authorize")
    def authorize() -> Any:
        grant = server.get_consent_grant(end_user=provider.user)
        return server.create_authorization_response(grant=grant, grant_user=provider.user)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    return app


@contextmanager
def running_provider(redirect_uri: str) -> Iterator[Provider]:
    """A provider serving on a free loopback port for the duration of the block."""
    provider = Provider()
    provider.client.redirect_uris.append(redirect_uri)
    with serving(build_app(provider)) as url:
        provider.issuer = url
        yield provider
