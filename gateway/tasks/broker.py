"""Celery as the task runner: the configuration producers and workers share, and CeleryRunner."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.exceptions import OperationalError as BrokerUnavailable

from gateway.settings import Settings
from gateway.tasks.catalog import DEFAULT_QUEUE, LONGEST_TIME_LIMIT, QUEUES, SPECS

log = logging.getLogger(__name__)


def configure(app: Celery, settings: Settings) -> None:
    """JSON only, late acks, one prefetched task, routes by stable name, broker options."""
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        # A Redis (or SQS) broker redelivers a task left unacknowledged this long: keep it well
        # above the longest time limit, or a slow task would run twice concurrently.
        broker_transport_options={"visibility_timeout": 2 * LONGEST_TIME_LIMIT},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
        task_routes={name: {"queue": spec.queue} for name, spec in SPECS.items()},
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        enable_utc=True,
        timezone="UTC",
    )


def celery_client(settings: Settings) -> Celery:
    """A producer-only Celery app for the gateway: it sends tasks, it registers none."""
    app = Celery("airlock", set_as_current=False)
    configure(app, settings)
    return app


class CeleryRunner:
    """Sends each task by its stable name to its queue on the broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, name: str, kwargs: dict[str, Any]) -> None:
        """Publish the task; a broker outage is logged, not raised (the change has committed)."""
        spec = SPECS[name]
        try:
            self.app.send_task(name, kwargs=kwargs, queue=spec.queue)
        except (BrokerUnavailable, OSError):
            # The sweep finds work whose task was lost (revisions left pending, grants left
            # unprovisioned) and sends it again.
            log.exception("could not enqueue %s %s", name, kwargs)
