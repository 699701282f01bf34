"""Leases on the messages a worker holds (Redis broker): a capture that is still running is never handed out again.

kombu's Redis transport emulates acknowledgements. A message a worker takes is copied to the ``unacked`` hash and
scored in the ``unacked_index`` sorted set with the time it was taken; any sweeper (kombu's, and ours in
:mod:`~kprofefe_tasks.worker.sweeper`) hands back every message scored older than the visibility timeout, whether
its worker died or is still working on it. A capture waiting behind the rate limit, in upload retries or on a slow
target was therefore taken a second time (issue 12 measured 338 pod requests for 180 captures).

This consumer step turns the score into a lease: every :meth:`Settings.sweep_interval` seconds (a quarter of the
visibility timeout, the sweepers' period too) it sets the score of every message this worker still holds (reserved,
waiting for its ETA, running, or finished and not acknowledged yet) to now, with ``ZADD XX`` so that a message
acknowledged or handed back meanwhile is not written again. A live worker's captures never look expired, however
long they run; a dead worker's stop being renewed and are handed back one visibility timeout after its last renewal,
plus at most one sweep (:meth:`Settings.redelivery_bound`).

What this worker holds is kombu's own record of it: the channel's ``QoS._delivered`` minus ``QoS._dirty`` (acked,
not yet flushed). Those are private attributes, so leases are used only with the kombu minor version they were
written for (:func:`kprofefe_tasks.worker.compat.leases`); otherwise the start-up check
(:mod:`kprofefe_tasks.config.bounds`) requires a visibility timeout longer than the longest capture.

The scores are compared across machines (a sweeper on one node, the lease holder on another): nodes' clocks must
agree to well within the visibility timeout less one renewal period (30 s with the defaults), as NTP gives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import bootsteps

from kprofefe_tasks import metrics
from kprofefe_tasks.config.settings import get_settings

log = logging.getLogger("kprofefe.leases")

CHUNK = 1000  # tags per ZADD: a 500-slot worker renews in one command


def held(qos: Any) -> list[str]:
    """The delivery tags this channel holds unacknowledged (kombu's record of what it handed to this worker)."""
    delivered = getattr(qos, "_delivered", None)
    if delivered is None:
        return []
    dirty: Any = getattr(qos, "_dirty", None) or ()
    for _ in range(5):  # a threads pool may add a tag while we copy: copy again
        try:
            return [tag for tag in list(delivered) if tag not in dirty]
        except RuntimeError:
            continue
    return []


def renew(client: Any, key: str, tags: Iterable[str], now: float | None = None) -> int:
    """Set each tag's score in ``key`` to ``now`` where it is still present; returns how many tags were sent."""
    stamp = time.time() if now is None else now
    batch: dict[str, float] = {}
    sent = 0
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        batch[tag] = stamp
        if len(batch) >= CHUNK:
            pipe.zadd(key, batch, xx=True)
            sent += len(batch)
            batch = {}
    if batch:
        pipe.zadd(key, batch, xx=True)
        sent += len(batch)
    if sent:
        pipe.execute()
    return sent


class Leases(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: renew the leases of everything this worker holds, every ``interval`` seconds."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the sweepers' period: three renewals may be missed (a Redis blip, a stalled loop) before a lease ends
        self.interval = get_settings().sweep_interval()
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        # Tasks.start builds a new task consumer at every (re)connection; renew_once reads the current one each time.
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew_forever, args=(c,), name="kprofefe-leases", daemon=True)
            self._thread.start()

    def shutdown(self, c: Any) -> None:
        self._stop.set()

    def _renew_forever(self, c: Any) -> None:
        while not self._stop.wait(self.interval):
            self.renew_once(c)

    @staticmethod
    def renew_once(c: Any) -> int:
        consumer = getattr(c, "task_consumer", None)
        channel = getattr(consumer, "channel", None)
        if channel is None:
            return 0
        try:
            qos = channel.qos
            tags = held(qos)
            if not tags:
                return 0
            with channel.conn_or_acquire() as client:  # the channel's pool, not the consumer's BRPOP connection
                count = renew(client, qos.unacked_index_key, tags)
        except Exception as exc:  # Redis away: the leases have three more renewals before they end
            log.warning("lease renewal failed: %s", exc)
            metrics.LEASE_RENEWALS.labels("failed").inc()
            return 0
        metrics.LEASE_RENEWALS.labels("ok").inc()
        metrics.LEASES_HELD.set(count)
        return count
