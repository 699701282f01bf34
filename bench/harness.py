"""What every scenario needs: a dedicated Redis database, the doubles, real worker processes with the production
command line, a round triggered the way beat does, and sampling of RSS, CPU and Redis memory while it runs.

Import this module before anything imports :mod:`kprofefe_tasks.worker.app`: the benchmark process talks to the same
broker as its workers, and the app reads the broker URL once, when it is built.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError

REDIS_DB = int(os.environ.get("KPROFEFE_BENCH_REDIS_DB", "13"))
"""A database of the machine's Redis that nothing else uses: it is flushed before and after every scenario."""
REPO = Path(__file__).resolve().parent.parent
"""Workers run from the repository root: they import this checkout's ``kprofefe_tasks`` and ``beat_schedule``."""
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
BROKER = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
SENTINEL_KEY = "bench:owner"
"""Set when a scenario starts; gone at the end means another process flushed the database: the run is void."""

os.environ["KPROFEFE_BROKER_URL"] = BROKER
os.environ["KPROFEFE_REDIS_URL"] = BROKER
os.environ["KPROFEFE_METRICS_PORT"] = "0"
# This process builds a runtime too (to read round counters), and with it a spool directory it never uses.
os.environ["KPROFEFE_SPOOL_DIR"] = os.path.join(tempfile.gettempdir(), "kprofefe-bench-driver-spool")

from kprofefe_sandbox.farm import loopback_addresses  # noqa: E402
from kprofefe_sandbox.processes import CeleryProcess, worker_args  # noqa: E402

from bench.doubles import Double  # noqa: E402

SAMPLE_INTERVAL_S = 0.05
"""RSS and Redis memory sampling period: short enough to catch a burst of a few hundred ms."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKER_READY_TIMEOUT_S = 90.0
"""A worker imports celery, gevent and the kubernetes client: seconds, more while other engineers run tests."""
DISCOVER_RESULT_TIMEOUT_S = 120.0
WORKER_STOP_TIMEOUT_S = 5.0

FIRST_ADDRESS = "127.1.0.1"
"""Farm targets from here on: away from 127.0.0.1, where Redis and the doubles listen."""
PPROF_PORT = 6060

# Production values from deploy/base/kustomization.yaml; the spool and output go to the scenario's temp dir.
PRODUCTION_ENV = {
    "KPROFEFE_TYPES": "cpu,heap,block,mutex,goroutine,threadcreate",
    "KPROFEFE_CAPTURE_VIA": "direct",
    "KPROFEFE_LOG_FORMAT": "json",
    "KPROFEFE_LOG_LEVEL": "INFO",
    # The metrics endpoint binds 0.0.0.0; the benchmark stays on loopback. The counters are still updated.
    "KPROFEFE_METRICS_PORT": "0",
}


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: ``worker_args(queues, pool, concurrency)``, the README's command line."""

    role: str  # "discovery" or "capture": how its figures are reported
    queues: str
    pool: str
    concurrency: int

    def args(self, index: int) -> list[str]:
        return [
            *worker_args(
                queues=self.queues, pool=self.pool, concurrency=self.concurrency, name=f"{self.role}{index}@%h"
            ),
            "--loglevel",
            "INFO",
        ]


# deploy/base/discovery.yaml: threads, 4 (listings are few and I/O-bound).
DISCOVERY_WORKER = WorkerSpec("discovery", "discovery", "threads", 4)


def capture_workers(processes: int, concurrency: int) -> list[WorkerSpec]:
    return [WorkerSpec("capture", "capture", "gevent", concurrency) for _ in range(processes)]


