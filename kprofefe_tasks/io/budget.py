"""A worker-wide memory budget: the bytes all of one worker process's captures hold at once are bounded.

The per-capture caps (``KPROFEFE_MAX_PROFILE_BYTES``, ``KPROFEFE_MAX_DECOMPRESSED_BYTES``) bound one capture;
hundreds run at once in a worker, so a few hostile pods (gzip bombs, huge bodies) could still take a 1 GiB pod
past its limit in seconds. Each capture holds a :class:`Reservation`: taken before it reads a body, grown as bytes
arrive (the body, then its decompressed copy while it is inspected), shrunk back to the body once inspected, and
released when the capture ends, on every path. A grow that does not fit waits, at most ``wait`` seconds.

Fairness — one hostile pod must not starve the others:

- a capture holding at most ``share`` (1 MiB, or an eighth of a small budget) is *small*: it grows whenever the
  bytes fit;
- a capture growing past ``share`` is *big*: it must leave ``headroom`` (a quarter of the budget) free for small
  ones, and captures crossing the share wait in arrival order (only the head may cross), so normal profiles keep
  flowing while big ones take turns;
- a capture that would need more than ``total - headroom`` can never fit: it fails at once (PermanentError).

Refusals carry the reason ``memory-budget``: a wait past ``wait`` is a TemporaryError (the capture is retried
later, then fails), a capture too big for the budget a PermanentError. Neither happens after a profile is taken:
a reservation only grows while a body is read and inspected.

The default budget follows from the container's memory limit (:func:`default_total`).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kprofefe_tasks.domain.errors import PermanentError, TemporaryError
from kprofefe_tasks.domain.outcomes import Reason

MIB = 1024 * 1024
REASON = Reason.MEMORY_BUDGET

#: share of the container's memory limit that profiles in flight may take; the rest is the interpreter, Celery,
#: hundreds of greenlets and their sockets, and allocator slack (a worker idles at about 100 MiB)
LIMIT_FRACTION = 0.4
#: when no limit can be read, or the cgroup says unlimited: what a 1 GiB pod would get, rounded up
FALLBACK_TOTAL_BYTES = 512 * MIB  # bytes
#: a capture holding up to this much (body and decompressed copy) is small: it never queues behind big ones. Go's
#: snapshot profiles of an ordinary service are tens of KB gzipped, a few hundred KB inflated. Kept small because
#: every hostile capture holds up to this much while it waits for its turn as a big one.
SHARE_MAX_BYTES = 1 * MIB  # bytes
SHARE_DIVISOR = 8  # ... and at most total/8, for small budgets
HEADROOM_DIVISOR = 4  # big captures leave total/4 free for small ones
RETRY_DELAY_S = 5.0  # s: a capture refused for want of memory asks again after this (plus backoff)
#: cgroup v1 writes "unlimited" as a page-rounded 2**63 - 1; anything above this is no limit
_UNLIMITED = 1 << 60

CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")


def container_limit(paths: tuple[Path, ...] = (CGROUP_V2, CGROUP_V1)) -> int | None:
    """The memory limit of this process's container in bytes (cgroup v2, then v1), or None when unlimited."""
    for path in paths:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            value = int(raw)
        except ValueError:
            continue
        return value if 0 < value < _UNLIMITED else None
    return None


def default_total(limit: int | None = None, *, read_limit: bool = True) -> int:
    """``LIMIT_FRACTION`` of the container limit, or ``FALLBACK_TOTAL_BYTES`` when there is none."""
    if limit is None and read_limit:
        limit = container_limit()
    if limit is None:
        return FALLBACK_TOTAL_BYTES
    return int(limit * LIMIT_FRACTION)


