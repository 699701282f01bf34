"""Task events in batches from gevent and threads workers, as Celery already sends them from prefork workers.

A worker with task events on publishes three per capture (``task-received``, ``task-started``, ``task-succeeded``),
each a Redis PUBLISH with its own message: 15% of a capture worker's CPU in bench/ (py-spy, RESULTS.md). Celery's
event dispatcher can buffer the ``task`` group and publish it as one ``task.multi`` message, and it does so for
pools with an event loop (prefork); for gevent and threads there is no loop to flush the buffer, so Celery sends
each event at once. This consumer step turns the buffer on for those pools and flushes it from a thread: every
``FLUSH_INTERVAL`` seconds, or as soon as ``BATCH`` events are waiting. Flower and ``celery events`` read
``task.multi`` like any other event (Celery's event receiver unpacks it); they see each event up to
``FLUSH_INTERVAL`` later.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger("kprofefe.events")

BATCH = 64  # events per task.multi message: about 20 captures' worth
FLUSH_INTERVAL = 0.5  # s an event may wait in the buffer


class TaskEventBatches(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: buffer task events and flush them in batches (only where Celery does not)."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        # Events.start builds a new dispatcher at every (re)connection; this step runs after it each time.
        dispatcher = c.event_dispatcher
        if c.hub is not None or dispatcher is None or not dispatcher.enabled:
            return  # an event-loop pool buffers by itself; or events are off
        if dispatcher.groups and "task" not in dispatcher.groups:
            return  # task events off: only worker heartbeats, which must not wait
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.buffer_limit = BATCH
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._flush_forever, args=(c,), name="kprofefe-task-events", daemon=True
            )
            self._thread.start()

    def stop(self, c: Any) -> None:
        self._flush(c)  # before the connection goes: events of tasks that just ended

    def shutdown(self, c: Any) -> None:
        self._stop.set()
        self._flush(c)

    def _flush_forever(self, c: Any) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self._flush(c)

    @staticmethod
    def _flush(c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.flush(errors=False, groups=True)
        except Exception as exc:  # monitoring only: never take the worker down; the next flush tries again
            log.warning("task events not sent: %s", exc)
