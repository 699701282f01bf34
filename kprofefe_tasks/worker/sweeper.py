"""Handing a dead worker's unacknowledged captures back to the queue (Redis broker only).

kombu's Redis transport does this only from an idle poll of its consumer loop, which a busy gevent worker rarely
reaches (measured: no redelivery within 70 s, sometimes never); this thread makes it happen every ``interval``
seconds. Live workers renew the leases on what they hold (:mod:`~kprofefe_tasks.worker.leases`), so what is older
than the visibility timeout here belongs to a worker that stopped renewing: it died. kombu's ``restore_visible``
puts those messages back at the head of their queue (the next free slot anywhere takes them), under a Redis mutex
that keeps concurrent sweepers from restoring a message twice; it takes up to ``BATCH`` per call, so a sweep calls
it until nothing expired is left.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from kprofefe_tasks import metrics

log = logging.getLogger("kprofefe.tasks")

BATCH = 1000  # messages kombu restores per call
MAX_CALLS = 20  # per sweep: 20,000 messages (40 dead 500-slot workers); the next sweep takes the rest


def sweep_once(channel: Any) -> int:
    """Restore every message whose lease ended; returns how many were handed back."""
    qos = channel.qos
    key = qos.unacked_index_key
    restored = 0
    with channel.conn_or_acquire() as client:
        for _ in range(MAX_CALLS):
            ceil = time.time() - qos.visibility_timeout
            due = int(client.zcount(key, 0, ceil))
            if not due:
                break
            qos.restore_visible(num=BATCH, interval=1)
            left = int(client.zcount(key, 0, ceil))
            if left >= due:  # another sweeper holds the mutex and is restoring them
                break
            restored += due - left
    if restored:
        metrics.REDELIVERED.inc(restored)
        log.warning("%d captures of a worker that stopped renewing its leases handed back to the queue", restored)
    return restored


def sweep_forever(app: Celery, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            with app.connection_for_write() as conn:
                sweep_once(conn.default_channel)
        except Exception as exc:  # a Redis restart: the next sweep will do
            log.warning("unacked-task sweep failed: %s", exc)
