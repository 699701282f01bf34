"""The Celery tasks, thin: each translates between a Celery message and the pipeline (``kprofefe_tasks.pipeline``).

From a Python shell (see the README)::

    from kprofefe_tasks import tasks
    r = tasks.discover.delay(namespaces=["web"], selector="app=api")   # a round now
    tasks.wait_round(r.get(timeout=60)["round"], timeout=120)          # its outcome counts
    tasks.discover.delay(namespaces=["web"], pods=["api-7d9f-x2"], types=["heap"])  # one pod, one type
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis
from celery import Task
from celery.exceptions import Retry
from kombu.exceptions import OperationalError

from kprofefe_tasks import coordination, metrics
from kprofefe_tasks.coordination import round_ttl
from kprofefe_tasks.domain.backoff import backoff
from kprofefe_tasks.domain.errors import InvalidTargetError, KprofefeError, TemporaryError
from kprofefe_tasks.domain.outcomes import CaptureResult, Outcome
from kprofefe_tasks.domain.targets import Target, TargetRules, check_type, refused
from kprofefe_tasks.pipeline import discovery
from kprofefe_tasks.pipeline.capture import Capture, RetryLater
from kprofefe_tasks.worker import fanout
from kprofefe_tasks.worker import signals as _signals  # noqa: F401  (connects the worker's signal handlers)
from kprofefe_tasks.worker.app import app
from kprofefe_tasks.worker.drainer import drain_once
from kprofefe_tasks.worker.fanout import CAPTURE_TASK, fan_out
from kprofefe_tasks.worker.report import record, report_skips
from kprofefe_tasks.worker.runtime import runtime

log = logging.getLogger("kprofefe.tasks")

DISCOVERY_RETRIES = 2  # an API server blip should not cost a whole round; beat fires again next interval anyway
DISCOVERY_BACKOFF = (2.0, 30.0)  # s: base and cap between discovery attempts


def round_report(round_id: str) -> dict[str, Any]:
    """A round's counters: ``expected`` captures, ``done``, and one count per outcome."""
    return runtime().rounds.report(round_id)


