"""The start-up check of a worker: its capture bound against the broker's redelivery (:mod:`..config.bounds`)."""

from __future__ import annotations

import logging

import beat_schedule
from kprofefe_tasks.config import bounds
from kprofefe_tasks.config.settings import Settings, get_settings
from kprofefe_tasks.worker.app import app
from kprofefe_tasks.worker.fanout import method

log = logging.getLogger("kprofefe.tasks")


def inputs(settings: Settings | None = None) -> tuple[Settings, int, bool, float]:
    """``(settings, longest CPU window, leases on, longest spread wait held in a worker)`` for this process."""
    s = settings or get_settings()
    entries = beat_schedule.entries(s)
    cpu = bounds.longest_cpu_seconds(s, [e.cpu_seconds for e in entries])
    # spread captures wait in Redis with the bulk writer; as Celery ETA tasks, in a worker, up to an interval
    spread = 0.0 if method(app) == "bulk" else max((e.interval for e in entries if e.spread), default=0.0)
    return s, cpu, bool(app.conf.kprofefe_leases), spread


def check() -> None:
    """Raise SystemExit, naming the variables, when the configuration would run a capture twice."""
    s, cpu, leases, spread = inputs()
    bounds.check(s, leases=leases, cpu_seconds=cpu, held_spread=spread)
    log.info(
        "longest capture %s; leases %s; a dead worker's captures run again within %g s",
        bounds.explain(s, cpu),
        "on" if leases else "off",
        s.redelivery_bound(),
        extra={"capture_bound": s.capture_bound(cpu), "leases": leases, "redelivery_bound": s.redelivery_bound()},
    )
