"""The hot-path statements run on the DBAPI cursor: the same rows as SQLAlchemy, its errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import bindparam, column, select, table, text
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.auth.tokens import token_digest
from gateway.db.models import ApiToken, DownloadTicket, Grant, Revision, RevisionFile
from gateway.db.prepared import Prepared
from gateway.services.container import Airlock
from gateway.services.rows import (
    MODEL_ACCESS,
    TOKEN_BY_DIGEST,
    insert_ticket,
    load_access,
    load_granted_access,
    load_token,
)
from tests.api.hubkit import REPO, make_hub
from tests.factories import World
from tests.pg import on_both_engines


def _both(airlock: Airlock, statement: Any, params: dict[str, Any]) -> tuple[list, list]:  # type: ignore[type-arg]
    with airlock.db.session() as s:
        conn = s.connection()
        fast = [tuple(r) for r in Prepared(statement).all(conn, params)]
        usual = [tuple(r) for r in conn.execute(statement, params).all()]
    return fast, usual


@on_both_engines
def test_hot_reads_give_the_rows_sqlalchemy_gives(
    client: FlaskClient, world: World, airlock: Airlock
) -> None:
    hub = make_hub(client, world)
    digest = token_digest(hub.researcher.token)
    fast, usual = _both(airlock, TOKEN_BY_DIGEST, {"digest": digest})
    assert fast == usual and len(fast) == 1
    expires = fast[0][4]
    assert expires.tzinfo is not None and isinstance(fast[0][3], list)  # processed types

    org, name = REPO.split("/")
    params = {"org": org, "name": name, "user_id": hub.researcher.user.id}
    fast, usual = _both(airlock, MODEL_ACCESS, params)
    assert fast == usual and len(fast) == 1
    fast, usual = _both(airlock, MODEL_ACCESS, {**params, "user_id": hub.outsider.user.id})
    assert fast == usual and fast[0][13] is None  # the model, no grant


@on_both_engines
def test_loaders_agree_with_the_orm(client: FlaskClient, world: World, airlock: Airlock) -> None:
    hub = make_hub(client, world)
    org, name = REPO.split("/")
    with airlock.db.session() as s:
        conn = s.connection()
        token = load_token(conn, token_digest(hub.researcher.token))
        entity = s.get_one(ApiToken, hub.researcher.principal.token_id)
        found = load_access(conn, org, name, hub.researcher.user.id)
        grant = s.get_one(Grant, hub.grant.id)
        head = s.get_one(Revision, found.model.head.id if found and found.model.head else 0)
        unknown = load_access(conn, org, "no-such-model", hub.researcher.user.id)
        granted = load_granted_access(conn, hub.researcher.user.id)
        ungranted = load_granted_access(conn, hub.outsider.user.id)
    assert token is not None and found is not None
    assert (token.id, token.digest, list(token.scopes), token.expires_at) == (
        entity.id,
        entity.digest,
        list(entity.scopes),
        entity.expires_at,
    )
    assert [(g.id, g.tier, g.expires_at) for g in found.grants] == [
        (grant.id, grant.tier, grant.expires_at)
    ]
    assert found.head_vetting == (head.vetting_status, head.vetting_override_at is not None)
    assert unknown is None
    assert granted == [found] and ungranted == []  # the batched read, as /v1/models makes it


@on_both_engines
def test_statements_expanded_at_run_time_take_sqlalchemys_path(
    client: FlaskClient, world: World, airlock: Airlock
) -> None:
    hub = make_hub(client, world)
    tokens = ApiToken.__table__.c
    expanding = select(tokens.id).where(tokens.id.in_(bindparam("ids", expanding=True)))
    fast, usual = _both(airlock, expanding, {"ids": [hub.researcher.principal.token_id, -1]})
    assert fast == usual == [(hub.researcher.principal.token_id,)]


@on_both_engines
def test_driver_errors_are_sqlalchemys_and_hide_parameters(airlock: Airlock) -> None:
    missing = (
        select(column("x"))
        .select_from(table("no_such_table"))
        .where(column("x") == bindparam("secret"))
    )
    with airlock.db.session() as s, pytest.raises(DBAPIError) as raised:
        Prepared(missing).all(s.connection(), {"secret": "alk_do-not-show"})
    assert "no_such_table" in str(raised.value)
    assert "alk_do-not-show" not in str(raised.value)


@pytest.mark.postgres
def test_a_dropped_connection_is_an_operational_error_and_invalidated(airlock: Airlock) -> None:
    """A 503 at the API (OperationalError), and the pool does not lend the dead connection."""
    statement = select(ApiToken.__table__.c.id).where(ApiToken.__table__.c.id == bindparam("id"))
    with airlock.db.session() as s:
        conn = s.connection()
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with airlock.db.engine.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as raised:
            Prepared(statement).all(conn, {"id": 1})
        assert raised.value.connection_invalidated
    with airlock.db.session() as s:  # the next session gets a live connection
        assert Prepared(statement).all(s.connection(), {"id": -1}) == []


@on_both_engines
def test_a_ticket_written_on_the_cursor_reads_back_through_the_orm(
    client: FlaskClient, world: World, airlock: Airlock
) -> None:
    hub = make_hub(client, world)
    issued = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    with airlock.db.session() as s:
        file_id = s.scalars(select(RevisionFile.id).limit(1)).one()
        values = {
            "grant_id": hub.grant.id,
            "file_id": file_id,
            "method": "GET",
            "issued_at": issued,
            "expires_at": issued + timedelta(minutes=5),
            "size": 2**40,
        }
        first = insert_ticket(s.connection(), values)
        second = insert_ticket(s.connection(), values)
        s.commit()
    with airlock.db.session() as s:
        ticket = s.get_one(DownloadTicket, second)
    assert second == first + 1
    assert (ticket.grant_id, ticket.issued_at, ticket.expires_at, ticket.size) == (
        hub.grant.id,
        issued,
        issued + timedelta(minutes=5),
        2**40,
    )
