"""Limits every worker shares through Redis: the upload token bucket, the capture semaphore, per-pod CPU locks."""

from __future__ import annotations

import uuid

import redis

from kprofefe_tasks.coordination.client import PREFIX
from kprofefe_tasks.coordination.client import unavailable as _unavailable

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

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
            raise _unavailable(exc, "rate-limit") from exc


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
            raise _unavailable(exc, "semaphore") from exc

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
            raise _unavailable(exc, "cpu-lock") from exc

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
