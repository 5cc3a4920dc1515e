"""Sign-in pages: OpenID Connect single sign-on, one-time login links, sign-out."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import requests
from authlib.integrations.base_client import OAuthError  # type: ignore[import-untyped]
from authlib.integrations.flask_client import OAuth  # type: ignore[import-untyped]
from flask import current_app, g, redirect, request, url_for
from joserfc.errors import JoseError
from werkzeug.wrappers import Response

from gateway.api.context import airlock, base_url, db
from gateway.errors import InvalidCredentials
from gateway.services.principal import ANONYMOUS
from gateway.settings import Settings
from gateway.web.pages import (
    audience_blueprint,
    cookie_name,
    current_principal,
    current_session,
    page,
    safe_next,
    secure_cookies,
    web_auth,
)

bp = audience_blueprint("web_auth", public=True)
log = logging.getLogger(__name__)
PROVIDER = "sso"
INCOMPLETE_LINK = "This sign-in link is incomplete: copy the whole link from its message."
SIGN_IN_FAILED = (
    "Signing in through your identity provider failed, and nothing was signed in. "
    "Start again from the sign-in page."
)


def register_oidc(oauth: OAuth, settings: Settings) -> bool:
    """Register the configured OpenID provider with Authlib's Flask client (discovery, PKCE)."""
    if not (settings.oidc_issuer and settings.oidc_client_id):
        return False
    oauth.register(
        PROVIDER,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256"},
    )
    return True


def _client() -> Any:
    oauth: OAuth = current_app.extensions["airlock_oauth"]
    return oauth.create_client(PROVIDER)


@bp.get("/login")
def login() -> Any:
    """The sign-in page: single sign-on when configured, and how login links work."""
    target = safe_next(request.args.get("next"))
    if current_principal().authenticated:
        return redirect(target)
    return page("login.html", sso=_client() is not None, next=target)


@bp.get("/login/link")
def login_link() -> Any:
    """The page a one-time login link opens: one button that signs this browser in.

    Opening the link spends nothing: mail security scanners and chat link previews fetch
    links before people click them, and a link spent on a GET would be gone by then. The
    secret rides in the query string, which the access log never writes, and in the page's
    form; the page is not cached and sends no referrer."""
    token = request.args.get("token", "")
    if not token:
        return page("signin_failed.html", 400, title="Sign-in link refused", detail=INCOMPLETE_LINK)
    response = current_app.make_response(page("login_link.html", token=token))
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.post("/login/link")
def login_link_redeem() -> Any:
    """Redeem a one-time login link (its secret posted by the link's page) and sign this
    browser in. No CSRF token: there is no session yet; the link's secret is the proof."""
    try:
        user_id = web_auth().redeem_link(db(), request.form.get("token", ""))
    except InvalidCredentials as exc:
        return page("signin_failed.html", 400, title="Sign-in link refused", detail=exc.detail)
    return _signed_in(user_id, "link", url_for("web_researcher.home"))


@bp.get("/login/sso")
def sso_start() -> Any:
    """Send the browser to the identity provider, with state, nonce and a PKCE challenge."""
    client = _client()
    if client is None:
        return page("error.html", 404, title="Not configured", detail="No single sign-on here.")
    redirect_uri = base_url() + url_for("web_auth.sso_callback")
    try:
        started = client.create_authorization_url(redirect_uri)
    except (OAuthError, requests.RequestException, ValueError, KeyError, RuntimeError) as exc:
        log.warning("OIDC discovery failed: %s", type(exc).__name__)
        detail = "The identity provider cannot be reached; try again shortly."
        return page("signin_failed.html", 503, title="Sign-in unavailable", detail=detail)
    pending = {
        "state": started["state"],
        "nonce": started["nonce"],
        "code_verifier": started["code_verifier"],
        "redirect_uri": redirect_uri,
        "next": safe_next(request.args.get("next")),
    }
    sid = web_auth().start(db(), user_id=None, method=None, data={"oidc": pending})
    response = redirect(started["url"])
    _set_cookie(response, sid, max_age=600)
    return response


