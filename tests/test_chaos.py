"""Chaos tier: "nothing lost, nothing doubled" when workers, Redis or profefe die in the middle of a round.

A profile is evidence (a CPU window cannot be taken again), so the collector promises that a profile that was taken
reaches profefe exactly once, whatever dies in between, and that a bad pod costs one counted outcome, not a worker.
Each test breaks one thing for real and checks the promise in the profefe double:

- a worker SIGKILLed while CPU windows are open: its unacked captures come back after the visibility timeout and
  every (pod, type) is stored once;
- a worker SIGKILLed while its uploads are in profefe's hands (the server stores them after the client died): the
  redelivered captures find them through the ``capture_id`` label and do not upload again;
- profefe refusing connections for longer than the upload retry budget: the profiles wait in the spool and are
  re-sent once when it is back;
- Redis killed and started again on the same port: in-flight captures still land, the workers reconnect on their
  own and the next round is complete;
- a pod deleted between discovery and capture: one attempt, one ``skipped`` (``pod-gone``), no retry storm;
- a worker SIGKILLed while holding a pod's CPU lock: the lease expires and the next capture of that pod works;
- a spool drainer SIGKILLed (or timed out) while profefe stores its upload: the next drain asks profefe before
  sending that entry again.

A dead worker's unacknowledged captures come back through the replacement worker's own sweeper thread
(``worker.sweeper``): kombu's consumer loop sweeps only from an idle poll, which a busy gevent worker rarely
reaches. No test sweeps on the workers' behalf.

Every test runs its own ``redis-server`` on a free loopback port (the machine's Redis on 6379 is shared with other
engineers' tests, and one test restarts Redis), its own profefe, Kubernetes API and pprof doubles, and real
``celery worker`` processes with the production command line.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kprofefe_sandbox.farm import Behavior, PprofFarm, Target, payload
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod
from kprofefe_sandbox.processes import CeleryProcess, free_port
from kprofefe_sandbox.profefe import ProfefeServer

from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.coordination.rounds import Rounds
from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.io import pprof
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import ProfefeSink
from kprofefe_tasks.io.spool import DrainResult, Spool
from kprofefe_tasks.worker.app import DISCOVERY_QUEUE, celery_config
from tests.conftest import Stack

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

VISIBILITY_TIMEOUT_S = 10  # small, so a dead worker's captures are due again within a test
#: How long a fixed worker may take to hand back a dead worker's captures: the visibility timeout, a sweep period
#: a quarter of it, and a worker start on a loaded 2-core machine.
SELF_REDELIVERY_BUDGET_S = VISIBILITY_TIMEOUT_S + 25
ROUND_BUDGET_S = 90.0  # a whole round after a disruption; normal rounds here take seconds
REDIS_START_TIMEOUT_S = 10.0
ENABLE = "profefe.com/enable"
SNAPSHOT_TYPES = ("heap", "goroutine", "threadcreate")


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None


class PrivateRedis:
    """A throwaway ``redis-server`` on a free loopback port, without persistence: a restart loses everything, as
    a Redis pod without a volume does."""

    def __init__(self, directory: Path) -> None:
        binary = redis_server_binary()
        if binary is None:
            pytest.skip("needs the redis-server binary (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=30, socket_connect_timeout=5)

    def start(self) -> PrivateRedis:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *args, "--dir", str(self.directory)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        end = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            client = self.client()
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, open connections just break."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Sandbox:
    """One isolated cluster: the conftest ``Stack`` doubles, with workers pointed at a private Redis."""

    stack: Stack
    redis: PrivateRedis

    @property
    def farm(self) -> PprofFarm:
        return self.stack.farm

    @property
    def profefe(self) -> ProfefeServer:
        return self.stack.profefe

    @property
    def kube(self) -> KubeAPIServer:
        return self.stack.kube

    @property
    def spool(self) -> Spool:
        return Spool(self.stack.tmp / "spool", max_bytes=1 << 30)

    def worker(self, *, queues: str = "discovery,capture", wait: bool = True, **env: Any) -> CeleryProcess:
        settings = {
            "KPROFEFE_BROKER_URL": self.redis.url,
            "KPROFEFE_REDIS_URL": self.redis.url,
            "KPROFEFE_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            **env,
        }
        return self.stack.worker(queues=queues, wait=wait, **settings)

    def _client(self) -> Celery:
        """A Celery app on the private broker for this process (the test process's own app is bound to 6379)."""
        url = self.redis.url
        client = Celery("kprofefe-chaos-client", set_as_current=False)
        settings = Settings(broker_url=url, redis_url=url, visibility_timeout=VISIBILITY_TIMEOUT_S)
        client.conf.update(celery_config(settings))
        return client

    def discover(self, **kwargs: Any) -> dict[str, Any]:
        """Start a round the way a shell or beat does (a ``kprofefe.discover`` message); returns its summary."""
        client = self._client()
        try:
            result = client.send_task("kprofefe.discover", kwargs=kwargs, queue=DISCOVERY_QUEUE)
            summary: dict[str, Any] = result.get(timeout=60)
            return summary
        finally:
            client.close()

    def unacked(self) -> set[str]:
        """Delivery tags of messages taken by some worker and not acknowledged yet."""
        client = self.redis.client()
        try:
            return {_text(tag) for tag in client.zrange("unacked_index", 0, -1)}
        finally:
            client.close()

    def report(self, round_id: str) -> dict[str, int]:
        client = self.redis.client()
        try:
            raw = client.hgetall(Rounds.key(round_id))
        finally:
            client.close()
        out: dict[str, int] = {}
        for key, value in raw.items():
            with contextlib.suppress(ValueError):
                out[_text(key)] = int(float(_text(value)))
        return out

    def wait_round(
        self, round_id: str, timeout: float = ROUND_BUDGET_S, until: Callable[[dict[str, int]], bool] | None = None
    ) -> dict[str, int]:
        """Poll the round's counters until every capture has a final outcome (or ``until`` says it is settled)."""
        check = until or round_complete
        end = time.monotonic() + timeout
        while True:
            report = self.report(round_id)
            if check(report):
                return report
            if time.monotonic() > end:
                raise AssertionError(f"round {round_id} not settled after {timeout:.0f}s: {report}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return self.stack.logs()

    def all_logs(self) -> str:
        return "\n".join(p.output() for p in self.stack.processes)

    def add_pod(
        self,
        name: str,
        *,
        host: str,
        behavior: Behavior = Behavior.GO,
        namespace: str = "chaos",
        annotations: dict[str, str] | None = None,
    ) -> Target:
        """A farm target and an annotated, ready pod whose IP and port point at it."""
        target = self.farm.add(host, 0, behavior=behavior)
        self.kube.add_pod(pod_at(name, target.host, target.port, namespace=namespace, annotations=annotations))
        return target


def pod_at(
    name: str, ip: str, port: int, *, namespace: str = "chaos", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return make_pod(
        name,
        namespace,
        ip=ip,
        containers=[("app", [port])],
        annotations={ENABLE: "true", "profefe.com/port": str(port), **(annotations or {})},
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def round_complete(report: dict[str, int]) -> bool:
    return "expected" in report and report.get("done", 0) >= report["expected"]


@contextlib.contextmanager
def open_sandbox(tmp: Path) -> Iterator[Sandbox]:
    with contextlib.ExitStack() as exits:
        private = PrivateRedis(tmp / "redis").start()
        exits.callback(private.kill)
        kube = exits.enter_context(KubeAPIServer())
        profefe = exits.enter_context(ProfefeServer())
        farm = exits.enter_context(PprofFarm())
        stack = Stack(tmp=tmp, kube=kube, profefe=profefe, farm=farm, kubeconfig=kube.write_kubeconfig(tmp / "kube"))
        try:
            yield Sandbox(stack=stack, redis=private)
        finally:
            for proc in stack.processes:
                proc.stop()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with open_sandbox(tmp_path) as box:
        yield box


def wait_for(condition: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not reached within {timeout:.0f}s: {what}\n{logs()}")
        time.sleep(0.05)


def stored_counts(profefe: ProfefeServer) -> Counter[tuple[str, str]]:
    """How many times each (pod, type) is stored: the exactly-once check."""
    return Counter((p.labels.get("pod", "?"), p.type) for p in profefe.profiles)


def lookback_covering_the_farm_recording() -> str:
    """``KPROFEFE_RESULT_EXPIRES`` for tests that rely on the redelivery check finding a stored profile.

    profefe stores a profile's own ``time_nanos`` as its ``created_at``. A real Go target stamps "now"; the farm
    replays a recording. The check looks back ``result_expires`` (+1 h) from now, so it is widened to cover the
    recording, whatever today's date is.
    """
    recorded = pprof.inspect(payload("heap")).time_nanos / 1e9
    return str(max(3600, int(time.time() - recorded) + 24 * 3600))


def logged(logs: str, outcome: str, pod: str) -> list[str]:
    """Reasons of the ``capture <outcome> <ns>/<pod> <type> (<reason>)`` log lines for one pod."""
    return re.findall(rf"capture {outcome} \S+/{re.escape(pod)} \S+(?: \(([^)]*)\))?", logs)


# -- a worker SIGKILLed while CPU windows are open --------------------------------------------------------------


@dataclass
class KillResult:
    redelivered_by_worker: bool
    counts: Counter[tuple[str, str]]
    report: dict[str, int]
    cpu_requests: list[int]
    cpu_concurrent_max: list[int]
    logs: str = field(repr=False)


@pytest.fixture(scope="module")
def killed_mid_round(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillResult]:
    """Three pods, four types, CPU windows of 5 s; the worker is SIGKILLed once the snapshots are stored and every
    CPU window is open, and a replacement worker is started."""
    with open_sandbox(tmp_path_factory.mktemp("kill")) as box:
        targets = [box.add_pod(f"api-{i}", host=f"127.77.1.{i}") for i in range(1, 4)]
        first = box.worker()
        round_id = box.discover(namespaces=["chaos"], types=["cpu", *SNAPSHOT_TYPES], cpu_seconds=5)["round"]
        wait_for(
            lambda: (
                sum(box.profefe.count(type=t) for t in SNAPSHOT_TYPES) == 9
                and all(t.requests["cpu"] >= 1 for t in targets)
            ),
            timeout=30,
            what="snapshots stored and CPU windows open",
            logs=box.logs,
        )
        first.kill()
        if box.profefe.count(type="cpu"):
            pytest.fail("the kill came after a CPU upload: this machine is too slow for a 5 s CPU window")
        in_flight = box.unacked()
        # the three CPU captures, taken and never acknowledged (a snapshot whose upload just finished may still be
        # unacknowledged too: its redelivery must then find it in the ledger and not store it again)
        assert len(in_flight) >= 3, in_flight

        box.worker()
        # no help from the test: the replacement worker's own sweeper must hand the dead worker's captures back
        with contextlib.suppress(AssertionError):
            box.wait_round(round_id, timeout=SELF_REDELIVERY_BUDGET_S)
        report = box.report(round_id)
        redelivered_by_worker = round_complete(report)
        yield KillResult(
            redelivered_by_worker=redelivered_by_worker,
            counts=stored_counts(box.profefe),
            report=report,
            cpu_requests=[t.requests["cpu"] for t in targets],
            cpu_concurrent_max=[t.cpu_concurrent_max for t in targets],
            logs=box.logs(),
        )


@pytest.mark.timeout(240)
def test_worker_sigkill_while_cpu_windows_are_open_every_profile_lands_exactly_once(
    killed_mid_round: KillResult,
) -> None:
    result = killed_mid_round
    expected = {(f"api-{i}", t): 1 for i in range(1, 4) for t in ("cpu", *SNAPSHOT_TYPES)}
    assert result.counts == expected, (result.counts, result.logs)
    assert result.report["ok"] == 12 and result.report["done"] == 12, result.report
    assert "poison" not in result.report, result.report
    # every CPU window was taken twice: once by the dead worker, once after redelivery; never two at once
    assert result.cpu_requests == [2, 2, 2]
    assert result.cpu_concurrent_max == [1, 1, 1]


@pytest.mark.timeout(240)
def test_a_replacement_gevent_worker_hands_back_a_dead_workers_captures_by_itself(
    killed_mid_round: KillResult,
) -> None:
    assert killed_mid_round.redelivered_by_worker


# -- a worker SIGKILLed while profefe holds its uploads -----------------------------------------------------------


@dataclass
class UploadKillResult:
    counts: Counter[tuple[str, str]]
    report: dict[str, int]
    duplicate_reasons: list[str]
    logs: str = field(repr=False)


@pytest.fixture(scope="module")
def killed_during_upload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UploadKillResult]:
    """Four uploads hang in profefe; the worker dies waiting for the answers; profefe stores them anyway."""
    with open_sandbox(tmp_path_factory.mktemp("upload")) as box:
        for i in (1, 2):
            box.add_pod(f"api-{i}", host=f"127.77.2.{i}")
        env: dict[str, Any] = {
            "KPROFEFE_RESULT_EXPIRES": lookback_covering_the_farm_recording(),
            "KPROFEFE_UPLOAD_TIMEOUT": "30",
        }
        first = box.worker(**env)
        box.profefe.hang_next(4, 4.0)
        round_id = box.discover(namespaces=["chaos"], types=["heap", "goroutine"])["round"]
        wait_for(lambda: box.profefe.upload_attempts == 4, 30, "four uploads in flight", box.logs)
        in_flight = box.unacked()
        first.kill()
        assert len(box.profefe.profiles) == 0
        wait_for(lambda: len(box.profefe.profiles) == 4, 15, "profefe stores the orphaned uploads", box.logs)

        box.worker(**env)
        assert in_flight  # handed back by the replacement worker's own sweeper, not by the test
        box.wait_round(round_id, timeout=SELF_REDELIVERY_BUDGET_S + 30)
        time.sleep(1.0)  # a late second upload would show up here
        logs = box.all_logs()
        reasons = [r for pod in ("api-1", "api-2") for r in logged(logs, "duplicate", pod)]
        yield UploadKillResult(stored_counts(box.profefe), box.report(round_id), reasons, logs)


@pytest.mark.timeout(240)
def test_worker_sigkill_during_upload_the_redelivery_finds_the_stored_profile_and_does_not_upload_again(
    killed_during_upload: UploadKillResult,
) -> None:
    result = killed_during_upload
    expected = {(f"api-{i}", t): 1 for i in (1, 2) for t in ("heap", "goroutine")}
    assert result.counts == expected, (result.counts, result.logs)
    assert result.report.get("duplicates") == 4, result.report
    assert result.duplicate_reasons == ["stored-before-redelivery"] * 4, result.logs


@pytest.mark.timeout(240)
def test_a_capture_stored_before_its_worker_died_still_ends_its_round(
    killed_during_upload: UploadKillResult,
) -> None:
    assert round_complete(killed_during_upload.report), killed_during_upload.report


# -- profefe down longer than the retry budget ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_profefe_down_mid_round_profiles_wait_in_the_spool_and_land_exactly_once(sandbox: Sandbox) -> None:
    targets = [sandbox.add_pod(f"api-{i}", host=f"127.77.3.{i}") for i in range(1, 4)]
    sandbox.worker(KPROFEFE_UPLOAD_ATTEMPTS="2", KPROFEFE_SPOOL_DRAIN_INTERVAL="0.5")
    round_id = sandbox.discover(namespaces=["chaos"], types=["cpu", "heap", "goroutine"], cpu_seconds=4)["round"]
    wait_for(
        lambda: (
            sum(sandbox.profefe.count(type=t) for t in ("heap", "goroutine")) == 6
            and all(t.requests["cpu"] >= 1 for t in targets)
        ),
        timeout=30,
        what="snapshots stored and CPU windows open",
        logs=sandbox.logs,
    )
    sandbox.profefe.down()
    if sandbox.profefe.count(type="cpu"):
        pytest.fail("profefe went down after a CPU upload: this machine is too slow for a 4 s CPU window")

    report = sandbox.wait_round(round_id, timeout=60)
    assert report["ok"] == 6 and report["spooled"] == 3, (report, sandbox.logs())
    assert len(sandbox.spool.entries()) == 3
    time.sleep(2.0)  # several drain attempts against a dead profefe: nothing may be lost or dropped meanwhile
    assert len(sandbox.spool.entries()) == 3 and sandbox.spool.rejected() == []

    sandbox.profefe.up()
    wait_for(lambda: sandbox.profefe.count(type="cpu") == 3, 30, "the spool drained", sandbox.logs)
    wait_for(lambda: not sandbox.spool.entries(), 10, "spool entries removed", sandbox.logs)
    time.sleep(1.5)  # another drain interval or two: a second copy would show up here
    counts = stored_counts(sandbox.profefe)
    assert counts == {(f"api-{i}", t): 1 for i in range(1, 4) for t in ("cpu", "heap", "goroutine")}, counts
    assert sandbox.spool.entries() == [] and sandbox.spool.rejected() == []
    assert "spooled profile delivered" in sandbox.logs()


# -- Redis restarted mid-round --------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_redis_restart_mid_round_workers_reconnect_and_the_next_round_is_complete(sandbox: Sandbox) -> None:
    targets = [sandbox.add_pod(f"api-{i}", host=f"127.77.4.{i}") for i in (1, 2)]
    worker = sandbox.worker()
    sandbox.discover(namespaces=["chaos"], types=["cpu", "heap"], cpu_seconds=4)
    wait_for(
        lambda: sandbox.profefe.count(type="heap") == 2 and all(t.requests["cpu"] >= 1 for t in targets),
        timeout=30,
        what="heap stored and CPU windows open",
        logs=sandbox.logs,
    )
    sandbox.redis.kill()
    # the restart comes only once the worker has seen its broker go: a reconnect, not a blip it never noticed
    wait_for(lambda: "Connection to broker lost" in worker.output(), 30, "the worker saw Redis go", sandbox.logs)
    sandbox.redis.start()  # same port, empty: queues, unacked messages, locks, ledger and counters are gone

    # the CPU captures that were in flight finish and upload: Redis is not on the path of a profile
    wait_for(lambda: sandbox.profefe.count(type="cpu") == 2, 30, "in-flight CPU profiles stored", sandbox.logs)

    summary = sandbox.discover(namespaces=["chaos"], types=list(SNAPSHOT_TYPES))
    report = sandbox.wait_round(summary["round"], timeout=90)
    assert report["ok"] == 6 and report["done"] == 6, (report, sandbox.logs())
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died instead of reconnecting"
    counts = stored_counts(sandbox.profefe)
    assert counts == {
        **{(f"api-{i}", "cpu"): 1 for i in (1, 2)},
        **{(f"api-{i}", "heap"): 2 for i in (1, 2)},  # one per round
        **{(f"api-{i}", t): 1 for i in (1, 2) for t in ("goroutine", "threadcreate")},
    }, counts


# -- a pod deleted between discovery and capture -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_pod_deleted_after_discovery_is_one_attempt_and_one_counted_skip(sandbox: Sandbox) -> None:
    reset = sandbox.farm.add("127.77.5.1", 0, behavior=Behavior.RESET)
    replaced_target = sandbox.farm.add("127.77.5.2", 0, behavior=Behavior.RESET)
    refused_port = free_port("127.77.5.3")  # nothing listens there: connections are refused
    alive_port = free_port("127.77.5.4")
    sandbox.kube.add_pod(pod_at("gone-reset", reset.host, reset.port))
    sandbox.kube.add_pod(pod_at("gone-refused", "127.77.5.3", refused_port))
    sandbox.kube.add_pod(pod_at("replaced", replaced_target.host, replaced_target.port))
    sandbox.kube.add_pod(pod_at("alive-refused", "127.77.5.4", alive_port))

    # discovery only: the captures wait in the queue while the pods go away
    sandbox.worker(queues="discovery")
    summary = sandbox.discover(namespaces=["chaos"], types=["heap"])
    assert summary["captures"] == 4
    sandbox.kube.delete_pod("chaos", "gone-reset")
    sandbox.kube.delete_pod("chaos", "gone-refused")
    sandbox.kube.delete_pod("chaos", "replaced")  # and re-created under the same name: a new uid
    sandbox.kube.add_pod(pod_at("replaced", replaced_target.host, replaced_target.port))
    sandbox.kube.clear_requests()

    sandbox.worker(queues="capture")
    report = sandbox.wait_round(summary["round"], timeout=60)
    logs = sandbox.all_logs()
    assert report["skipped"] == 3 and report["failed"] == 1 and report["done"] == 4, (report, logs)
    for pod in ("gone-reset", "gone-refused", "replaced"):
        assert logged(logs, "skipped", pod) == ["pod-gone"], (pod, logs)
        assert logged(logs, "retried", pod) == [], (pod, logs)
    # one attempt each: the target saw one request, the API server one look at the pod
    assert reset.requests["heap"] == 1 and replaced_target.requests["heap"] == 1
    gets = Counter(path.rsplit("/", 1)[1] for method, path, _ in sandbox.kube.requests if "/pods/" in path)
    assert gets == {"gone-reset": 1, "gone-refused": 1, "replaced": 1, "alive-refused": 3}, gets
    # the same failure on a pod that still exists is a temporary error: retried, then failed
    assert logged(logs, "retried", "alive-refused") == ["target-unreachable"] * 2
    assert logged(logs, "failed", "alive-refused") == ["target-unreachable"]


# -- a worker SIGKILLed while holding a pod's CPU lock ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_worker_sigkill_holding_the_cpu_lock_the_lease_expires_and_the_next_capture_works(sandbox: Sandbox) -> None:
    target = sandbox.add_pod("locked", host="127.77.6.1")
    # lease = CPU window + read margin + 5 s = 9 s; the retry honours the lock's remaining lease up to backoff_max
    env: dict[str, Any] = {"KPROFEFE_READ_MARGIN": "2", "KPROFEFE_BACKOFF_MAX": "12"}
    first = sandbox.worker(**env)
    first_round = sandbox.discover(namespaces=["chaos"], types=["cpu"], cpu_seconds=2)["round"]
    wait_for(lambda: target.requests["cpu"] == 1, 20, "CPU window open", sandbox.logs)
    first.kill()
    client = sandbox.redis.client()
    try:
        lease_left = client.pttl("kprofefe:lock:cpu:chaos/locked") / 1000
    finally:
        client.close()
    assert 0 < lease_left <= 9, lease_left  # the dead worker's lock outlives it, for a bounded time

    started = time.monotonic()
    sandbox.worker(**env)
    summary = sandbox.discover(namespaces=["chaos"], types=["cpu"], cpu_seconds=2)
    report = sandbox.wait_round(summary["round"], timeout=60)
    logs = sandbox.all_logs()
    assert report["ok"] == 1, (report, logs)
    assert "cpu-locked" in logged(logs, "retried", "locked"), logs
    assert time.monotonic() - started < 45
    # the dead worker's own capture comes back too (after the visibility timeout) and also waits its turn:
    # one profile per round, never two CPU profiles of the pod at once
    assert sandbox.wait_round(first_round, timeout=60)["ok"] == 1
    assert target.requests["cpu"] == 3 and target.cpu_concurrent_max == 1
    assert sandbox.profefe.count(type="cpu") == 2


# -- a spool drain killed or timed out while profefe stores its upload ------------------------------------------------


def fresh_profile(name: str = "heap") -> bytes:
    """The farm's recording of ``name`` stamped with the current time (``time_nanos`` is last-wins, as in Go)."""
    now = time.time_ns()
    field_9 = bytearray([9 << 3])  # field 9, varint
    while True:
        byte, now = now & 0x7F, now >> 7
        field_9.append(byte | (0x80 if now else 0))
        if not now:
            break
    return gzip.compress(gzip.decompress(payload(name)) + bytes(field_9), mtime=0)


DRAIN_CHILD = """
import sys
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import ProfefeSink
from kprofefe_tasks.io.spool import DrainResult, Spool

client = ProfefeClient(sys.argv[1], read_timeout=30.0)
Spool(sys.argv[2], 1 << 30).drain(ProfefeSink(client, bucket=None, attempts=1, backoff_base=0.1, backoff_max=0.1).store)
"""


def spooled(capture_id: str) -> Delivery:
    return Delivery(
        capture_id=capture_id,
        service="api",
        ptype="heap",
        namespace="chaos",
        pod=capture_id.rsplit("/", 2)[-2],
        labels=(("pod", capture_id.rsplit("/", 2)[-2]),),
        taken_at=time.time(),
        body=fresh_profile(),
    )


def drain_asking_profefe(spool: Spool, profefe: ProfefeServer, read_timeout: float = 5.0) -> DrainResult:
    """A drain as a worker runs it, with the check that keeps an interrupted send from being sent twice."""
    sink = ProfefeSink(
        ProfefeClient(profefe.url, read_timeout=read_timeout),
        bucket=None,
        attempts=1,
        backoff_base=0.1,
        backoff_max=0.1,
    )
    return spool.drain(sink.store, already_sent=lambda d: sink.already_stored(d.service, d.ptype, d.capture_id))


@pytest.mark.timeout(60)
def test_a_drainer_killed_while_profefe_stores_its_upload_is_not_sent_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 30)
    with ProfefeServer() as profefe:
        spool.put(spooled("r1/chaos/api-1/heap"))
        spool.put(spooled("r1/chaos/api-2/heap"))
        profefe.hang_next(1, 3.0)
        child = subprocess.Popen(
            [sys.executable, "-c", DRAIN_CHILD, profefe.url, str(spool.directory)], start_new_session=True
        )
        try:
            wait_for(lambda: profefe.upload_attempts == 1, 20, "the drainer's first upload in flight")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        wait_for(lambda: len(profefe.profiles) == 1, 10, "profefe stores the orphaned upload")
        assert len(spool.entries()) == 2  # the drainer died before removing anything

        result = drain_asking_profefe(spool, profefe)

        assert (result.found, result.sent, result.left) == (1, 1, 0), result
        assert spool.entries() == []
        assert sorted(p.labels["pod"] for p in profefe.profiles) == ["api-1", "api-2"]


@pytest.mark.timeout(60)
def test_a_spooled_upload_that_timed_out_but_landed_is_not_sent_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 30)
    with ProfefeServer() as profefe:
        spool.put(spooled("r1/chaos/api-1/heap"))
        profefe.hang_next(1, 1.5)
        first = drain_asking_profefe(spool, profefe, read_timeout=0.5)
        assert first.left == 1 and "profefe-timeout" in first.error, first
        wait_for(lambda: len(profefe.profiles) == 1, 10, "profefe stores the timed-out upload")

        second = drain_asking_profefe(spool, profefe)

        assert (second.found, second.sent) == (1, 0), second
        assert spool.entries() == [] and len(profefe.profiles) == 1
