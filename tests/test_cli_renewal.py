"""The researcher's CLI renews a grant in its window against a live gateway."""

from __future__ import annotations

import json
from datetime import timedelta

from gateway.db.models import Grant, Role
from tests.factories import World
from tests.test_cli_publisher import live, run

__all__ = ["live"]  # the live-gateway fixture, shared with the publisher CLI's tests


def test_grants_renew_in_the_window_and_refused_before_it(live: str, world: World) -> None:
    publisher = world.actor("alice", org="acme", role=Role.PUBLISHER)
    rob = world.actor("rob")
    model = world.model(publisher)
    world.kyc(world.actor("rita", org="acme", role=Role.REVIEWER), rob)
    grant = world.grant(rob, model)
    code, output = run(live, rob.token, "grants", "renew", str(grant.id))
    assert code == 1 and "error 409" in output and "can be renewed from" in output
    with world.airlock.db.session() as s:
        row = s.get_one(Grant, grant.id)
        assert row.expires_at is not None
        row.granted_at, row.expires_at = (
            t - timedelta(days=25) for t in (row.granted_at, row.expires_at)
        )
        s.commit()
    code, output = run(live, rob.token, "grants", "renew", str(grant.id))
    assert code == 0, output
    renewal = json.loads(output)
    assert renewal["status"] == "approved" and renewal["grant"]["id"] != grant.id
