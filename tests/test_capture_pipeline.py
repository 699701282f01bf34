"""The capture decision tree, table-tested with in-memory fakes: every outcome and reason, no Redis, no sockets.

Each row sets up the ports (ledger, CPU lock, semaphore, fetch, sink, lookup, spool, pods) and says what the
pipeline must decide and what it must have done to them (fetched or not, stored, spooled, marked in the ledger).
The integration and chaos tiers run the same tree inside real workers.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from kprofefe_tasks.domain.delivery import Delivery
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
from kprofefe_tasks.io.budget import MemoryBudget
from kprofefe_tasks.io.pods import Memory, Profile
from kprofefe_tasks.io.pprof import ProfileInfo
from kprofefe_tasks.pipeline.capture import (
    LOCK_WAITS,
    Capture,
    CapturePipeline,
    Finished,
    Policy,
    RetryLater,
)

TARGET = Target(
    namespace="web",
    pod="api-1",
    uid="u1",
    ip="10.0.0.1",
    port=6060,
    path="/debug/pprof",
    service="api",
    container="app",
    node="n1",
    types=("cpu", "heap"),
    labels=(("namespace", "web"), ("pod", "api-1")),
)
POLICY = Policy(capture_retries=3, max_deliveries=3, backoff_base=0.5, backoff_max=30.0, read_margin=10.0)
INFO = ProfileInfo(
    sample_types=(("samples", "count"),),
    period_type=None,
    sample_count=3,
    time_nanos=1,
    duration_nanos=1,
    compressed_size=4,
    decompressed_size=8,
)
PROFILE = Profile(body=b"\x1f\x8bpprof", info=INFO, taken_at=1_700_000_000.0, duration=1.5)


@dataclass
class FakeLedger:
    delivered: dict[str, str] = field(default_factory=dict)
    starts: int = 1
    down: bool = False
    marks: list[tuple[str, str]] = field(default_factory=list)

    def begin(self, capture_id: str, attempt: int) -> tuple[str | None, int]:
        if self.down:
            raise TemporaryError("Redis unavailable: ConnectionError", reason=Reason.REDIS_UNAVAILABLE)
        return self.delivered.get(capture_id), self.starts

    def mark_delivered(self, capture_id: str, where: str) -> None:
        self.marks.append((capture_id, where))


@dataclass
class FakeLock:
    """Shared by all locks of one test: ``held`` names locked by someone else."""

    registry: FakeLocks
    name: str

    def acquire(self, lease: float) -> bool:
        if self.name in self.registry.held:
            return False
        self.registry.held.add(self.name)
        self.registry.ours.add(self.name)
        return True

    def remaining(self) -> float:
        return self.registry.remaining

    def release(self) -> None:
        if self.name in self.registry.ours:
            self.registry.ours.discard(self.name)
            self.registry.held.discard(self.name)
            self.registry.released.append(self.name)


@dataclass
class FakeLocks:
    held: set[str] = field(default_factory=set)
    ours: set[str] = field(default_factory=set)
    released: list[str] = field(default_factory=list)
    remaining: float = 7.0

    def __call__(self, name: str) -> FakeLock:
        return FakeLock(self, name)


@dataclass
class FakeSemaphore:
    free: int = 10
    holders: list[str] = field(default_factory=list)

    def acquire(self, holder: str, lease: float) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        self.holders.append(holder)
        return True

    def release(self, holder: str) -> None:
        self.holders.remove(holder)
        self.free += 1


@dataclass
class FakeFetch:
    error: KprofefeError | None = None
    calls: int = 0

    def __call__(self, target: Target, ptype: str, cpu_seconds: int, memory: Memory) -> Profile:
        self.calls += 1
        memory.grow_to(len(PROFILE.body))  # what the real fetch reserves for a body
        if self.error is not None:
            raise self.error
        return PROFILE


@dataclass
class FakeSink:
    error: KprofefeError | None = None
    stored: list[Delivery] = field(default_factory=list)
    budget: MemoryBudget | None = None
    reserved_at_store: list[int] = field(default_factory=list)

    def store(self, delivery: Delivery) -> str:
        if self.budget is not None:
            self.reserved_at_store.append(self.budget.used)
        if self.error is not None:
            raise self.error
        self.stored.append(delivery)
        return f"profefe-{len(self.stored)}"


@dataclass
class FakeLookup:
    found: str | None = None
    error: KprofefeError | None = None

    def already_stored(self, service: str, ptype: str, capture_id: str) -> str | None:
        if self.error is not None:
            raise self.error
        return self.found


@dataclass(frozen=True)
class FakeEntry:
    name: str


@dataclass
class FakeSpool:
    put_: list[Delivery] = field(default_factory=list)
    rejected: list[tuple[Delivery, str]] = field(default_factory=list)
    error: Exception | None = None  # what a write raises (the real spool's failures: tests/test_spool.py)

    def put(self, delivery: Delivery) -> FakeEntry:
        if self.error is not None:
            raise self.error
        self.put_.append(delivery)
        return FakeEntry(f"e{len(self.put_)}")

    def reject(self, delivery: Delivery, error: str) -> FakeEntry:
        if self.error is not None:
            raise self.error
        self.rejected.append((delivery, error))
        return FakeEntry(f"r{len(self.rejected)}")


@dataclass
class FakePods:
    is_gone: bool = False
    asked: int = 0

    def gone(self, target: Target) -> bool:
        self.asked += 1
        return self.is_gone


@dataclass
class World:
    ledger: FakeLedger = field(default_factory=FakeLedger)
    locks: FakeLocks = field(default_factory=FakeLocks)
    semaphore: FakeSemaphore = field(default_factory=FakeSemaphore)
    fetch: FakeFetch = field(default_factory=FakeFetch)
    sink: FakeSink = field(default_factory=FakeSink)
    lookup: FakeLookup | None = field(default_factory=FakeLookup)
    spool: FakeSpool = field(default_factory=FakeSpool)
    pods: FakePods = field(default_factory=FakePods)
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(64 * 1024 * 1024, wait=0.0))

    def __post_init__(self) -> None:
        self.sink.budget = self.budget

    def pipeline(self) -> CapturePipeline:
        return CapturePipeline(
            policy=POLICY,
            ledger=self.ledger,
            fetch=self.fetch,
            sink=self.sink,
            spool=self.spool,
            lookup=self.lookup,
            pods=self.pods,
            cpu_lock=self.locks,
            semaphore=self.semaphore,
            budget=self.budget,
            clock=lambda: 0.0,
            jitter=lambda low, high: high,  # the largest jitter: delays are exact in the table
        )


CAPTURE_ID = "r1/web/api-1/cpu"


def _unreachable() -> UnreachableError:
    return UnreachableError("web/api-1 cpu: ConnectionRefusedError", reason="target-unreachable")


@dataclass(frozen=True)
class Row:
    name: str
    setup: Callable[[World], Any]
    expect: tuple[str, str]  # (outcome or "retry", reason)
    ptype: str = "cpu"
    attempt: int = 0
    fetched: int = 1
    stored: int = 0
    spooled: int = 0
    rejected: int = 0
    marked: bool = False
    delay: float | None = None  # expected retry delay when exact
    counted: bool = True


def _set(**changes: Any) -> Callable[[World], None]:
    def apply(world: World) -> None:
        for path, value in changes.items():
            obj: Any = world
            *parents, leaf = path.split("__")
            for parent in parents:
                obj = getattr(obj, parent)
            setattr(obj, leaf, value)

    return apply


ROWS = [
    Row("stored", _set(), ("ok", ""), stored=1, marked=True),
    Row("snapshot stored", _set(), ("ok", ""), ptype="heap", stored=1, marked=True),
    Row("redis down at begin", _set(ledger__down=True), ("retry", "redis-unavailable"), fetched=0, counted=False),
    Row(
        "already delivered",
        _set(ledger__delivered={CAPTURE_ID: "profefe-9"}),
        ("duplicate", "already-delivered"),
        fetched=0,
    ),
    Row("poison", _set(ledger__starts=4), ("poison", "redelivered"), fetched=0),
    Row(
        "redelivered, profefe has it",
        _set(ledger__starts=2, lookup__found="profefe-7"),
        ("duplicate", "stored-before-redelivery"),
        fetched=0,
        marked=True,
    ),
    Row(
        "redelivered, profefe cannot tell",
        _set(ledger__starts=2, lookup__error=TemporaryError("down", reason="profefe-unreachable")),
        ("ok", ""),
        stored=1,
        marked=True,
    ),
    Row("redelivered, no lookup", _set(ledger__starts=3, lookup=None), ("ok", ""), stored=1, marked=True),
    Row(
        "unreachable, pod gone",
        _set(fetch__error=_unreachable(), pods__is_gone=True),
        ("skipped", "pod-gone"),
    ),
    Row("unreachable, retries left", _set(fetch__error=_unreachable()), ("retry", "target-unreachable")),
    Row(
        "unreachable, retries spent",
        _set(fetch__error=_unreachable()),
        ("failed", "target-unreachable"),
        attempt=POLICY.capture_retries,
    ),
    Row(
        "5xx, retries left",
        _set(fetch__error=TemporaryError("500", reason="target-5xx")),
        ("retry", "target-5xx"),
    ),
    Row(
        "5xx, retries spent",
        _set(fetch__error=TemporaryError("500", reason="target-5xx")),
        ("failed", "target-5xx"),
        attempt=POLICY.capture_retries,
    ),
    Row(
        "429 honours Retry-After",
        _set(fetch__error=TemporaryError("429", reason="target-429", delay=12.0)),
        ("retry", "target-429"),
        delay=12.0,
    ),
    Row(
        "someone else profiles the CPU: a wait, past the retry budget",
        _set(fetch__error=BusyError("busy", reason="cpu-busy", delay=10.0)),
        ("retry", "cpu-busy"),
        attempt=POLICY.capture_retries,
        delay=10.5,
    ),
    Row(
        "CPU busy without end",
        _set(fetch__error=BusyError("busy", reason="cpu-busy", delay=10.0)),
        ("failed", "cpu-busy"),
        attempt=POLICY.capture_retries + LOCK_WAITS,
    ),
    Row(
        "our own CPU lock is held",
        _set(locks__held={"cpu:web/api-1"}),
        ("retry", "cpu-locked"),
        fetched=0,
        delay=7.5,
    ),
    Row(
        "a snapshot ignores the CPU lock",
        _set(locks__held={"cpu:web/api-1"}),
        ("ok", ""),
        ptype="heap",
        stored=1,
        marked=True,
    ),
    Row("capture semaphore full", _set(semaphore__free=0), ("retry", "inflight-limit"), fetched=0),
    Row(
        "no room in the memory budget, retries left",
        _set(fetch__error=TemporaryError("no room", reason="memory-budget", delay=5.0)),
        ("retry", "memory-budget"),
    ),
    Row(
        "no room in the memory budget, no retries left",
        _set(fetch__error=TemporaryError("no room", reason="memory-budget", delay=5.0)),
        ("failed", "memory-budget"),
        attempt=3,
    ),
    Row(
        "more than the memory budget lets one capture hold",
        _set(fetch__error=PermanentError("needs 1 GiB", reason="memory-budget")),
        ("failed", "memory-budget"),
    ),
    Row("no samples", _set(fetch__error=SkipError("none", reason="empty")), ("empty", "empty")),
    Row("skip from the target", _set(fetch__error=SkipError("gone", reason="pod-gone")), ("skipped", "pod-gone")),
    Row(
        "HTML instead of pprof",
        _set(fetch__error=PermanentError("html", reason="invalid-html")),
        ("failed", "invalid-html"),
    ),
    Row("profefe says no samples", _set(sink__error=SkipError("no samples", reason="empty")), ("empty", "empty")),
    Row(
        "profefe down past its retries",
        _set(sink__error=TemporaryError("down", reason="profefe-unreachable")),
        ("spooled", "profefe-unreachable"),
        spooled=1,
        marked=True,
    ),
    Row(
        "profefe refuses for good",
        _set(sink__error=PermanentError("400", reason="profefe-error")),
        ("rejected", "profefe-error"),
        rejected=1,
        marked=True,
    ),
    Row(
        "profefe down, the spool's disk full",
        _set(
            sink__error=TemporaryError("down", reason="profefe-unreachable"),
            spool__error=SpoolError("No space left on device", reason="spool-full"),
        ),
        ("failed", "spool-full"),
    ),
    Row(
        "profefe down, the spool read-only",
        _set(
            sink__error=TemporaryError("down", reason="profefe-unreachable"),
            spool__error=SpoolError("Read-only file system", reason="spool-error"),
        ),
        ("failed", "spool-error"),
    ),
    Row(
        "profefe refuses, rejected/ full",
        _set(
            sink__error=PermanentError("400", reason="profefe-error"),
            spool__error=SpoolError("No space left on device", reason="spool-full"),
        ),
        ("failed", "spool-full"),
    ),
    Row(
        "profefe down, the spool raises something unclassified",
        _set(
            sink__error=TemporaryError("down", reason="profefe-unreachable"),
            spool__error=OSError(errno.ENOSPC, "No space left on device"),
        ),
        ("failed", "spool-full"),
    ),
    Row(
        "profefe refuses, the spool has a bug",
        _set(sink__error=PermanentError("400", reason="profefe-error"), spool__error=RuntimeError("bug")),
        ("failed", "spool-error"),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decision_tree(row: Row) -> None:
    world = World()
    row.setup(world)
    pipeline = world.pipeline()
    decision = pipeline.run(Capture(TARGET, row.ptype, round_id="r1", cpu_seconds=10, attempt=row.attempt))

    outcome, reason = row.expect
    if outcome == "retry":
        assert isinstance(decision, RetryLater), decision
        assert decision.reason == reason
        assert decision.counted is row.counted
        assert decision.delay > 0
        if row.delay is not None:
            assert decision.delay == pytest.approx(row.delay)
    else:
        assert isinstance(decision, Finished), decision
        assert (decision.outcome, decision.reason) == (outcome, reason)
    assert world.fetch.calls == row.fetched
    assert len(world.sink.stored) == row.stored
    assert len(world.spool.put_) == row.spooled
    assert len(world.spool.rejected) == row.rejected
    capture_id = f"r1/web/api-1/{row.ptype}"
    if row.marked:
        assert world.ledger.marks and world.ledger.marks[-1][0] == capture_id
    else:
        assert world.ledger.marks == []
    # whatever happened, nothing is left held; a profile taken stays reserved until it is stored
    assert world.locks.ours == set()
    assert world.semaphore.holders == []
    assert world.budget.used == 0
    if world.sink.reserved_at_store:
        assert world.sink.reserved_at_store == [len(PROFILE.body)]


def test_every_outcome_and_pipeline_reason_has_a_row() -> None:
    outcomes = {r.expect[0] for r in ROWS}
    produced_elsewhere = {Outcome.EXPIRED, Outcome.RETRIED, Outcome.CANCELLED}  # the revoked signal, the task, the CLI
    assert {str(o) for o in Outcome} - produced_elsewhere - outcomes == set()
    reasons = {r.expect[1] for r in ROWS}
    not_the_tree = {Reason.EXPIRED, Reason.REVOKED, Reason.FROM_SPOOL}  # the revoked signal and the spool drainer
    assert {str(r) for r in Reason} - not_the_tree - reasons == set()


def test_a_stored_profile_carries_the_target_and_the_capture_id() -> None:
    world = World()
    decision = world.pipeline().run(Capture(TARGET, "heap", round_id="r1", cpu_seconds=10, task_id="t1"))
    assert isinstance(decision, Finished)
    assert decision.where == "profefe-1"
    assert (decision.size, decision.seconds) == (len(PROFILE.body), PROFILE.duration)
    (delivery,) = world.sink.stored
    assert (delivery.capture_id, delivery.service, delivery.ptype) == ("r1/web/api-1/heap", "api", "heap")
    assert delivery.labels == TARGET.labels
    assert world.ledger.marks == [("r1/web/api-1/heap", "profefe-1")]


def test_a_capture_queued_by_hand_is_keyed_by_its_task_id() -> None:
    world = World()
    world.pipeline().run(Capture(TARGET, "heap", round_id="", cpu_seconds=10, task_id="t-42"))
    assert world.ledger.marks == [("t-42/web/api-1/heap", "profefe-1")]


def test_the_cpu_lock_is_released_when_the_fetch_fails() -> None:
    world = World()
    world.fetch.error = PermanentError("html", reason="invalid-html")
    world.pipeline().run(Capture(TARGET, "cpu", round_id="r1", cpu_seconds=10))
    assert world.locks.released == ["cpu:web/api-1"]
    assert world.locks.held == set()


def test_the_pod_is_asked_about_only_when_the_target_did_not_answer() -> None:
    world = World()
    world.fetch.error = TemporaryError("500", reason="target-5xx")
    world.pipeline().run(Capture(TARGET, "heap", round_id="r1", cpu_seconds=10))
    assert world.pods.asked == 0
    world.fetch.error = _unreachable()
    world.pipeline().run(Capture(TARGET, "heap", round_id="r1", cpu_seconds=10))
    assert world.pods.asked == 1


def test_retry_delays_grow_and_stay_capped() -> None:
    world = World()
    world.fetch.error = TemporaryError("500", reason="target-5xx")
    pipeline = world.pipeline()
    policy = Policy(capture_retries=50, max_deliveries=3, backoff_base=1.0, backoff_max=8.0, read_margin=10.0)
    pipeline.policy = policy
    delays = []
    for attempt in range(10):
        decision = pipeline.run(Capture(TARGET, "heap", round_id="r1", cpu_seconds=10, attempt=attempt))
        assert isinstance(decision, RetryLater)
        delays.append(decision.delay)
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) <= 8.0 and min(delays[6:]) >= 4.0  # capped, full jitter keeps at least half the bound


def test_a_profile_the_spool_cannot_keep_fails_with_what_the_spool_said_and_is_not_marked_delivered() -> None:
    world = World()
    world.sink.error = TemporaryError("connection refused", reason="profefe-unreachable")
    world.spool.error = SpoolError("/spool: No space left on device", reason="spool-full")
    decision = world.pipeline().run(Capture(TARGET, "heap", round_id="r1", cpu_seconds=10))
    assert isinstance(decision, Finished)
    assert (decision.outcome, decision.reason, decision.where) == ("failed", "spool-full", "")
    assert "profefe-unreachable" in decision.detail and "No space left" in decision.detail
    assert decision.size == len(PROFILE.body)
    assert world.ledger.marks == []  # nothing was stored: a redelivered copy must take the profile again
