"""The Celery tasks: discovery fans out one capture per (pod, type); a capture takes a profile and stores it.

From a Python shell (see the README)::

    from kprofefe_tasks import tasks
    r = tasks.discover.delay(namespaces=["web"], selector="app=api")   # a round now
    tasks.wait_round(r.get(timeout=60)["round"], timeout=120)          # its outcome counts
    tasks.discover.delay(namespaces=["web"], pods=["api-7d9f-x2"], types=["heap"])  # one pod, one type
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
from celery import Task, signals
from celery.exceptions import Retry

from kprofefe_tasks import coordination, logs, metrics
from kprofefe_tasks.config.settings import Settings, get_settings
from kprofefe_tasks.domain.backoff import backoff
from kprofefe_tasks.domain.delivery import Delivery, capture_id_for
from kprofefe_tasks.domain.errors import ConfigError, KprofefeError, PermanentError, SkipError, TemporaryError
from kprofefe_tasks.domain.targets import Skip, Target, pod_to_target
from kprofefe_tasks.io.kube import Kube
from kprofefe_tasks.io.pods import Profile, delivery_for, fetch
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import DirectorySink, ProfefeSink, Sink
from kprofefe_tasks.io.spool import Spool
from kprofefe_tasks.worker import bulk
from kprofefe_tasks.worker.app import CAPTURE_QUEUE, app

log = logging.getLogger("kprofefe.tasks")

ROUND_TTL = 24 * 3600  # s: a round's counters, for `wait_round` and the demo
#: outcomes that end a capture; "duplicate" (a redelivered task whose profile already landed) is not one
FINAL_OUTCOMES = ("ok", "empty", "spooled", "rejected", "skipped", "failed", "expired", "poison")
DISCOVERY_RETRIES = 2  # an API server blip should not cost a whole round; beat fires again next interval anyway
LOCK_WAITS = 5  # extra retries for waits on a pod's CPU profiler (ours or someone else's), each one CPU window long
WAIT_REASONS = ("cpu-locked", "cpu-busy")
POD_HTTP_POOL = 8  # connections kept per pod: one round asks a pod for at most six profiles at once
HOST_POOLS = 2000  # pods whose connections are cached; more just means new connections next round
FAN_OUT_BATCH = 500  # captures per Redis write when queueing a round (one LPUSH, about 1 MB of messages)


@dataclass
class Runtime:
    """Per-process clients, built on first use (after the pool has started, so sockets belong to the process)."""

    settings: Settings
    redis: redis.Redis
    ledger: coordination.Ledger
    pods_http: requests.Session
    sink: Sink
    spool: Spool
    bucket: coordination.TokenBucket | None
    rounds: coordination.RoundCounters
    inflight: coordination.Semaphore | None
    _kube: Kube | None = None
    _kube_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kube_or_none(self) -> Kube | None:
        """The Kubernetes client, or None when this process has no configuration for one."""
        with self._lock:
            if self._kube is None and not self._kube_error:
                try:
                    self._kube = Kube.connect()
                except ConfigError as exc:
                    self._kube_error = str(exc)
            return self._kube

    def kube(self) -> Kube:
        kube = self.kube_or_none()
        if kube is None:
            raise ConfigError(self._kube_error or "no Kubernetes configuration")
        return kube


_runtime: tuple[int, Runtime] | None = None
_runtime_lock = threading.Lock()


def _session(pools: int, per_host: int) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pools, pool_maxsize=per_host, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # an HTTP_PROXY meant for the internet must not carry pod traffic
    return session


def build_runtime(settings: Settings) -> Runtime:
    client = coordination.connect(settings.locks_redis_url, settings.broker_max_connections)
    spool = Spool(settings.spool_dir, settings.spool_max_bytes, on_drop=_on_spool_drop)
    bucket = (
        coordination.TokenBucket(client, "uploads", settings.upload_rate, settings.upload_burst)
        if settings.upload_rate > 0
        else None
    )
    sink: Sink
    if settings.profefe_url:
        profefe = ProfefeClient(
            settings.profefe_url,
            session=_session(4, 1000),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.upload_timeout,
        )
        sink = ProfefeSink(
            profefe,
            bucket=bucket,
            attempts=settings.upload_attempts,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            on_retry=lambda reason: metrics.UPLOAD_RETRIES.labels(reason).inc(),
            on_wait=metrics.RATE_LIMIT_WAIT.inc,
        )
    else:
        sink = DirectorySink(settings.output_dir)
    return Runtime(
        settings=settings,
        redis=client,
        ledger=coordination.Ledger(client),
        rounds=coordination.RoundCounters(client, ROUND_TTL),
        inflight=(
            coordination.Semaphore(client, "captures", settings.max_inflight_captures)
            if settings.max_inflight_captures > 0
            else None
        ),
        pods_http=_session(HOST_POOLS, POD_HTTP_POOL),
        sink=sink,
        spool=spool,
        bucket=bucket,
    )


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime[0] != os.getpid():
            _runtime = (os.getpid(), build_runtime(get_settings()))
        return _runtime[1]


def _on_spool_drop(delivery: Delivery | None, reason: str) -> None:
    metrics.SPOOL_DROPPED.inc()
    if delivery is not None:
        log.error(
            "spooled profile dropped",
            extra={
                "namespace": delivery.namespace,
                "pod": delivery.pod,
                "type": delivery.ptype,
                "outcome": "dropped",
                "reason": reason,
            },
        )


# -- rounds -------------------------------------------------------------------------------------------------


def _round_key(round_id: str) -> str:
    return coordination.RoundCounters.key(round_id)


def _count_outcome(round_id: str, capture_id: str, outcome: str) -> None:
    if not round_id:
        return
    counters = runtime().rounds
    try:
        if outcome == "duplicate":
            counters.count(round_id, "duplicates")
            # the first delivery stored the profile but died before counting it: for the round, it is stored
            counters.count_final(round_id, capture_id, "ok")
        elif outcome in FINAL_OUTCOMES:
            counters.count_final(round_id, capture_id, outcome)
        else:
            counters.count(round_id, outcome)
    except redis.RedisError as exc:
        log.warning("round %s: outcome %s not counted: %s", round_id, outcome, exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def round_report(round_id: str) -> dict[str, Any]:
    """A round's counters: ``expected`` captures, ``done``, and one count per outcome."""
    raw = runtime().redis.hgetall(_round_key(round_id))
    report: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    for key, value in report.items():
        if value.lstrip("-").isdigit():
            report[key] = int(value)
    return report


