"""Queueing a round: one capture message per (target, type), CPU first, each at its spread offset."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery

from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.pipeline.discovery import spread_offset
from kprofefe_tasks.worker import bulk
from kprofefe_tasks.worker.app import CAPTURE_QUEUE

CAPTURE_TASK = "kprofefe.capture"
FAN_OUT_BATCH = 500  # captures per Redis write when queueing a round (one LPUSH, about 1 MB of messages)


def fan_out(
    app: Celery,
    targets: Iterable[Target],
    *,
    round_id: str,
    cpu_seconds: int,
    expires_in: float,
    spread_window: float = 0.0,
) -> int:
    """Queue one capture per (target, type) over one broker connection, in pipelined batches; returns how many.

    CPU captures go first: each holds a pool slot for its whole window, so starting every window early is what lets
    a round end about one window after it began; the snapshot captures fill the remaining slots meanwhile.

    Per message this skips what a round never reads (bench/RESULTS.md measured each): a stored result (the round's
    counters and the metrics carry every outcome, and Celery would otherwise subscribe to each capture's result
    channel as it is sent) and one Redis round trip per message. On Redis without ``task-sent`` events the messages
    are written by :mod:`kprofefe_tasks.worker.bulk`; otherwise by ``apply_async`` in kombu's publish batches.
    """
    jobs = [(target, ptype) for target in targets for ptype in target.types]
    jobs.sort(key=lambda job: job[1] != "cpu")  # stable: listing order is kept within each group
    payloads: dict[str, dict[str, Any]] = {}

    def messages() -> Iterator[bulk.Message]:
        for target, ptype in jobs:
            payload = payloads.get(target.key)
            if payload is None:
                payload = payloads[target.key] = target.to_dict()
            countdown = spread_offset(f"{target.key}/{ptype}", spread_window)
            yield bulk.Message(
                kwargs={"target": payload, "ptype": ptype, "round_id": round_id, "cpu_seconds": cpu_seconds},
                # what Flower and the logs show; Celery's own repr of the target dict cost 14% of the fan-out
                kwargsrepr=f"{{'pod': '{target.key}', 'ptype': '{ptype}', 'round_id': '{round_id}'}}",
                countdown=countdown,
                expires=countdown + expires_in,
            )

    if method(app) == "bulk":
        return bulk.publish(app, CAPTURE_TASK, CAPTURE_QUEUE, messages(), batch=FAN_OUT_BATCH)
    queue = app.amqp.queues[CAPTURE_QUEUE]
    task = app.tasks[CAPTURE_TASK]
    with app.producer_or_acquire() as producer:
        producer.maybe_declare(queue)  # once, not once per message
        with producer.batch(max_size=FAN_OUT_BATCH):
            for message in messages():
                task.apply_async(
                    kwargs=message.kwargs,
                    kwargsrepr=message.kwargsrepr,
                    countdown=message.countdown or None,
                    expires=message.expires,
                    queue=queue,
                    declare=[],
                    producer=producer,
                    ignore_result=True,
                )
    return len(jobs)


def method(app: Celery) -> str:
    """How this app queues a round: ``bulk`` (our writer) or ``apply_async`` (stock Celery)."""
    return "bulk" if bulk.supported(app) else "apply_async"
