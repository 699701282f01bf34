"""Handing a dead worker's unacknowledged captures back to the queue (Redis broker only).

kombu's Redis transport does this only from an idle poll of its consumer loop, which a busy gevent worker rarely
reaches (measured: no redelivery within 70 s, sometimes never); this thread makes it happen every ``interval``
seconds. A Redis mutex inside kombu keeps concurrent sweepers from restoring a task twice.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

log = logging.getLogger("kprofefe.tasks")


def sweep_forever(app: Celery, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            with app.connection_for_write() as conn:
                conn.default_channel.qos.restore_visible(num=1000, interval=1)
        except Exception as exc:  # a Redis restart: the next sweep will do
            log.warning("unacked-task sweep failed: %s", exc)
