"""The Celery tasks: thin wrappers, by stable name, over gateway.tasks.jobs (the same code the
in-process runner calls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from sqlalchemy.exc import OperationalError

from gateway.errors import ServiceUnavailable
from gateway.services.container import Airlock
from gateway.services.provisioning import StagingRace
from gateway.tasks import jobs
from gateway.tasks.catalog import (
    CHECKPOINT_TASK,
    FORWARD_TASK,
    KYC_TASK,
    PROVISION_TASK,
    PRUNE_TASK,
    REEVALUATE_MODEL_TASK,
    REEVALUATE_USER_TASK,
    RESCREEN_TASK,
    SPECS,
    SWEEP_TASK,
    VET_TASK,
)

# Only errors that a later attempt can outlive: the database or storage being briefly away.
TRANSIENT = (OperationalError, ServiceUnavailable, StagingRace)


def task_options(name: str) -> dict[str, Any]:
    """Celery options of one task: its name, limits and retry policy (task_routes give queues)."""
    spec = SPECS[name]
    return {
        "name": name,
        # Not shared: a shared task would also join every other app made in this process, still
        # bound to the services of the app that registered it.
        "shared": False,
        "soft_time_limit": spec.soft_time_limit,
        "time_limit": spec.time_limit,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": TRANSIENT,
        "retry_backoff": True,
        "retry_backoff_max": 600,
        "retry_jitter": True,
        "max_retries": 5,
        "ignore_result": True,
    }


def register_tasks(app: Celery, airlock: Callable[[], Airlock]) -> None:
    """Register every task on `app`; `airlock` returns the worker process's services."""

    def vet_revision(revision_id: int) -> None:
        jobs.vet_revision(airlock(), revision_id=revision_id)

    def provision_download(grant_id: int, revision_id: int | None = None) -> None:
        jobs.provision_download(airlock(), grant_id=grant_id, revision_id=revision_id)

    def sweep_grants() -> None:
        jobs.sweep_grants(airlock())

    def reevaluate_model(model_id: int, policy_version_id: int | None = None) -> None:
        jobs.reevaluate_model(airlock(), model_id=model_id, policy_version_id=policy_version_id)

    def reevaluate_user(user_id: int) -> None:
        jobs.reevaluate_user(airlock(), user_id=user_id)

    def rescreen_grants() -> None:
        jobs.rescreen_grants(airlock())

    def apply_kyc_event(event_id: int) -> None:
        jobs.apply_kyc_event(airlock(), event_id=event_id)

    def checkpoint_audit() -> None:
        jobs.checkpoint_audit(airlock())

    def forward_audit() -> None:
        jobs.forward_audit(airlock())

    def prune_audit() -> None:
        jobs.prune_audit(airlock())

    for name, run in (
        (VET_TASK, vet_revision),
        (PROVISION_TASK, provision_download),
        (SWEEP_TASK, sweep_grants),
        (REEVALUATE_MODEL_TASK, reevaluate_model),
        (REEVALUATE_USER_TASK, reevaluate_user),
        (RESCREEN_TASK, rescreen_grants),
        (KYC_TASK, apply_kyc_event),
        (CHECKPOINT_TASK, checkpoint_audit),
        (FORWARD_TASK, forward_audit),
        (PRUNE_TASK, prune_audit),
    ):
        app.task(**task_options(name))(run)
