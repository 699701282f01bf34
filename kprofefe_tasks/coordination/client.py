"""The one Redis client of the coordination layer: a blocking pool, and errors classified as temporary.

Every script here and in the sibling modules uses Redis's own clock (``TIME``), so workers with skewed clocks still
share one limit.
"""

from __future__ import annotations

import functools
import logging

import redis

from kprofefe_tasks import metrics
from kprofefe_tasks.domain.errors import TemporaryError

log = logging.getLogger("kprofefe.redis")

PREFIX = "kprofefe:"

POOL_WAIT = 10.0  # s a caller waits for a free connection before the call counts as "Redis unavailable"


@functools.cache
def connect(url: str, max_connections: int = 1100) -> redis.Redis:
    """One client per URL per process, over a pool that makes callers wait rather than fail.

    redis-py's default pool raises past its size; 500 CPU captures of a gevent worker end within milliseconds of
    each other and all write their outcome at once (measured in bench/: 199 outcomes lost with a pool of 100).
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT,
        socket_connect_timeout=3,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )
    return redis.Redis(connection_pool=pool)


def refusal(exc: BaseException) -> str:
    """What kind of Redis failure this is: ``oom`` (maxmemory reached with noeviction: writes refused, reads and
    deletes still work) or ``unavailable`` (down, unreachable, too slow)."""
    oom = isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM ")
    return "oom" if oom else "unavailable"


def note(exc: BaseException, op: str) -> str:
    """Count a Redis failure (``kprofefe_redis_refusals_total{kind,op}``) and log it; returns its kind.

    For failures the caller survives (a lost mark, a lost count); a refused write is logged at ERROR because it
    means Redis is full (see the README's sizing), a connection failure at WARNING because it passes.
    """
    kind = refusal(exc)
    metrics.REDIS_REFUSALS.labels(kind, op).inc()
    level = logging.ERROR if kind == "oom" else logging.WARNING
    log.log(
        level,
        "Redis %s during %s: %s: %s",
        "refused a write" if kind == "oom" else "unavailable",
        op,
        exc.__class__.__name__,
        exc,
        extra={"reason": f"redis-{kind}", "op": op},
    )
    return kind


def unavailable(exc: Exception, op: str = "coordination") -> TemporaryError:
    """The temporary error a caller raises for a Redis failure, counted and logged once here."""
    kind = note(exc, op)
    return TemporaryError(f"Redis {kind}: {exc.__class__.__name__}: {exc}", reason=f"redis-{kind}")
