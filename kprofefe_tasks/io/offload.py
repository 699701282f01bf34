"""Keeping a gevent worker's event loop (its hub) free while a capture does blocking work.

A capture worker runs hundreds of captures as greenlets on one thread. Anything that holds that thread without
yielding stops all of them: their deadlines stop being checked, CPU windows overrun, sockets back up. Two kinds of
work did that:

- **file I/O** (spool writes with ``fsync``, the directory sink): :func:`run_blocking` sends it to a small gevent
  thread pool, where the GIL is released while the kernel works, and the calling greenlet waits cooperatively;
- **CPU work** (gunzip and the protobuf walk of a profile of up to hundreds of MB, pure Python): it cannot leave
  the GIL, so it is cut into steps instead: :class:`Cooperator` is the ``pause`` that
  :func:`kprofefe_tasks.io.pprof.inspect` calls between steps, and yields to the hub once a time slice is used.
  It yields with ``gevent.idle()``, not ``gevent.sleep(0)``: ``sleep(0)`` only runs other ready greenlets and
  never lets the loop poll its timers and sockets (measured: a 2 s busy greenlet yielding with ``sleep(0)`` every
  5 ms still delayed a 50 ms timer by 205 ms; with ``idle()`` by 3 ms).

Outside gevent (the ``threads`` pool, the CLI, tests) both are plain calls. ``KPROFEFE_OFFLOAD=false`` turns both
off, for A/B measurements (``python -m bench hublag``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: the longest a capture's CPU work holds the hub before it yields; a few ms keeps the loop's lag small while
#: costing a few hundred switches per second of work
SLICE_SECONDS = 0.005  # s
#: threads for file I/O. A spool write also runs Python (its metadata, the index bookkeeping), which holds the
#: GIL, and the hub waits for the GIL behind every runnable thread. bench hublag, largest lag with 200 spool writes
#: in a burst (measured with the spool of 78a22eb, which listed itself on every write): 207 ms with gevent's default
#: pool of 10 threads, 110 ms with 2, 106 ms with 1. Two keep one fsync in flight while the other thread writes.
FILE_THREADS = 2

_pool: tuple[int, Any] | None = None


def gevent_patched() -> bool:
    """Whether this process runs gevent's patched sockets (the worker's ``-P gevent``)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in gevent's thread pool when gevent has patched the process, else called directly.

    Only for work that touches files and nothing shared with the hub: no sockets, no greenlets, no lock a greenlet
    may hold, no logging (whose handlers lock). Exceptions come back to the caller as raised.
    """
    if not gevent_patched():
        return fn(*args)
    ok, value = _file_pool().apply(_captured, (fn, args))
    if not ok:
        raise value
    result: T = value
    return result


def _captured(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    """Run in the pool: an exception comes back as a value, re-raised by the caller, because gevent's thread pool
    would also print the traceback of each one (a full spool disk printed one per refused profile)."""
    try:
        return True, fn(*args)
    except BaseException as exc:
        return False, exc


def _file_pool() -> Any:
    """This process's file I/O pool (a forked child builds its own)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        from gevent.threadpool import ThreadPool

        _pool = (os.getpid(), ThreadPool(FILE_THREADS))
    return _pool[1]


class Cooperator:
    """A ``pause`` for long CPU work on the hub: yields (``gevent.idle()``: the loop first runs its timers, sockets
    and every other ready greenlet) once ``slice_s`` has passed since the last yield, so no step holds the loop much
    longer than that. Cheap to call often: one clock read."""

    def __init__(self, slice_s: float = SLICE_SECONDS, clock: Callable[[], float] = time.perf_counter) -> None:
        import gevent

        self._idle = gevent.idle
        self._slice = slice_s
        self._clock = clock
        self._last = clock()
        self.yields = 0

    def __call__(self) -> None:
        now = self._clock()
        if now - self._last >= self._slice:
            self._idle()
            self.yields += 1
            self._last = self._clock()


def cooperative(enabled: bool = True) -> Callable[[], None] | None:
    """A fresh :class:`Cooperator` for one piece of work on the hub, or None outside gevent or when disabled."""
    if not enabled or not gevent_patched():
        return None
    return Cooperator()
