"""The benchmark scenarios. Each builds its own sandbox, triggers rounds as beat would, measures, cleans up.

Every wait is bounded (a round that does not finish is reported as timed out, with its counts), and every process
is stopped in ``finally``: a scenario never leaves workers, doubles or keys behind.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import DISCOVERY_WORKER, RoundOutcome, Sampler, Sandbox, capture_workers
from bench.profiling import summarize
from bench.report import Goal, Result

MIB = 1024 * 1024
DISCOVERY_PAGE_SIZE = 500

# Bounds on each scenario's wait, generous against the goals (a scenario past them has failed anyway) and small
# enough that `python -m bench all` stays within ~5 minutes even when every goal is missed.
ROUND_TIMEOUT_WINDOWS = 5  # x the CPU window
THROUGHPUT_TIMEOUT_S = 60.0  # 5,000 captures at the 500/s goal take 10 s
DISCOVERY_TIMEOUT_S = 100.0  # the discovery task cannot be interrupted; as shipped it needs ~75 s here
MEMORY_TIMEOUT_WINDOWS = 5
SPREAD_TIMEOUT_INTERVALS = 2


@dataclass(frozen=True)
class Config:
    """Knobs shared by the scenarios; the defaults are what RESULTS.md reports (and why is said there)."""

    capture_processes: int = 2
    """gevent runs one OS thread of Python per process: one capture worker per core."""
    capture_concurrency: int = 1000
    """Greenlets per capture worker. A round of 1,000 pods holds 1,000 CPU captures for the whole window, so the
    two workers together need more than 1,000 slots or the last CPU captures wait a whole extra window."""
    upload_rate: float = 1000.0
    """Cluster-wide uploads/s (KPROFEFE_UPLOAD_RATE). The shipped default (200/s; 50/s in deploy/) would by itself
    cap a 6,000-profile round at ~28 s; the limiter stays in the path so its Redis call is measured."""
    upload_burst: int = 1000
    profile: bool = False
    out_dir: Path = Path("bench/results")
    keep_logs: bool = False
    worker_env: dict[str, str] = field(default_factory=dict)
    """``--env`` settings on top of the production ones, e.g. ``KPROFEFE_WORKER_EVENTS=false``."""
    scale: float = 1.0
    """Multiplies pod counts (0.1 for a quick smoke run); goals are judged on the real sizes only."""

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "KPROFEFE_UPLOAD_RATE": f"{self.upload_rate:g}",
            "KPROFEFE_UPLOAD_BURST": str(self.upload_burst),
            **self.worker_env,
            **extra,
        }

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))

    def as_dict(self) -> dict[str, Any]:
        return {
            "capture_processes": self.capture_processes,
            "capture_concurrency": self.capture_concurrency,
            "upload_rate": self.upload_rate,
            "upload_burst": self.upload_burst,
            "scale": self.scale,
            "worker_env": self.worker_env,
        }


@dataclass
class Measured:
    outcome: RoundOutcome
    sampler: Sampler
    farm: dict[str, Any] = field(default_factory=dict)
    profefe: dict[str, Any] = field(default_factory=dict)
    kube: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)
    upload_rate_peak: float = 0.0
    leftover: dict[str, int] = field(default_factory=dict)


def _sandbox(cfg: Config, name: str, run: int, pods: int, farm_targets: int, **env: str) -> Sandbox:
    logs = cfg.out_dir / "logs" / f"{name}-{run}" if cfg.keep_logs else None
    return Sandbox(pods=pods, farm_targets=farm_targets, env_overrides=cfg.env(**env), keep_logs=logs)


class _UploadRate:
    """Samples the profefe double's stored count to find the busiest second of uploads."""

    def __init__(self, sandbox: Sandbox, interval: float = 0.25) -> None:
        self.sandbox = sandbox
        self.interval = interval
        self.points: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-upload-rate", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.points.append((time.monotonic(), int(self.sandbox.profefe.call("count"))))
            except (RuntimeError, TimeoutError, OSError):
                return

    def __enter__(self) -> _UploadRate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def peak_per_second(self) -> float:
        best = 0.0
        for i, (t0, c0) in enumerate(self.points):
            for t1, c1 in self.points[i + 1 :]:
                if t1 - t0 >= 1.0:
                    best = max(best, (c1 - c0) / (t1 - t0))
                    break
        return round(best, 1)


