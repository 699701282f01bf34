"""Chaos tier: the spool's disk fills up while profefe is down, with a real worker process.

The worker's spool directory is a real 64 KiB tmpfs; profefe (the double) is down; a round takes more profiles than
the tmpfs holds. Every capture must still end with exactly one outcome in the round's counters (``spooled`` while
there was room, ``failed`` / ``spool-full`` after), the worker's ``kprofefe_spool_dropped_total{reason="full"}``
must equal the captures refused, and the worker must go on: once profefe is back its drainer delivers each spooled
profile exactly once, the freed spool accepts the next round's profiles again, and those are delivered once too.

Everything binds in 127.43.0.0/16 (the doubles, the pprof farm, the worker's metrics endpoint); the broker is the
machine's Redis (``KPROFEFE_TEST_REDIS_DB``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from kprofefe_sandbox.farm import PprofFarm
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod
from kprofefe_sandbox.processes import free_port
from kprofefe_sandbox.profefe import ProfefeServer

from kprofefe_tasks import tasks
from kprofefe_tasks.domain.delivery import capture_id_for, digest_of
from kprofefe_tasks.io.spool import Spool
from tests.conftest import Stack
from tests.scrape import sample
from tests.tmpfs import mounted_tmpfs

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

PAGE = 4096
SPOOL_DISK_BYTES = 16 * PAGE  # an entry takes two pages (payload, metadata): room for about eight profiles
PODS = 8
TYPES = ("heap", "goroutine", "threadcreate")
NAMESPACE = "spoolchaos"
METRICS_HOST = "127.43.0.3"
ROUND_BUDGET_S = 90.0
DRAIN_BUDGET_S = 60.0


@pytest.fixture
def disk_stack(tmp_path: Path, redis_client: redis.Redis) -> Iterator[tuple[Stack, Path]]:
    with (
        mounted_tmpfs(tmp_path / "spool-disk", SPOOL_DISK_BYTES) as disk,
        KubeAPIServer(host="127.43.0.2") as kube,
        ProfefeServer(host="127.43.0.1") as profefe,
        PprofFarm() as farm,
    ):
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        stack = Stack(tmp=tmp_path, kube=kube, profefe=profefe, farm=farm, kubeconfig=kubeconfig)
        try:
            yield stack, disk
        finally:
            for proc in stack.processes:  # before the unmount: the worker holds the spool's lock file open
                proc.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not reached within {timeout:.0f}s: {what}\n{logs()}")
        time.sleep(0.05)


def scrape(port: int) -> str:
    return requests.get(f"http://{METRICS_HOST}:{port}/metrics", timeout=5).text


def outcomes_logged(logs: str, outcome: str, reason: str) -> Counter[tuple[str, str]]:
    """(pod, type) of each ``capture <outcome> <ns>/<pod> <type> (<reason>)`` line."""
    pattern = rf"capture {outcome} {NAMESPACE}/(\S+) (\S+) \({re.escape(reason)}\)"
    return Counter((pod, ptype) for pod, ptype in re.findall(pattern, logs))


def run_round(stack: Stack) -> tuple[str, dict[str, Any]]:
    summary = tasks.discover.delay(namespaces=[NAMESPACE], types=list(TYPES)).get(timeout=60)
    report = tasks.wait_round(summary["round"], timeout=ROUND_BUDGET_S)
    assert not report.get("timed_out"), (report, stack.logs())
    return summary["round"], report


def stored_for(profefe: ProfefeServer, round_id: str) -> Counter[tuple[str, str]]:
    """How often profefe stored each (pod, type) of this round (by the capture_id label every upload carries)."""
    digests = {
        digest_of(capture_id_for(round_id, NAMESPACE, f"api-{i}", ptype)): (f"api-{i}", ptype)
        for i in range(PODS)
        for ptype in TYPES
    }
    return Counter(digests[p.labels["capture_id"]] for p in profefe.profiles if p.labels.get("capture_id") in digests)


@pytest.mark.timeout(300)
def test_a_full_spool_disk_gives_every_capture_one_outcome_and_the_worker_delivers_the_rest_once(
    disk_stack: tuple[Stack, Path],
) -> None:
    stack, disk = disk_stack
    for i in range(PODS):
        target = stack.farm.add(f"127.43.1.{i + 1}", 0)
        stack.kube.add_pod(
            make_pod(
                f"api-{i}",
                NAMESPACE,
                ip=target.host,
                containers=[("app", [target.port])],
                annotations={"profefe.com/enable": "true", "profefe.com/port": str(target.port)},
            )
        )
    metrics_port = free_port(METRICS_HOST)
    worker = stack.worker(
        KPROFEFE_SPOOL_DIR=str(disk / "spool"),
        KPROFEFE_UPLOAD_ATTEMPTS="1",
        KPROFEFE_METRICS_PORT=str(metrics_port),
        KPROFEFE_METRICS_HOST=METRICS_HOST,
    )
    expected = PODS * len(TYPES)
    stack.profefe.down()

    # -- round 1: profefe down, the spool fills up -----------------------------------------------------------
    first, report = run_round(stack)
    spooled, refused = report.get("spooled", 0), report.get("failed", 0)
    assert report["expected"] == report["done"] == expected, report
    assert spooled + refused == expected and spooled > 0 and refused > 0, (report, stack.logs())
    assert set(report) - {"expected", "done", "targets", "entry", "started", "spooled", "failed"} == set(), report
    logs = stack.logs()
    full = outcomes_logged(worker.output(), "failed", "spool-full")
    assert sum(full.values()) == refused and max(full.values()) == 1, logs
    text = scrape(metrics_port)
    assert sample(text, "kprofefe_spool_dropped_total", reason="full") == refused, text
    assert sample(text, "kprofefe_captures_total", outcome="failed", reason="spool-full") == refused
    assert sum(sample(text, "kprofefe_spool_dropped_total", reason=r) for r in ("over-size", "corrupt")) == 0
    on_disk = Spool(disk / "spool", 1 << 30).entries()
    assert len(on_disk) == spooled
    assert not [p.name for p in (disk / "spool").iterdir() if p.name.endswith(".tmp")]
    assert worker.proc is not None and worker.proc.poll() is None  # the worker goes on

    # -- profefe back: the drainer delivers the spooled profiles, each once ------------------------------------
    stack.profefe.up()
    wait_for(lambda: not Spool(disk / "spool", 1 << 30).entries(), DRAIN_BUDGET_S, "the spool drained", stack.logs)
    stored = stored_for(stack.profefe, first)
    assert sum(stored.values()) == spooled and max(stored.values()) == 1, stored
    assert not set(stored) & set(full), (stored, full)  # what was refused was never stored: it was never kept

    # -- round 2: the spool accepts again; profefe down once more, then back --------------------------------------
    stack.profefe.down()
    second, report = run_round(stack)
    assert report.get("spooled", 0) > 0, (report, stack.logs())
    assert report.get("spooled", 0) + report.get("failed", 0) == expected, report
    stack.profefe.up()
    wait_for(lambda: not Spool(disk / "spool", 1 << 30).entries(), DRAIN_BUDGET_S, "the spool drained", stack.logs)
    assert sum(stored_for(stack.profefe, second).values()) == report["spooled"]
    # and the first round's are still there once each: no drain sent anything twice
    assert stored_for(stack.profefe, first) == stored
    text = scrape(metrics_port)
    assert sample(text, "kprofefe_spool_dropped_total", reason="full") == refused + report.get("failed", 0)
    assert sample(text, "kprofefe_captures_total", outcome="ok", reason="from-spool") == spooled + report["spooled"]
    assert worker.proc is not None and worker.proc.poll() is None
