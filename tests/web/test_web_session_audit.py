"""Sign-ins and sign-outs are audited: session:create, session:end and session:deny."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.audit.forward import ocsf_event
from gateway.db.models import AuditEvent, User, WebSession
from gateway.services.audit_log import PERSONAL_ACTIONS, AuditLogService
from gateway.services.container import Airlock
from tests.factories import World
from tests.pg import on_both_engines
from tests.web.webkit import csrf_of, login_link, redeem, sign_in


def _events(airlock: Airlock, prefix: str = "session:") -> list[AuditEvent]:
    with airlock.db.session() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        session.expunge_all()
    return [e for e in rows if e.action.startswith(prefix)]


def _user_id(airlock: Airlock, username: str) -> int:
    with airlock.db.session() as session:
        found = session.scalar(select(User.id).where(User.username == username))
    assert found is not None
    return found


def _chain_ok(airlock: Airlock) -> bool:
    with airlock.db.session() as session:
        return AuditLogService().verify(session).ok


@on_both_engines
def test_a_link_sign_in_writes_one_session_create_without_secrets(
    client: FlaskClient, airlock: Airlock, world: World
) -> None:
    world.actor("rob")
    link = login_link(airlock, "rob")
    response = redeem(client, link)
    assert response.status_code == 302
    secret = parse_qs(urlsplit(link).query)["token"][0]
    cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    [event] = _events(airlock)
    rob = _user_id(airlock, "rob")
    assert (event.action, event.actor_id, event.subject_user_id) == ("session:create", rob, rob)
    assert event.org_id is None and event.effect is None
    assert event.payload["method"] == "login_link" and "issuer" not in event.payload
    with airlock.db.session() as session:
        stored = session.scalars(select(WebSession.digest)).one()
    assert event.payload["session"] == stored.hex()[:12]
    text = json.dumps(event.payload)
    assert secret not in text and cookie not in text and stored.hex() not in text
    assert "session:create" in PERSONAL_ACTIONS
    assert ocsf_event(_as_row(event))["activity_id"] == 1
    assert _chain_ok(airlock)


@on_both_engines
def test_sign_out_and_everywhere_write_session_end_with_counts(
    app: Flask, airlock: Airlock, world: World
) -> None:
    world.actor("rob")
    laptop, phone, tablet = app.test_client(), app.test_client(), app.test_client()
    for browser in (laptop, phone, tablet):
        sign_in(browser, airlock, "rob")
    laptop.post("/ui/logout", data={"csrf_token": csrf_of(laptop)})
    phone.post("/ui/logout/everywhere", data={"csrf_token": csrf_of(phone)})
    ends = [e for e in _events(airlock) if e.action == "session:end"]
    assert [e.payload for e in ends] == [
        {"scope": "this", "ended": 1},
        {"scope": "everywhere", "ended": 2},
    ]
    rob = _user_id(airlock, "rob")
    assert {(e.actor_id, e.subject_user_id) for e in ends} == {(rob, rob)}
    assert ocsf_event(_as_row(ends[0]))["activity_id"] == 4
    assert _chain_ok(airlock)


@on_both_engines
def test_a_used_link_writes_session_deny_and_a_tampered_one_nothing(
    client: FlaskClient, app: Flask, airlock: Airlock, world: World
) -> None:
    world.actor("rob")
    link = login_link(airlock, "rob")
    assert redeem(client, link).status_code == 302
    again = redeem(app.test_client(), link)
    assert again.status_code == 400
    [deny] = [e for e in _events(airlock) if e.action == "session:deny"]
    rob = _user_id(airlock, "rob")
    assert (deny.subject_user_id, deny.effect) == (rob, "deny")
    assert deny.payload == {"method": "login_link", "reasons": [{"code": "login_link_used"}]}
    assert parse_qs(urlsplit(link).query)["token"][0] not in json.dumps(deny.payload)
    assert ocsf_event(_as_row(deny))["activity_id"] == 99
    assert redeem(app.test_client(), link + "x").status_code == 400
    assert len([e for e in _events(airlock) if e.action == "session:deny"]) == 1
    expired = login_link(airlock, "rob", ttl=timedelta(seconds=-1))
    assert redeem(app.test_client(), expired).status_code == 400
    codes = [e.payload["reasons"][0]["code"] for e in _events(airlock, "session:deny")]
    assert codes == ["login_link_used", "login_link_expired"]
    assert _chain_ok(airlock)


def _as_row(event: AuditEvent) -> dict[str, Any]:
    return {c.name: getattr(event, c.name) for c in AuditEvent.__table__.columns}