def _measure(
    sb: Sandbox,
    cfg: Config,
    label: str,
    kwargs: dict[str, Any],
    options: dict[str, Any] | None,
    timeout: float,
    track_uploads: bool = False,
    captures: bool = True,
) -> Measured:
    """Trigger one round and wait for its last capture, sampling everything meanwhile."""
    sampler = Sampler(sb.redis)
    sb.track(sampler)
    if sb.farm is not None:
        sb.farm.call("reset")
    sb.profefe.call("clear")
    pids = {name: pid for name, pid in ((t.name, t.pid) for t in sampler.tracked) if not name.startswith("double")}
    pids.pop("driver", None)
    sampler.start()
    rate = _UploadRate(sb) if track_uploads else None
    profile_dir = cfg.out_dir / "profiles" / label
    try:
        with harness.profiled(pids, profile_dir, cfg.profile, max_seconds=timeout + 30) as outputs:
            if rate is not None:
                rate.__enter__()
            try:
                started, result = harness.trigger_round(kwargs, options)
                outcome = harness.wait_round(started, result, timeout, captures=captures)
            finally:
                if rate is not None:
                    rate.__exit__()
    finally:
        sampler.stop()
    measured = Measured(outcome=outcome, sampler=sampler)
    # Where unfinished captures are: still queued, or delivered but never acknowledged (kombu's "unacked" hash,
    # redelivered only after the visibility timeout)
    measured.leftover = {"queued": _queue_length(sb, "capture"), "unacked": int(sb.redis.hlen("unacked"))}
    measured.profefe = sb.profefe.call("stats")
    measured.kube = sb.kube.call("stats")
    if sb.farm is not None:
        measured.farm = sb.farm.call("stats")
    if rate is not None:
        measured.upload_rate_peak = rate.peak_per_second()
    for name, path in outputs.items():
        if path.exists():
            text = summarize(path)
            (profile_dir / f"{name}.summary.txt").write_text(text)
            measured.profiles[name] = str(profile_dir / f"{name}.summary.txt")
    return measured


def _result(
    name: str,
    run: int,
    headline: str,
    goals: list[Goal],
    m: Measured,
    sb: Sandbox,
    expected: int,
    figures: dict[str, Any],
    notes: list[str] | None = None,
) -> Result:
    report = m.outcome.report
    errors = sb.worker_log_errors()
    notes = list(notes or [])
    if m.outcome.timed_out:
        notes.append(
            f"round not finished at the timeout: {m.outcome.unfinished} captures without an outcome; "
            f"left over in Redis: {m.leftover}"
        )
    void = not sb.db_intact()
    if void:
        notes.append(f"Redis db {harness.REDIS_DB} was flushed by another process during the run: figures void")
    if errors:
        notes.append(f"{len(errors)} error lines in worker logs, first: {errors[0]}")
    retried = int(report.get("retried", 0))
    if retried:
        figures["retried"] = retried
    figures["outcomes"] = {k: v for k, v in report.items() if k not in ("started", "entry")}
    figures["redis"] = m.sampler.redis_per(expected)
    figures["worker_log_warnings"] = sb.worker_log_summary()
    if m.profiles:
        figures["py-spy summaries"] = m.profiles
    return Result(
        scenario=name,
        run=run,
        headline=headline,
        goals=goals,
        failures=harness.failures(m.outcome),
        expected=expected,
        counted=int(m.profefe.get("stored", 0)),
        count_what="stored at profefe",
        wall_s=round(m.outcome.trigger_to_done_s, 2),
        redis_peak_mib=round(m.sampler.redis_peak / MIB, 1),
        redis_delta_mib=round((m.sampler.redis_peak - m.sampler.redis_baseline) / MIB, 1),
        peak_rss_mib={
            role: m.sampler.peak_rss_mib(role)
            for role in ("capture", "discovery")
            if any(t.name.startswith(role) for t in m.sampler.tracked)
        },
        cpu_s=m.sampler.cpu(),
        figures=figures,
        notes=notes,
        void=void,
    )


