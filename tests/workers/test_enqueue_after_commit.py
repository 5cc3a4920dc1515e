"""Tasks enqueued in a session are sent after each commit it makes, never after a rollback."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from gateway.tasks import enqueue_after_commit


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, name: str, kwargs: dict[str, Any]) -> None:
        self.sent.append(name)


def test_a_long_lived_session_sends_what_each_commit_enqueued() -> None:
    """The demo's seeding session: a revision's vetting, then a grant's provisioning."""
    runner, engine = Recorder(), create_engine("sqlite://")
    with Session(engine) as session:
        for name in ("vet", "provision", "again"):
            session.connection()
            enqueue_after_commit(session, runner, name, {})
            session.commit()
        session.connection()
        enqueue_after_commit(session, runner, "dropped", {})
        session.rollback()
        session.connection()
        session.commit()
    assert runner.sent == ["vet", "provision", "again"]
    engine.dispose()
