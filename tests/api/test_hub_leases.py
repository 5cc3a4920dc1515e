"""Concurrent downloads as leases: taken by GET /resolve, freed when the /blobs download ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from gateway.db.models import DownloadTicket, RevisionFile
from gateway.ratelimit import MemoryLimiter, RedisLimiter
from gateway.services.container import Airlock
from tests.api.hubkit import FILES, REPO, Hub, make_hub, tuned_policy
from tests.factories import World
from tests.redis_server import REDIS_URL, throwaway_prefix

URL = f"/{REPO}/resolve/main/config.json"
OTHER = f"/{REPO}/resolve/main/model.safetensors"


@pytest.fixture(params=["memory", "redis"])
def limiter_kind(request: pytest.FixtureRequest, airlock: Airlock) -> Iterator[str]:
    """The in-process limiter, or the shared Redis one under a throwaway key prefix."""
    if request.param == "memory":
        yield "memory"
        return
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix, timeout=2.0)
        airlock.downloads.limiter = limiter
        try:
            yield "redis"
        finally:
            limiter.close()


@pytest.fixture
def hub(client: FlaskClient, world: World) -> Hub:
    return make_hub(client, world, policy=tuned_policy(downloads=100, concurrent=1))


def blob_url(response: TestResponse) -> str:
    assert response.status_code == 302, (response.status_code, response.headers)
    parts = urlsplit(response.headers["Location"])
    return f"{parts.path}?{parts.query}"


def assert_busy(hub: Hub, response: TestResponse) -> None:
    assert response.status_code == 429, (response.status_code, response.headers)
    message = response.headers["X-Error-Message"]
    assert "1 download is already in progress for this grant" in message
    assert "wait for one to finish" in message
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert '"concurrent_downloads";r=0' in response.headers["RateLimit"]
    reason = hub.last_denial().payload["reasons"][0]
    assert reason["code"] == "concurrent_downloads_exceeded"
    assert reason["rule"] == "tiers[weights-auto].limits.concurrent_downloads"


def tickets(hub: Hub) -> int:
    with hub.world.airlock.db.session() as s:
        return s.scalar(select(func.count()).select_from(DownloadTicket)) or 0


def test_a_second_get_waits_until_the_first_download_finishes(hub: Hub, limiter_kind: str) -> None:
    first = hub.get(URL, hub.researcher)
    url = blob_url(first)
    policy = first.headers["RateLimit-Policy"]
    assert '"concurrent_downloads";q=1;qu="concurrent-requests"' in policy
    assert "w=" not in policy.split('"concurrent_downloads"', 1)[1]  # leases have no window
    assert first.headers["RateLimit"].startswith('"downloads_per_day";r=99;')
    assert '"concurrent_downloads";r=0;t=' in first.headers["RateLimit"]
    assert_busy(hub, hub.get(OTHER, hub.researcher))
    assert tickets(hub) == 1  # the refused attempt left nothing behind
    assert hub.fetch(url).data == FILES["config.json"]
    again = hub.get(OTHER, hub.researcher)
    assert again.status_code == 302
    assert '"downloads_per_day";r=98;' in again.headers["RateLimit"]  # refusal charged nothing


def test_a_failed_download_frees_its_slot_too(hub: Hub) -> None:
    cut_short = blob_url(hub.get(URL, hub.researcher))
    assert hub.fetch(cut_short, headers={"Range": "bytes=9999-"}).status_code == 416
    missing = blob_url(hub.get(URL, hub.researcher))
    with hub.world.airlock.db.session() as s:
        key = s.scalars(select(RevisionFile.storage_key).where(RevisionFile.path == "config.json"))
        hub.world.airlock.storage.delete(key.one())
    assert hub.fetch(missing).status_code == 503
    assert hub.get(OTHER, hub.researcher).status_code == 302


def test_bytes_deleted_after_the_check_are_503_and_free_the_slot(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = blob_url(hub.get(URL, hub.researcher))
    with hub.world.airlock.db.session() as s:
        key = s.scalars(select(RevisionFile.storage_key).where(RevisionFile.path == "config.json"))
        hub.world.airlock.storage.delete(key.one())
    monkeypatch.setattr(Path, "is_file", lambda self: True)  # gone between the check and the open
    response = hub.fetch(url)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert hub.get(OTHER, hub.researcher).status_code == 302


def test_head_never_takes_or_frees_a_lease(hub: Hub) -> None:
    for _ in range(3):
        assert hub.head(URL, hub.researcher).status_code == 200
    url = blob_url(hub.get(URL, hub.researcher))
    assert hub.head(URL, hub.researcher).status_code == 200  # metadata while the slot is held
    assert hub.fetch(url, method="HEAD").status_code == 200  # not a download: frees nothing
    assert_busy(hub, hub.get(OTHER, hub.researcher))


def test_a_forged_url_cannot_free_another_tickets_slot(hub: Hub) -> None:
    url = blob_url(hub.get(URL, hub.researcher))
    path, _, query = url.partition("?")
    params = dict(parse_qsl(query))
    forged = f"{path}?{urlencode({**params, 't': str(int(params['t']) + 1)})}"
    assert hub.fetch(forged).status_code == 403
    assert_busy(hub, hub.get(OTHER, hub.researcher))


def test_a_lease_never_released_expires_with_its_signed_url(hub: Hub) -> None:
    """A client that never fetches (or an S3 download we never see end) holds its slot for the
    signed URL's TTL (the tier's 10 minutes here), and no longer."""
    now = [1_000_000.0]
    hub.world.airlock.downloads.limiter = MemoryLimiter(clock=lambda: now[0])
    blob_url(hub.get(URL, hub.researcher))
    now[0] += 599
    busy = hub.get(OTHER, hub.researcher)
    assert_busy(hub, busy)
    assert (
        "or at the latest in 1 s when its download link expires" in busy.headers["X-Error-Message"]
    )
    now[0] += 2
    assert hub.get(OTHER, hub.researcher).status_code == 302


def test_a_grant_with_room_for_two_admits_two(client: FlaskClient, world: World) -> None:
    hub = make_hub(client, world, policy=tuned_policy(downloads=100, concurrent=2))
    first = hub.get(URL, hub.researcher)
    assert '"concurrent_downloads";r=1;t=0' in first.headers["RateLimit"]
    second = hub.get(OTHER, hub.researcher)
    assert second.status_code == 302
    third = hub.get(URL, hub.researcher)
    assert third.status_code == 429
    assert "2 downloads are already in progress" in third.headers["X-Error-Message"]
    hub.fetch(blob_url(second))
    assert hub.get(URL, hub.researcher).status_code == 302


def test_a_download_ending_while_the_limiter_is_down_is_still_served(hub: Hub) -> None:
    """Releasing is best effort: the bytes go out, and the lease expires with its URL."""
    from tests.ports import free_port

    url = blob_url(hub.get(URL, hub.researcher))
    working = hub.world.airlock.downloads.limiter
    down = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1)
    hub.world.airlock.downloads.limiter = down
    try:
        assert hub.fetch(url).data == FILES["config.json"]
    finally:
        down.close()
        hub.world.airlock.downloads.limiter = working
    assert_busy(hub, hub.get(OTHER, hub.researcher))  # not released: it waits out its TTL
