"""The bulk writer puts on the queue what ``apply_async`` would, field for field (ids and times aside), and a real
worker runs what it wrote. A Celery or kombu upgrade that changes the message format fails here."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from kprofefe_tasks import tasks
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.pipeline import discovery
from kprofefe_tasks.worker import bulk, delayed, fanout
from kprofefe_tasks.worker.app import CAPTURE_QUEUE, app

pytestmark = pytest.mark.integration

VARYING_HEADERS = ("id", "root_id", "eta", "expires", "origin")
VARYING_PROPERTIES = ("correlation_id", "delivery_tag")


def _queued(client: redis.Redis) -> list[dict[str, Any]]:
    # LPUSH: the oldest message is at the right-hand end
    return [json.loads(raw) for raw in reversed(client.lrange(CAPTURE_QUEUE, 0, -1))]


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    message = json.loads(json.dumps(message))
    for key in VARYING_HEADERS:
        message["headers"].pop(key)
    for key in VARYING_PROPERTIES:
        message["properties"].pop(key)
    # apply_async copies these options into the properties too; no consumer reads them there
    for key in ("kwargsrepr", "expiration"):
        message["properties"].pop(key, None)
    return message


def _delayed(client: redis.Redis) -> list[tuple[dict[str, Any], float]]:
    """The spread messages waiting in the delayed set, with when each is due (epoch seconds), earliest first."""
    return [
        (json.loads(raw), score) for raw, score in client.zrange(delayed.key(CAPTURE_QUEUE), 0, -1, withscores=True)
    ]


def test_bulk_messages_match_apply_async(redis_client: redis.Redis) -> None:
    kwargs = {"target": {"namespace": "web", "pod": "api-0"}, "ptype": "heap", "round_id": "r1", "cpu_seconds": 10}
    before = datetime.now().astimezone()
    tasks.capture.apply_async(
        kwargs=kwargs, kwargsrepr="web/api-0 heap", queue=CAPTURE_QUEUE, expires=60, ignore_result=True
    )
    published = bulk.publish(
        app,
        tasks.capture.name,
        CAPTURE_QUEUE,
        [bulk.Message(kwargs=kwargs, kwargsrepr="web/api-0 heap", expires=60)],
    )
    assert published == 1
    reference, ours = _queued(redis_client)

    assert _comparable(ours) == _comparable(reference)
    assert base64.b64decode(ours["body"]) == base64.b64decode(reference["body"])
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert ours["properties"]["delivery_tag"] != ours["headers"]["id"]
    for message in (reference, ours):
        assert message["headers"]["eta"] is None
        expires = datetime.fromisoformat(message["headers"]["expires"])
        assert timedelta(seconds=55) < expires - before < timedelta(seconds=70)


def test_a_spread_message_waits_in_the_delayed_set_without_an_eta_and_is_moved_once_when_due(
    redis_client: redis.Redis,
) -> None:
    kwargs = {"target": {"namespace": "web", "pod": "api-0"}, "ptype": "heap", "round_id": "r1", "cpu_seconds": 10}
    start = time.time()
    messages = [bulk.Message(kwargs=kwargs, kwargsrepr="web/api-0 heap", countdown=c, expires=c + 60) for c in (5, 9)]
    assert bulk.publish(app, tasks.capture.name, CAPTURE_QUEUE, messages) == 2
    assert _queued(redis_client) == []  # nothing a worker could take (and hold) yet
    waiting = _delayed(redis_client)
    assert [round(due - start) for _, due in waiting] == [5, 9]
    for message, due in waiting:
        assert message["headers"]["eta"] is None  # a worker runs it as soon as it has it
        expires = datetime.fromisoformat(message["headers"]["expires"]).timestamp()
        assert abs(expires - due - 60) < 1  # absolute: the interval after it is due, as with an eta
    # what is due moves to the queue in due order, once, however many workers run the script
    assert delayed.promote(redis_client, CAPTURE_QUEUE, now=start) == 0
    assert delayed.promote(redis_client, CAPTURE_QUEUE, now=start + 6) == 1
    assert delayed.promote(redis_client, CAPTURE_QUEUE, now=start + 6) == 0
    assert delayed.promote(redis_client, CAPTURE_QUEUE, now=start + 10) == 1
    moved = _queued(redis_client)
    assert [m["headers"]["id"] for m in moved] == [m["headers"]["id"] for m, _ in waiting]
    assert delayed.waiting(redis_client, CAPTURE_QUEUE) == 0


def test_bulk_keeps_order_and_splits_batches(redis_client: redis.Redis) -> None:
    messages = [bulk.Message(kwargs={"n": n}, kwargsrepr=str(n)) for n in range(7)]
    assert bulk.publish(app, tasks.capture.name, CAPTURE_QUEUE, messages, batch=3) == 7
    queued = _queued(redis_client)
    assert [json.loads(base64.b64decode(m["body"]))[1]["n"] for m in queued] == list(range(7))
    assert all(m["headers"]["eta"] is None and m["headers"]["expires"] is None for m in queued)
    assert len({m["headers"]["id"] for m in queued}) == 7


def test_bulk_is_only_for_redis_without_sent_events() -> None:
    assert bulk.supported(app) == (not app.conf.task_send_sent_event)
    with _Override(app, broker_url="amqp://guest@127.0.0.1//"):
        assert not bulk.supported(app)
    with _Override(app, task_send_sent_event=True):
        assert not bulk.supported(app)


class _Override:
    """Change app settings for a block and put them back."""

    def __init__(self, celery_app: Any, **changes: Any) -> None:
        self.app, self.changes, self.saved = celery_app, changes, {}

    def __enter__(self) -> None:
        for key, value in self.changes.items():
            self.saved[key] = self.app.conf[key]
            self.app.conf[key] = value

    def __exit__(self, *_: Any) -> None:
        for key, value in self.saved.items():
            self.app.conf[key] = value


@pytest.mark.parametrize("sent_events", [False, True], ids=["bulk", "apply_async"])
def test_fan_out_queues_cpu_first_the_same_on_both_paths(redis_client: redis.Redis, sent_events: bool) -> None:
    targets = [
        Target(
            namespace="web",
            pod=f"api-{n}",
            uid=f"uid-{n}",
            ip=f"127.31.9.{n + 1}",
            port=6060,
            path="/debug/pprof",
            service="api",
            container="app",
            node="node-a",
            types=("heap", "cpu", "goroutine"),
            labels=(("team", "x"),),
        )
        for n in range(3)
    ]
    before = datetime.now().astimezone()
    with _Override(app, task_send_sent_event=sent_events):
        assert bulk.supported(app) == (not sent_events)
        queued = fanout.fan_out(tasks.app, targets, round_id="r9", cpu_seconds=7, expires_in=120, spread_window=30)
    assert queued == 9
    if sent_events:  # apply_async: Celery ETA tasks on the queue
        messages = _queued(redis_client)
        dues = [datetime.fromisoformat(m["headers"]["eta"]).timestamp() for m in messages]
    else:  # bulk: the spread ones wait in the delayed set, scored with when they are due; none has an eta
        entries = _delayed(redis_client)
        assert len(entries) == 9 and _queued(redis_client) == [], "every offset in a 30 s window is > 0 here"
        entries.sort(key=lambda entry: json.loads(base64.b64decode(entry[0]["body"]))[1]["ptype"] != "cpu")
        assert all(m["headers"]["eta"] is None for m, _ in entries)
        messages, dues = [m for m, _ in entries], [due for _, due in entries]
    bodies = [json.loads(base64.b64decode(m["body"]))[1] for m in messages]
    expected_order = [
        *[(f"api-{n}", "cpu") for n in range(3)],
        *[(f"api-{n}", t) for n in range(3) for t in ("heap", "goroutine")],
    ]
    pairs = [(b["target"]["pod"], b["ptype"]) for b in bodies]
    assert pairs == expected_order if sent_events else sorted(pairs) == sorted(expected_order)
    assert all(b["round_id"] == "r9" and b["cpu_seconds"] == 7 for b in bodies)
    assert Target.from_dict(bodies[0]["target"]) == targets[0]
    for message, body, due in zip(messages, bodies, dues, strict=True):
        headers = message["headers"]
        assert headers["task"] == "kprofefe.capture"
        assert headers["ignore_result"] is True
        assert body["target"]["pod"] in headers["kwargsrepr"]
        # spread: a stable offset within the window, and the message expires that long after it is due
        offset = discovery.spread_offset(f"web/{body['target']['pod']}/{body['ptype']}", 30)
        expires = datetime.fromisoformat(headers["expires"]).timestamp()
        assert abs(due - before.timestamp() - offset) < 2
        assert abs(expires - due - 120) < 1


def test_message_bodies_are_json_dumps_byte_for_byte() -> None:
    shared = {"namespace": "wéb", "labels": [["tier", "front\nend"]], "port": 6060}
    cases = [
        {"target": shared, "ptype": "cpu", "round_id": "r1", "cpu_seconds": 30},
        {"target": shared, "ptype": "heap", "round_id": "", "cpu_seconds": 0},
        {"flag": True, "none": None, "ratio": 0.25, "big": 2**70, "quote": 'a"b\\c', "emoji": "🔥", "list": [1, "x"]},
        {},
    ]
    encoded = list(bulk.encode(app, tasks.capture.name, CAPTURE_QUEUE, [bulk.Message(k, "") for k in cases]))
    for kwargs, (task_id, wire) in zip(cases, encoded, strict=True):
        message = json.loads(wire)
        assert base64.b64decode(message["body"]).decode() == json.dumps([[], kwargs, bulk._EMBED])
        assert message["headers"]["id"] == task_id


class FlakyRedis:
    """A stand-in for the broker client whose first ``failures`` LPUSH calls break like a dropped connection."""

    def __init__(self, failures: int, applied_before_failing: bool = False) -> None:
        self.failures = failures
        self.applied_before_failing = applied_before_failing
        self.lists: dict[str, list[str]] = {}
        self.calls = 0

    def lpush(self, key: str, *values: str) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            if self.applied_before_failing:
                self.lists.setdefault(key, []).extend(values)
            raise redis.ConnectionError("Connection reset by peer")
        self.lists.setdefault(key, []).extend(values)
        return len(self.lists[key])


FAST = {"max_retries": 3, "interval_start": 0.0, "interval_step": 0.01, "interval_max": 0.02}


def test_a_batch_is_sent_again_after_a_connection_error() -> None:
    client = FlakyRedis(failures=2)
    wires = ["a", "b", "c"]
    assert bulk.push(client, "capture", wires, FAST) == 3
    assert client.calls == 3 and client.lists == {"capture": ["a", "b", "c"]}
    assert wires == []  # handed over: the caller's buffer is free for the next batch


def test_sending_again_is_at_least_once_and_gives_up_after_the_policy() -> None:
    twice = FlakyRedis(failures=1, applied_before_failing=True)  # applied, but the reply was lost
    bulk.push(twice, "capture", ["a"], FAST)
    assert twice.lists == {"capture": ["a", "a"]}  # queued twice; the ledger usually makes one a `duplicate`

    down = FlakyRedis(failures=10)
    with pytest.raises(redis.ConnectionError):
        bulk.push(down, "capture", ["a"], FAST)
    assert down.calls == 4  # the first try and max_retries more
