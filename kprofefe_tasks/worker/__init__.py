"""The Celery layer: the app, per-process wiring, fan-out, broker transport, task events, the unacked sweeper."""
