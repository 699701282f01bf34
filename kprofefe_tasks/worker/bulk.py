"""Queueing a round's captures in bulk on a Redis broker: Celery's own messages, 500 per Redis command.

``apply_async`` costs 255-295 µs of CPU per message here even with kombu's publish batches (signals, routing, an
``AsyncResult`` and a ``task-sent`` event per message, kombu's per-publish path), so a 10,000-pod round of 60,000
captures took about 17 s to queue before its last capture could start. Here the fixed part of a message is encoded
once per round, from Celery's own ``as_task_v2``, and each message only gets its id, times and arguments: about
20 µs (``python -m bench discovery`` prints both, side by side).

What is written is what ``apply_async`` + kombu's Redis transport would write (protocol 2, JSON, base64 body,
``delivery_mode`` 2, the anonymous exchange routed to the queue by name). ``tests/test_bulk.py`` holds the two
side by side, so a Celery or kombu upgrade that changes the format fails there, not in production. Not used for an
AMQP broker, nor when ``task-sent`` events are wanted: those go through ``apply_async`` (see ``tasks.fan_out``).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery

from kprofefe_tasks.worker import delayed

log = logging.getLogger("kprofefe.bulk")

_dumps = json.dumps
_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps does to a str (ensure_ascii, the default)
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
    """Whether this app's broker is Redis, nobody asked for a ``task-sent`` event per message, and the installed
    Celery and kombu are the versions this message format was written for (:mod:`kprofefe_tasks.worker.compat`)."""
    url = str(app.conf.broker_url or "")
    fast = bool(app.conf.get("kprofefe_fast_paths", False))
    return fast and url.startswith(("redis://", "rediss://", "unix://")) and not app.conf.task_send_sent_event


def _template(app: Celery, task_name: str, queue: str) -> tuple[list[str], list[str]]:
    """The wire message as JSON text with holes: ``(pieces, slots)``, where a message is ``pieces[0]``, its value
    for ``slots[0]``, ``pieces[1]``, ... The fixed parts come from Celery's own message builder, so the text is what
    ``json.dumps`` of kombu's envelope gives, without encoding the same 40 header fields 60,000 times."""
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
    hole = "\x00{}\x00".format
    wire = {
        "body": hole("body"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            **headers,
            **{name: hole(name) for name in ("id", "root_id", "eta", "expires", "kwargsrepr")},
        },
        "properties": {
            **properties,
            "correlation_id": hole("correlation_id"),
            "delivery_mode": 2,  # persistent, as kombu marks Celery's task messages
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": hole("delivery_tag"),
        },
    }
    parts = re.split(r'"\\u0000(\w+)\\u0000"', _dumps(wire))
    return parts[0::2], parts[1::2]


def _kwargs_json(kwargs: dict[str, Any], keys: dict[str, str], shared: dict[int, tuple[Any, str]]) -> str:
    """``json.dumps(kwargs)``, byte for byte, with each dict or list value encoded once however many messages share
    it (a target's six captures share its payload: most of a message's bytes) and keys encoded once per batch."""
    parts = []
    for key, value in kwargs.items():
        key_text = keys.get(key)
        if key_text is None:
            key_text = keys[key] = _dumps(key)
        if type(value) is str:
            text = _encode_str(value)
        elif type(value) is int:  # not bool: json writes true/false
            text = str(value)
        elif isinstance(value, dict | list):
            hit = shared.get(id(value))
            if hit is None or hit[0] is not value:  # the same object, not one that reused a dead one's id
                hit = shared[id(value)] = (value, _dumps(value))
            text = hit[1]
        else:
            text = _dumps(value)
        parts.append(f"{key_text}: {text}")
    return "{" + ", ".join(parts) + "}"