@bp.get("/login/sso/callback")
def sso_callback() -> Any:
    """Finish single sign-on: check state, exchange the code, validate the ID token."""
    found = current_session()
    pending = found.data.get("oidc") if found is not None else None
    state = request.args.get("state", "")
    if pending is not None and found is not None:
        web_auth().end(db(), found.id)  # the pending state is spent, whatever happens next
    if not pending or not hmac.compare_digest(str(pending["state"]), state):
        detail = "The sign-in response does not belong to this browser."
        return _failed("state", detail, clear=pending is not None)
    if request.args.get("error"):
        return _failed("provider", "The identity provider refused the sign-in.")
    try:
        claims = _validated_claims(pending)
    except (OAuthError, JoseError, requests.RequestException, ValueError, KeyError) as exc:
        return _failed(type(exc).__name__, SIGN_IN_FAILED)
    settings = airlock().settings
    assert settings.oidc_issuer is not None
    user_id = web_auth().match_oidc(
        db(),
        issuer=settings.oidc_issuer,
        claims=claims,
        allow_signup=settings.oidc_allow_signup,
    )
    target = str(pending.get("next") or "")
    return _signed_in(user_id, "oidc", target, issuer=settings.oidc_issuer)


def _validated_claims(pending: dict[str, Any]) -> dict[str, Any]:
    client = _client()
    metadata = client.load_server_metadata()
    if metadata.get("issuer") != airlock().settings.oidc_issuer:
        raise ValueError("the discovery document names another issuer")
    token = client.fetch_access_token(
        redirect_uri=pending["redirect_uri"],
        code=request.args.get("code", ""),
        code_verifier=pending["code_verifier"],
    )
    if "id_token" not in token:
        raise ValueError("the provider returned no ID token")
    claims = client.parse_id_token(token, nonce=pending["nonce"], leeway=30)
    return dict(claims)


def _failed(why: str, detail: str, *, clear: bool = True) -> Any:
    """Refuse the sign-in; `clear` drops the spent pending session's cookie (a signed-in
    browser hit by a stray callback keeps its session)."""
    log.warning("OIDC sign-in refused: %s", why)
    response = current_app.make_response(
        page("signin_failed.html", 400, flashes=False, title="Sign-in refused", detail=detail)
    )
    if clear:
        response.delete_cookie(cookie_name(), path="/", secure=secure_cookies(), samesite="Lax")
    return response


def _signed_in(user_id: int, method: str, target: str, *, issuer: str | None = None) -> Response:
    """A fresh session id for the signed-in user (never the pre-sign-in one)."""
    previous = current_session()
    if previous is not None:
        web_auth().end(db(), previous.id)
    sid = web_auth().start(db(), user_id=user_id, method=method, issuer=issuer)
    response = redirect(safe_next(target))
    _set_cookie(response, sid, max_age=int(web_auth().lifetime.total_seconds()))
    return response


def _set_cookie(response: Response, sid: str, *, max_age: int) -> None:
    response.set_cookie(
        cookie_name(),
        sid,
        max_age=max_age,
        path="/",
        secure=secure_cookies(),
        httponly=True,
        samesite="Lax",
    )


@bp.post("/logout")
def logout() -> Any:
    """Sign this browser out."""
    found = current_session()
    if found is not None:
        web_auth().end(db(), found.id)
    return _signed_out("You are signed out in this browser.")


@bp.post("/logout/everywhere")
def logout_everywhere() -> Any:
    """Sign the user out of every browser at once."""
    user_id = current_principal().require_user()
    ended = web_auth().end_all(db(), user_id)
    return _signed_out(f"You are signed out everywhere ({ended} sessions ended).")


def _signed_out(message: str) -> Response:
    g.principal, g.web_sid, g.web_session = ANONYMOUS, None, None
    response = current_app.make_response(page("signed_out.html", message=message))
    response.delete_cookie(cookie_name(), path="/", secure=secure_cookies(), samesite="Lax")
    return response
