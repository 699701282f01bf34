"""The hub and the worker's memory, on real worker processes, real Redis and the sandbox farm.

- A round of 10 MB profiles whose uploads all land in the spool (profefe down): the worker's own event-loop probe
  (``kprofefe_hub_lag_max_seconds``, scraped from its ``/metrics``) must stay low with ``KPROFEFE_OFFLOAD`` on,
  and shows the stall with it off.
- A hostile round (gzip bombs past the cap, bodies near the size cap, dripping bodies, HTML) among normal pods,
  with a 64 MiB memory budget: the worker's peak RSS (VmHWM) stays bounded and every normal profile is stored.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from kprofefe_sandbox.farm import Behavior, gzip_bomb
from kprofefe_sandbox.kubeapi import make_pod
from kprofefe_sandbox.processes import CeleryProcess, free_port

from kprofefe_tasks import tasks
from tests.conftest import Stack

pytestmark = pytest.mark.integration

ENABLE = {"profefe.com/enable": "true"}
MIB = 1024 * 1024
METRICS_HOST = "127.42.0.1"
LARGE_BYTES = 10 * MIB
LARGE_PODS = 6
#: the goal is 100 ms; a busy 2-core CI machine (the farm and profefe double share it) gets room on top
LAG_BOUND_S = 0.3
BUDGET = 64 * MIB


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} not exported"
    return float(match.group(1))


def _status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


def _worker_pid(proc: CeleryProcess) -> int:
    """The process that runs the captures: with -P gevent it is the celery process itself."""
    return proc.pid


def _round(types: list[str], timeout: float) -> dict:
    summary = tasks.discover.delay(namespaces="all", types=types).get(timeout=30)
    report = tasks.wait_round(summary["round"], timeout=timeout)
    assert not report.get("timed_out"), report
    return report


def _lag_round(stack: Stack, offload: str) -> tuple[float, dict, int, str]:
    port = free_port(METRICS_HOST)
    worker = stack.worker(
        concurrency=50,
        KPROFEFE_OFFLOAD=offload,
        KPROFEFE_METRICS_HOST=METRICS_HOST,
        KPROFEFE_METRICS_PORT=str(port),
        KPROFEFE_UPLOAD_ATTEMPTS="1",
        KPROFEFE_READ_TIMEOUT="30",
        KPROFEFE_SPOOL_DRAIN_INTERVAL="3600",
    )
    report = _round(["heap"], timeout=120)
    lag = _metric(port, "kprofefe_hub_lag_max_seconds")
    spooled = len(list((stack.tmp / "spool").glob("*.json")))
    worker.stop()
    stack.tmp.joinpath("spool").rename(stack.tmp / f"spool-offload-{offload}")
    return lag, report, spooled, worker.output()


def test_ten_megabyte_profiles_and_spool_writes_do_not_stall_the_hub(stack: Stack) -> None:
    for i in range(1, LARGE_PODS + 1):
        t = stack.farm.add(f"127.42.1.{i}", 6060, behavior=Behavior.LARGE_PROFILE, size=LARGE_BYTES)
        stack.kube.add_pod(make_pod(f"big-{i}", "web", annotations=ENABLE, ip=t.host))
    stack.profefe.down()  # every upload fails at once: each 10 MB profile is written to the spool, fsynced

    lag_on, report, spooled, _ = _lag_round(stack, "true")
    assert report["spooled"] == LARGE_PODS and spooled == LARGE_PODS, (report, stack.logs())
    lag_off, report_off, _, log_off = _lag_round(stack, "false")
    assert report_off["spooled"] == LARGE_PODS, (report_off, stack.logs())
    print(
        f"\nhub lag max with {LARGE_PODS} x 10 MB profiles spooled: offload on {lag_on * 1000:.0f} ms, "
        f"off {lag_off * 1000:.0f} ms"
    )
    assert lag_on <= LAG_BOUND_S, (lag_on, lag_off)
    # the probe sees the stall when the work runs on the hub: one 10 MB inspection holds it for most of a second
    assert lag_off > lag_on
    assert "event loop blocked" in log_off  # the off run logged its stalls


def test_a_hostile_round_stays_in_its_memory_budget_and_every_normal_profile_lands(stack: Stack) -> None:
    hostile = {
        "bomb": (5, Behavior.GZIP_BOMB, 600 * MIB),  # past the 512 MiB decompressed cap
        "huge": (5, Behavior.HUGE_BODY, 60 * MIB),  # under the 64 MiB body cap
        "drip": (3, Behavior.SLOW_DRIP, 0),
        "html": (2, Behavior.HTML, 0),
    }
    n = 0
    for name, (count, behavior, size) in hostile.items():
        for i in range(count):
            n += 1
            options = {"size": size} if size else {}
            t = stack.farm.add(f"127.42.2.{n}", 6060, behavior=behavior, **options)
            stack.kube.add_pod(make_pod(f"{name}-{i}", "evil", annotations=ENABLE, ip=t.host))
    gzip_bomb(600 * MIB)  # built once before the round (cached), so the farm answers normal pods promptly
    normal = 20
    for i in range(1, normal + 1):
        t = stack.farm.add(f"127.42.3.{i}", 6060)
        stack.kube.add_pod(make_pod(f"app-{i}", "web", annotations=ENABLE, ip=t.host))
    types = ["heap", "goroutine", "threadcreate"]

    worker = stack.worker(
        concurrency=100,
        KPROFEFE_MEMORY_BUDGET_BYTES=str(BUDGET),
        KPROFEFE_MEMORY_BUDGET_WAIT="5",
        KPROFEFE_CAPTURE_RETRIES="1",
        KPROFEFE_READ_TIMEOUT="4",
    )
    pid = _worker_pid(worker)
    baseline = _status_kib(pid)["VmRSS"] * 1024
    report = _round(types, timeout=180)
    peak = _status_kib(pid)["VmHWM"] * 1024
    stored = [p for p in stack.profefe.profiles if p.labels.get("namespace") == "web"]
    print(
        f"\nhostile round: peak RSS {peak / MIB:.0f} MiB (idle {baseline / MIB:.0f} MiB, budget {BUDGET / MIB:.0f} "
        f"MiB); report {report}"
    )
    assert len(stored) == normal * len(types), (report, stack.logs())
    assert sorted({(p.labels["pod"], p.type) for p in stored}) == sorted(
        {(f"app-{i}", t) for i in range(1, normal + 1) for t in types}
    )
    assert not [p for p in stack.profefe.profiles if p.labels.get("namespace") == "evil"]
    # idle + the budget + allocator and buffer slack; without the budget five bombs alone would inflate 2.5 GiB
    assert peak < baseline + BUDGET + 128 * MIB, (peak / MIB, baseline / MIB)
    log = worker.output()
    assert "(memory-budget)" in log, log[-3000:]
    assert worker.proc is not None and worker.proc.poll() is None  # still alive