def encode(
    app: Celery, task_name: str, queue: str, messages: Iterable[Message], now: datetime | None = None
) -> Iterator[tuple[str, str]]:
    """``(task id, wire message)`` for each message, in order."""
    pieces, slots = _template(app, task_name, queue)
    now = now or datetime.now(UTC)
    embed = _dumps(_EMBED)
    keys: dict[str, str] = {}
    shared: dict[int, tuple[Any, str]] = {}
    for message in messages:
        task_id = str(uuid.uuid4())
        body = f"[[], {_kwargs_json(message.kwargs, keys, shared)}, {embed}]".encode()  # = dumps([[], kwargs, _EMBED])
        task_json = _encode_str(task_id)
        values = {
            "body": '"' + base64.b64encode(body).decode() + '"',
            "id": task_json,
            "root_id": task_json,
            "correlation_id": task_json,
            "eta": _time(now, message.countdown),
            "expires": _time(now, message.expires),
            "kwargsrepr": _encode_str(message.kwargsrepr),
            "delivery_tag": _encode_str(str(uuid.uuid4())),
        }
        out = [pieces[0]]
        for slot, piece in zip(slots, pieces[1:], strict=True):
            out.append(values[slot])
            out.append(piece)
        yield task_id, "".join(out)


def _time(now: datetime, seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from ``now`` as JSON, or ``null`` for none (Celery's eta and expires)."""
    return f'"{(now + timedelta(seconds=seconds)).isoformat()}"' if seconds > 0 else "null"


def publish(app: Celery, task_name: str, queue: str, messages: Iterable[Message], batch: int = 500) -> int:
    """Queue every message on ``queue``, ``batch`` per Redis command, in order; returns how many.

    A message with a ``countdown`` is not given Celery's ``eta``: it waits in Redis, in the delayed set
    (:mod:`~kprofefe_tasks.worker.delayed`), scored with the time it is due, and workers move it to the queue then;
    so no worker holds it unacknowledged meanwhile. Its ``expires`` is absolute, counted from now as before.

    A batch that fails on a connection error is sent again, as Celery's publish retry policy says
    (``task_publish_retry_policy``: by default 3 more tries within about a second). Sending again is at least once:
    if Redis had applied the batch before the connection broke, its captures are queued twice, a batch apart. The
    second copy usually starts after the first is stored, and the delivery ledger makes it a ``duplicate`` outcome;
    two copies running at the same moment can both store a profile (``apply_async``'s retries have the same
    window). When the retries run out the error propagates: the batches already written run, the rest of the round
    does not, and the round's counters show fewer done than expected.
    """
    policy = {**DEFAULT_RETRY_POLICY, **(app.conf.task_publish_retry_policy or {})}
    count = 0
    start = time.time()
    countdowns: deque[float] = deque()

    def without_eta() -> Iterator[Message]:
        for message in messages:
            countdowns.append(message.countdown)
            yield replace(message, countdown=0.0) if message.countdown > 0 else message

    with app.producer_or_acquire() as producer:
        producer.maybe_declare(app.amqp.queues[queue])  # the binding kombu's consumers look up
        client = producer.channel.client  # kombu's own Redis client: same URL, pool and transport options
        pending: list[str] = []
        due: dict[str, float] = {}  # spread messages -> when due: scores of the delayed set
        for _, wire in encode(app, task_name, queue, without_eta(), now=datetime.fromtimestamp(start, UTC)):
            countdown = countdowns.popleft()
            if countdown > 0:
                due[wire] = start + countdown
                if len(due) >= batch:
                    count += push(client, delayed.key(queue), due, policy)
            else:
                pending.append(wire)
                if len(pending) >= batch:
                    count += push(client, queue, pending, policy)
        count += push(client, queue, pending, policy)
        count += push(client, delayed.key(queue), due, policy)
    return count


DEFAULT_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 1.0}


def push(
    client: Any, queue: str, wires: list[str] | dict[str, float], policy: dict[str, Any] = DEFAULT_RETRY_POLICY
) -> int:
    """One ``LPUSH queue m1 m2 ...`` (the same list as one LPUSH per message, kombu's way, in one command; workers
    BRPOP from the other end, so ``m1`` still runs first), or for a dict of message -> due time one ``ZADD`` to a
    delayed set; retried on connection errors; empties ``wires``."""
    if not wires:
        return 0
    wait = float(policy["interval_start"])
    for attempt in range(int(policy["max_retries"]) + 1):
        try:
            if isinstance(wires, dict):
                client.zadd(queue, wires)
            else:
                client.lpush(queue, *wires)
            break
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if attempt >= int(policy["max_retries"]):
                raise
            log.warning("queueing %d captures failed (%s); again in %.1fs", len(wires), exc, wait)
            time.sleep(wait)
            wait = min(wait + float(policy["interval_step"]), float(policy["interval_max"]))
    pushed = len(wires)
    wires.clear()
    return pushed
