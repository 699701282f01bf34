"""The Redis sizing figures (kprofefe_tasks.config.sizing), measured on the real Redis, and deploy/ built from them.

A figure that grows past what sizing.py says fails here: the README's table and deploy/base's ``maxmemory`` would
then promise room that is not there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import yaml
from kombu import Connection

from kprofefe_tasks.config import sizing
from kprofefe_tasks.coordination.rounds import Rounds
from kprofefe_tasks.domain.delivery import capture_id_for
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.worker import delayed, fanout
from kprofefe_tasks.worker.app import CAPTURE_QUEUE, app
from tests.conftest import TEST_BROKER

ROOT = Path(__file__).resolve().parent.parent
PODS = 300


def realistic_target(i: int) -> Target:
    """Names and labels as long as a real cluster's: a Deployment's pod with node, container and version."""
    namespace, pod = "payments-prod", f"checkout-api-7c9d8f6b5-{i:05d}"
    labels = {
        "namespace": namespace,
        "pod": pod,
        "container": "checkout-api",
        "node": f"gke-prod-europe-west1-pool-2-{i:08x}",
        "version": "2024.11.3",
        "from": "kprofefe-tasks",
    }
    return Target(
        namespace=namespace,
        pod=pod,
        uid=f"3f2a9c1e-5b7d-4e8f-9a0b-{i:012d}",
        ip=f"10.244.{i // 250}.{i % 250 + 1}",
        port=6060,
        path="/debug/pprof",
        service="checkout-api",
        container="checkout-api",
        node=labels["node"],
        types=("cpu", "heap", "block", "mutex", "goroutine", "threadcreate"),
        labels=tuple(sorted(labels.items())),
    )


@pytest.mark.integration
def test_a_queued_capture_a_delayed_one_and_a_held_one_fit_the_sizing_figure(redis_client: redis.Redis) -> None:
    targets = [realistic_target(i) for i in range(PODS)]
    # spread: every capture waits for its offset in the delayed set (a sorted set: more bytes than a list entry)
    spread = fanout.fan_out(app, targets, round_id="0123456789ab", cpu_seconds=30, expires_in=600, spread_window=300)
    assert spread == PODS * 6
    waiting = redis_client.memory_usage(delayed.key(CAPTURE_QUEUE), samples=0)
    assert waiting is not None
    per_delayed = waiting / spread
    assert per_delayed <= sizing.QUEUED_CAPTURE_BYTES, per_delayed
    redis_client.delete(delayed.key(CAPTURE_QUEUE))

    queued = fanout.fan_out(app, targets, round_id="0123456789ab", cpu_seconds=30, expires_in=600)
    listed = redis_client.memory_usage(CAPTURE_QUEUE, samples=0)
    assert listed is not None
    per_queued = listed / queued
    assert per_queued <= sizing.QUEUED_CAPTURE_BYTES, per_queued

    # a worker holding them (running, or an ETA capture of apply_async): kombu's unacked hash and index
    with Connection(TEST_BROKER) as conn:
        held = conn.SimpleQueue(CAPTURE_QUEUE, no_ack=False)
        messages = [held.get(block=False) for _ in range(queued)]
        assert len(messages) == queued
        unacked = sum(redis_client.memory_usage(k, samples=0) or 0 for k in ("unacked", "unacked_index"))
        per_held = unacked / queued
        assert per_held <= sizing.QUEUED_CAPTURE_BYTES, per_held
        held.close()
    print(f"bytes per capture: queued {per_queued:.0f}, delayed {per_delayed:.0f}, held {per_held:.0f}")


@pytest.mark.integration
def test_a_running_rounds_ledger_fits_the_sizing_figure(redis_client: redis.Redis) -> None:
    rounds = Rounds(redis_client, fallback_ttl=600)
    targets = [realistic_target(i) for i in range(PODS)]
    ids = [capture_id_for("0123456789ab", t.namespace, t.pod, ptype) for t in targets for ptype in t.types]
    rounds.start("0123456789ab", 3600, expected=len(ids) + 1)
    for n, capture in enumerate(ids):
        rounds.begin(capture, 0)
        rounds.mark_delivered(capture, f"cnq7b4k3d9s0v{n:07d}")  # as long as a profefe id
        rounds.count_final(capture, "ok")
    used = redis_client.memory_usage(Rounds.captures_key("0123456789ab"), samples=0)
    assert used is not None
    assert used / len(ids) <= sizing.LEDGER_CAPTURE_BYTES, used / len(ids)


def _redis_container() -> dict:
    docs = list(yaml.safe_load_all((ROOT / "deploy/base/redis.yaml").read_text()))
    deployment = next(d for d in docs if d and d.get("kind") == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deploy_base_redis_is_sized_by_the_formula() -> None:
    container = _redis_container()
    args = container["args"]
    assert args[args.index("--maxmemory") + 1] == f"{sizing.maxmemory_mb(sizing.BASE_PODS)}mb"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert container["resources"]["limits"]["memory"] == f"{sizing.container_limit_mi(sizing.BASE_PODS)}Mi"


def test_the_readme_sizing_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index(sizing.BEGIN) + len(sizing.BEGIN)
    assert text[start : text.index(sizing.END)].strip() == sizing.markdown_table()


def test_the_formula() -> None:
    per_pod = 2 * 6 * (sizing.QUEUED_CAPTURE_BYTES + sizing.LEDGER_CAPTURE_BYTES)
    assert sizing.bytes_per_pod() == per_pod
    assert sizing.redis_maxmemory(10_000) == int((sizing.BASE_BYTES + 10_000 * per_pod) * sizing.HEADROOM)
    assert sizing.maxmemory_mb(10_000) * sizing.MIB >= sizing.redis_maxmemory(10_000)
    assert sizing.container_limit_mi(10_000) >= sizing.maxmemory_mb(10_000) * sizing.CONTAINER_OVER_MAXMEMORY