def wait_round(round_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict[str, Any]:
    """Block until every capture of the round has a final outcome (or ``timeout``); returns the report."""
    end = time.monotonic() + timeout
    while True:
        report = round_report(round_id)
        if report.get("expected") is not None and report.get("done", 0) >= report["expected"]:
            return report
        if time.monotonic() > end:
            report["timed_out"] = True
            return report
        time.sleep(poll)


# -- outcomes -------------------------------------------------------------------------------------------------


def record(
    target: Target,
    ptype: str,
    outcome: str,
    *,
    round_id: str,
    reason: str = "",
    detail: str = "",
    size: int = 0,
    seconds: float = 0.0,
    where: str = "",
    task_id: str = "",
) -> dict[str, Any]:
    """One log line and one metric per capture outcome; the dict is the task's result."""
    metrics.CAPTURES.labels(ptype, outcome, reason or outcome).inc()
    if outcome in ("ok", "spooled"):
        metrics.PROFILE_BYTES.labels(ptype).inc(size)
    _count_outcome(round_id, capture_id_for(round_id, target.namespace, target.pod, ptype), outcome)
    level = logging.INFO if outcome in ("ok", "empty", "duplicate", "retried") else logging.WARNING
    if outcome in ("failed", "poison", "rejected"):
        level = logging.ERROR
    result: dict[str, Any] = {
        "namespace": target.namespace,
        "pod": target.pod,
        "type": ptype,
        "service": target.service,
        "outcome": outcome,
        "reason": reason,
        "bytes": size,
        "seconds": round(seconds, 3),
        "where": where,
        "round": round_id,
        "task_id": task_id,
    }
    log.log(
        level,
        "capture %s %s/%s %s%s%s",
        outcome,
        target.namespace,
        target.pod,
        ptype,
        f" ({reason})" if reason else "",
        f": {detail}" if detail else "",
        extra=result,
    )
    return result


# -- discovery ------------------------------------------------------------------------------------------------


def find_targets(
    kube: Kube,
    namespaces: Sequence[str] | None,
    *,
    selector: str = "",
    pods: Sequence[str] = (),
    types: Sequence[str],
    page_size: int,
) -> tuple[list[Target], list[Skip], dict[str, str]]:
    """List pods in scope and split them into targets and skips (each pod once, even if listed twice).

    A namespace that cannot be listed (no rights, API error) is reported in the third value and the others are
    still captured; only when every namespace fails does the error propagate.
    """
    field_selector = "status.phase=Running"
    if len(pods) == 1:
        field_selector += f",metadata.name={pods[0]}"
    wanted = set(pods)
    seen: dict[str, Target | Skip] = {}
    errors: dict[str, str] = {}
    scopes: list[str | None] = list(dict.fromkeys(namespaces)) if namespaces is not None else [None]
    last_error: KprofefeError | None = None
    for namespace in scopes:
        try:
            for pod in kube.list_pods(
                namespace, label_selector=selector, field_selector=field_selector, page_size=page_size
            ):
                name = (pod.get("metadata") or {}).get("name", "")
                if wanted and name not in wanted:
                    continue
                result = pod_to_target(pod, types)
                seen[result.key] = result
        except KprofefeError as exc:
            errors[namespace or "*"] = str(exc)
            last_error = exc
    if last_error is not None and len(errors) == len(scopes):
        raise last_error
    targets = [r for r in seen.values() if isinstance(r, Target)]
    skips = [r for r in seen.values() if isinstance(r, Skip)]
    return targets, skips, errors


def limit_targets(targets: Sequence[Target], limit: int) -> tuple[list[Target], list[Skip]]:
    """Keep at most ``limit`` targets, the same ones every round (lowest hash of their key), skipping the rest."""
    if limit <= 0 or len(targets) <= limit:
        return list(targets), []
    ranked = sorted(targets, key=lambda t: hashlib.sha1(t.key.encode()).digest())
    over = [
        Skip(t.namespace, t.pod, "over-limit", f"KPROFEFE_MAX_TARGETS={limit} reached; {len(targets)} pods in scope")
        for t in ranked[limit:]
    ]
    return ranked[:limit], over


def spread_offset(key: str, window: float) -> float:
    """A stable offset in ``[0, window)`` for a target: its captures land at the same point of every interval."""
    if window <= 0:
        return 0.0
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * window


def fan_out(
    targets: Iterable[Target],
    *,
    round_id: str,
    cpu_seconds: int,
    expires_in: float,
    spread_window: float = 0.0,
) -> int:
    """Queue one capture per (target, type) over one broker connection, in pipelined batches; returns how many.

    CPU captures go first: each holds a pool slot for its whole window, so starting every window early is what lets
    a round end about one window after it began; the snapshot captures fill the remaining slots meanwhile.

    Per message this skips what a round never reads (bench/RESULTS.md measured each): a stored result (the round's
    counters and the metrics carry every outcome, and Celery would otherwise subscribe to each capture's result
    channel as it is sent) and one Redis round trip per message. On Redis without ``task-sent`` events the messages
    are written by :mod:`kprofefe_tasks.worker.bulk`; otherwise by ``apply_async`` in kombu's publish batches.
    """
    jobs = [(target, ptype) for target in targets for ptype in target.types]
    jobs.sort(key=lambda job: job[1] != "cpu")  # stable: listing order is kept within each group
    payloads: dict[str, dict[str, Any]] = {}

    def messages() -> Iterator[bulk.Message]:
        for target, ptype in jobs:
            payload = payloads.get(target.key)
            if payload is None:
                payload = payloads[target.key] = target.to_dict()
            countdown = spread_offset(f"{target.key}/{ptype}", spread_window)
            yield bulk.Message(
                kwargs={"target": payload, "ptype": ptype, "round_id": round_id, "cpu_seconds": cpu_seconds},
                # what Flower and the logs show; Celery's own repr of the target dict cost 14% of the fan-out
                kwargsrepr=f"{{'pod': '{target.key}', 'ptype': '{ptype}', 'round_id': '{round_id}'}}",
                countdown=countdown,
                expires=countdown + expires_in,
            )

    if bulk.supported(app):
        return bulk.publish(app, capture.name, CAPTURE_QUEUE, messages(), batch=FAN_OUT_BATCH)
    queue = app.amqp.queues[CAPTURE_QUEUE]
    with app.producer_or_acquire() as producer:
        producer.maybe_declare(queue)  # once, not once per message
        with producer.batch(max_size=FAN_OUT_BATCH):
            for message in messages():
                capture.apply_async(
                    kwargs=message.kwargs,
                    kwargsrepr=message.kwargsrepr,
                    countdown=message.countdown or None,
                    expires=message.expires,
                    queue=queue,
                    declare=[],
                    producer=producer,
                    ignore_result=True,
                )
    return len(jobs)


@app.task(name="kprofefe.discover", bind=True, acks_late=False)
def discover(
    self: Task,
    namespaces: Sequence[str] | str = "all",
    selector: str = "",
    types: Sequence[str] | None = None,
    cpu_seconds: int | None = None,
    interval: float | None = None,
    spread: bool = False,
    entry: str = "manual",
    pods: Sequence[str] = (),
) -> dict[str, Any]:
    """One round: list the pods in scope and queue their captures. Returns the round's id and counts."""
    rt = runtime()
    settings = rt.settings
    scope = (
        None
        if namespaces in ("all", "*", None)
        else ([namespaces] if isinstance(namespaces, str) else list(namespaces))
    )
    wanted_types = list(types) if types else list(settings.types)
    seconds = int(cpu_seconds or settings.cpu_seconds)
    started = time.monotonic()
    try:
        targets, skips, errors = find_targets(
            rt.kube(),
            scope,
            selector=selector,
            pods=pods,
            types=wanted_types,
            page_size=settings.kube_page_size,
        )
    except TemporaryError as exc:
        metrics.ROUNDS.labels("retried").inc()
        if self.request.retries < DISCOVERY_RETRIES:
            log.warning("discovery %s: %s; retrying", entry, exc, extra={"entry": entry, "reason": exc.reason})
            raise self.retry(countdown=backoff(self.request.retries, 2.0, 30.0), exc=exc) from exc
        metrics.ROUNDS.labels("failed").inc()
        log.error("discovery %s failed: %s", entry, exc, extra={"entry": entry, "reason": exc.reason})
        raise
    except KprofefeError as exc:
        metrics.ROUNDS.labels("failed").inc()
        log.error("discovery %s failed: %s", entry, exc, extra={"entry": entry, "reason": exc.reason})
        raise
    for namespace, error in errors.items():
        metrics.SKIPPED.labels("namespace-error").inc()
        log.error(
            "discovery %s: namespace %s not listed: %s",
            entry,
            namespace,
            error,
            extra={"entry": entry, "namespace": namespace, "reason": "namespace-error"},
        )
    targets, over = limit_targets(targets, settings.max_targets)
    skips.extend(over)
    round_id = uuid.uuid4().hex[:12]
    expected = sum(len(t.types) for t in targets)
    rt.redis.hset(
        _round_key(round_id),
        mapping={"expected": expected, "targets": len(targets), "entry": entry, "started": time.time()},
    )
    rt.redis.expire(_round_key(round_id), ROUND_TTL)
    skipped = Counter(s.reason for s in skips)
    metrics.TARGETS.inc(len(targets))
    for skip in skips:
        metrics.SKIPPED.labels(skip.reason).inc()
        if skip.reason != "not-enabled":  # most pods are simply not annotated; that is not news
            log.warning(
                "skip %s: %s",
                skip.key,
                skip.detail,
                extra={
                    "namespace": skip.namespace,
                    "pod": skip.pod,
                    "outcome": "skipped",
                    "reason": skip.reason,
                    "round": round_id,
                },
            )
    if interval:
        expires_in = float(interval)
        # Spread over the part of the interval where a CPU window still ends before the next round.
        window = max(0.0, min(float(interval) - seconds - settings.read_margin, settings.visibility_timeout / 2))
    else:
        expires_in, window = float(settings.capture_expires), 0.0
    queued = fan_out(
        targets, round_id=round_id, cpu_seconds=seconds, expires_in=expires_in, spread_window=window if spread else 0.0
    )
    metrics.ROUNDS.labels("ok").inc()
    summary = {
        "errors": errors,
        "round": round_id,
        "entry": entry,
        "targets": len(targets),
        "captures": queued,
        "skipped": dict(skipped),
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "round %s (%s): %d targets, %d captures queued, %d skipped",
        round_id,
        entry,
        len(targets),
        queued,
        len(skips),
        extra=summary,
    )
    return summary


# -- capture --------------------------------------------------------------------------------------------------


def _pod_gone(rt: Runtime, target: Target) -> bool:
    """Whether the pod was deleted or replaced since discovery (asked only after a failed capture)."""
    try:
        kube = rt.kube_or_none()
        if kube is None:
            return False
        pod = kube.get_pod(target.namespace, target.pod)
    except KprofefeError:
        return False
    if pod is None:
        return True
    meta = pod.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) or (bool(target.uid) and meta.get("uid") != target.uid)


