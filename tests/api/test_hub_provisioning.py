"""Per-recipient copies on the Hub surface: 503 while provisioning, then the grant's own copy."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select, update
from werkzeug.test import TestResponse

from gateway.app import create_app
from gateway.db.models import (
    AuditEvent,
    DownloadTicket,
    Grant,
    Model,
    RevisionFile,
    StagedFile,
)
from gateway.services.container import Airlock, build_airlock
from gateway.services.provisioning import staged_key
from gateway.settings import Settings
from gateway.tasks import InProcessRunner, jobs
from gateway.tasks.catalog import PROVISION_TASK
from tests.api.hubkit import FILES, REPO, Hub, fresh_model, make_hub, sha256, tuned_policy
from tests.factories import World

PATH = "model.safetensors"
URL = f"/{REPO}/resolve/main/{PATH}"


class Broker:
    """A broker whose provisioning worker has not started yet; every other task runs at once."""

    def __init__(self) -> None:
        self.now = InProcessRunner()
        self.held: list[dict[str, Any]] = []

    def send(self, name: str, kwargs: dict[str, Any]) -> None:
        if name == PROVISION_TASK:
            self.held.append(kwargs)
        else:
            self.now.send(name, kwargs)


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def airlock(settings: Settings, broker: Broker) -> Iterator[Airlock]:
    """The deployment, its provisioning tasks held by the broker until a test runs them."""
    services = build_airlock(settings, runner=broker)
    for name, job in jobs.JOBS.items():
        broker.now.register(name, partial(job, services))
    yield services
    services.close()


@pytest.fixture
def hub(airlock: Airlock, world: World) -> Hub:
    client: FlaskClient = create_app(airlock=airlock).test_client()
    return make_hub(client, world, policy=tuned_policy(fingerprint=True))


def provision(hub: Hub, broker: Broker) -> None:
    """The provisioning worker starts and runs what was enqueued."""
    held, broker.held = broker.held, []
    for kwargs in held:
        jobs.provision_download(hub.world.airlock, **kwargs)


def location(response: TestResponse) -> str:
    assert response.status_code == 302, (response.status_code, response.headers)
    parts = urlsplit(response.headers["Location"])
    return f"{parts.path}?{parts.query}"


def with_query(url: str, **changes: str) -> str:
    path, _, query = url.partition("?")
    return f"{path}?{urlencode({**dict(parse_qsl(query)), **changes})}"


def file_id(hub: Hub, path: str = PATH) -> int:
    with hub.world.airlock.db.session() as s:
        found = s.scalar(select(RevisionFile.id).where(RevisionFile.path == path))
    assert found is not None
    return found


def tickets(hub: Hub) -> int:
    with hub.world.airlock.db.session() as s:
        return s.scalar(select(func.count()).select_from(DownloadTicket)) or 0


def assert_provisioning(response: TestResponse) -> None:
    assert response.status_code == 503, (response.status_code, response.headers)
    assert int(response.headers["Retry-After"]) >= 1
    message = response.headers["X-Error-Message"]
    assert "provisioning is under way" in message and REPO in message
    assert "X-Error-Code" not in response.headers
    assert "Location" not in response.headers
    assert response.headers["X-HF-Warning"] == f"airlock-provisioning; {message}"
    if response.request.method == "GET":
        assert response.json == {"error": message}


def test_head_and_get_are_503_until_provisioned_then_serve_the_staged_copy(
    hub: Hub, broker: Broker
) -> None:
    assert broker.held == [{"grant_id": hub.grant.id}]  # enqueued when the grant was made
    assert_provisioning(hub.head(URL, hub.researcher))
    assert_provisioning(hub.get(URL, hub.researcher))
    assert tickets(hub) == 0
    provision(hub, broker)
    data = FILES[PATH]
    head = hub.head(URL, hub.researcher)
    assert head.status_code == 200 and head.headers["X-Linked-Etag"] == f'"{sha256(data)}"'
    url = location(hub.get(URL, hub.researcher))
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["o"] == "staged" and query["g"] == str(hub.grant.id)
    assert hub.fetch(url).data == data
    with hub.world.airlock.db.session() as s:
        issued = s.scalars(select(AuditEvent).where(AuditEvent.action == "download:issue")).one()
    assert issued.payload["staged"] is True and issued.payload["sha256"] == sha256(data)


def test_the_ticket_carries_the_staged_records_identity_and_key(hub: Hub, broker: Broker) -> None:
    """What a later fingerprinting step writes: another object, with its own digest and size."""
    provision(hub, broker)
    marked = FILES[PATH] + b"\0marked for rob"
    key = staged_key(hub.model.org_id, hub.grant.id, file_id(hub))
    hub.world.airlock.storage.delete(key)
    hub.world.airlock.storage.put_stream(key, io.BytesIO(marked), max_bytes=1 << 20)
    with hub.world.airlock.db.session() as s:
        s.execute(
            update(StagedFile)
            .where(StagedFile.storage_key == key)
            .values(sha256=sha256(marked), size=len(marked))
        )
        s.commit()
    head = hub.head(URL, hub.researcher)
    assert head.headers["X-Linked-Etag"] == f'"{sha256(marked)}"'
    assert head.headers["X-Linked-Size"] == str(len(marked))
    response = hub.get(URL, hub.researcher)
    assert response.headers["X-Linked-Etag"] == f'"{sha256(marked)}"'
    # bytes_per_day (1GB) is reserved from the size of the object served, at ticket time
    assert f'"bytes_per_day";r={10**9 - len(marked)};' in response.headers["RateLimit"]
    blob = hub.fetch(location(response))
    assert blob.data == marked
    assert blob.headers["X-Linked-Etag"] == f'"{sha256(marked)}"'
    assert blob.headers["X-Linked-Size"] == str(len(marked))


def test_a_staged_url_serves_the_copy_even_without_the_original(hub: Hub, broker: Broker) -> None:
    provision(hub, broker)
    url = location(hub.get(URL, hub.researcher))
    with hub.world.airlock.db.session() as s:
        original = s.get_one(RevisionFile, file_id(hub)).storage_key
    hub.world.airlock.storage.delete(original)
    assert hub.fetch(url).data == FILES[PATH]


def test_a_staged_url_cannot_be_turned_into_another_grants_copy_or_the_original(
    hub: Hub, broker: Broker
) -> None:
    other = hub.world.actor("eve", affiliation="oxbridge")
    hub.world.kyc(hub.reviewer, other)
    theirs = hub.world.grant(other, fresh_model(hub.world, REPO))
    provision(hub, broker)
    url = location(hub.get(URL, hub.researcher))
    for tampered in (
        with_query(url, g=str(theirs.id)),
        with_query(url, g=str(theirs.id), u=str(other.user.id)),
        with_query(url, o="original"),
    ):
        response = hub.fetch(tampered)
        assert response.status_code == 403
        assert "signature is invalid" in response.headers["X-Error-Message"]


def test_a_copy_deleted_by_the_sweep_is_refused_on_an_old_url(hub: Hub, broker: Broker) -> None:
    provision(hub, broker)
    url = location(hub.get(URL, hub.researcher))
    with hub.world.airlock.db.session() as s:
        hub.world.airlock.access.revoke_grant(
            s, principal=hub.publisher.principal, grant_id=hub.grant.id, reason="left the lab"
        )
    assert hub.fetch(url).status_code == 200  # outstanding URLs live until swept or expired
    jobs.sweep_grants(hub.world.airlock)
    response = hub.fetch(url)
    assert response.status_code == 403
    assert "copy of the file no longer exists" in response.headers["X-Error-Message"]
    assert "X-Error-Code" not in response.headers


def test_a_provisioned_grant_missing_a_copy_asks_for_it_once(hub: Hub, broker: Broker) -> None:
    """A tier that starts fingerprinting after its grants were provisioned, a thawed model or
    a new revision: the download notices, enqueues provisioning once, and waits."""
    provision(hub, broker)
    with hub.world.airlock.db.session() as s:
        s.execute(delete(StagedFile).where(StagedFile.file_id == file_id(hub)))
        s.commit()
    assert_provisioning(hub.head(URL, hub.researcher))
    assert_provisioning(hub.get(URL, hub.researcher))
    assert broker.held == [{"grant_id": hub.grant.id, "revision_id": head_revision_id(hub)}]
    provision(hub, broker)
    assert hub.fetch(location(hub.get(URL, hub.researcher))).data == FILES[PATH]
    with hub.world.airlock.db.session() as s:
        assert s.get_one(Grant, hub.grant.id).provisioned_at is not None


def test_a_tier_that_stops_making_copies_serves_the_originals(hub: Hub) -> None:
    hub.apply_policy(tuned_policy())
    url = location(hub.get(URL, hub.researcher))
    assert dict(parse_qsl(urlsplit(url).query))["o"] == "original"
    assert hub.fetch(url).data == FILES[PATH]


def head_revision_id(hub: Hub) -> int:
    with hub.world.airlock.db.session() as s:
        found = s.get_one(Model, hub.model.id).head_revision_id
    assert found is not None
    return found


def renew(hub: Hub, by: timedelta = timedelta(days=25)) -> int:
    """Age the researcher's grant `by` and renew it (an auto tier: granted at once)."""
    with hub.world.airlock.db.session() as s:
        grant = s.get_one(Grant, hub.grant.id)
        assert grant.expires_at is not None
        grant.granted_at, grant.expires_at = grant.granted_at - by, grant.expires_at - by
        s.commit()
        outcome = hub.world.airlock.access.renew_grant(
            s,
            principal=hub.researcher.principal,
            grant_id=hub.grant.id,
            form=None,
            agreement=None,
            request_country=None,
        )
    assert outcome.grant is not None
    return outcome.grant.id


