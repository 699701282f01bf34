"""``kubectl profefe capture``: take profiles from pods now, into a directory or profefe, or via the workers.

A capture here is the collector's capture: :func:`kprofefe_tasks.io.pods.fetch` takes the profile (through the
API server's pods/proxy subresource by default, so it works from a laptop; ``--direct`` dials the pod IP) and a
:mod:`kprofefe_tasks.io.sinks` sink stores it (kube-profefe's file names, or profefe with retries).

Captures run on a bounded pool of threads, CPU profiles first because they are the long ones (the whole run
then takes about ⌈pods/parallel⌉ CPU windows). Each pod gets one CPU profile per run, so Go's "one CPU profile
at a time" is never hit by this command; its snapshot profiles run next to its CPU window.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from kprofefe_tasks.cli import common, output
from kprofefe_tasks.cli import targets as scope_mod
from kprofefe_tasks.config import settings as settings_mod
from kprofefe_tasks.config.settings import PROFILE_TYPES, Settings
from kprofefe_tasks.domain.annotations import ENABLE
from kprofefe_tasks.domain.delivery import capture_id_for
from kprofefe_tasks.domain.errors import KprofefeError, SkipError
from kprofefe_tasks.domain.outcomes import CaptureResult as Outcome
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.io.kube import Kube
from kprofefe_tasks.io.pods import delivery_for, fetch
from kprofefe_tasks.io.sinks import DirectorySink, ProfefeSink, Sink

DEFAULT_PARALLEL = 16  # captures in flight; kube-profefe's fixed 10 goroutines made 200 pods take 20 windows
DEFAULT_OUTPUT_DIR = "/tmp"  # kube-profefe's default
UPLOAD_ATTEMPTS = 3  # a person is waiting: fewer retries than the collector's 5
UPLOAD_BACKOFF_BASE = 0.5  # s
UPLOAD_BACKOFF_MAX = 5.0  # s
DISCOVER_TIMEOUT = 60.0  # s: a worker answers discovery in well under this when one is running
ROUND_MARGIN = 120.0  # s: waiting for a queued round, on top of the CPU window
POLL_S = 0.5  # s between round progress polls
#: outcomes that make `capture` exit 1
FAILED = frozenset({"failed", "rejected", "poison", "expired", "cancelled"})


@dataclass(frozen=True)
class Job:
    target: Target
    ptype: str


def capture_one(
    job: Job,
    *,
    settings: Settings,
    cpu_seconds: int,
    sink: Sink,
    run_id: str,
    kube: Kube | None,
    session: requests.Session | None,
) -> Outcome:
    """Take and store one profile; every error becomes an :class:`Outcome`, nothing escapes to the pool."""
    t, ptype = job.target, job.ptype

    def ended(outcome: str, **kw: Any) -> Outcome:
        # errors name their pod and type; the summary row already does
        kw["detail"] = str(kw.get("detail", "")).removeprefix(f"{t.key} {ptype}: ")
        return Outcome(t.namespace, t.pod, t.service, ptype, outcome, round=run_id, **kw)

    started = time.monotonic()
    try:
        profile = fetch(t, ptype, settings, cpu_seconds=cpu_seconds, session=session, kube=kube)
    except SkipError as exc:
        outcome = "empty" if exc.reason == "empty" else "skipped"
        return ended(outcome, reason=exc.reason, detail=exc.message, seconds=time.monotonic() - started)
    except KprofefeError as exc:
        return ended("failed", reason=exc.reason, detail=exc.message, seconds=time.monotonic() - started)
    except Exception as exc:  # a bug or a client library surprise must not take the other captures down
        return ended("failed", reason="error", detail=f"{exc.__class__.__name__}: {exc}")
    delivery = delivery_for(capture_id_for(run_id, t.namespace, t.pod, ptype), t, ptype, profile)
    size, seconds = len(profile.body), profile.duration
    try:
        where = sink.store(delivery)
    except SkipError as exc:
        return ended("empty", reason=exc.reason, detail=exc.message, size=size, seconds=seconds)
    except KprofefeError as exc:
        return ended("failed", reason=exc.reason, detail=exc.message, size=size, seconds=seconds)
    except OSError as exc:  # the output directory: full disk, no permission
        return ended("failed", reason="write", detail=f"{exc.__class__.__name__}: {exc}", size=size, seconds=seconds)
    return ended("ok", size=size, seconds=seconds, where=where)


def run_pool(
    jobs: Sequence[Job],
    work: Callable[[Job], Outcome],
    parallel: int,
    progress: output.Progress,
) -> tuple[list[Outcome], bool]:
    """Run ``work`` over ``jobs`` on ``parallel`` daemon threads; returns the outcomes and whether it was
    interrupted (Ctrl-C). Daemon threads, not an executor: on Ctrl-C the command must end now, not after the
    CPU windows in flight."""
    todo: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    lock = threading.Lock()
    running = 0  # jobs a thread is working on, for the display
    results: list[Outcome] = []

    def worker() -> None:
        nonlocal running
        while True:
            job = todo.get()
            if job is None:
                return
            with lock:
                running += 1
            try:
                result = work(job)
            except Exception as exc:  # work() catches everything; this keeps the count right if it did not
                t = job.target
                result = Outcome(t.namespace, t.pod, t.service, job.ptype, "failed", reason="error", detail=repr(exc))
            with lock:
                running -= 1
            done.put(result)

    def in_flight() -> int:
        with lock:
            return running

    for job in jobs:
        todo.put(job)
    threads = [
        threading.Thread(target=worker, name=f"capture-{i}", daemon=True) for i in range(min(parallel, len(jobs)))
    ]
    for thread in threads:
        todo.put(None)
        thread.start()
    try:
        while len(results) < len(jobs):
            try:
                result = done.get(timeout=output.PROGRESS_REDRAW_S)
            except queue.Empty:
                progress.update(running=in_flight())
                continue
            results.append(result)
            progress.finished(result.line(), failed=result.outcome in FAILED, running=in_flight())
    except KeyboardInterrupt:
        ended = {(r.namespace, r.pod, r.type) for r in results}
        for job in jobs:
            t = job.target
            if (t.namespace, t.pod, job.ptype) not in ended:
                results.append(Outcome(t.namespace, t.pod, t.service, job.ptype, "cancelled", reason="interrupted"))
        return results, True
    finally:
        progress.close()
    return results, False


def _sort_key(o: Outcome) -> tuple[str, str, int]:
    order = PROFILE_TYPES.index(o.type) if o.type in PROFILE_TYPES else len(PROFILE_TYPES)
    return o.namespace, o.pod, order


def render(outcomes: Sequence[Outcome], fmt: str) -> str:
    """The summary after a capture.

    ``-o json`` / ``-o yaml`` shape::

        {"items": [{"namespace", "pod", "service", "type", "outcome", "reason", "bytes", "seconds", "where",
                    "detail"}],
         "counts": {outcome: n}}

    ``outcome`` is ``ok`` (``where`` = file path or profefe id), ``empty`` (the profile had no samples:
    nothing stored, not an error), ``failed`` (``reason``/``detail`` say why), ``skipped`` (a pod in scope that
    cannot be captured; ``type`` is ``-``) or ``cancelled`` (Ctrl-C).

    Table: ``POD NAMESPACE TYPE OUTCOME SIZE DETAIL``; wide adds ``SERVICE REASON SECONDS``.
    """
    ordered = sorted(outcomes, key=_sort_key)
    if fmt in ("json", "yaml"):
        counts = Counter(o.outcome for o in ordered)
        return output.dump({"items": [o.to_dict() for o in ordered], "counts": dict(sorted(counts.items()))}, fmt)
    wide = fmt == "wide"
    headers = ["POD", "NAMESPACE", "TYPE", "OUTCOME", "SIZE", "DETAIL"] + (
        ["SERVICE", "REASON", "SECONDS"] if wide else []
    )
    rows = []
    for o in ordered:
        detail = o.where if o.outcome == "ok" else (o.detail or o.reason)
        row: list[object] = [
            o.pod,
            o.namespace,
            o.type,
            o.outcome,
            output.human_size(o.size) if o.size else "-",
            detail,
        ]
        if wide:
            row += [o.service, o.reason or "-", f"{o.seconds:.1f}s"]
        rows.append(row)
    return output.table(headers, rows)


def _sink(args: argparse.Namespace) -> tuple[Sink, str]:
    """The sink and a phrase for messages; fails early when profefe is down or the directory unusable."""
    if args.push or args.profefe_explicit:
        client = common.profefe_client(args)
        client.version()  # fail in a second, not after a 30 s CPU window
        sink: Sink = ProfefeSink(
            client,
            bucket=None,
            attempts=UPLOAD_ATTEMPTS,
            backoff_base=UPLOAD_BACKOFF_BASE,
            backoff_max=UPLOAD_BACKOFF_MAX,
        )
        return sink, f"profefe at {client.base_url}"
    directory = Path(args.output_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise common.UsageError(f"--output-dir {directory}: {exc.strerror or exc}") from exc
    return DirectorySink(directory), str(directory)


def run(args: argparse.Namespace) -> int:
    if args.via_queue:
        return run_via_queue(args)
    scope_mod.pods_from_args(args)
    # KPROFEFE_* tune timeouts and size caps as for the workers; a bad value is a ConfigError naming it
    settings = settings_mod.from_env().replace(cpu_seconds=args.seconds)
    kube = common.connect_kube(args)
    scope = scope_mod.scope_from_args(args, kube)
    resolved = scope_mod.resolve(kube, scope, types=common.flatten_types(args.types), port=args.port)
    for message in resolved.missing:
        print(f"Error from server (NotFound): {message}", file=sys.stderr)
    not_enabled = [s for s in resolved.skips if s.reason == "not-enabled"]
    other_skips = [s for s in resolved.skips if s.reason != "not-enabled"]
    if not resolved.targets:
        if resolved.missing and not resolved.skips:
            return 1
        why = f" ({len(resolved.skips)} skipped: {resolved.skip_counts()})" if resolved.skips else ""
        hint = "; `kubectl profefe targets` shows why" if resolved.skips else ""
        print(f"error: no pod to capture {scope.describe()}{why}{hint}", file=sys.stderr)
        return 1
    sink, destination = _sink(args)
    if not_enabled:
        print(
            f'{len(not_enabled)} pod(s) without {ENABLE}: "true" skipped; name a pod to capture it anyway',
            file=sys.stderr,
        )
    jobs = [Job(t, p) for t in resolved.targets for p in t.types]
    jobs.sort(key=lambda j: j.ptype != "cpu")  # stable: CPU windows start first, snapshots fill the gaps
    session: requests.Session | None = None
    if args.direct:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=len(resolved.targets), pool_maxsize=len(PROFILE_TYPES))
        session.mount("http://", adapter)
    via = "directly" if args.direct else "through the API server"
    print(
        f"capturing {len(jobs)} profiles from {len(resolved.targets)} pod(s) {via} into {destination}"
        + (f" (CPU window {args.seconds}s)" if any(j.ptype == "cpu" for j in jobs) else ""),
        file=sys.stderr,
    )
    run_id = uuid.uuid4().hex[:12]
    progress = output.Progress(len(jobs), sys.stderr)
    started = time.monotonic()
    outcomes, interrupted = run_pool(
        jobs,
        lambda job: capture_one(
            job,
            settings=settings,
            cpu_seconds=args.seconds,
            sink=sink,
            run_id=run_id,
            kube=None if args.direct else kube,
            session=session,
        ),
        args.parallel,
        progress,
    )
    outcomes += [Outcome(s.namespace, s.pod, "", "-", "skipped", reason=s.reason, detail=s.detail) for s in other_skips]
    sys.stdout.write(render(outcomes, args.output))
    counts = Counter(o.outcome for o in outcomes)
    print(
        f"{', '.join(f'{n} {k}' for k, n in sorted(counts.items()))} in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    if interrupted:
        return 130
    return 1 if resolved.missing or any(o.outcome in FAILED for o in outcomes) else 0


# -- --via-queue ---------------------------------------------------------------------------------------------


def run_via_queue(args: argparse.Namespace) -> int:
    """Hand the round to the Celery workers (``tasks.discover``), follow it, print its report.

    ``-o json`` / ``-o yaml`` shape: ``{"round": str, "discovery": <discover's summary>, "report": <round_report>}``.
    The workers use their own configuration (sink, capture mode); only annotated pods are captured, as in
    every round.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    from kprofefe_tasks import tasks

    pods = list(scope_mod.pods_from_args(args))
    if args.all_namespaces:
        namespaces: str | list[str] = "all"
    else:
        namespaces = [args.namespace or common.connect_kube(args).namespace]
    types = common.flatten_types(args.types)
    try:
        result = tasks.discover.delay(
            namespaces=namespaces,
            selector=args.selector,
            pods=pods,
            types=list(types) if types else None,
            cpu_seconds=args.seconds,
        )
        summary: dict[str, Any] = result.get(timeout=DISCOVER_TIMEOUT)
    except CeleryTimeout:
        print(
            f"error: no worker ran the discovery within {DISCOVER_TIMEOUT:.0f}s: is a worker consuming the "
            "'discovery' queue of this broker?",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # the broker down, or discovery failing on the worker (re-raised by .get)
        print(f"error: queuing the round failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    namespace_errors: dict[str, str] = summary.get("errors") or {}
    for namespace, error in namespace_errors.items():
        print(f"error: namespace {namespace} not listed by the worker: {error}", file=sys.stderr)
    round_id = str(summary["round"])
    expected = int(summary.get("captures", 0))
    skipped = summary.get("skipped") or {}
    print(
        f"round {round_id}: {summary.get('targets', 0)} pod(s), {expected} captures queued"
        + (f", skipped {skipped}" if skipped else ""),
        file=sys.stderr,
    )
    if not expected:
        print(f"error: no pod to capture in {namespaces} (the workers only take annotated pods)", file=sys.stderr)
        return 1
    progress = output.Progress(expected, sys.stderr, label=f"round {round_id}")
    deadline = time.monotonic() + args.seconds + ROUND_MARGIN
    try:
        while True:
            report = tasks.wait_round(round_id, timeout=POLL_S, poll=min(0.2, POLL_S))
            failed = sum(int(report.get(k, 0)) for k in FAILED)
            progress.set_done(int(report.get("done", 0)), failed)
            if not report.get("timed_out") or time.monotonic() > deadline:
                break
    finally:
        progress.close()
    data = {"round": round_id, "discovery": summary, "report": report}
    if args.output in ("json", "yaml"):
        sys.stdout.write(output.dump(data, args.output))
    else:
        counts = {
            k: v for k, v in report.items() if k not in ("expected", "targets", "entry", "started", "done", "timed_out")
        }
        rows = [[k, v] for k, v in sorted(counts.items())]
        sys.stdout.write(output.table(["OUTCOME", "COUNT"], rows))
    if report.get("timed_out"):
        print(
            f"error: round {round_id} not finished: {report.get('done', 0)}/{expected} captures done", file=sys.stderr
        )
        return 1
    return 1 if namespace_errors or any(int(report.get(k, 0)) for k in FAILED) else 0