def _take(rt: Runtime, target: Target, ptype: str, cpu_seconds: int, holder: str) -> Profile:
    """Fetch under the per-pod CPU lock and the optional cluster-wide capture semaphore."""
    settings = rt.settings
    lease = settings.cpu_deadline(cpu_seconds) + 5
    lock = coordination.Lock(rt.redis, f"cpu:{target.key}") if ptype == "cpu" else None
    if lock is not None and not lock.acquire(lease):
        # Go refuses a second CPU profile with a 500; wait for the holder's window instead of asking
        raise TemporaryError(
            f"{target.key}: another CPU profile is in flight", reason="cpu-locked", delay=max(1.0, lock.remaining())
        )
    semaphore = rt.inflight
    if semaphore is not None and not semaphore.acquire(holder, lease):
        if lock is not None:
            lock.release()
        raise TemporaryError("cluster-wide capture limit reached", reason="inflight-limit", delay=1.0)
    try:
        kube = rt.kube() if settings.capture_via == "proxy" else None
        return fetch(target, ptype, settings, cpu_seconds=cpu_seconds, session=rt.pods_http, kube=kube)
    finally:
        if lock is not None:
            lock.release()
        if semaphore is not None:
            semaphore.release(holder)


def deliver(rt: Runtime, delivery: Delivery) -> tuple[str, str, str]:
    """Store a profile: (outcome, reason, where). A profile taken is never dropped silently."""
    started = time.monotonic()
    try:
        where = rt.sink.store(delivery)
        outcome, reason = "ok", ""
    except SkipError as exc:
        outcome, reason, where = "empty", exc.reason, ""
    except TemporaryError as exc:
        entry = rt.spool.put(delivery)
        outcome, reason, where = "spooled", exc.reason, f"spool:{entry.name}"
    except PermanentError as exc:
        entry = rt.spool.reject(delivery, str(exc))
        outcome, reason, where = "rejected", exc.reason, f"rejected:{entry.name}"
    metrics.UPLOAD_SECONDS.observe(time.monotonic() - started)
    return outcome, reason, where