# -- /proc ----------------------------------------------------------------------------------------------------


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB; empty once it is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    found[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (its threads included), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


# -- sampling -------------------------------------------------------------------------------------------------


@dataclass
class Tracked:
    name: str
    pid: int
    cpu_start: float = 0.0
    cpu_last: float = 0.0
    rss_peak_kib: int = 0
    hwm_kib: int = 0


class Sampler:
    """Samples RSS of the tracked processes and Redis ``used_memory`` until stopped; CPU as start/end deltas."""

    def __init__(self, client: redis.Redis, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.client = client
        self.interval = interval
        self.tracked: list[Tracked] = []
        self.redis_baseline = 0
        self.redis_peak = 0
        self.redis_peak_reported_start = 0
        self.redis_cpu_start = 0.0
        self.redis_cpu_end = 0.0
        self.machine_busy_start = 0.0
        self.machine_busy_end = 0.0
        self.redis_stats_start: dict[str, int] = {}
        self.redis_stats_end: dict[str, int] = {}
        self.redis_clients_peak = 0
        self.started = 0.0
        self.elapsed = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, name: str, pid: int) -> None:
        self.tracked.append(Tracked(name, pid))

    def _redis_stats(self) -> dict[str, int]:
        stats = self.client.info("stats")
        return {
            "connections": int(stats["total_connections_received"]),
            "commands": int(stats["total_commands_processed"]),
        }

    def _redis_cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def start(self) -> Sampler:
        memory = self.client.info("memory")
        self.redis_baseline = self.redis_peak = int(memory["used_memory"])
        self.redis_peak_reported_start = int(memory["used_memory_peak"])
        self.redis_cpu_start = self._redis_cpu()
        self.redis_stats_start = self._redis_stats()
        for t in self.tracked:
            t.cpu_start = t.cpu_last = proc_cpu_seconds(t.pid) or 0.0
        self.machine_busy_start = machine_busy_seconds()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.redis_peak = max(self.redis_peak, int(self.client.info("memory")["used_memory"]))
            self.redis_clients_peak = max(
                self.redis_clients_peak, int(self.client.info("clients")["connected_clients"])
            )
        for t in self.tracked:
            status = proc_status_kib(t.pid)
            t.rss_peak_kib = max(t.rss_peak_kib, status.get("VmRSS", 0))
            t.hwm_kib = max(t.hwm_kib, status.get("VmHWM", 0))
            cpu = proc_cpu_seconds(t.pid)
            if cpu is not None:
                t.cpu_last = cpu
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(10)
        self._sample()
        self.elapsed = time.monotonic() - self.started
        self.machine_busy_end = machine_busy_seconds()
        with contextlib.suppress(redis.RedisError):
            self.redis_cpu_end = self._redis_cpu()
            self.redis_stats_end = self._redis_stats()
            reported = int(self.client.info("memory")["used_memory_peak"])
            if reported > self.redis_peak_reported_start:
                # Redis's own peak moved during the run, so it is this run's peak (it catches what sampling missed)
                self.redis_peak = max(self.redis_peak, reported)
        self._thread = None

    def cpu(self) -> dict[str, float]:
        """CPU seconds used during the run: per tracked process, Redis, and everything else on the machine."""
        out: dict[str, float] = {}
        for t in self.tracked:
            out[t.name] = out.get(t.name, 0.0) + max(0.0, t.cpu_last - t.cpu_start)
        out["redis"] = max(0.0, self.redis_cpu_end - self.redis_cpu_start)
        ours = sum(out.values())
        out["machine_total"] = max(0.0, self.machine_busy_end - self.machine_busy_start)
        # CPU that none of the above used: other engineers' tests, the kernel's softirq work for loopback, ...
        out["other"] = max(0.0, out["machine_total"] - ours)
        return {k: round(v, 2) for k, v in out.items()}

    def redis_per(self, captures: int) -> dict[str, float]:
        """Redis commands and new connections per capture (server-wide counters: others' tests add to them)."""
        if not self.redis_stats_end or captures <= 0:
            return {}
        out: dict[str, float] = {
            f"{key}_per_capture": round((self.redis_stats_end[key] - self.redis_stats_start[key]) / captures, 2)
            for key in ("commands", "connections")
        }
        out["clients_peak"] = self.redis_clients_peak
        return out

    def peak_rss_mib(self, prefix: str) -> float:
        """The highest peak RSS (VmHWM) among tracked processes whose name starts with ``prefix``."""
        peaks = [max(t.hwm_kib, t.rss_peak_kib) for t in self.tracked if t.name.startswith(prefix)]
        return round(max(peaks, default=0) / 1024, 1)


# -- the sandbox ----------------------------------------------------------------------------------------------


def redis_client() -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=30)


def redis_version(client: redis.Redis) -> str:
    return str(client.info("server")["redis_version"])


