"""What workers agree on through Redis: the cluster-wide upload rate, per-pod CPU locks, the capture semaphore,
and the delivery ledger that keeps a redelivered capture from being stored twice.

Every script uses Redis's own clock (``TIME``), so workers with skewed clocks still share one limit.
"""

from __future__ import annotations

import functools
import uuid

import redis

from kprofefe_tasks.errors import TemporaryError

PREFIX = "kprofefe:"
LEDGER_TTL = 2 * 24 * 3600  # s: longer than any redelivery, short enough to not grow forever

# KEYS[1] bucket; ARGV rate (tokens/s), burst, tokens wanted. Returns 0 when granted, else ms to wait.
_TOKEN_BUCKET = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - ts) * rate)
local wait = 0
if tokens >= want then tokens = tokens - want else wait = math.ceil((want - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', t)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""

# KEYS[1] zset of holders scored by lease end (ms); ARGV limit, holder, lease ms. 1 when acquired.
_SEMAPHORE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
  return 1
end
return 0
"""

# KEYS[1] round counters, KEYS[2] round's finals (capture id -> outcome); ARGV capture id, outcome, ttl (s).
# A capture's first final outcome is counted; a redelivered copy of the same capture never counts twice.
_COUNT_FINAL = """
local first = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
if first == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  redis.call('HINCRBY', KEYS[1], 'done', 1)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return first
"""

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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


def _unavailable(exc: Exception) -> TemporaryError:
    return TemporaryError(f"Redis unavailable: {exc.__class__.__name__}: {exc}", reason="redis-unavailable")


class TokenBucket:
    """A rate limit shared by every worker: ``rate`` per second with bursts up to ``burst``."""

    def __init__(self, client: redis.Redis, name: str, rate: float, burst: int) -> None:
        self.client = client
        self.key = PREFIX + "bucket:" + name
        self.rate = rate
        self.burst = max(1, burst)
        self._script = client.register_script(_TOKEN_BUCKET)

    def wait_time(self, tokens: int = 1) -> float:
        """0 when the tokens were taken now; otherwise seconds to wait before asking again."""
        if self.rate <= 0:
            return 0.0
        try:
            return float(self._script(keys=[self.key], args=[self.rate, self.burst, tokens])) / 1000.0
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc


class Semaphore:
    """At most ``limit`` holders cluster-wide; each holding expires after ``lease`` seconds if never released."""

    def __init__(self, client: redis.Redis, name: str, limit: int) -> None:
        self.client = client
        self.key = PREFIX + "sem:" + name
        self.limit = limit
        self._script = client.register_script(_SEMAPHORE)

    def acquire(self, holder: str, lease: float) -> bool:
        try:
            return bool(self._script(keys=[self.key], args=[self.limit, holder, int(lease * 1000)]))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def release(self, holder: str) -> None:
        try:
            self.client.zrem(self.key, holder)
        except redis.RedisError:
            pass  # the lease expires by itself


class Lock:
    """A lease lock (``SET NX PX``) released only by its owner: one CPU profile per pod at a time."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.key = PREFIX + "lock:" + name
        self.token = uuid.uuid4().hex
        self._release = client.register_script(_RELEASE_IF_OWNER)

    def acquire(self, lease: float) -> bool:
        try:
            return bool(self.client.set(self.key, self.token, nx=True, px=int(lease * 1000)))
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def remaining(self) -> float:
        """Seconds until the current holder's lease ends (0 when free)."""
        try:
            return max(0.0, float(self.client.pttl(self.key)) / 1000.0)
        except redis.RedisError:
            return 0.0

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError:
            pass  # the lease expires by itself


class Ledger:
    """Which captures are already delivered, and how often each was started (to stop redelivery loops)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def delivered(self, capture_id: str) -> str | None:
        """Where the capture went (a profefe id, a file, ``spool:...``), or None if not delivered yet."""
        try:
            value = self.client.get(PREFIX + "done:" + capture_id)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return value.decode() if isinstance(value, bytes) else value

    def begin(self, capture_id: str, attempt: int) -> tuple[str | None, int]:
        """In one round trip: where the capture was already delivered (None if not yet), and how many times this
        attempt has started — above 1 means the task was redelivered after its worker died."""
        starts_key = f"{PREFIX}starts:{capture_id}:{attempt}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(PREFIX + "done:" + capture_id)
            pipe.incr(starts_key)
            pipe.expire(starts_key, LEDGER_TTL)
            where, starts, _ = pipe.execute()
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return (where.decode() if isinstance(where, bytes) else where), int(starts)

    def mark_delivered(self, capture_id: str, where: str) -> None:
        try:
            self.client.set(PREFIX + "done:" + capture_id, where, ex=LEDGER_TTL)
        except redis.RedisError:
            # The profile is stored; losing the mark only risks a duplicate if this very task is redelivered.
            pass


class RoundCounters:
    """Per-round outcome counts, for ``wait_round`` and the demo: each capture's final outcome counted once."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._final = client.register_script(_COUNT_FINAL)

    @staticmethod
    def key(round_id: str) -> str:
        return f"{PREFIX}round:{round_id}"

    def count_final(self, round_id: str, capture_id: str, outcome: str) -> bool:
        """Count ``outcome`` for the capture unless it already has one; True when this one counted."""
        key = self.key(round_id)
        return bool(self._final(keys=[key, key + ":finals"], args=[capture_id, outcome, self.ttl]))

    def count(self, round_id: str, field: str) -> None:
        """A non-final event (a retry, a duplicate), counted every time."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(self.key(round_id), field, 1)
        pipe.expire(self.key(round_id), self.ttl)
        pipe.execute()
