"""Spread captures wait in Redis, not in a worker: a sorted set scored by when each is due, moved to the queue then.

A Celery ETA task is taken off the queue at once and held, unacknowledged, in the memory of whichever worker got it
until its time comes: a round spread over ten minutes sat in the workers that happened to be up when it was queued,
and a worker could hold tens of thousands of them. On a Redis broker the bulk writer (:mod:`~.bulk`) instead adds a
spread capture's message, without an ETA, to ``kprofefe:delayed:<queue>`` scored with the time it is due; every
capture worker runs :func:`promote` each ``PROMOTE_INTERVAL``, a Lua script that moves what is due to the queue
atomically (moved once however many workers run it, and never lost between the set and the list). A due capture
then starts within about ``PROMOTE_INTERVAL`` plus the queue's wait, on any worker with a free slot. Its expiry
(``expires``) is absolute, as before: a capture that waited past its interval, because no worker ran, is dropped
and counted when a worker takes it.

``apply_async`` (AMQP, ``task-sent`` events, stock Celery) still sends Celery ETA tasks; leases
(:mod:`~.leases`) keep those from being redelivered while they wait.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from kprofefe_tasks import metrics

log = logging.getLogger("kprofefe.tasks")

PREFIX = "kprofefe:delayed:"
PROMOTE_INTERVAL = 1.0  # s between moves: a spread capture starts at most about this late
PROMOTE_BATCH = 500  # messages per script call (one LPUSH of about 1 MB)
MAX_CALLS = 100  # per tick: 50,000 due at once is a whole round of a 8,000-pod cluster

# KEYS delayed set, queue list; ARGV now, batch. Returns how many moved.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
redis.call('LPUSH', KEYS[2], unpack(due))
redis.call('ZREM', KEYS[1], unpack(due))
return #due
"""


def key(queue: str) -> str:
    return PREFIX + queue


def promote(client: Any, queue: str, now: float | None = None) -> int:
    """Move every message due by ``now`` to ``queue``, earliest first; returns how many moved."""
    stamp = time.time() if now is None else now
    script = client.register_script(_PROMOTE)
    moved = 0
    for _ in range(MAX_CALLS):
        n = int(script(keys=[key(queue), queue], args=[stamp, PROMOTE_BATCH]))
        moved += n
        if n < PROMOTE_BATCH:
            break
    return moved


def waiting(client: Any, queue: str) -> int:
    return int(client.zcard(key(queue)))


def promote_forever(app: Celery, stop: threading.Event, queue: str, interval: float = PROMOTE_INTERVAL) -> None:
    conn = None
    while not stop.wait(interval):
        try:
            if conn is None:  # one connection for the thread's life, not one per tick
                conn = app.connection_for_write()
            with conn.default_channel.conn_or_acquire() as client:
                moved = promote(client, queue)
                metrics.DELAYED.set(waiting(client, queue))
            if moved:
                metrics.DELAYED_PROMOTED.inc(moved)
        except Exception as exc:  # Redis away or full: nothing moved, nothing lost; the next tick tries again
            log.warning("moving due spread captures to the queue failed: %s", exc)
            if conn is not None:
                conn.release()
            conn = None
