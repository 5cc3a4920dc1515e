"""Gunicorn settings of the Airlock gateway: `gunicorn --config deploy/gunicorn.conf.py`.

Every option here can be overridden on the command line (`--workers 8`, `--bind ...`). The
gateway's own settings come from the AIRLOCK_* environment like every other Airlock process.
"""

from __future__ import annotations

from typing import Any

from gateway.observability.logs import JsonFormatter
from gateway.observability.metrics import process_exited, reset_metrics_dir
from gateway.settings import load_settings

SETTINGS = load_settings()

wsgi_app = "gateway.app:create_app()"
bind = ["0.0.0.0:8000"]
# gthread: uploads and Range downloads through the gateway hold a thread, not a whole process.
worker_class = "gthread"
workers = 4
threads = 8
timeout = 120  # a worker silent this long is killed and replaced (long uploads keep it busy)
graceful_timeout = 30
keepalive = 5
# Workers are replaced now and then, so a slow leak never grows without bound.
max_requests = 20000
max_requests_jitter = 2000
# The heartbeat file: on a tmpfs, so a slow overlay disk never makes a worker look dead.
worker_tmp_dir = "/dev/shm"  # noqa: S108 (a RAM-backed directory made for exactly this)
# The gateway writes one access line per request itself (never with the query string: blob
# URLs carry their signatures there), so gunicorn's own access log stays off.
accesslog = None
errorlog = "-"
loglevel = SETTINGS.log_level.lower()
if SETTINGS.log_format == "json":  # gunicorn merges this over its defaults, key by key
    logconfig_dict: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"gunicorn.error": {"handlers": ["stderr"], "propagate": False}},
        # The root logger is the gateway's: create_app installs its handler in each worker.
        "root": {"level": "WARNING", "handlers": []},
    }


def on_starting(server: Any) -> None:
    """In the master, before any worker: start the metrics directory afresh."""
    if SETTINGS.metrics_dir is not None:
        reset_metrics_dir(SETTINGS.metrics_dir)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker exited: drop its live gauges (its counters stay summed)."""
    if SETTINGS.metrics_dir is not None:
        process_exited(SETTINGS.metrics_dir, worker.pid)
