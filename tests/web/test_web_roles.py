"""The foundation later audiences build on: a page for one role, its navigation entry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from gateway.app import create_app
from gateway.db.models import Role
from gateway.services.container import Airlock
from gateway.web.pages import NAV, NavItem, audience_blueprint, page, require_role
from tests.factories import World
from tests.web.webkit import sign_in


@pytest.fixture
def reviewer_app(airlock: Airlock) -> Iterator[Flask]:
    bp = audience_blueprint("web_test_review")

    @bp.get("/test-review")
    def queue() -> object:
        principal = require_role(Role.REVIEWER)
        return page("error.html", title="Review queue", detail=principal.username or "")

    item = NavItem("Review queue", "web_test_review.queue", frozenset({Role.REVIEWER}))
    NAV.append(item)
    try:
        app = create_app(airlock=airlock)
        app.register_blueprint(bp)
        yield app
    finally:
        NAV.remove(item)


def test_a_role_page_refuses_other_users(
    reviewer_app: Flask, airlock: Airlock, world: World
) -> None:
    world.actor("rita", org="acme", role=Role.REVIEWER)
    world.actor("rob")
    anonymous = reviewer_app.test_client()
    assert anonymous.get("/ui/test-review").status_code == 302
    rob = reviewer_app.test_client()
    sign_in(rob, airlock, "rob")
    refused = rob.get("/ui/test-review")
    assert refused.status_code == 403 and "for the reviewer role" in refused.text
    assert "Review queue" not in rob.get("/ui/").text  # no navigation entry either
    rita = reviewer_app.test_client()
    sign_in(rita, airlock, "rita")
    assert rita.get("/ui/test-review").status_code == 200
    assert 'href="/ui/test-review"' in rita.get("/ui/").text
