"""What every web page shares: the browser session, CSRF, security headers, rendering, errors.

A blueprint made with `audience_blueprint` gets all of it; an audience adds its pages and its
navigation entries (`NAV`) and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from gateway.api.context import airlock, db
from gateway.api.errors import status_of
from gateway.db.models import Role
from gateway.errors import AirlockError, AuthenticationRequired, Forbidden
from gateway.services.principal import ANONYMOUS, Principal
from gateway.services.web_auth import ActiveSession, WebAuthService

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
CSRF_FIELD = "csrf_token"
PAGE_SIZE = 50
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NavItem:
    """A navigation link, shown to anyone (no roles) or to holders of one of `roles`."""

    label: str
    endpoint: str
    roles: frozenset[Role] = frozenset()


NAV: list[NavItem] = []  # audiences append their entries when their module loads


class CsrfFailure(AirlockError):
    """A form came without the session's CSRF token."""

    code = "csrf_failed"
    title = "The form has expired"


def web_auth() -> WebAuthService:
    """The sign-in service bound to the current app."""
    return current_app.extensions["airlock_web"]  # type: ignore[no-any-return]


def cookie_name() -> str:
    """`__Host-` prefixed (Secure, host-only, path /) when the public URL is https."""
    return "__Host-airlock" if secure_cookies() else "airlock_session"


def secure_cookies() -> bool:
    """Whether the deployment is served over https (then cookies are Secure)."""
    url = airlock().settings.public_url or ""
    return url.startswith("https://") or request.is_secure


def audience_blueprint(name: str, *, public: bool = False, **kwargs: Any) -> Blueprint:
    """A web blueprint under /ui with sessions, CSRF, headers and HTML errors installed;
    its pages need a signed-in user unless `public`."""
    bp = Blueprint(name, __name__, url_prefix="/ui", **kwargs)
    bp.before_request(_load_session)
    bp.before_request(_check_csrf)
    if not public:
        bp.before_request(_require_sign_in)
    bp.register_error_handler(AirlockError, _domain_error)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _unexpected)
    return bp


def _load_session() -> None:
    plaintext = request.cookies.get(cookie_name())
    found = web_auth().resume(db(), plaintext)
    g.web_session, g.web_sid = (found, plaintext) if found else (None, None)
    g.principal = (
        web_auth().principal(db(), found.user_id)
        if found is not None and found.user_id is not None
        else ANONYMOUS
    )


# POSTs made before any session exists, which carry their own proof (a login link's secret).
CSRF_EXEMPT = frozenset({"web_auth.login_link_redeem"})


def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS") or request.endpoint in CSRF_EXEMPT:
        return
    sid = g.get("web_sid")
    if not sid or not web_auth().csrf_valid(sid, request.form.get(CSRF_FIELD)):
        raise CsrfFailure(
            "This form is missing its security token or it no longer matches your session "
            "(perhaps you signed out in another tab). Go back, reload the page and try again."
        )


def _require_sign_in() -> Response | None:
    if current_principal().authenticated:
        return None
    return redirect(url_for("web_auth.login", next=request.full_path.rstrip("?")))


def secure_headers(response: Response) -> Response:
    """The web's security headers, on every /ui response (errors and unknown paths too)."""
    if request.path == "/ui" or request.path.startswith("/ui/"):
        stricter = response.headers.get("Referrer-Policy") == "no-referrer"
        response.headers.update(SECURITY_HEADERS)
        if stricter:  # a page with a secret in its URL sends no referrer at all
            response.headers["Referrer-Policy"] = "no-referrer"
    return response


def current_principal() -> Principal:
    """The signed-in user as a principal (ANONYMOUS when signed out)."""
    found: Principal = g.get("principal", ANONYMOUS)
    return found


def current_session() -> ActiveSession | None:
    """The browser's live session, if any."""
    found: ActiveSession | None = g.get("web_session")
    return found


def has_role(principal: Principal, roles: frozenset[Role]) -> bool:
    """Whether the principal holds any of `roles` in some organization (owners hold all)."""
    held = {role for rs in principal.roles.values() for role in rs}
    return bool(held & (roles | {Role.OWNER}))


def require_role(*roles: Role) -> Principal:
    """The signed-in principal if it holds one of `roles` somewhere; else the 403 page. The
    services still check each action's organization and scope."""
    principal = current_principal()
    principal.require_user()
    if not has_role(principal, frozenset(roles)):
        raise Forbidden(f"this page is for the {' or '.join(sorted(roles))} role")
    return principal


def flash(message: str, category: str = "info") -> None:
    """Show `message` on the next page this browser renders."""
    found = current_session()
    if found is None:
        return
    messages = [*found.data.get("flash", []), [category, message[:500]]]
    data = {**found.data, "flash": messages[-5:]}
    web_auth().save_data(db(), found.id, data)
    g.web_session = ActiveSession(found.id, found.user_id, data, found.expires_at)


def _take_flashes() -> list[tuple[str, str]]:
    found = current_session()
    if found is None or not found.data.get("flash"):
        return []
    data = {k: v for k, v in found.data.items() if k != "flash"}
    web_auth().save_data(db(), found.id, data)
    g.web_session = ActiveSession(found.id, found.user_id, data, found.expires_at)
    return [(str(c), str(m)) for c, m in found.data["flash"]]


def page(
    template: str, status: int = 200, *, flashes: bool = True, **context: Any
) -> tuple[str, int]:
    """Render a page with the layout's context: user, navigation, CSRF token, messages."""
    principal = current_principal()
    sid = g.get("web_sid")
    html = render_template(
        template,
        me=principal,
        nav=_nav(principal),
        csrf_field=CSRF_FIELD,
        csrf_token=web_auth().csrf_token(sid) if sid else "",
        flashes=_take_flashes() if flashes else [],
        **context,
    )
    return html, status


def _nav(principal: Principal) -> list[NavItem]:
    if not principal.authenticated:
        return []
    known = current_app.view_functions
    return [
        item
        for item in NAV
        if item.endpoint in known and (not item.roles or has_role(principal, item.roles))
    ]


def safe_next(target: str | None) -> str:
    """A same-site path to return to after sign-in (never another host)."""
    if not target or not target.startswith("/ui") or target.startswith("//"):
        return url_for("web_researcher.home")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return url_for("web_researcher.home")
    return target


def _domain_error(exc: AirlockError) -> tuple[str, int] | Response:
    if isinstance(exc, AuthenticationRequired):
        return redirect(url_for("web_auth.login"))
    status = 400 if isinstance(exc, CsrfFailure) else status_of(exc)
    return page("error.html", status, title=exc.title, detail=exc.detail)


def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    return page("error.html", status, title=exc.name, detail=exc.description or exc.name)


def _unexpected(exc: Exception) -> tuple[str, int]:
    """Never a traceback: the database down is 503 (nothing was authorized), else 500."""
    if isinstance(exc, OperationalError):
        log.error("database unavailable: %s", type(exc).__name__)
        detail = "The database is unavailable; nothing was changed. Try again shortly."
        return page("error.html", 503, flashes=False, title="Unavailable", detail=detail)
    log.exception("unexpected error on %s %s", request.method, request.path)
    detail = "An unexpected error occurred; nothing more is shown here for safety."
    return page("error.html", 500, flashes=False, title="Internal error", detail=detail)
