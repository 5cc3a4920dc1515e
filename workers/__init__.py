"""Background workers. On embedded defaults tasks run in-process (gateway.tasks.InProcessRunner);
the Celery app (`make_celery`) that runs the same task functions on queues comes with the
production backends."""
