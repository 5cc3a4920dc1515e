"""GET resolve on SQLite writes its ticket and audit event through the group commit: under
concurrent requests every answer matches what was committed, limits hold exactly, and the
audit chain stays whole."""

from __future__ import annotations

import threading
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select

from gateway.db.models import AuditEvent, DownloadTicket
from gateway.services.audit_log import AuditLogService
from tests.api.hubkit import REPO, Hub, bearer, make_hub, tuned_policy
from tests.factories import World

pytestmark = pytest.mark.sqlite

URL = f"/{REPO}/resolve/main/config.json"
THREADS, EACH = 8, 6


def concurrent_gets(app: Flask, hub: Hub) -> list[tuple[int, str]]:
    """THREADS threads, each with its own client, each sending EACH GETs: (status, Location)."""
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def work() -> None:
        client = app.test_client()
        start.wait()
        for _ in range(EACH):
            response = client.get(URL, headers=bearer(hub.researcher))
            with lock:
                answers.append((response.status_code, response.headers.get("Location", "")))

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == THREADS * EACH
    return answers


def written(hub: Hub) -> tuple[list[int], list[dict[str, object]]]:
    """The ticket ids and the download:issue payloads in the database."""
    with hub.world.airlock.db.session() as s:
        tickets = list(s.scalars(select(DownloadTicket.id).order_by(DownloadTicket.id)))
        issued = [
            e.payload
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "download:issue"))
        ]
        assert AuditLogService().verify(s).ok
    return tickets, issued


def test_every_redirect_is_a_committed_ticket_and_event(app: Flask, world: World) -> None:
    hub = make_hub(app.test_client(), world, policy=tuned_policy(downloads=1000))
    group = world.airlock.downloads.group
    assert group is not None
    jobs_before = group.jobs
    answers = concurrent_gets(app, hub)
    assert {status for status, _ in answers} == {302}
    urls = [dict(parse_qsl(urlsplit(location).query)) for _, location in answers]
    tickets, issued = written(hub)
    assert sorted(int(u["t"]) for u in urls) == tickets, "each redirect names its own ticket"
    assert sorted(p["ticket_id"] for p in issued) == tickets  # type: ignore[type-var]
    assert group.jobs - jobs_before >= THREADS * EACH
    for location in {loc for _, loc in answers[:3]}:
        parts = urlsplit(location)
        blob = hub.fetch(f"{parts.path}?{parts.query}")
        assert blob.status_code == 200


def test_a_daily_limit_holds_exactly_under_concurrent_gets(app: Flask, world: World) -> None:
    hub = make_hub(app.test_client(), world, policy=tuned_policy(downloads=10))
    answers = concurrent_gets(app, hub)
    statuses = [status for status, _ in answers]
    assert statuses.count(302) == 10
    # a quota that frees up in hours is a 403 GatedRepo (test_hub.py says why)
    assert statuses.count(403) == THREADS * EACH - 10
    tickets, issued = written(hub)
    assert len(tickets) == len(issued) == 10, "a refused GET leaves no ticket and no issue event"
    with world.airlock.db.session() as s:
        denials = s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "download:deny")
        )
    assert denials == THREADS * EACH - 10, "every refusal is audited"


def test_concurrent_download_leases_are_named_by_committed_tickets(
    app: Flask, world: World
) -> None:
    hub = make_hub(app.test_client(), world, policy=tuned_policy(downloads=1000, concurrent=3))
    answers = concurrent_gets(app, hub)
    granted = [loc for status, loc in answers if status == 302]
    assert len(granted) == 3, "three leases, whoever wins them"
    tickets, _ = written(hub)
    assert sorted(int(dict(parse_qsl(urlsplit(loc).query))["t"]) for loc in granted) == tickets
    for location in granted:  # finishing a download frees its lease for the next GET
        parts = urlsplit(location)
        assert hub.fetch(f"{parts.path}?{parts.query}").status_code == 200
    assert hub.get(URL, hub.researcher).status_code == 302


def test_a_revoked_grant_is_refused_on_the_next_get(app: Flask, world: World) -> None:
    hub = make_hub(app.test_client(), world, policy=tuned_policy(downloads=1000))
    assert hub.get(URL, hub.researcher).status_code == 302
    with world.airlock.db.session() as s:
        world.airlock.access.revoke_grant(
            s, principal=hub.reviewer.principal, grant_id=hub.grant.id, reason="test"
        )
    refused = hub.get(URL, hub.researcher)
    assert refused.status_code == 403
    tickets, issued = written(hub)
    assert len(tickets) == len(issued) == 1


def test_a_ticket_that_was_not_written_gives_its_charges_back(
    app: Flask, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit write fails after the limiter admitted the GET: the batch rolls back, and the
    download is not counted (one a day: the next GET still gets its ticket)."""
    hub = make_hub(app.test_client(), world, policy=tuned_policy(downloads=1, concurrent=1))
    audit, record = world.airlock.audit, world.airlock.audit.record
    failures = [RuntimeError("the disk is full")]

    def failing(into: object, action: object, **kw: object) -> None:
        if str(action) == "download:issue" and failures:
            raise failures.pop()
        record(into, action, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(audit, "record", failing)
    assert hub.get(URL, hub.researcher).status_code == 500
    assert not failures
    assert written(hub) == ([], [])
    assert hub.get(URL, hub.researcher).status_code == 302, "neither the day nor the lease kept"


@pytest.mark.parametrize("who", ["outsider", "anonymous"])
def test_a_get_without_a_grant_writes_no_ticket(app: Flask, world: World, who: str) -> None:
    hub = make_hub(app.test_client(), world, policy=tuned_policy(downloads=1000))
    actor = hub.outsider if who == "outsider" else None
    response = hub.get(URL, actor)
    assert response.status_code == (403 if actor else 401)
    assert response.headers["X-Error-Code"] == "GatedRepo"
    assert written(hub) == ([], [])