class MemoryBudget:
    """Bytes in flight across one worker process's captures. Safe for greenlets (gevent patches
    ``threading``) and threads alike."""

    def __init__(
        self,
        total: int,
        wait: float,
        *,
        on_change: Callable[[int], None] | None = None,
        on_refuse: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total <= 0:
            raise ValueError("a memory budget needs a positive total")
        self.total = total
        self.wait = wait
        self.share = min(total // SHARE_DIVISOR, SHARE_MAX_BYTES)
        self.headroom = total // HEADROOM_DIVISOR
        self.largest = total - self.headroom  # the most one capture may ever hold
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()
        self._big: collections.deque[object] = collections.deque()
        self._on_change = on_change
        self._on_refuse = on_refuse
        self._clock = clock

    @contextlib.contextmanager
    def reserve(self, holder: str = "") -> Iterator[Reservation]:
        """A reservation for one capture, released when the block ends, however it ends."""
        held = Reservation(self, holder)
        try:
            yield held
        finally:
            held.release()

    def _refuse(self, kind: str) -> None:
        if self._on_refuse is not None:
            self._on_refuse(kind)

    def _changed(self) -> None:
        self.peak = max(self.peak, self.used)
        if self._on_change is not None:
            self._on_change(self.used)

    def _grow(self, held: Reservation, nbytes: int) -> None:
        delta = nbytes - held.held
        if delta <= 0:
            return
        if nbytes > self.largest:
            self._refuse("too-large")
            raise PermanentError(
                f"{held.holder}: needs {nbytes} bytes in memory, more than one capture may hold "
                f"({self.largest} of this worker's {self.total}-byte budget)",
                reason=REASON,
            )
        big = nbytes > self.share
        limit = self.largest if big else self.total
        # crossing the share queues in arrival order; a capture already past it only needs the bytes, so two big
        # ones in progress never wait on each other's turn
        queued = big and held.held <= self.share
        with self._cond:
            if self.used + delta <= limit and not (queued and self._big):
                self._take(held, delta)
                return
            ticket = object()
            if queued:
                self._big.append(ticket)
            deadline = self._clock() + self.wait
            try:
                while True:
                    if self.used + delta <= limit and (not queued or self._big[0] is ticket):
                        self._take(held, delta)
                        return
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                if queued:
                    self._big.remove(ticket)
                    self._cond.notify_all()  # the next big grower may be at the head now
        self._refuse("timeout")
        raise TemporaryError(
            f"{held.holder}: no room for {delta} more bytes within {self.wait:g}s "
            f"({self.used} of {self.total} bytes in flight in this worker)",
            reason=REASON,
            delay=RETRY_DELAY_S,
        )

    def _take(self, held: Reservation, delta: int) -> None:
        self.used += delta
        held.held += delta
        self._changed()

    def _give_back(self, held: Reservation, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._cond:
            nbytes = min(nbytes, held.held)
            self.used -= nbytes
            held.held -= nbytes
            self._changed()
            self._cond.notify_all()


class Reservation:
    """One capture's share of the budget: ``held`` bytes, grown and shrunk as its buffers change."""

    def __init__(self, budget: MemoryBudget, holder: str) -> None:
        self.budget = budget
        self.holder = holder or "capture"
        self.held = 0

    def grow_to(self, nbytes: int) -> None:
        """Hold at least ``nbytes``; waits for room. Raises TemporaryError/PermanentError ``memory-budget``."""
        self.budget._grow(self, nbytes)

    def shrink_to(self, nbytes: int) -> None:
        """Hold at most ``nbytes`` (a buffer was freed)."""
        self.budget._give_back(self, self.held - max(0, nbytes))

    def release(self) -> None:
        self.budget._give_back(self, self.held)


class _Unbounded:
    """The reservation of a capture without a budget (the CLI, unit tests): every grow fits."""

    held = 0

    def grow_to(self, nbytes: int) -> None:
        pass

    def shrink_to(self, nbytes: int) -> None:
        pass


UNBOUNDED_RESERVATION = _Unbounded()


class Unbounded:
    """A budget that never refuses: the pipeline's default port."""

    @contextlib.contextmanager
    def reserve(self, holder: str = "") -> Iterator[_Unbounded]:
        yield UNBOUNDED_RESERVATION
