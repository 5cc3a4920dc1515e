"""Web pages for each audience: server-rendered, no inline script or style, one blueprint each.

They call the same services as /api/v1, so a permission holds the same way in the browser.
"""

from __future__ import annotations

from authlib.integrations.flask_client import OAuth  # type: ignore[import-untyped]
from flask import Flask

from gateway.services.container import Airlock
from gateway.services.web_auth import WebAuthService
from gateway.web import auth, compliance, publisher, researcher
from gateway.web.pages import secure_headers

WEB_BLUEPRINTS = (
    auth.bp,  # /ui/login, /ui/login/sso, /ui/login/link/<token>, /ui/logout[/everywhere]
    researcher.bp,  # /ui/: models and tiers, requests, grants, API tokens, identity; /ui/static
    compliance.bp,  # /ui/compliance/: audit search, events, chain, reports, denials, holds
    publisher.bp,  # /ui/manage/...: models, policy editor, grants, stage, freeze; /ui/review
)


def init_web(app: Flask, services: Airlock) -> None:
    """Bind the web's sign-in service, OpenID client and response headers to `app`."""
    settings = services.settings
    app.extensions["airlock_web"] = WebAuthService.from_settings(
        settings, identity=services.identity
    )
    oauth = OAuth(app)
    auth.register_oidc(oauth, settings)
    app.extensions["airlock_oauth"] = oauth
    app.after_request(secure_headers)
