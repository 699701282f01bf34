"""Queueing a round's captures in bulk on a Redis broker: Celery's own messages, written in pipelined batches.

``apply_async`` costs about 170 µs of CPU per message even batched (bench/RESULTS.md: signals, routing, an
``AsyncResult`` per message, kombu's per-publish path), so a 10,000-pod round of 60,000 captures took 10 s to queue
before a single capture could start. Here the fixed parts of a message are built once per round, through Celery's
own ``as_task_v2``, and each message only gets its id, times and arguments: a few tens of µs.

What is written is exactly what ``apply_async`` + kombu's Redis transport would write (protocol 2, JSON, base64
body, ``delivery_mode`` 2, the anonymous exchange routed to the queue by name). ``tests/test_bulk.py`` holds the two
side by side, so a Celery or kombu upgrade that changes the format fails there, not in production. Not used for an
AMQP broker, nor when ``task-sent`` events are wanted: those go through ``apply_async`` (see ``tasks.fan_out``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery

#: the part of a protocol-2 body after args and kwargs: no callbacks, errbacks, chain or chord
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class Message:
    """One task to queue: its keyword arguments, what Flower shows for them, and its delay and lifetime."""

    kwargs: dict[str, Any]
    kwargsrepr: str
    countdown: float = 0.0  # s from now before a worker may run it (Celery's ``eta``)
    expires: float = 0.0  # s from now after which a worker discards it unrun (0: never)


def supported(app: Celery) -> bool:
    """Whether this app's broker is Redis and nobody asked for a ``task-sent`` event per message."""
    url = str(app.conf.broker_url or "")
    return url.startswith(("redis://", "rediss://", "unix://")) and not app.conf.task_send_sent_event


def _envelope(app: Celery, task_name: str, queue: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Headers and properties shared by every message of a batch, from Celery's own message builder."""
    headers, properties, _, _ = app.amqp.as_task_v2(
        "",
        task_name,
        args=(),
        kwargs={},
        ignore_result=True,
        argsrepr="()",
        kwargsrepr="",
        reply_to=app.thread_oid,  # as apply_async sets it
    )
    properties = {
        **properties,
        "delivery_mode": 2,  # persistent, as kombu marks Celery's task messages
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
    }
    return headers, properties


def encode(
    app: Celery, task_name: str, queue: str, messages: Iterable[Message], now: datetime | None = None
) -> Iterator[tuple[str, str]]:
    """``(task id, wire message)`` for each message, in order."""
    headers, properties = _envelope(app, task_name, queue)
    now = now or datetime.now(UTC)
    dumps = json.dumps
    for message in messages:
        task_id = str(uuid.uuid4())
        body = dumps([[], message.kwargs, _EMBED]).encode()
        eta = (now + timedelta(seconds=message.countdown)).isoformat() if message.countdown > 0 else None
        expires = (now + timedelta(seconds=message.expires)).isoformat() if message.expires > 0 else None
        wire = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                **headers,
                "id": task_id,
                "root_id": task_id,
                "eta": eta,
                "expires": expires,
                "kwargsrepr": message.kwargsrepr,
            },
            "properties": {**properties, "correlation_id": task_id, "delivery_tag": str(uuid.uuid4())},
        }
        yield task_id, dumps(wire)


def publish(app: Celery, task_name: str, queue: str, messages: Iterable[Message], batch: int = 500) -> int:
    """Queue every message on ``queue``, ``batch`` per Redis round trip, in order; returns how many.

    A failure part way raises after the batches already written: those captures run, the rest do not (as when a
    discovery dies in ``apply_async``); the round's counters then show fewer done than expected.
    """
    count = 0
    with app.producer_or_acquire() as producer:
        producer.maybe_declare(app.amqp.queues[queue])  # the binding kombu's consumers look up
        client = producer.channel.client  # kombu's own Redis client: same URL, pool and transport options
        pipe = client.pipeline(transaction=False)
        pending = 0
        for _, wire in encode(app, task_name, queue, messages):
            # LPUSH, like kombu: workers BRPOP from the other end, so the first queued is the first run
            pipe.lpush(queue, wire)
            pending += 1
            count += 1
            if pending >= batch:
                pipe.execute()
                pending = 0
        if pending:
            pipe.execute()
    return count
