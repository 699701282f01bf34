"""The worker-wide memory budget: accounting on every path, the wait bound, fairness, and its default."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kprofefe_tasks.domain.errors import PermanentError, TemporaryError
from kprofefe_tasks.io import budget
from kprofefe_tasks.io.budget import MemoryBudget

MIB = 1024 * 1024


def test_a_reservation_grows_shrinks_and_is_released_when_the_block_ends() -> None:
    changes: list[int] = []
    mem = MemoryBudget(64 * MIB, wait=0.0, on_change=changes.append)
    with mem.reserve("web/api-1 heap") as held:
        held.grow_to(1 * MIB)
        held.grow_to(3 * MIB)
        held.grow_to(2 * MIB)  # never shrinks by growing
        assert (held.held, mem.used) == (3 * MIB, 3 * MIB)
        held.shrink_to(1 * MIB)
        assert mem.used == 1 * MIB
    assert mem.used == 0
    assert mem.peak == 3 * MIB
    assert changes == [1 * MIB, 3 * MIB, 1 * MIB, 0]


@pytest.mark.parametrize("error", [TemporaryError("x", reason="target-5xx"), PermanentError("x", reason="bad")])
def test_an_error_inside_the_block_releases_the_reservation(error: Exception) -> None:
    mem = MemoryBudget(64 * MIB, wait=0.0)
    with pytest.raises(type(error)), mem.reserve() as held:
        held.grow_to(5 * MIB)
        raise error
    assert mem.used == 0


def test_a_capture_that_can_never_fit_fails_at_once_as_permanent() -> None:
    refused: list[str] = []
    mem = MemoryBudget(64 * MIB, wait=30.0, on_refuse=refused.append)
    started = time.monotonic()
    with pytest.raises(PermanentError) as caught, mem.reserve() as held:
        held.grow_to(mem.largest + 1)
    assert time.monotonic() - started < 1  # no wait: waiting cannot help
    assert caught.value.reason == "memory-budget"
    assert mem.largest == 48 * MIB  # a quarter stays free for small captures
    assert refused == ["too-large"] and mem.used == 0


def test_a_grow_that_finds_no_room_waits_at_most_the_wait_then_is_temporary() -> None:
    refused: list[str] = []
    mem = MemoryBudget(16 * MIB, wait=0.2, on_refuse=refused.append)
    with mem.reserve("hog") as hog:
        hog.grow_to(mem.share)
        others = [mem.reserve(f"c{i}").__enter__() for i in range(mem.total // mem.share - 1)]
        for other in others:
            other.grow_to(mem.share)  # the budget is full now
        started = time.monotonic()
        with pytest.raises(TemporaryError) as caught, mem.reserve("late") as late:
            late.grow_to(1)
        waited = time.monotonic() - started
        for other in others:
            other.release()
    assert 0.2 <= waited < 5
    assert caught.value.reason == "memory-budget" and caught.value.delay == budget.RETRY_DELAY_S
    assert refused == ["timeout"] and mem.used == 0


def test_a_waiting_grow_is_granted_as_soon_as_room_is_given_back() -> None:
    mem = MemoryBudget(8 * MIB, wait=30.0)
    first = mem.reserve("first").__enter__()
    first.grow_to(mem.share)
    holders = [mem.reserve(f"h{i}").__enter__() for i in range(mem.total // mem.share - 1)]
    for h in holders:
        h.grow_to(mem.share)
    granted = threading.Event()

    def wait_for_room() -> None:
        with mem.reserve("waiter") as waiter:
            waiter.grow_to(mem.share)
            granted.set()

    thread = threading.Thread(target=wait_for_room)
    thread.start()
    assert not granted.wait(0.1)
    first.release()
    assert granted.wait(10)
    thread.join(10)
    for h in holders:
        h.release()
    assert mem.used == 0


def test_small_captures_keep_flowing_while_a_big_one_waits_for_headroom() -> None:
    mem = MemoryBudget(64 * MIB, wait=30.0)
    small = mem.share  # 1 MiB: never waits behind big ones
    assert small == budget.SHARE_MAX_BYTES
    hog = mem.reserve("hog").__enter__()
    hog.grow_to(40 * MIB)  # a hostile pod's body, big
    big_granted = threading.Event()

    def big() -> None:
        with mem.reserve("big") as held:
            held.grow_to(20 * MIB)  # would leave less than the headroom: waits for the hog
            big_granted.set()

    thread = threading.Thread(target=big)
    thread.start()
    assert not big_granted.wait(0.1)
    # meanwhile small captures come and go, using the headroom the big one may not take
    for _ in range(20):
        with mem.reserve("small") as s:
            s.grow_to(small)
    assert not big_granted.is_set()
    hog.release()
    assert big_granted.wait(10)
    thread.join(10)
    assert mem.used == 0


def test_big_captures_cross_the_share_in_arrival_order() -> None:
    mem = MemoryBudget(64 * MIB, wait=30.0)
    hog = mem.reserve("hog").__enter__()
    hog.grow_to(40 * MIB)
    order: list[str] = []

    def big(name: str, start: threading.Event) -> None:
        start.wait(10)
        with mem.reserve(name) as held:
            held.grow_to(9 * MIB)
            order.append(name)

    starts = {name: threading.Event() for name in ("first", "second")}
    threads = [threading.Thread(target=big, args=(name, starts[name])) for name in starts]
    for t in threads:
        t.start()
    starts["first"].set()
    _wait_until(lambda: len(mem._big) == 1)
    starts["second"].set()
    _wait_until(lambda: len(mem._big) == 2)
    hog.release()
    for t in threads:
        t.join(10)
    assert order == ["first", "second"]
    assert mem.used == 0


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_the_default_follows_the_container_limit(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text(f"{1024 * MIB}\n")
    assert budget.container_limit((v2, v1)) == 1024 * MIB
    assert budget.default_total(1024 * MIB) == int(1024 * MIB * budget.LIMIT_FRACTION)
    v2.write_text("max\n")
    assert budget.container_limit((v2, v1)) is None
    v2.unlink()
    v1.write_text("9223372036854771712\n")  # v1's "unlimited"
    assert budget.container_limit((v2, v1)) is None
    v1.write_text(f"{2048 * MIB}\n")
    assert budget.container_limit((v2, v1)) == 2048 * MIB
    assert budget.default_total(None, read_limit=False) == budget.FALLBACK_TOTAL_BYTES
