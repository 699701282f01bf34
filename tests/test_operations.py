"""What operators look at: a worker's /metrics after a round, JSON logs, Flower's view of a round, and a round
with RabbitMQ as the broker (Redis kept for locks and limits)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import redis
import requests
from celery import Celery
from kprofefe_sandbox.farm import Behavior
from kprofefe_sandbox.kubeapi import make_pod
from kprofefe_sandbox.processes import CeleryProcess, free_port

from kprofefe_tasks import logs, tasks
from tests.conftest import Stack

pytestmark = pytest.mark.integration

ENABLE = {"profefe.com/enable": "true"}
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def add_pods(stack: Stack) -> None:
    good = stack.farm.add("127.31.6.1", 6060)
    bad = stack.farm.add("127.31.6.2", 6060, behavior=Behavior.HTML)
    stack.kube.add_pod(make_pod("good", "web", annotations=ENABLE, ip=good.host))
    stack.kube.add_pod(make_pod("bad", "web", annotations=ENABLE, ip=bad.host))
    stack.kube.add_pod(make_pod("unready", "web", annotations=ENABLE, ip="127.31.6.3", ready=False))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_after_a_round_show_counts_by_type_and_outcome_and_logs_are_json(stack: Stack) -> None:
    add_pods(stack)
    port = free_port()
    worker = stack.worker(KPROFEFE_METRICS_PORT=port, KPROFEFE_LOG_FORMAT="json", KPROFEFE_CAPTURE_RETRIES=0)
    summary = tasks.discover.delay(types=["heap", "goroutine"]).get(timeout=30)
    report = tasks.wait_round(summary["round"], timeout=60)
    assert report["ok"] == 2 and report["failed"] == 2, report

    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok\n"
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert metric(text, "kprofefe_captures_total", type="heap", outcome="ok") == 1
    assert metric(text, "kprofefe_captures_total", type="goroutine", outcome="ok") == 1
    assert metric(text, "kprofefe_captures_total", type="heap", outcome="failed", reason="invalid-html") == 1
    assert metric(text, "kprofefe_targets_discovered_total") == 2
    assert metric(text, "kprofefe_targets_skipped_total", reason="not-ready") == 1
    assert metric(text, "kprofefe_capture_duration_seconds_count", type="heap") == 1
    assert metric(text, "kprofefe_profile_bytes_total", type="heap") > 0

    outcome_lines = []
    for line in worker.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("outcome") and record.get("type"):
                outcome_lines.append(record)
    assert {(r["pod"], r["type"], r["outcome"]) for r in outcome_lines} >= {
        ("good", "heap", "ok"),
        ("good", "goroutine", "ok"),
        ("bad", "heap", "failed"),
    }
    assert all(r["namespace"] == "web" for r in outcome_lines)
    # one line per capture, ours: Celery's per-task INFO lines (received, succeeded with the result's repr) are off
    loggers = {json.loads(line)["logger"] for line in worker.output().splitlines() if line.startswith("{")}
    assert not loggers & set(logs.CELERY_PER_TASK_LOGGERS), loggers
    assert "kprofefe.tasks" in loggers


def test_celery_per_task_lines_come_back_at_debug() -> None:
    try:
        logs.install("DEBUG", "text", logging.getLogger("kprofefe-test"))
        # NOTSET: they follow the worker's logger again, which is at DEBUG
        assert all(logging.getLogger(n).level == logging.NOTSET for n in logs.CELERY_PER_TASK_LOGGERS)
        logs.install("INFO", "text", logging.getLogger("kprofefe-test"))
        assert all(logging.getLogger(n).level == logging.WARNING for n in logs.CELERY_PER_TASK_LOGGERS)
    finally:
        for name in logs.CELERY_PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_flower_lists_the_rounds_tasks(stack: Stack) -> None:
    add_pods(stack)
    stack.worker()
    port = free_port()
    flower = CeleryProcess(
        "flower",
        ["flower", f"--port={port}", "--address=127.0.0.1"],
        stack.env(FLOWER_BASIC_AUTH="ops:s3cret"),
        stack.tmp / "flower.log",
    )
    stack.processes.append(flower)
    flower.start(timeout=60)
    discovery = tasks.discover.delay(types=["heap"])
    summary = discovery.get(timeout=30)
    tasks.wait_round(summary["round"], timeout=60)

    url = f"http://127.0.0.1:{port}/api/tasks"
    assert requests.get(url, timeout=5).status_code == 401  # authentication from the environment is enforced
    deadline = time.monotonic() + 30
    found: list[dict] = []
    while time.monotonic() < deadline:
        listing = requests.get(url, auth=("ops", "s3cret"), timeout=5).json()
        found = [
            t
            for t in listing.values()
            if t.get("name") == "kprofefe.capture" and summary["round"] in str(t.get("kwargs"))
        ]
        discovered = listing.get(discovery.id, {}).get("state") == "SUCCESS"
        if discovered and len(found) == 2 and all(t.get("state") == "SUCCESS" for t in found):
            break
        time.sleep(0.5)
    assert len(found) == 2, (found, flower.output()[-2000:])
    assert all(t["state"] == "SUCCESS" for t in found)
    assert listing[discovery.id]["state"] == "SUCCESS"


def test_task_events_of_a_round_all_arrive_in_batches(stack: Stack, redis_client: redis.Redis) -> None:
    for n in range(10):
        target = stack.farm.add(f"127.31.6.{20 + n}", 6060)
        stack.kube.add_pod(make_pod(f"api-{n}", "web", annotations=ENABLE, ip=target.host))
    stack.worker()
    seen: list[dict] = []
    wire = redis_client.pubsub()  # the raw event messages, to see how they travel
    wire.psubscribe("*celeryev*")

    with tasks.app.connection_for_read() as conn:
        receiver = tasks.app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": 60}, daemon=True)
        thread.start()
        time.sleep(1.0)  # the receiver's queue is bound
        summary = tasks.discover.delay(types=["heap", "goroutine", "threadcreate"]).get(timeout=30)
        report = tasks.wait_round(summary["round"], timeout=60)
        assert report["ok"] == 30, report
        deadline = time.monotonic() + 10
        received: set[str] = set()
        succeeded: set[str] = set()
        while time.monotonic() < deadline:
            succeeded = {e["uuid"] for e in seen if e["type"] == "task-succeeded"}
            received = {e["uuid"] for e in seen if e["type"] == "task-received" and e.get("name") == "kprofefe.capture"}
            if len(received) == 30 and received <= succeeded:
                break
            time.sleep(0.2)
        receiver.should_stop = True
    assert len(received) == 30, (len(received), stack.logs()[-3000:])
    assert received <= succeeded  # every capture received was also seen succeeding: no event lost

    routing_keys = []
    while (message := wire.get_message(timeout=0.1)) is not None:
        if message["type"] == "pmessage":
            routing_keys.append(json.loads(message["data"])["properties"]["delivery_info"]["routing_key"])
    wire.close()
    assert "task.multi" in routing_keys, routing_keys  # batches, in Celery's own task.multi format
    assert "task.received" not in routing_keys and "task.succeeded" not in routing_keys  # not one message each


def test_a_round_with_rabbitmq_as_the_broker(stack: Stack) -> None:
    add_pods(stack)
    worker = stack.worker(KPROFEFE_BROKER_URL=RABBITMQ)
    # the test process's app points at Redis; send through a RabbitMQ-backed client as an operator would
    client = Celery(broker=RABBITMQ)
    client.conf.task_routes = {"kprofefe.discover": {"queue": "discovery"}}
    deadline = time.monotonic() + 60
    before = set(stack.profefe.profiles and [p.id for p in stack.profefe.profiles])
    client.send_task("kprofefe.discover", kwargs={"namespaces": ["web"], "types": ["heap"]}, queue="discovery")
    # both captures end with their line: the good one stored, the HTML one failed; nothing else is in flight then
    while not ("capture ok web/good heap" in worker.output() and "capture failed web/bad heap" in worker.output()):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    stored = [p for p in stack.profefe.profiles if p.id not in before]
    assert [(p.labels["pod"], p.type) for p in stored] == [("good", "heap")], stack.logs()


def test_grafana_dashboard_queries_only_metrics_the_workers_export() -> None:
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY

    import kprofefe_tasks.metrics  # noqa: F401  (registers the metrics)

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {m.name + sfx for m in REGISTRY.collect() for sfx in suffixes.get(m.type, ("",))}
    dashboard = json.loads((Path(__file__).parent.parent / "deploy/grafana/kprofefe-dashboard.json").read_text())
    used = {name for p in dashboard["panels"] for t in p["targets"] for name in re.findall(r"kprofefe_\w+", t["expr"])}
    assert used and used <= exported, used - exported
