"""An experiment, not a product setting: the product's Celery app without the per-capture bookkeeping nobody reads
during a round, so ``python -m bench --variant lean`` shows what dropping it is worth before anyone changes
:mod:`kprofefe_tasks.app`. Workers load it with ``celery -A bench.lean worker ...`` (same tasks, same signals, same
command line otherwise).

What goes: task events (task-sent from the fan-out; received/started/succeeded from the workers: Flower's task
view) and stored results for captures (GET + SET + PUBLISH, twice with ``track_started``). The round counters in
Redis and the Prometheus metrics already carry every capture's outcome.
"""

from __future__ import annotations

from kprofefe_tasks.app import app

LEAN = {
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "task_annotations": {"kprofefe.capture": {"ignore_result": True, "track_started": False}},
}

app.conf.update(LEAN)

__all__ = ["LEAN", "app"]
