"""The capture decision tree, as plain code: one delivery of one (pod, type) capture in, one decision out.

No Celery here. The task (``kprofefe_tasks.tasks.capture``) builds a :class:`Capture` from its message, hands it to
:meth:`CapturePipeline.run` and translates the answer: a :class:`Finished` becomes the task's result, a
:class:`RetryLater` becomes ``self.retry(countdown=...)``. Every collaborator is a port handed in at construction
(kopf's style), so the unit tier drives every branch with in-memory fakes (``tests/test_capture_pipeline.py``)::

    begin in the ledger ── Redis down ─────────────────────────────── retry later (no retry counted)
      │ already delivered ─────────────────────────────────────────── duplicate / already-delivered
      │ started before (a worker died running it):
      │     more than max_deliveries times ────────────────────────── poison / redelivered
      │     profefe already has its capture_id ────────────────────── duplicate / stored-before-redelivery
    take it (memory reservation, CPU lock, capture semaphore, HTTP fetch)
      │ no room in the worker's memory budget within the wait ─────── retry later (counted), then failed / memory-budget
      │ needs more than the budget lets one capture hold ──────────── failed / memory-budget
      │ unreachable and the pod is gone ───────────────────────────── skipped / pod-gone
      │ temporary, retries left (busy waits cost none) ────────────── retry later (counted "retried")
      │ temporary, no retries left; permanent ─────────────────────── failed / <the error's reason>
      │ no samples ────────────────────────────────────────────────── empty
    store it
      │ stored ────────────────────────────────────────────────────── ok
      │ the sink says empty ───────────────────────────────────────── empty
      │ temporary past the sink's retries ─────────────────────────── spooled (re-sent later)
      │ permanent ─────────────────────────────────────────────────── rejected (kept in the spool's rejected/)
      │ the spool cannot write it (disk full; read-only, I/O error) ─ failed / spool-full, spool-error
    mark delivered in the ledger (not for empty or failed)
    release the memory reservation (every path)
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from kprofefe_tasks import metrics
from kprofefe_tasks.domain.backoff import backoff
from kprofefe_tasks.domain.delivery import Delivery, capture_id_for
from kprofefe_tasks.domain.errors import (
    BusyError,
    KprofefeError,
    PermanentError,
    SkipError,
    SpoolError,
    TemporaryError,
    UnreachableError,
)
from kprofefe_tasks.domain.outcomes import Outcome, Reason
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.io.budget import Unbounded
from kprofefe_tasks.io.pods import Memory, Profile, delivery_for

#: extra retries for waits on a pod's CPU profiler (ours or someone else's), each about one CPU window long
LOCK_WAITS = 5
LOCK_LEASE_GRACE_S = 5.0  # s past the capture's deadline before a dead holder's CPU lock frees itself
BUSY_JITTER_S = 0.5  # s: captures waiting on one pod's window do not all ask again in the same instant
MIN_RETRY_BASE_S = 1.0  # s: a target that failed is not asked again sooner than this


# -- ports ---------------------------------------------------------------------------------------------------


class Ledger(Protocol):
    def begin(self, capture_id: str, attempt: int) -> tuple[str | None, int]: ...

    def mark_delivered(self, capture_id: str, where: str) -> None: ...


class Lock(Protocol):
    def acquire(self, lease: float) -> bool: ...

    def remaining(self) -> float: ...

    def release(self) -> None: ...


class Semaphore(Protocol):
    def acquire(self, holder: str, lease: float) -> bool: ...

    def release(self, holder: str) -> None: ...


class Fetcher(Protocol):
    def __call__(self, target: Target, ptype: str, cpu_seconds: int, memory: Memory) -> Profile: ...


class Budget(Protocol):
    """The worker's memory budget: a reservation per capture, held from the fetch until it is stored."""

    def reserve(self, holder: str) -> AbstractContextManager[Memory]: ...


class Sink(Protocol):
    def store(self, delivery: Delivery) -> str: ...


class Lookup(Protocol):
    """Asks the store whether a capture's profile already landed (profefe's ``capture_id`` label)."""

    def already_stored(self, service: str, ptype: str, capture_id: str) -> str | None: ...


class SpoolEntry(Protocol):
    @property
    def name(self) -> str: ...


class Spool(Protocol):
    """Both raise :class:`SpoolError` when the profile cannot be kept (disk full, read-only, I/O error)."""

    def put(self, delivery: Delivery) -> SpoolEntry: ...

    def reject(self, delivery: Delivery, error: str) -> SpoolEntry: ...