def wait_round(round_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict[str, Any]:
    """Block until every capture of the round has a final outcome (or ``timeout``); returns the report."""
    return runtime().rounds.wait(round_id, timeout, poll)


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
    scope = discovery.Scope(
        namespaces=None
        if namespaces in ("all", "*", None)
        else ((namespaces,) if isinstance(namespaces, str) else tuple(namespaces)),
        selector=selector,
        pods=tuple(pods),
    )
    seconds = int(cpu_seconds or settings.cpu_seconds)
    started = time.monotonic()
    try:
        rules = TargetRules(settings.allow_link_local, settings.hostnetwork_any_port)
        types_ = list(types) if types else list(settings.types)
        found = discovery.find(rt.kube(), scope, types=types_, page_size=settings.kube_page_size, rules=rules)
    except KprofefeError as exc:
        if isinstance(exc, TemporaryError) and self.request.retries < DISCOVERY_RETRIES:
            metrics.ROUNDS.labels("retried").inc()
            log.warning("discovery %s: %s; retrying", entry, exc, extra={"entry": entry, "reason": exc.reason})
            raise self.retry(countdown=backoff(self.request.retries, *DISCOVERY_BACKOFF), exc=exc) from exc
        if isinstance(exc, TemporaryError):
            metrics.ROUNDS.labels("retried").inc()
        metrics.ROUNDS.labels("failed").inc()
        log.error("discovery %s failed: %s", entry, exc, extra={"entry": entry, "reason": exc.reason})
        raise
    for namespace, error in found.errors.items():
        metrics.SKIPPED.labels("namespace-error").inc()
        log.error(
            "discovery %s: namespace %s not listed: %s",
            entry,
            namespace,
            error,
            extra={"entry": entry, "namespace": namespace, "reason": "namespace-error"},
        )
    plan = discovery.plan_round(
        found,
        max_targets=settings.max_targets,
        interval=interval,
        cpu_seconds=seconds,
        spread=spread,
        read_margin=settings.read_margin,
        capture_expires=settings.capture_expires,
    )
    round_id = uuid.uuid4().hex[:12]
    # The round's keys live as long as one of its captures could still run: spread, wait, come back, finish.
    ttl = round_ttl(
        spread_window=plan.spread_window,
        expires_in=plan.expires_in,
        redelivery_bound=settings.redelivery_bound(),
        capture_bound=settings.capture_bound(seconds),
    )
    try:
        rt.rounds.start(
            round_id, ttl, expected=plan.expected, targets=len(plan.targets), entry=entry, started=time.time()
        )
        metrics.TARGETS.inc(len(plan.targets))
        report_skips(plan.skips, round_id)
        queued = fan_out(
            app,
            plan.targets,
            round_id=round_id,
            cpu_seconds=seconds,
            expires_in=plan.expires_in,
            spread_window=plan.spread_window,
        )
    except (redis.RedisError, OperationalError) as exc:
        # Redis full (OOM) or gone: this round is not queued; beat fires the next one as usual
        kind = coordination.note(exc, "fan-out")
        metrics.ROUNDS.labels("failed").inc()
        raise TemporaryError(f"round {round_id} not queued: {exc}", reason=f"redis-{kind}") from exc
    metrics.ROUNDS.labels("ok").inc()
    summary = {
        "errors": found.errors,
        "round": round_id,
        "entry": entry,
        "targets": len(plan.targets),
        "captures": queued,
        "fan_out": fanout.method(app),
        "skipped": dict(Counter(s.reason for s in plan.skips)),
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "round %s (%s): %d targets, %d captures queued, %d skipped",
        round_id,
        entry,
        len(plan.targets),
        queued,
        len(plan.skips),
        extra=summary,
    )
    return summary


# No STARTED state: it cost a result write (GET, SET, PUBLISH) per capture; Flower shows a started capture from its
# task-started event. Fan-out captures store no result at all (see fan_out); one queued by hand still does.
@app.task(
    name=CAPTURE_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    track_started=False,
)
def capture(self: Task, target: dict[str, Any], ptype: str, round_id: str = "", cpu_seconds: int = 0) -> dict[str, Any]:
    """Take one profile of one pod and store it; every path ends in exactly one recorded outcome."""
    rt = runtime()
    task_id = str(self.request.id or "")
    try:  # anyone who can write to Redis can write this message: discovery's checks, before anything else
        t = Target.from_dict(target, allow_link_local=rt.settings.allow_link_local)
        check_type(ptype)
    except InvalidTargetError as exc:  # counted and logged like any failed capture; nothing is fetched
        return record(refused(exc, target, ptype, round_id, task_id), rt.rounds)
    job = Capture(
        target=t,
        ptype=ptype,
        round_id=round_id,
        cpu_seconds=int(cpu_seconds or rt.settings.cpu_seconds),
        attempt=int(self.request.retries or 0),
        task_id=task_id,
    )
    decision = rt.pipeline.run(job)

    def result(outcome: str, reason: str = "", detail: str = "", **kw: Any) -> CaptureResult:
        return CaptureResult(
            t.namespace, t.pod, t.service, ptype, outcome, reason, detail, round=round_id, task_id=task_id, **kw
        )

    if isinstance(decision, RetryLater):
        if decision.counted:
            record(result(Outcome.RETRIED, decision.reason, decision.detail), rt.rounds)
        try:
            raise self.retry(countdown=decision.delay, exc=decision.error) from decision.error
        except Retry:
            raise
        except Exception as exc:  # the retry could not be queued (Redis full or gone): this capture ends here
            kind = coordination.note(exc, "retry")
            return record(result(Outcome.FAILED, f"redis-{kind}", f"retry not queued: {exc}"), rt.rounds)
    if decision.outcome in (Outcome.SPOOLED, Outcome.REJECTED):
        rt.update_spool_gauges()
    done = result(
        decision.outcome,
        decision.reason,
        decision.detail,
        size=decision.size,
        seconds=decision.seconds,
        where=decision.where,
    )
    return record(done, rt.rounds)


@app.task(name="kprofefe.drain_spool")
def drain_spool() -> dict[str, Any]:
    """Re-send the spool of whichever worker runs this (each worker also drains its own on a timer)."""
    return drain_once()


__all__ = ["Retry", "capture", "discover", "drain_spool", "round_report", "wait_round"]
