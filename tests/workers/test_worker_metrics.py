"""A real prefork worker counts task outcomes across its pool and serves them on its port."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.db.migrate import upgrade
from gateway.tasks.broker import CeleryRunner
from gateway.tasks.catalog import SWEEP_TASK
from tests.pg import throwaway_database
from tests.ports import free_port
from tests.workers.conftest import claimed_redis_db
from tests.workers.test_worker_process import Deployment

pytestmark = pytest.mark.slow
SUCCESS = f'airlock_tasks_total{{outcome="success",task="{SWEEP_TASK}"}}'
EXPIRED = f'airlock_tasks_total{{outcome="expired",task="{SWEEP_TASK}"}}'


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with claimed_redis_db() as broker_url, throwaway_database() as database_url:
        upgrade(database_url)
        with Deployment(tmp_path, database_url, broker_url) as deployment:
            yield deployment


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def sample(text: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)), 0)


def test_task_outcomes_of_every_pool_process_reach_the_metrics_port(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = free_port()
    metrics_dir = tmp_path / "worker-metrics"
    (metrics_dir).mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: dropped
    deployment.env |= {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "AIRLOCK_WORKER_METRICS_PORT": str(port),
        "AIRLOCK_LOG_FORMAT": "json",
    }
    worker = deployment.start("worker", "gateway.cli", "worker", "--concurrency", "2")
    for _ in range(4):
        deployment.airlock.runner.send(SWEEP_TASK, {})
    runner = deployment.airlock.runner
    assert isinstance(runner, CeleryRunner)
    past = datetime.now(UTC) - timedelta(minutes=1)
    runner.app.send_task(SWEEP_TASK, queue="default", expires=past)  # superseded: not run
    deployment.wait_for("4 sweeps counted", lambda: sample(scrape(port), SUCCESS) == 4, 60)
    deployment.wait_for("the expired one", lambda: sample(scrape(port), EXPIRED) == 1, 60)
    text = scrape(port)
    assert sample(text, f'airlock_task_duration_seconds_count{{task="{SWEEP_TASK}"}}') == 4
    pids = {p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
    assert "999999.db" not in pids, "the worker drops sample files of an earlier run"
    lines = [line for line in worker.output().splitlines() if line.startswith("{")]
    assert lines, worker.output()[-2000:]
    records = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    done = [r for r in records if "succeeded in" in r["message"]]
    assert done and all(r["request_id"] in r["message"] for r in done), "stamped with the task id"
    assert all("request_id" not in r for r in records if "mingle" in r["message"])
