"""The sweep forgets processed KYC webhook events once their de-duplication window has passed."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.db.models import KycWebhookEvent, utcnow
from gateway.services import sweeps
from gateway.services.container import Airlock
from gateway.tasks import jobs


def add_event(airlock: Airlock, name: str, age: timedelta, processed: bool) -> datetime:
    received = utcnow() - age
    with airlock.db.session() as s:
        s.add(
            KycWebhookEvent(
                provider="persona",
                event_id=name,
                event_type="inquiry.approved",
                provider_ref=f"inq_{name}",
                occurred_at=received,
                received_at=received,
                processed_at=received if processed else None,
                outcome="applied" if processed else None,
            )
        )
        s.commit()
    return received


def remaining(airlock: Airlock) -> set[str]:
    with airlock.db.session() as s:
        return set(s.scalars(select(KycWebhookEvent.event_id)))


def purge_scenario(airlock: Airlock) -> None:
    for name, age, processed in [
        ("old-processed", timedelta(days=15), True),
        ("old-processed-2", timedelta(days=400), True),
        ("young-processed", timedelta(days=13), True),
        ("old-unprocessed", timedelta(days=30), False),  # its work is not done: kept
    ]:
        add_event(airlock, name, age, processed)
    for _ in range(2):  # safe to repeat
        jobs.sweep_grants(airlock)
        assert remaining(airlock) == {"young-processed", "old-unprocessed"}


def test_sweep_purges_processed_events_past_the_window(airlock: Airlock) -> None:
    purge_scenario(airlock)


@pytest.mark.sqlite
def test_sweep_purges_on_sqlite_too(airlock: Airlock) -> None:
    purge_scenario(airlock)


def test_purge_goes_in_batches_until_none_is_left(
    airlock: Airlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeps, "PURGE_BATCH", 2)
    for n in range(5):
        add_event(airlock, f"e{n}", timedelta(days=20), True)
    fresh = add_event(airlock, "fresh", timedelta(days=1), True)
    with airlock.db.session() as s:
        assert airlock.sweeps.purge_kyc_events(s, now=utcnow()) == 5
    assert remaining(airlock) == {"fresh"}
    # The boundary: exactly 14 days old stays, a second older goes.
    window = timedelta(days=14)
    with airlock.db.session() as s:
        assert airlock.sweeps.purge_kyc_events(s, now=fresh + window) == 0
        assert airlock.sweeps.purge_kyc_events(s, now=fresh + window + timedelta(seconds=1)) == 1
    assert remaining(airlock) == set()
