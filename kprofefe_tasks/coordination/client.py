"""The one Redis client of the coordination layer: a blocking pool, and errors classified as temporary.

Every script here and in the sibling modules uses Redis's own clock (``TIME``), so workers with skewed clocks still
share one limit.
"""

from __future__ import annotations

import functools

import redis

from kprofefe_tasks.domain.errors import TemporaryError

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


def unavailable(exc: Exception) -> TemporaryError:
    return TemporaryError(f"Redis unavailable: {exc.__class__.__name__}: {exc}", reason="redis-unavailable")