# No STARTED state: it cost a result write (GET, SET, PUBLISH) per capture; Flower shows a started capture from its
# task-started event. Fan-out captures store no result at all (see fan_out); one queued by hand still does.
@app.task(
    name="kprofefe.capture",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    track_started=False,
)
def capture(self: Task, target: dict[str, Any], ptype: str, round_id: str = "", cpu_seconds: int = 0) -> dict[str, Any]:
    """Take one profile of one pod and store it; every path ends in exactly one recorded outcome."""
    rt = runtime()
    settings = rt.settings
    t = Target.from_dict(target)
    seconds = int(cpu_seconds or settings.cpu_seconds)
    capture_id = capture_id_for(round_id or str(self.request.id), t.namespace, t.pod, ptype)
    task_id = str(self.request.id or "")
    attempt = int(self.request.retries or 0)

    def done(outcome: str, **kw: Any) -> dict[str, Any]:
        return record(t, ptype, outcome, round_id=round_id, task_id=task_id, **kw)

    try:
        where, starts = rt.ledger.begin(capture_id, attempt)
    except TemporaryError as exc:
        raise self.retry(countdown=backoff(attempt, settings.backoff_base, settings.backoff_max), exc=exc) from exc
    if where:
        return done("duplicate", reason="already-delivered", where=where)
    if starts > 1:
        # A worker died holding this task. Did it store the profile before dying?
        if starts > settings.max_deliveries:
            return done(
                "poison",
                reason="redelivered",
                detail=f"started {starts} times; giving up so it cannot kill more workers",
            )
        if isinstance(rt.sink, ProfefeSink):
            try:
                stored = rt.sink.already_stored(t.service, ptype, capture_id)
            except KprofefeError:
                stored = None
            if stored:
                rt.ledger.mark_delivered(capture_id, stored)
                return done("duplicate", reason="stored-before-redelivery", where=stored)

    try:
        profile = _take(rt, t, ptype, seconds, holder=task_id or capture_id)
    except TemporaryError as exc:
        if exc.reason in ("target-unreachable", "target-timeout", "target-reset") and _pod_gone(rt, t):
            return done("skipped", reason="pod-gone", detail=str(exc))
        # Waiting for our own CPU lock is not a failure of the target: it costs no retry, only time, and the lock's
        # lease bounds it (LOCK_WAITS caps a pod whose CPU profiler is kept busy by someone else without end).
        budget = settings.capture_retries + (LOCK_WAITS if exc.reason in WAIT_REASONS else 0)
        if attempt < budget:
            if exc.reason in WAIT_REASONS and exc.delay:
                delay = exc.delay + random.uniform(0, 0.5)  # a known wait (a CPU window), not a guess to cap
            else:
                delay = backoff(attempt, max(1.0, settings.backoff_base), settings.backoff_max, exc.delay)
            record(
                t,
                ptype,
                "retried",
                round_id=round_id,
                reason=exc.reason,
                task_id=task_id,
                detail=f"{exc.message}; retry {attempt + 1}/{budget} in {delay:.1f}s",
            )
            raise self.retry(countdown=delay, exc=exc) from exc
        return done("failed", reason=exc.reason, detail=exc.message)
    except SkipError as exc:
        return done("empty" if exc.reason == "empty" else "skipped", reason=exc.reason, detail=exc.message)
    except PermanentError as exc:
        return done("failed", reason=exc.reason, detail=exc.message)

    metrics.CAPTURE_SECONDS.labels(ptype).observe(profile.duration)
    delivery = delivery_for(capture_id, t, ptype, profile)
    outcome, reason, where = deliver(rt, delivery)
    if outcome != "empty":
        rt.ledger.mark_delivered(capture_id, where)
    if outcome in ("spooled", "rejected"):
        _update_spool_gauges(rt)
    return done(outcome, reason=reason, size=len(profile.body), seconds=profile.duration, where=where)