@dataclass
class Sandbox:
    """One scenario's world: doubles, worker processes and a temp dir; :meth:`close` undoes all of it."""

    pods: int
    farm_targets: int
    namespaces: int = 20
    env_overrides: dict[str, str] = field(default_factory=dict)
    keep_logs: Path | None = None
    farm_modes: list[tuple[str, int]] = field(default_factory=list)
    """[behavior, size] of the first farm targets (kprofefe_sandbox.farm.Behavior values); the rest answer as Go."""
    tmp: Path = field(init=False)
    redis: redis.Redis = field(init=False)
    farm: Double | None = field(init=False, default=None)
    kube: Double = field(init=False)
    profefe: Double = field(init=False)
    workers: list[tuple[WorkerSpec, CeleryProcess]] = field(init=False, default_factory=list)
    _doubles: list[Double] = field(init=False, default_factory=list)

    def open(self) -> Sandbox:
        self.tmp = Path(tempfile.mkdtemp(prefix="kprofefe-bench-"))
        self.redis = redis_client()
        self.redis.ping()
        self.redis.flushdb()
        self.redis.set(SENTINEL_KEY, str(os.getpid()))
        try:
            # Without a farm (discovery only) the pods still get the addresses a farm would serve.
            addresses = loopback_addresses(self.pods, FIRST_ADDRESS)
            if self.farm_targets > 0:
                self.farm = self._double(
                    "farm", count=self.farm_targets, port=PPROF_PORT, first=FIRST_ADDRESS, modes=self.farm_modes
                )
                addresses = self.farm.info["addresses"]
            self.profefe = self._double("profefe")
            self.kube = self._double(
                "kube",
                pods=self.pods,
                namespaces=self.namespaces,
                addresses=addresses,
                port=PPROF_PORT,
                kubeconfig=str(self.tmp / "kubeconfig"),
            )
        except BaseException:
            self.close()
            raise
        return self

    def _double(self, kind: str, **spec: Any) -> Double:
        double = Double(kind, **spec)
        self._doubles.append(double)
        return double.start()

    def env(self) -> dict[str, str]:
        env = {
            **PRODUCTION_ENV,
            "KPROFEFE_BROKER_URL": BROKER,
            "KPROFEFE_REDIS_URL": BROKER,
            "KPROFEFE_PROFEFE_URL": str(self.profefe.info["url"]),
            "KPROFEFE_SPOOL_DIR": str(self.tmp / "spool"),
            "KPROFEFE_OUTPUT_DIR": str(self.tmp / "profiles"),
            "KUBECONFIG": str(self.kube.info["kubeconfig"]),
        }
        env.update(self.env_overrides)
        return env

    def start_workers(self, specs: list[WorkerSpec], **extra_env: str) -> None:
        """Start all at once (imports overlap), then wait until each says ``ready.``. ``extra_env``: settings for
        these workers only (e.g. a metrics port one of them binds)."""
        env = {**self.env(), **extra_env}
        started: list[CeleryProcess] = []
        for spec in specs:
            index = sum(1 for s, _ in self.workers if s.role == spec.role)
            proc = CeleryProcess("worker", spec.args(index), env, self.tmp / f"{spec.role}{index}.log", REPO)
            self.workers.append((spec, proc))
            started.append(proc.start(wait=False))
        for started_proc in started:
            started_proc.wait_ready(WORKER_READY_TIMEOUT_S)

    def track(self, sampler: Sampler) -> None:
        counts: dict[str, int] = {}
        for spec, proc in self.workers:
            index = counts.get(spec.role, 0)
            counts[spec.role] = index + 1
            sampler.track(f"{spec.role}{index}", proc.pid)
        for double in self._doubles:
            sampler.track(f"double:{double.kind}", double.pid)
        sampler.track("driver", os.getpid())

    def worker_pids(self, role: str) -> list[int]:
        return [proc.pid for spec, proc in self.workers if spec.role == role]

    def db_intact(self) -> bool:
        """False when someone else flushed this database mid-run (rounds then lose their counters)."""
        try:
            return self.redis.get(SENTINEL_KEY) == str(os.getpid()).encode()
        except redis.RedisError:
            return False

    def worker_log_errors(self) -> list[str]:
        """Tracebacks and ERROR lines from the workers: a benchmark that hides them hides failures."""
        found = []
        for spec, proc in self.workers:
            for line in proc.output().splitlines():
                if "Traceback" in line or '"level": "error"' in line or '"level": "critical"' in line:
                    found.append(f"{spec.role}: {line[:300]}")
        return found[:20]

    def worker_log_summary(self) -> dict[str, int]:
        """Warning-or-worse lines by level and message (the first 60 characters), over all workers."""
        counts: dict[str, int] = {}
        for _spec, proc in self.workers:
            for line in proc.output().splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                level = str(record.get("level", ""))
                if level in ("warning", "error", "critical"):
                    key = f"{level}: {str(record.get('msg', ''))[:60]}"
                    counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:12])

    def close(self) -> None:
        # The figures are taken; a warm shutdown would wait for every reserved capture of an unfinished round.
        for _spec, proc in self.workers:
            with contextlib.suppress(Exception):
                proc.stop(timeout=WORKER_STOP_TIMEOUT_S)
        for double in reversed(self._doubles):
            with contextlib.suppress(Exception):
                double.stop()
        with contextlib.suppress(redis.RedisError, AttributeError):
            self.redis.flushdb()
        if self.keep_logs is not None and hasattr(self, "tmp"):
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in self.tmp.glob("*.log"):
                shutil.copy(log, self.keep_logs / log.name)
        if hasattr(self, "tmp"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- rounds ---------------------------------------------------------------------------------------------------


@dataclass
class RoundOutcome:
    summary: dict[str, Any]
    report: dict[str, Any]
    trigger_to_fanout_s: float  # trigger until the discovery task's result was back
    trigger_to_done_s: float  # trigger until every capture had a final outcome (the last upload), or the timeout
    trigger_to_p99_s: float | None = None  # trigger until 99% of the captures had one: robust to one straggler

    @property
    def timed_out(self) -> bool:
        return bool(self.report.get("timed_out"))

    @property
    def expected(self) -> int:
        return int(self.report.get("expected", self.summary.get("captures", 0)))

    @property
    def unfinished(self) -> int:
        return max(0, self.expected - int(self.report.get("done", 0)))


def trigger_round(kwargs: dict[str, Any], options: dict[str, Any] | None = None) -> tuple[float, Any]:
    """Queue one discovery as beat would; returns (monotonic trigger time, AsyncResult)."""
    from kprofefe_tasks import tasks

    started = time.monotonic()
    result = tasks.discover.apply_async(kwargs=kwargs, **(options or {}))
    return started, result


def wait_round(started: float, result: Any, timeout: float, poll: float = 0.05, captures: bool = True) -> RoundOutcome:
    """Block until the round is done or ``timeout`` (seconds from the trigger) has passed; with ``captures``
    false, only until discovery has queued them. Polls the round's counters like ``tasks.wait_round`` does, and
    also notes when 99% were done."""
    from kprofefe_tasks import tasks

    try:
        summary: dict[str, Any] = result.get(timeout=min(timeout, DISCOVER_RESULT_TIMEOUT_S))
    except CeleryTimeoutError:
        # discovery itself overran: the worker is still fanning out (it stops with the sandbox)
        waited = time.monotonic() - started
        return RoundOutcome({}, {"timed_out": True}, trigger_to_fanout_s=waited, trigger_to_done_s=waited)
    fanned_out = time.monotonic() - started
    outcome = RoundOutcome(summary, {}, trigger_to_fanout_s=fanned_out, trigger_to_done_s=fanned_out)
    if not captures:
        outcome.report = tasks.round_report(summary["round"])
        return outcome
    deadline = started + timeout
    while True:
        report = tasks.round_report(summary["round"])
        now = time.monotonic()
        expected = int(report.get("expected", -1))
        done = int(report.get("done", 0))
        if expected >= 0 and outcome.trigger_to_p99_s is None and done >= 0.99 * expected:
            outcome.trigger_to_p99_s = now - started
        if expected >= 0 and done >= expected:
            break
        if now > deadline:
            report["timed_out"] = True
            break
        time.sleep(poll)
    outcome.report = report
    outcome.trigger_to_done_s = time.monotonic() - started
    return outcome


def failures(outcome: RoundOutcome) -> int:
    """Captures that did not end ``ok``: other final outcomes, plus those without any outcome at the timeout."""
    report = outcome.report
    return int(report.get("done", 0)) - int(report.get("ok", 0)) + outcome.unfinished


# -- profiling ------------------------------------------------------------------------------------------------


def py_spy() -> str | None:
    """py-spy, if installed (``KPROFEFE_PYSPY`` or PATH). Only ``--profile`` runs need it."""
    explicit = os.environ.get("KPROFEFE_PYSPY")
    if explicit:
        return explicit
    return shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pids: dict[str, int], out_dir: Path, enabled: bool, max_seconds: float) -> Iterator[dict[str, Path]]:
    """Sample the given processes with ``py-spy record --format raw`` (collapsed stacks) while the block runs."""
    outputs: dict[str, Path] = {}
    procs: list[subprocess.Popen[bytes]] = []
    binary = py_spy() if enabled else None
    if binary is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            path = out_dir / f"{name}.collapsed.txt"
            outputs[name] = path
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "200",
                        "--duration",
                        str(int(max_seconds)),
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--output",
                        str(path),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    try:
        yield outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
