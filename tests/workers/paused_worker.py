"""A worker for the SIGKILL test: its first staging pauses once the temporary copy is written.

Run as `python -m tests.workers.paused_worker --marker PATH [--visibility SECONDS]` with the
AIRLOCK_* settings in the environment. While PATH does not exist, the first write of a
temporary copy creates PATH and then sleeps, so the test can kill the worker at that point;
with PATH present the worker runs normally.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

from gateway.settings import load_settings
from gateway.storage import LocalStorage, StoredObject
from gateway.tasks.catalog import QUEUES
from workers.celery_app import make_celery


def pause_after_first_temporary_copy(marker: Path) -> None:
    """Patch LocalStorage (before the pool forks) to stop mid-task the first time."""
    original = LocalStorage.put_stream

    def put_stream(self: LocalStorage, key: str, stream: BinaryIO, **kw: Any) -> StoredObject:
        stored = original(self, key, stream, **kw)
        if key.endswith(".partial") and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)  # the test SIGKILLs the whole worker here
        return stored

    LocalStorage.put_stream = put_stream  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marker", type=Path, required=True)
    parser.add_argument("--visibility", type=float, help="Redis visibility timeout (seconds)")
    args = parser.parse_args()
    pause_after_first_temporary_copy(args.marker)
    app = make_celery(load_settings())
    if args.visibility:
        # Restore unacknowledged messages of a dead worker after this long, checking every second.
        app.conf.broker_transport_options = {
            "visibility_timeout": args.visibility,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    app.worker_main(
        ["worker", "--loglevel=INFO", f"--queues={','.join(QUEUES)}", "--concurrency=1"]
    )


if __name__ == "__main__":
    main()