def statuses(hub: Hub) -> dict[int, str]:
    with hub.world.airlock.db.session() as s:
        query = select(Grant.id, Grant.status).where(Grant.user_id == hub.grant.user_id)
        return dict(s.execute(query).all())


def served_grant(hub: Hub) -> str:
    """The grant whose staged copy a HEAD and a GET of the file serve (both must agree)."""
    head = hub.head(URL, hub.researcher)
    assert head.status_code == 200, (head.status_code, head.headers)
    query = dict(parse_qsl(urlsplit(location(hub.get(URL, hub.researcher))).query))
    with hub.world.airlock.db.session() as s:
        sha = s.scalar(
            select(StagedFile.sha256).where(
                StagedFile.grant_id == int(query["g"]), StagedFile.file_id == file_id(hub)
            )
        )
    assert query["o"] == "staged" and query["h"] == sha
    assert head.headers["X-Linked-Etag"] == f'"{sha}"'
    return query["g"]


def superseded(hub: Hub) -> list[tuple[int, int]]:
    with hub.world.airlock.db.session() as s:
        query = select(AuditEvent.payload).where(AuditEvent.action == "grant:expire")
        return [(p["grant_id"], p["superseded_by"]) for p in s.scalars(query.order_by("seq"))]


def test_a_renewal_serves_the_old_copy_until_the_new_grant_is_provisioned(
    hub: Hub, broker: Broker
) -> None:
    provision(hub, broker)
    old, new = hub.grant.id, renew(hub)
    assert broker.held == [{"grant_id": new}]
    assert statuses(hub) == {old: "active", new: "active"} and superseded(hub) == []
    assert served_grant(hub) == str(old)  # no 503 while the new copies are staged
    with hub.world.airlock.db.session() as s:
        created = s.scalars(select(AuditEvent).where(AuditEvent.action == "grant:create"))
        assert created.all()[-1].payload["supersedes"] == [old]
    provision(hub, broker)
    assert statuses(hub) == {old: "expired", new: "active"}
    assert superseded(hub) == [(old, new)]
    assert served_grant(hub) == str(new)
    assert hub.fetch(location(hub.get(URL, hub.researcher))).data == FILES[PATH]


def test_an_old_grant_that_expires_before_the_new_copies_are_staged_just_expires(
    hub: Hub, broker: Broker
) -> None:
    provision(hub, broker)
    old, new = hub.grant.id, renew(hub)
    with hub.world.airlock.db.session() as s:
        s.execute(update(Grant).where(Grant.id == old).values(expires_at=func.now()))
        s.commit()
    assert_provisioning(hub.head(URL, hub.researcher))
    provision(hub, broker)
    assert superseded(hub) == [] and statuses(hub)[old] == "active"  # the sweep expires it
    assert served_grant(hub) == str(new)


def test_a_provisioned_grant_serves_ahead_of_an_older_unprovisioned_one_of_its_tier(
    hub: Hub, broker: Broker
) -> None:
    """Two live grants of one tier (the older one's copies asked for again): no 503."""
    provision(hub, broker)
    old, new = hub.grant.id, renew(hub)
    provision(hub, broker)
    with hub.world.airlock.db.session() as s:
        s.execute(
            update(Grant)
            .where(Grant.id == old)
            .values(status="active", ended_at=None, end_reason=None, provisioned_at=None)
        )
        s.commit()
    assert served_grant(hub) == str(new)
