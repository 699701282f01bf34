"""Redis full: ``maxmemory`` reached with ``noeviction``, so every write is refused, the broker's included.

A private ``redis-server`` is filled mid-round (``CONFIG SET maxmemory 1``: writes refused, reads and deletes still
served, as a full Redis does). The profiles being taken when that happens must not be lost: their upload needs the
rate-limit bucket, which Redis refuses, so they go to the spool. The worker and beat stay up, say so in their logs
and metrics, and once Redis takes writes again the spool is delivered and the next round is complete, with every
profile stored exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from kprofefe_sandbox.processes import CeleryProcess, free_port

from tests.scrape import sample
from tests.test_chaos import Sandbox, open_sandbox, stored_counts, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with open_sandbox(tmp_path) as box:
        yield box


def refuses_writes(client: redis.Redis) -> bool:
    try:
        client.set("kprofefe-test:probe", "x")
    except redis.exceptions.OutOfMemoryError:
        return True
    client.delete("kprofefe-test:probe")
    return False


def metric(port: int, name: str, **labels: str) -> float:
    return sample(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, name, **labels)


def beat(sandbox: Sandbox, tmp: Path) -> CeleryProcess:
    """The real beat on the private Redis, firing an entry every 5 s (over a namespace with no pods, so its rounds
    do not change what this test counts; what matters is that it keeps firing through the outage)."""
    env = sandbox.stack.env(
        KPROFEFE_BROKER_URL=sandbox.redis.url,
        KPROFEFE_REDIS_URL=sandbox.redis.url,
        KPROFEFE_SCHEDULE="[{name: idle, namespaces: [nobody-here], interval: 5, cpu_seconds: 1, spread: false}]",
    )
    proc = CeleryProcess(
        "beat", ["beat", "-s", str(tmp / "beat-schedule"), "--loglevel", "INFO"], env, tmp / "beat.log"
    )
    sandbox.stack.processes.append(proc)
    return proc.start(wait=True)


@pytest.mark.timeout(240)
def test_a_full_redis_loses_no_profile_taken_and_everything_recovers_by_itself(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    targets = [sandbox.add_pod(f"api-{i}", host=f"127.77.9.{i}") for i in (1, 2, 3)]
    port = free_port()
    worker = sandbox.worker(KPROFEFE_METRICS_PORT=str(port))
    scheduler = beat(sandbox, tmp_path)
    wait_for(lambda: "(idle): " in worker.output(), 30, "beat's first round", sandbox.logs)

    sandbox.discover(namespaces=["chaos"], types=["cpu", "heap"], cpu_seconds=4)
    wait_for(
        lambda: sandbox.profefe.count(type="heap") == 3 and all(t.requests["cpu"] >= 1 for t in targets),
        timeout=30,
        what="heap stored and CPU windows open",
        logs=sandbox.logs,
    )

    admin = sandbox.redis.client()
    admin.config_set("maxmemory", 1)  # full: every write refused from here on
    assert refuses_writes(admin)

    # the CPU profiles being taken finish; their uploads cannot take a token from the full Redis: spooled, not lost
    wait_for(lambda: len(sandbox.spool.entries()) == 3, 30, "three CPU profiles spooled", sandbox.logs)
    assert sandbox.profefe.count(type="cpu") == 0
    assert metric(port, "kprofefe_redis_refusals_total", kind="oom", op="rate-limit") >= 3
    assert "Redis refused a write during rate-limit" in worker.output()
    beat_log_before = len(scheduler.output())
    wait_for(
        lambda: "Message Error" in scheduler.output()[beat_log_before:],
        20,
        "beat refused and still firing",
        sandbox.logs,
    )
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died of a full Redis"
    assert scheduler.proc is not None and scheduler.proc.poll() is None, "beat died of a full Redis"

    admin.config_set("maxmemory", 0)  # room again
    assert not refuses_writes(admin)
    wait_for(lambda: sandbox.profefe.count(type="cpu") == 3, 30, "the spool delivered", sandbox.logs)
    wait_for(lambda: not sandbox.spool.entries(), 10, "the spool empty", sandbox.logs)
    idle_rounds = worker.output().count("(idle): ")
    wait_for(lambda: worker.output().count("(idle): ") > idle_rounds, 20, "beat's rounds run again", sandbox.logs)

    summary = sandbox.discover(namespaces=["chaos"], types=["cpu", "heap"], cpu_seconds=1)
    report = sandbox.wait_round(summary["round"])
    assert report["ok"] == 6 and report["done"] == 6, (report, sandbox.logs())
    counts = stored_counts(sandbox.profefe)
    assert counts == {(f"api-{i}", t): 2 for i in (1, 2, 3) for t in ("cpu", "heap")}, counts  # one per round
    assert len({p.labels["capture_id"] for p in sandbox.profefe.profiles}) == 12  # no capture stored twice
    with contextlib.suppress(requests.RequestException):
        assert metric(port, "kprofefe_spool_dropped_total") == 0
    assert worker.proc.poll() is None and scheduler.proc.poll() is None
