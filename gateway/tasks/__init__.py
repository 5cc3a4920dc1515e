"""Background work behind one interface: run in-process after commit, or by Celery later."""

from gateway.tasks.runner import InProcessRunner, TaskRunner, enqueue_after_commit

__all__ = ["InProcessRunner", "TaskRunner", "enqueue_after_commit"]