# -- spool ----------------------------------------------------------------------------------------------------


def _update_spool_gauges(rt: Runtime) -> None:
    count, size = rt.spool.stats()
    metrics.SPOOL_PROFILES.set(count)
    metrics.SPOOL_BYTES.set(size)


def drain_once(rt: Runtime | None = None) -> dict[str, Any]:
    """Re-send this worker's spool to profefe, oldest first; stops at the first temporary failure."""
    rt = rt or runtime()
    if not isinstance(rt.sink, ProfefeSink):
        return {"sent": 0, "left": rt.spool.stats()[0], "error": "no profefe URL configured"}
    sink = rt.sink

    def sent(delivery: Delivery, where: str) -> None:
        rt.ledger.mark_delivered(delivery.capture_id, where)
        metrics.CAPTURES.labels(delivery.ptype, "ok", "from-spool").inc()
        log.info(
            "spooled profile delivered %s/%s %s",
            delivery.namespace,
            delivery.pod,
            delivery.ptype,
            extra={
                "namespace": delivery.namespace,
                "pod": delivery.pod,
                "type": delivery.ptype,
                "outcome": "ok",
                "reason": "from-spool",
                "where": where,
            },
        )

    def stored_already(delivery: Delivery) -> str | None:
        return sink.already_stored(delivery.service, delivery.ptype, delivery.capture_id)

    result = rt.spool.drain(sink.store, on_sent=sent, already_sent=stored_already)
    _update_spool_gauges(rt)
    return {
        "sent": result.sent,
        "empty": result.empty,
        "rejected": result.rejected,
        "left": result.left,
        "error": result.error,
    }


