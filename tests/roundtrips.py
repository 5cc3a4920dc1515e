"""Counting what a request sends the database server, one entry a round trip, on either engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine
from sqlalchemy import event as sqla_event


@contextmanager
def server_round_trips(engine: Engine, into: Path) -> Iterator[Callable[[], list[str]]]:
    """What each new connection of `engine` sends the database server, one entry a round trip:
    SQLite's traced statements (transaction ends included), or the libpq trace's client
    messages that wait for an answer (a simple query, or an extended query's Sync) on
    PostgreSQL. Both see the statements `gateway.db.prepared` runs on the DBAPI cursor.
    Yields a function returning what was sent since its last call."""
    sent: list[str] = []
    traced: list[tuple[Any, IO[str]]] = []

    def connected(dbapi_connection: Any, _record: object) -> None:
        if engine.dialect.name == "sqlite":  # a trigger's programs trace their statement again
            dbapi_connection.set_trace_callback(
                lambda sql: None if sent and sent[-1] == sql else sent.append(sql)
            )
        else:
            file = into.open("a")
            traced.append((dbapi_connection.pgconn, file))
            dbapi_connection.pgconn.trace(file.fileno())

    def take() -> list[str]:
        for pgconn, _ in traced:  # libpq flushes its trace when it stops
            pgconn.untrace()
        if traced:
            sent.extend(_waited_for(into.read_text()))
            into.write_text("")
            for pgconn, file in traced:
                pgconn.trace(file.fileno())
        found = sent[:]
        del sent[:]
        return found

    engine.dispose()
    sqla_event.listen(engine, "connect", connected)
    try:
        yield take
    finally:
        for pgconn, file in traced:
            pgconn.untrace()
            file.close()
        sqla_event.remove(engine, "connect", connected)
        engine.dispose()


def _waited_for(trace: str) -> list[str]:
    """The client messages of a libpq trace that wait for the server: Query and Sync."""
    found = []
    for line in trace.splitlines():
        parts = line.split("\t")
        if len(parts) > 3 and parts[1] == "F" and parts[3] in ("Query", "Sync"):
            found.append(" ".join(parts[3:5]))
    return found