# -- 1. round -------------------------------------------------------------------------------------------------


def round_(cfg: Config, run: int) -> Result:
    """1,000 pods x 6 types, CPU window 10 s: the round should end within 1.2 x the window."""
    pods, window = cfg.n(1000), 10
    with _sandbox(cfg, "round", run, pods, pods) as sb:
        sb.start_workers([DISCOVERY_WORKER, *capture_workers(cfg.capture_processes, cfg.capture_concurrency)])
        m = _measure(sb, cfg, f"round-{run}", {"cpu_seconds": window}, None, timeout=ROUND_TIMEOUT_WINDOWS * window)
        wall = m.outcome.trigger_to_done_s
        ratio = round(wall / window, 3)
        expected = int(m.outcome.summary.get("captures", 0))
        headline = f"{pods} pods x 6 types, {window}s window: {wall:.2f}s = {ratio:.2f} x window"
        if m.outcome.timed_out:
            headline = (
                f"{pods} pods x 6 types, {window}s window: NOT DONE at {wall:.0f}s (> {ratio:.1f} x window), "
                f"{m.outcome.unfinished} captures open"
            )
        return _result(
            "round",
            run,
            headline,
            [Goal("wall/window", ratio, 1.2, "x")],
            m,
            sb,
            expected=pods * 6,
            figures={
                "queued": expected,
                "trigger_to_fanout_s": round(m.outcome.trigger_to_fanout_s, 2),
                "trigger_to_99pct_s": _rounded(m.outcome.trigger_to_p99_s),
                "discover_task_s": m.outcome.summary.get("seconds"),
                "farm_peak_concurrent": m.farm.get("peak_concurrent"),
                "farm_peak_concurrent_cpu": m.farm.get("peak_concurrent_cpu"),
                "cpu_refused": m.farm.get("cpu_refused"),
                "profiles_per_s": round(pods * 6 / wall, 1),
                "kube_model_s": _kube_profefe_model(pods, window),
            },
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _kube_profefe_model(pods: int, window: float) -> float:
    """kube-profefe: 10 goroutines over pods, each pod's 7 requests in parallel -> ceil(pods/10) windows."""
    return -(-pods // 10) * window


# -- 2. throughput --------------------------------------------------------------------------------------------


def throughput(cfg: Config, run: int) -> Result:
    """5,000 heap/goroutine captures end to end: at least 500 profiles/s."""
    pods = cfg.n(2500)
    captures = pods * 2
    with _sandbox(cfg, "throughput", run, pods, pods) as sb:
        sb.start_workers([DISCOVERY_WORKER, *capture_workers(cfg.capture_processes, cfg.capture_concurrency)])
        m = _measure(sb, cfg, f"throughput-{run}", {"types": ["heap", "goroutine"]}, None, THROUGHPUT_TIMEOUT_S, True)
        wall = m.outcome.trigger_to_done_s
        rate = round(captures / wall, 1)
        after_fanout = wall - m.outcome.trigger_to_fanout_s
        p99 = m.outcome.trigger_to_p99_s
        headline = f"{captures} heap+goroutine captures in {wall:.2f}s = {rate:.0f} profiles/s"
        if m.outcome.timed_out:
            headline = (
                f"{captures} heap+goroutine captures: NOT DONE at {wall:.0f}s ({m.outcome.unfinished} open); "
                + (f"99% in {p99:.1f}s = {0.99 * captures / p99:.0f} profiles/s" if p99 else "99% not reached")
            )
        return _result(
            "throughput",
            run,
            headline,
            [Goal("profiles/s", rate, 500, "/s", higher_is_better=True)],
            m,
            sb,
            expected=captures,
            figures={
                "trigger_to_fanout_s": round(m.outcome.trigger_to_fanout_s, 2),
                "discover_task_s": m.outcome.summary.get("seconds"),
                "profiles_per_s_after_fanout": round(captures / after_fanout, 1) if after_fanout > 0 else None,
                "trigger_to_99pct_s": _rounded(p99),
                "profiles_per_s_to_99pct": round(0.99 * captures / p99, 1) if p99 else None,
                "peak_uploads_per_s_at_profefe": m.upload_rate_peak,
                "farm_peak_concurrent": m.farm.get("peak_concurrent"),
                "cpu_per_profile_ms": _cpu_per_profile_ms(m, captures),
            },
        )


def _cpu_per_profile_ms(m: Measured, captures: int) -> dict[str, float]:
    cpu = m.sampler.cpu()
    workers = sum(v for k, v in cpu.items() if k.startswith("capture"))
    return {
        "capture_workers": round(workers / captures * 1000, 2),
        "redis": round(cpu.get("redis", 0.0) / captures * 1000, 2),
        "profefe_double": round(cpu.get("double:profefe", 0.0) / captures * 1000, 2),
        "farm_double": round(cpu.get("double:farm", 0.0) / captures * 1000, 2),
    }


# -- 3. discovery ---------------------------------------------------------------------------------------------


def discovery(cfg: Config, run: int) -> Result:
    """10,000 pods listed in pages of 500, 60,000 captures queued: within 5 s and 200 MB of worker RSS.

    No capture worker runs: the figure is discovery's own cost (as with a discovery Deployment of its own), and the
    count checked is what reached the capture queue."""
    pods = cfg.n(10_000)
    types = 6
    # No farm: nothing connects to a pod here; the pods still carry the addresses a farm would serve.
    with _sandbox(cfg, "discovery", run, pods, 0, KPROFEFE_KUBE_PAGE_SIZE=str(DISCOVERY_PAGE_SIZE)) as sb:
        sb.start_workers([DISCOVERY_WORKER])
        pid = sb.worker_pids("discovery")[0]
        before = harness.proc_status_kib(pid).get("VmRSS", 0) / 1024
        m = _measure(sb, cfg, f"discovery-{run}", {}, None, timeout=DISCOVERY_TIMEOUT_S, captures=False)
        queued = _queue_length(sb, "capture")
        wall = m.outcome.trigger_to_fanout_s
        listing_s, targets = _time_listing(sb, DISCOVERY_PAGE_SIZE)
        listed = len(targets)
        fan_out_us = _time_fan_out(sb, targets)
        rss = m.sampler.peak_rss_mib("discovery")
        result = _result(
            "discovery",
            run,
            f"{pods} pods, {m.kube.get('list_requests')} pages: listed and {queued} captures queued in {wall:.2f}s",
            [
                Goal("trigger->fan-out done", round(wall, 2), 5.0, "s"),
                Goal("discovery worker peak RSS", rss, 200, "MiB"),
            ],
            m,
            sb,
            expected=pods * types,
            figures={
                "discover_task_s": m.outcome.summary.get("seconds"),
                "listing_only_s": listing_s,
                "listing_only_targets": listed,
                # the same fan-out code in the driver, both ways, side by side in this run (µs per queued message)
                "fan_out_us_per_message": fan_out_us,
                "fan_out_share_of_task": round(1 - listing_s / float(m.outcome.summary.get("seconds") or 1), 3),
                "worker_rss_before_mib": round(before, 1),
                "list_requests": m.kube.get("list_requests"),
                "page_sizes": m.kube.get("page_sizes"),
                "redis_bytes_per_queued_capture": round(
                    (m.sampler.redis_peak - m.sampler.redis_baseline) / max(1, queued)
                ),
            },
        )
        result.counted, result.count_what = queued, "queued"
        # No captures run: only discovery's own failures count.
        result.failures = 0 if m.outcome.summary.get("captures") == pods * types else 1
        if m.outcome.timed_out:
            result.headline = f"{pods} pods: discovery NOT DONE at {wall:.0f}s ({queued} captures queued by then)"
        return result


def _time_listing(sb: Sandbox, page_size: int) -> tuple[float, list[Any]]:
    """The listing half of discovery alone (same code, in this process): list every pod and turn it into a target.

    The rest of the discovery task's time is the fan-out."""
    from kprofefe_tasks.config.settings import PROFILE_TYPES
    from kprofefe_tasks.io.kube import Kube, KubeOptions
    from kprofefe_tasks.pipeline import discovery

    kube = Kube.connect(KubeOptions(kubeconfig=str(sb.kube.info["kubeconfig"])))
    started = time.monotonic()
    targets = discovery.find(kube, discovery.Scope(), types=PROFILE_TYPES, page_size=page_size).targets
    return round(time.monotonic() - started, 2), targets


def _time_fan_out(sb: Sandbox, targets: list[Any], slow_sample: int = 1000) -> dict[str, float]:
    """``fanout.fan_out`` in this process, once per path: the bulk writer for every target, ``apply_async`` (the path
    taken when task-sent events are on) for ``slow_sample`` of them. CPU µs per queued message; queue emptied after."""
    from kprofefe_tasks import tasks
    from kprofefe_tasks.worker import bulk, fanout
    from kprofefe_tasks.worker.app import app

    figures: dict[str, float] = {}
    saved = app.conf.task_send_sent_event
    try:
        for path, sent_events, sample in (("bulk", False, targets), ("apply_async", True, targets[:slow_sample])):
            app.conf.task_send_sent_event = sent_events
            assert bulk.supported(app) is not sent_events
            started = time.process_time()
            queued = fanout.fan_out(tasks.app, sample, round_id=f"bench-{path}", cpu_seconds=10, expires_in=600)
            figures[path] = round((time.process_time() - started) / max(1, queued) * 1e6, 1)
            sb.redis.delete("capture")
    finally:
        app.conf.task_send_sent_event = saved
    return figures


def _queue_length(sb: Sandbox, queue: str) -> int:
    """Messages waiting in a kombu Redis queue (the plain list plus its priority lists)."""
    total = 0
    for key in sb.redis.scan_iter(match=f"{queue}*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == queue or name.startswith(queue + "\x06\x16"):
            total += int(sb.redis.llen(key))
    return total


# -- 4. memory ------------------------------------------------------------------------------------------------


def memory(cfg: Config, run: int) -> Result:
    """One capture worker as deployed (-c 500) with 500 CPU captures of 10 s in flight: peak RSS <= 250 MB."""
    pods, window, slots = cfg.n(500), 10, 500
    with _sandbox(cfg, "memory", run, pods, pods) as sb:
        sb.start_workers([DISCOVERY_WORKER, *capture_workers(1, slots)])
        pid = sb.worker_pids("capture")[0]
        before = harness.proc_status_kib(pid).get("VmRSS", 0) / 1024
        m = _measure(
            sb, cfg, f"memory-{run}", {"types": ["cpu"], "cpu_seconds": window}, None, MEMORY_TIMEOUT_WINDOWS * window
        )
        rss = m.sampler.peak_rss_mib("capture")
        in_flight = int(m.farm.get("peak_concurrent_cpu", 0))
        return _result(
            "memory",
            run,
            f"{in_flight} CPU captures in flight in one worker (-c {slots}): peak RSS {rss:.0f} MiB",
            [
                Goal("capture worker peak RSS", rss, 250, "MiB"),
                Goal("captures in flight", in_flight, pods, "", higher_is_better=True),
            ],
            m,
            sb,
            expected=pods,
            figures={
                "worker_rss_idle_mib": round(before, 1),
                "rss_per_capture_in_flight_kib": round((rss - before) * 1024 / max(1, in_flight), 1),
                "wall_s": round(m.outcome.trigger_to_done_s, 2),
            },
        )


# -- 5. spread ------------------------------------------------------------------------------------------------


def spread(cfg: Config, run: int, interval: float = 30.0, cpu_seconds: int = 5) -> Result:
    """The same scheduled round with and without spreading: peak load on the targets and on profefe."""
    from kprofefe_tasks.config import schedule
    from kprofefe_tasks.config.settings import get_settings

    pods = cfg.n(300)
    rounds: dict[str, Measured] = {}
    with _sandbox(cfg, "spread", run, pods, pods) as sb:
        sb.start_workers([DISCOVERY_WORKER, *capture_workers(cfg.capture_processes, cfg.capture_concurrency)])
        for mode in ("off", "on"):
            entry = {"name": "bench", "interval": interval, "cpu_seconds": cpu_seconds, "spread": mode == "on"}
            beat = schedule.beat_entries(schedule.parse([entry], get_settings()))["discover-bench"]
            rounds[mode] = _measure(
                sb,
                cfg,
                f"spread-{mode}-{run}",
                beat["kwargs"],
                beat["options"],
                SPREAD_TIMEOUT_INTERVALS * interval,
                True,
            )
        on, off = rounds["on"], rounds["off"]
        peak_on, peak_off = int(on.farm.get("peak_concurrent", 0)), int(off.farm.get("peak_concurrent", 0))
        result = _result(
            "spread",
            run,
            f"{pods} pods x 6, interval {interval:g}s: peak concurrent pprof requests {peak_off} unspread "
            f"-> {peak_on} spread",
            [],
            on,
            sb,
            expected=pods * 6,
            figures={
                "unspread": _spread_figures(off),
                "spread": _spread_figures(on),
                "spread_window_s": max(0.0, interval - cpu_seconds - get_settings().read_margin),
            },
        )
        result.failures += harness.failures(off.outcome)
        if int(off.profefe.get("stored", 0)) != pods * 6:
            result.notes.append(f"unspread round stored {off.profefe.get('stored')} of {pods * 6}")
        result.peak_rss_mib = {k: max(v, off.sampler.peak_rss_mib(k)) for k, v in result.peak_rss_mib.items()}
        result.redis_peak_mib = round(max(on.sampler.redis_peak, off.sampler.redis_peak) / MIB, 1)
        return result


def _spread_figures(m: Measured) -> dict[str, Any]:
    return {
        "wall_s": round(m.outcome.trigger_to_done_s, 2),
        "farm_peak_concurrent": m.farm.get("peak_concurrent"),
        "farm_peak_concurrent_cpu": m.farm.get("peak_concurrent_cpu"),
        "peak_uploads_per_s_at_profefe": m.upload_rate_peak,
        "stored": m.profefe.get("stored"),
        "failures": harness.failures(m.outcome),
        "capture_worker_peak_rss_mib": m.sampler.peak_rss_mib("capture"),
        # what the fast paths (KPROFEFE_FAST_PATHS) are for, in this production-shaped (spread) round
        "cpu_ms_per_profile": _cpu_per_profile_ms(m, max(1, int(m.profefe.get("stored", 0) or 0))),
    }


# -- 6. hublag ------------------------------------------------------------------------------------------------

HUBLAG_LARGE_BYTES = 10 * MIB
METRICS_HOST = "127.42.0.2"  # the capture worker's /metrics, scraped for the probe's figures


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kprofefe_hub_lag") or line.startswith("kprofefe_memory"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _hublag_side(cfg: Config, run: int, offload: str, large: int, normal: int) -> dict[str, Any]:
    from kprofefe_sandbox.processes import free_port

    modes = [("large_profile", HUBLAG_LARGE_BYTES)] * large
    env = {"KPROFEFE_UPLOAD_ATTEMPTS": "1", "KPROFEFE_SPOOL_DRAIN_INTERVAL": "3600", "KPROFEFE_OFFLOAD": offload}
    logs = cfg.out_dir / "logs" / f"hublag-{offload}-{run}" if cfg.keep_logs else None
    pods = large + normal
    with Sandbox(pods=pods, farm_targets=pods, env_overrides=cfg.env(**env), keep_logs=logs, farm_modes=modes) as sb:
        port = free_port(METRICS_HOST)
        sb.start_workers([DISCOVERY_WORKER])
        sb.start_workers(capture_workers(1, 500), KPROFEFE_METRICS_HOST=METRICS_HOST, KPROFEFE_METRICS_PORT=str(port))
        sb.profefe.call("down")  # every upload fails at once: every profile goes to the spool (fsync)
        m = _measure(sb, cfg, f"hublag-{offload}-{run}", {"types": ["heap"]}, None, 300)
        metrics = _scrape(port)
        over = metrics.get("kprofefe_hub_lag_seconds_count", 0) - metrics.get(
            'kprofefe_hub_lag_seconds_bucket{le="0.1"}', 0
        )
        return {
            "max_lag_ms": round(metrics.get("kprofefe_hub_lag_max_seconds", 0) * 1000, 1),
            "samples_over_100ms": int(over),
            "samples": int(metrics.get("kprofefe_hub_lag_seconds_count", 0)),
            "spooled": len(list((sb.tmp / "spool").glob("*.json"))),
            "round_s": round(m.outcome.trigger_to_done_s, 2),
            "outcomes": {k: v for k, v in m.outcome.report.items() if k not in ("started", "entry")},
            "db_intact": sb.db_intact(),
            "_m": m,
            "_sb": sb,
        }


def hublag(cfg: Config, run: int) -> Result:
    """10 MB profiles among normal ones, every upload spooled: the capture worker's event-loop lag, offload on/off."""
    large, normal = cfg.n(12), cfg.n(200)
    sides = {offload: _hublag_side(cfg, run, offload, large, normal) for offload in ("true", "false")}
    on, off = sides["true"], sides["false"]
    m, sb = on.pop("_m"), on.pop("_sb")
    off.pop("_m"), off.pop("_sb")
    expected = large + normal
    result = _result(
        "hublag",
        run,
        f"{large} x 10 MB + {normal} normal heap profiles, all spooled: hub lag max "
        f"{on['max_lag_ms']:.0f} ms with KPROFEFE_OFFLOAD on, {off['max_lag_ms']:.0f} ms off",
        [
            Goal("hub lag max, offload on", on["max_lag_ms"], 100, "ms"),
            Goal("spooled, offload on", on["spooled"], expected, "", higher_is_better=True),
        ],
        m,
        sb,
        expected=expected,
        figures={"offload_on": on, "offload_off": off},
    )
    spooled = int(m.outcome.report.get("spooled", 0))
    result = _pair_void(result, on["db_intact"] and off["db_intact"])
    return dataclasses.replace(
        result, failures=expected - spooled, counted=on["spooled"], count_what="spooled (profefe down)"
    )


def _pair_void(result: Result, intact: bool) -> Result:
    """An A/B pair runs two sandboxes one after the other, and the second flushes the database the first used: its
    intactness was checked inside each sandbox instead."""
    notes = [n for n in result.notes if "was flushed" not in n]
    if not intact:
        notes.append(f"Redis db {harness.REDIS_DB} was flushed by another process during the run: figures void")
    return dataclasses.replace(result, void=not intact, notes=notes)


# -- 7. hostile -----------------------------------------------------------------------------------------------

#: the 50 hostile pods: gzip bombs (under the decompressed cap, so without a budget each inflates whole), bodies
#: just under the 64 MiB body cap, bodies that drip a byte a second, HTML. Sized so that the run *without* the
#: budget stays within a few GiB of this shared machine.
HOSTILE_MIX = (
    ("gzip_bomb", 12, 256 * MIB),
    ("huge_body", 13, 60 * MIB),
    ("slow_drip", 13, 0),
    ("html", 12, 0),
)
CONTAINER_LIMIT = 1024 * MIB  # deploy/base/capture.yaml's memory limit: the budget's default follows from it


def _hostile_side(cfg: Config, run: int, budget_bytes: int, normal: int) -> dict[str, Any]:
    modes = [(behavior, size) for behavior, count, size in HOSTILE_MIX for _ in range(count)]
    hostile = len(modes)
    env = {
        "KPROFEFE_MEMORY_BUDGET_BYTES": str(budget_bytes),
        "KPROFEFE_READ_TIMEOUT": "5",  # drips end at the read deadline: 5 s keeps the run short
        "KPROFEFE_CAPTURE_RETRIES": "1",
    }
    logs = cfg.out_dir / "logs" / f"hostile-{budget_bytes}-{run}" if cfg.keep_logs else None
    pods = hostile + normal
    with Sandbox(pods=pods, farm_targets=pods, env_overrides=cfg.env(**env), keep_logs=logs, farm_modes=modes) as sb:
        sb.start_workers([DISCOVERY_WORKER, *capture_workers(1, 500)])
        pid = sb.worker_pids("capture")[0]
        idle = harness.proc_status_kib(pid).get("VmRSS", 0) / 1024
        m = _measure(sb, cfg, f"hostile-{run}", {"types": ["heap"]}, None, 300)
        hwm = harness.proc_status_kib(pid).get("VmHWM", 0) / 1024
        alive = all(proc.proc is not None and proc.proc.poll() is None for _, proc in sb.workers)
        return {
            "budget_mib": round(budget_bytes / MIB),
            "peak_rss_mib": round(hwm),
            "idle_rss_mib": round(idle),
            "normal_stored": int(m.profefe.get("stored", 0)),
            "normal_expected": normal,
            "worker_alive": alive,
            "round_s": round(m.outcome.trigger_to_done_s, 2),
            "outcomes": {k: v for k, v in m.outcome.report.items() if k not in ("started", "entry")},
            "db_intact": sb.db_intact(),
            "_m": m,
            "_sb": sb,
            "_hostile": hostile,
        }


def hostile(cfg: Config, run: int) -> Result:
    """50 hostile pods among normal ones, one capture worker (-c 500): peak RSS with the memory budget and without."""
    from kprofefe_tasks.io import budget

    normal = cfg.n(150)
    default = budget.default_total(CONTAINER_LIMIT)
    with_budget = _hostile_side(cfg, run, default, normal)
    without = _hostile_side(cfg, run, 1 << 40, normal)  # 1 TiB: no budget in effect
    m, sb, hostile_pods = with_budget.pop("_m"), with_budget.pop("_sb"), with_budget.pop("_hostile")
    for key in ("_m", "_sb", "_hostile"):
        without.pop(key)
    result = _result(
        "hostile",
        run,
        f"{hostile_pods} hostile + {normal} normal pods: worker peak RSS {with_budget['peak_rss_mib']} MiB with the "
        f"default budget ({with_budget['budget_mib']} MiB for a 1 GiB pod), {without['peak_rss_mib']} MiB without",
        [
            Goal("peak RSS with the budget", with_budget["peak_rss_mib"], CONTAINER_LIMIT / MIB, "MiB"),
            Goal("normal profiles stored", with_budget["normal_stored"], normal, "", higher_is_better=True),
        ],
        m,
        sb,
        expected=normal,
        figures={"with_budget": with_budget, "without_budget": without},
    )
    result = _pair_void(result, with_budget["db_intact"] and without["db_intact"])
    return dataclasses.replace(result, failures=max(0, result.failures - hostile_pods))


SCENARIOS: dict[str, Callable[[Config, int], Result]] = {
    "round": round_,
    "throughput": throughput,
    "discovery": discovery,
    "memory": memory,
    "spread": spread,
    "hublag": hublag,
    "hostile": hostile,
}

__all__ = ["SCENARIOS", "Config"]