@app.task(name="kprofefe.drain_spool")
def drain_spool() -> dict[str, Any]:
    """Re-send the spool of whichever worker runs this (each worker also drains its own on a timer)."""
    return drain_once()


def _drain_forever(stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            rt = runtime()
            if rt.spool.entries():
                result = drain_once(rt)
                if result["sent"] or result["left"]:
                    log.info("spool drain: %s", result)
        except Exception:  # the drainer must outlive any one bad moment (Redis restart, disk hiccup)
            log.exception("spool drain failed; trying again in %.0fs", interval)


_stop_drainer = threading.Event()


@signals.worker_init.connect
@signals.beat_init.connect
def _serve_metrics(**_: Any) -> None:
    """Before the broker connection: /healthz answers for a live process even while Redis is still coming up."""
    settings = get_settings()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)


def _sweep_unacked(stop: threading.Event, interval: float) -> None:
    """Give a dead worker's unacknowledged tasks back to the queue once they pass the visibility timeout.

    kombu's Redis transport does this only from an idle poll of its consumer loop, which a busy gevent worker
    rarely reaches (measured: no redelivery within 70 s, sometimes never); this thread makes it happen every
    ``interval`` seconds. A Redis mutex inside kombu keeps concurrent sweepers from restoring a task twice.
    """
    while not stop.wait(interval):
        try:
            with app.connection_for_write() as conn:
                conn.default_channel.qos.restore_visible(num=1000, interval=1)
        except Exception as exc:  # a Redis restart: the next sweep will do
            log.warning("unacked-task sweep failed: %s", exc)


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    settings = get_settings()
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        threading.Thread(
            target=_sweep_unacked,
            args=(_stop_drainer, max(1.0, settings.visibility_timeout / 4)),
            name="kprofefe-unacked-sweep",
            daemon=True,
        ).start()
    if settings.profefe_url:
        threading.Thread(
            target=_drain_forever,
            args=(_stop_drainer, settings.spool_drain_interval),
            name="kprofefe-spool-drain",
            daemon=True,
        ).start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    _stop_drainer.set()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _on_setup_logger(logger: logging.Logger, **_: Any) -> None:
    settings = get_settings()
    logs.install(settings.log_level, settings.log_format, logger)


@signals.task_revoked.connect
def _on_revoked(request: Any = None, expired: bool = False, **_: Any) -> None:
    """An expired capture waited longer than its interval: dropped so rounds do not pile up, and counted."""
    if request is None or getattr(request, "name", "") != "kprofefe.capture":
        return
    kwargs = getattr(request, "kwargs", None) or {}
    try:
        target = Target.from_dict(kwargs["target"])
    except (KeyError, TypeError, ValueError):
        return
    record(
        target,
        str(kwargs.get("ptype", "")),
        "expired" if expired else "failed",
        round_id=str(kwargs.get("round_id", "")),
        reason="expired" if expired else "revoked",
        task_id=str(getattr(request, "id", "")),
    )


__all__ = ["Retry", "capture", "discover", "drain_spool", "round_report", "wait_round"]
