"""The Celery app and runner: configuration, task options and routing by stable name."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest

from gateway.services.container import build_airlock
from gateway.settings import Settings
from gateway.tasks import InProcessRunner
from gateway.tasks.broker import CeleryRunner, celery_client
from gateway.tasks.catalog import LONGEST_TIME_LIMIT, PROVISION_TASK, QUEUES, SPECS, SWEEP_TASK
from workers.celery_app import make_celery

NAMES = {
    "airlock.vetting.vet_revision": "vetting",
    "airlock.provisioning.provision_download": "provisioning",
    "airlock.sweeps.sweep_grants": "default",
    "airlock.policy.reevaluate_model": "default",
    "airlock.policy.reevaluate_user": "kyc",
    "airlock.policy.rescreen_grants": "default",
    "airlock.kyc.apply_event": "kyc",
    "airlock.audit.checkpoint": "audit",
    "airlock.audit.forward": "audit",
    "airlock.audit.prune": "audit",
}


@pytest.fixture
def broker_settings(settings: Settings) -> Settings:
    return settings.with_overrides(broker_url="redis://127.0.0.1:6379/14")


def test_importing_the_worker_module_builds_nothing() -> None:
    module = importlib.import_module("workers.celery_app")
    assert not hasattr(module, "app") and not hasattr(module, "celery")


def test_make_celery_needs_a_broker(settings: Settings) -> None:
    with pytest.raises(ValueError, match="AIRLOCK_BROKER_URL"):
        make_celery(settings)


def test_the_app_speaks_json_acks_late_and_prefetches_one(broker_settings: Settings) -> None:
    conf = make_celery(broker_settings).conf
    assert conf.broker_url == "redis://127.0.0.1:6379/14"
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert list(conf.accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert [q.name for q in conf.task_queues] == list(QUEUES)
    assert conf.broker_transport_options["visibility_timeout"] > LONGEST_TIME_LIMIT
    schedule = conf.beat_schedule["sweep-grants"]
    assert schedule["task"] == SWEEP_TASK and schedule["options"]["queue"] == "default"
    rescreen = conf.beat_schedule["rescreen-grants"]
    assert rescreen["task"] == "airlock.policy.rescreen_grants" and rescreen["schedule"] == 86400
    checkpoint = conf.beat_schedule["checkpoint-audit"]
    assert checkpoint["task"] == "airlock.audit.checkpoint" and checkpoint["schedule"] == 30
    assert checkpoint["options"] == {"queue": "audit", "expires": 30}
    forward = conf.beat_schedule["forward-audit"]
    assert forward["task"] == "airlock.audit.forward" and forward["schedule"] == 10
    prune = conf.beat_schedule["prune-audit"]
    assert prune["task"] == "airlock.audit.prune" and prune["schedule"] == 86400


def test_every_task_has_its_stable_name_queue_limits_and_retry_policy(
    broker_settings: Settings,
) -> None:
    app = make_celery(broker_settings)
    app.finalize()
    for name, queue in NAMES.items():
        task = app.tasks[name]
        assert app.conf.task_routes[name]["queue"] == queue
        assert task.acks_late and task.reject_on_worker_lost
        assert 0 < task.soft_time_limit < task.time_limit == SPECS[name].time_limit
        assert task.max_retries == 5 and task.retry_backoff
        assert {e.__name__ for e in task.autoretry_for} == {
            "OperationalError",
            "ServiceUnavailable",
            "StagingRace",
        }


class RecordingApp:
    """Stands in for Celery's producer side: records what would be published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], str]] = []

    def send_task(self, name: str, *, kwargs: dict[str, Any], queue: str) -> None:
        self.published.append((name, kwargs, queue))


def test_celery_runner_sends_by_name_to_the_tasks_queue() -> None:
    app = RecordingApp()
    CeleryRunner(app).send(PROVISION_TASK, {"grant_id": 7})  # type: ignore[arg-type]
    assert app.published == [(PROVISION_TASK, {"grant_id": 7}, "provisioning")]
    with pytest.raises(KeyError):
        CeleryRunner(app).send("airlock.unknown", {})  # type: ignore[arg-type]


def test_a_broker_outage_is_logged_not_raised_into_the_committed_request(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    runner = CeleryRunner(
        celery_client(settings.with_overrides(broker_url="redis://127.0.0.1:1/0"))
    )
    with caplog.at_level(logging.ERROR, logger="gateway.tasks.broker"):
        runner.send(PROVISION_TASK, {"grant_id": 7})
    assert "could not enqueue airlock.provisioning.provision_download" in caplog.text


def test_build_airlock_picks_the_runner_from_the_settings(
    settings: Settings, broker_settings: Settings
) -> None:
    embedded, brokered = build_airlock(settings), build_airlock(broker_settings)
    try:
        assert isinstance(embedded.runner, InProcessRunner)
        assert set(embedded.runner.tasks) == set(NAMES)
        assert isinstance(brokered.runner, CeleryRunner)
        assert brokered.runner.app.conf.broker_url == broker_settings.broker_url
    finally:
        embedded.close()
        brokered.close()
