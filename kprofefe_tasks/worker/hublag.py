"""The event-loop lag probe of a gevent worker: how long the hub was held by something that did not yield.

A greenlet asks for a short sleep and measures how much later than asked it wakes up. The overshoot is the time
some other greenlet held the loop without yielding (a long gunzip, an fsync on the hub, a hot loop), during which
every capture in the worker stood still: deadlines unchecked, sockets unread. Exported as the histogram
``kprofefe_hub_lag_seconds`` and the gauge ``kprofefe_hub_lag_max_seconds``; a lag over the threshold is logged
(``KPROFEFE_HUB_LAG_WARN``, at most one line a second).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kprofefe_tasks import metrics

log = logging.getLogger("kprofefe.hub")

PROBE_INTERVAL_S = 0.05  # s: the sleep the probe asks for; 20 wake-ups a second cost nothing measurable
WARN_EVERY_S = 1.0  # s: at most one warning line this often, however often the loop stalls


class Probe:
    """The measurement, separate from the greenlet so it can be driven by hand."""

    def __init__(self, warn_after: float) -> None:
        self.warn_after = warn_after
        self.max_lag = 0.0
        self.samples = 0
        self._last_warn = float("-inf")
        self._late_since_warn = 0

    def observe(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.samples += 1
        metrics.HUB_LAG.observe(lag)
        if lag > self.max_lag:
            self.max_lag = lag
            metrics.HUB_LAG_MAX.set(lag)
        if self.warn_after <= 0 or lag <= self.warn_after:
            return
        self._late_since_warn += 1
        now = time.monotonic()
        if now - self._last_warn < WARN_EVERY_S:
            return
        log.warning(
            "event loop blocked for %.0f ms (every capture in this worker stood still)",
            lag * 1000,
            extra={
                "outcome": "hub-lag",
                "lag_seconds": round(lag, 4),
                "max_lag_seconds": round(self.max_lag, 4),
                "late_samples": self._late_since_warn,
            },
        )
        self._last_warn = now
        self._late_since_warn = 0


def run(probe: Probe, interval: float = PROBE_INTERVAL_S) -> None:
    import gevent

    while True:
        started = time.perf_counter()
        gevent.sleep(interval)
        probe.observe(time.perf_counter() - started - interval)


def start(warn_after: float) -> Any:
    """Spawn the probe greenlet on this thread's hub; returns the greenlet (kill it to stop)."""
    import gevent

    probe = Probe(warn_after)
    greenlet = gevent.spawn(run, probe)
    greenlet.probe = probe
    return greenlet