class Pods(Protocol):
    def gone(self, target: Target) -> bool:
        """Whether the pod was deleted or replaced since discovery (asked only after it did not answer)."""
        ...


# -- values --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The settings the tree decides with (from :class:`~kprofefe_tasks.config.settings.Settings`)."""

    capture_retries: int
    max_deliveries: int
    backoff_base: float
    backoff_max: float
    read_margin: float
    lock_waits: int = LOCK_WAITS

    def lease(self, cpu_seconds: int) -> float:
        """How long a capture holds its CPU lock and semaphore slot at most (its deadline plus a grace)."""
        return cpu_seconds + self.read_margin + LOCK_LEASE_GRACE_S


@dataclass(frozen=True)
class Capture:
    """One delivery of one capture: what the message says, and how many retries it has had."""

    target: Target
    ptype: str
    round_id: str
    cpu_seconds: int
    attempt: int = 0  # retries so far (Celery's request.retries)
    task_id: str = ""

    @property
    def capture_id(self) -> str:
        return capture_id_for(self.round_id or self.task_id, self.target.namespace, self.target.pod, self.ptype)

    @property
    def holder(self) -> str:
        return self.task_id or self.capture_id


@dataclass(frozen=True)
class Finished:
    """The capture ended: one final outcome (or ``duplicate``)."""

    outcome: Outcome
    reason: str = ""
    detail: str = ""
    where: str = ""
    size: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RetryLater:
    """Run this capture again in ``delay`` seconds. ``counted``: log and count it as a ``retried`` outcome."""

    delay: float
    error: TemporaryError
    counted: bool = True
    detail: str = ""

    @property
    def reason(self) -> str:
        return self.error.reason


Decision = Finished | RetryLater


class CapturePipeline:
    """The decision tree over its ports. One instance per worker process; :meth:`run` is safe to call concurrently."""

    def __init__(
        self,
        *,
        policy: Policy,
        ledger: Ledger,
        fetch: Fetcher,
        sink: Sink,
        spool: Spool,
        lookup: Lookup | None = None,
        pods: Pods | None = None,
        cpu_lock: Callable[[str], Lock] | None = None,
        semaphore: Semaphore | None = None,
        budget: Budget | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.fetch = fetch
        self.sink = sink
        self.spool = spool
        self.lookup = lookup
        self.pods = pods
        self.cpu_lock = cpu_lock
        self.semaphore = semaphore
        self.budget: Budget = budget if budget is not None else Unbounded()
        self.clock = clock
        self.jitter = jitter

    def run(self, capture: Capture) -> Decision:
        policy = self.policy
        try:
            where, starts = self.ledger.begin(capture.capture_id, capture.attempt)
        except TemporaryError as exc:
            delay = backoff(capture.attempt, policy.backoff_base, policy.backoff_max)
            return RetryLater(delay, exc, counted=False)
        if where:
            return Finished(Outcome.DUPLICATE, Reason.ALREADY_DELIVERED, where=where)
        if starts > 1:  # a worker died holding this delivery: did it store the profile before dying?
            if starts > policy.max_deliveries:
                detail = f"started {starts} times; giving up so it cannot kill more workers"
                return Finished(Outcome.POISON, Reason.REDELIVERED, detail=detail)
            stored = self._stored_already(capture)
            if stored:
                self.ledger.mark_delivered(capture.capture_id, stored)
                return Finished(Outcome.DUPLICATE, Reason.STORED_BEFORE_REDELIVERY, where=stored)
        with self.budget.reserve(capture.holder) as memory:  # released however the capture ends
            return self._take_and_store(capture, memory)

    def _take_and_store(self, capture: Capture, memory: Memory) -> Decision:
        try:
            profile = self._take(capture, memory)
        except TemporaryError as exc:
            return self._after_temporary(capture, exc)
        except SkipError as exc:
            outcome = Outcome.EMPTY if exc.reason == Reason.EMPTY else Outcome.SKIPPED
            return Finished(outcome, exc.reason, detail=exc.message)
        except PermanentError as exc:
            return Finished(Outcome.FAILED, exc.reason, detail=exc.message)

        metrics.CAPTURE_SECONDS.labels(capture.ptype).observe(profile.duration)
        delivery = delivery_for(capture.capture_id, capture.target, capture.ptype, profile)
        outcome, reason, where, detail = self._store(delivery)
        if outcome in (Outcome.OK, Outcome.SPOOLED, Outcome.REJECTED):
            self.ledger.mark_delivered(capture.capture_id, where)
        return Finished(outcome, reason, detail, where=where, size=len(profile.body), seconds=profile.duration)

    def _stored_already(self, capture: Capture) -> str | None:
        if self.lookup is None:
            return None
        try:
            return self.lookup.already_stored(capture.target.service, capture.ptype, capture.capture_id)
        except KprofefeError:
            return None  # cannot tell: take it again, the ledger still stops a loop

    def _take(self, capture: Capture, memory: Memory) -> Profile:
        """Fetch under the per-pod CPU lock and the optional cluster-wide capture semaphore."""
        lease = self.policy.lease(capture.cpu_seconds)
        lock = self.cpu_lock(f"cpu:{capture.target.key}") if capture.ptype == "cpu" and self.cpu_lock else None
        if lock is not None and not lock.acquire(lease):
            # Go refuses a second CPU profile with a 500: wait for the holder's window instead of asking
            raise BusyError(
                f"{capture.target.key}: another CPU profile is in flight",
                reason=Reason.CPU_LOCKED,
                delay=max(1.0, lock.remaining()),
            )
        try:
            if self.semaphore is not None and not self.semaphore.acquire(capture.holder, lease):
                raise TemporaryError("cluster-wide capture limit reached", reason=Reason.INFLIGHT_LIMIT, delay=1.0)
            try:
                return self.fetch(capture.target, capture.ptype, capture.cpu_seconds, memory)
            finally:
                if self.semaphore is not None:
                    self.semaphore.release(capture.holder)
        finally:
            if lock is not None:
                lock.release()

    def _after_temporary(self, capture: Capture, exc: TemporaryError) -> Decision:
        policy = self.policy
        if isinstance(exc, UnreachableError) and self.pods is not None and self.pods.gone(capture.target):
            return Finished(Outcome.SKIPPED, Reason.POD_GONE, detail=str(exc))
        # Waiting for a CPU profiler is not a failure of the target: it costs no retry, only time, and the lock's
        # lease bounds it (lock_waits caps a pod whose CPU profiler someone else keeps busy without end).
        busy = isinstance(exc, BusyError)
        budget = policy.capture_retries + (policy.lock_waits if busy else 0)
        if capture.attempt >= budget:
            return Finished(Outcome.FAILED, exc.reason, detail=exc.message)
        if busy and exc.delay:
            delay = exc.delay + self.jitter(0, BUSY_JITTER_S)  # a known wait (a CPU window), not a guess to cap
        else:
            delay = backoff(capture.attempt, max(MIN_RETRY_BASE_S, policy.backoff_base), policy.backoff_max, exc.delay)
        detail = f"{exc.message}; retry {capture.attempt + 1}/{budget} in {delay:.1f}s"
        return RetryLater(delay, exc, counted=True, detail=detail)

    def _store(self, delivery: Delivery) -> tuple[Outcome, str, str, str]:
        """(outcome, reason, where, detail). A profile taken is never dropped silently: one the spool cannot keep
        either ends ``failed`` with the spool's reason."""
        started = self.clock()
        detail = ""
        try:
            where = self.sink.store(delivery)
            outcome, reason = Outcome.OK, ""
        except SkipError as exc:
            outcome, reason, where = Outcome.EMPTY, exc.reason, ""
        except TemporaryError as exc:
            try:
                entry = self.spool.put(delivery)
                outcome, reason, where = Outcome.SPOOLED, exc.reason, f"spool:{entry.name}"
            except Exception as spool_exc:  # whatever the spool raises, this capture gets its one outcome
                reason, detail = _spool_failure(spool_exc, f"profefe: {exc}")
                outcome, where = Outcome.FAILED, ""
        except PermanentError as exc:
            try:
                entry = self.spool.reject(delivery, str(exc))
                outcome, reason, where = Outcome.REJECTED, exc.reason, f"rejected:{entry.name}"
            except Exception as spool_exc:
                reason, detail = _spool_failure(spool_exc, f"refused by profefe ({exc})")
                outcome, where = Outcome.FAILED, ""
        metrics.UPLOAD_SECONDS.observe(self.clock() - started)
        return outcome, reason, where, detail


def _spool_failure(exc: Exception, why: str) -> tuple[str, str]:
    """(reason, detail) of a profile the spool could not keep. A :class:`SpoolError` was counted as a drop by the
    spool; anything else (a wrapper's own failure, a bug) is counted here, so the drop counter still equals the
    profiles refused."""
    if isinstance(exc, SpoolError):
        reason = exc.reason
    else:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = Reason.SPOOL_FULL if full else Reason.SPOOL_ERROR
        metrics.SPOOL_DROPPED.labels("full" if full else "error").inc()
    return reason, f"{why}; not spooled: {exc}"
