"""A round in Redis: its summary (counters), and the state of each of its captures while the round runs.

Two keys per round, nothing per capture, so what the collector keeps depends on the cluster's size and not on how
long it has run:

- ``kprofefe:round:{<id>}``: the summary (``expected``, ``done``, one count per outcome, ``entry``, ``started``).
  A few hundred bytes whatever the round's size; it lives for the round's lifetime (below) while the round runs,
  and once complete only as long as a late redelivery could still arrive and must be told the round is over.
- ``kprofefe:round:{<id>}:c``: one field per capture (``<digest>`` → ``attempt|starts|final|where``): the delivery
  ledger (was it delivered, how often did this attempt start) and the final outcome counted once. **Deleted the
  moment the round's last capture has its final outcome**; a round that never completes (its messages were lost
  with a Redis restart) loses it with the round's lifetime.

The lifetime follows from the schedule (:func:`round_ttl`): the spread window, plus the interval after which a
queued capture expires unrun, plus the redelivery bound (a dead worker's capture comes back within the broker's
visibility timeout), plus the longest a capture may take once started. A capture that arrives for a round already
complete is a late redelivery of a capture that has its outcome: it is told so (``starts`` 2, so the pipeline asks
profefe whether its profile landed) and its outcome is not counted again.

The hash tag (``{<id>}``) keeps both keys in one Redis Cluster slot, so one script may touch both.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import redis

from kprofefe_tasks.coordination.client import PREFIX, note
from kprofefe_tasks.coordination.client import unavailable as _unavailable
from kprofefe_tasks.domain.delivery import digest_of

ROUND_MARGIN_S = 60  # s on top of a round's computed lifetime: clocks, a slow discovery, a late ack

# Shared by the scripts: parse a capture's field, and make sure a key written outside a started round still expires.
_LIB = """
local function parse(v)
  if not v then return nil end
  local attempt, starts, final, where = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {attempt, tonumber(starts) or 0, final, where}
end
local function pack(s) return s[1] .. '|' .. s[2] .. '|' .. s[3] .. '|' .. s[4] end
local function complete(summary)
  local expected = tonumber(redis.call('HGET', summary, 'expected'))
  local done = tonumber(redis.call('HGET', summary, 'done')) or 0
  return expected ~= nil and done >= expected
end
local function expiring(key, ttl)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
end
-- the per-capture hash lives as long as its round's summary; the fallback only for a round nobody started
local function expiring_like(key, summary, ttl)
  if redis.call('TTL', key) < 0 then
    local left = redis.call('TTL', summary)
    redis.call('EXPIRE', key, left > 0 and left or ttl)
  end
end
"""

# KEYS summary, captures; ARGV field, attempt, fallback ttl. Returns {where or '', starts of this attempt}.
_BEGIN = (
    _LIB
    + """
local s = parse(redis.call('HGET', KEYS[2], ARGV[1]))
if not s then
  if complete(KEYS[1]) then return {'', 2} end
  s = {ARGV[2], 0, '', ''}
end
if s[4] ~= '' then return {s[4], s[2]} end
if s[1] == ARGV[2] then s[2] = s[2] + 1 else s[1] = ARGV[2]; s[2] = 1 end
redis.call('HSET', KEYS[2], ARGV[1], pack(s))
expiring_like(KEYS[2], KEYS[1], tonumber(ARGV[3]))
return {'', s[2]}
"""
)

# KEYS summary, captures; ARGV field, where, fallback ttl.
_MARK = (
    _LIB
    + """
local s = parse(redis.call('HGET', KEYS[2], ARGV[1]))
if not s then
  if complete(KEYS[1]) then return 0 end
  s = {'', 0, '', ''}
end
s[4] = ARGV[2]
redis.call('HSET', KEYS[2], ARGV[1], pack(s))
expiring_like(KEYS[2], KEYS[1], tonumber(ARGV[3]))
return 1
"""
)

# KEYS summary, captures; ARGV field, outcome, fallback ttl, completed ttl. 1 when this outcome counted (the first).
_COUNT_FINAL = (
    _LIB
    + """
local s = parse(redis.call('HGET', KEYS[2], ARGV[1]))
if not s then
  if complete(KEYS[1]) then return 0 end
  s = {'', 0, '', ''}
end
if s[3] ~= '' then return 0 end
s[3] = ARGV[2]
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
local done = redis.call('HINCRBY', KEYS[1], 'done', 1)
expiring(KEYS[1], tonumber(ARGV[3]))
local expected = tonumber(redis.call('HGET', KEYS[1], 'expected'))
if expected ~= nil and done >= expected then
  -- complete: the ledger goes; the summary stays only as long as a dead worker's copy could still come back
  redis.call('UNLINK', KEYS[2])
  local left = redis.call('TTL', KEYS[1])
  if left < 0 or left > tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4])) end
else
  redis.call('HSET', KEYS[2], ARGV[1], pack(s))
  expiring_like(KEYS[2], KEYS[1], tonumber(ARGV[3]))
end
return 1
"""
)

# KEYS summary; ARGV field, fallback ttl.
_COUNT = (
    _LIB
    + """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
expiring(KEYS[1], tonumber(ARGV[2]))
return 1
"""
)


def round_ttl(*, spread_window: float, expires_in: float, redelivery_bound: float, capture_bound: float) -> int:
    """Seconds a round's keys must live: until its last capture could still start, come back and finish."""
    return int(spread_window + expires_in + redelivery_bound + capture_bound + ROUND_MARGIN_S)


@functools.lru_cache(maxsize=4096)  # begin, mark and count of one capture: one sha1, not three
def split_capture_id(capture_id: str) -> tuple[str, str]:
    """``<round>/<namespace>/<pod>/<type>`` → (round id, the capture's field). A capture queued by hand has its task
    id for a round: a round of one capture, whose keys expire with the fallback lifetime."""
    round_id = capture_id.split("/", 1)[0]
    return round_id, digest_of(capture_id)


class Rounds:
    """Round summaries and the per-capture ledger, over one Redis client.

    ``fallback_ttl`` is the lifetime of keys written for a round nobody started (a capture queued by hand; a round
    whose summary was lost with a Redis restart): the longest a hand-queued capture may wait, come back and run.
    ``completed_ttl`` is how long a complete round's summary is kept: the redelivery bound (a dead worker's copy of
    one of its captures may still come back and must learn that the round is over), never longer than it had.
    """

    def __init__(self, client: redis.Redis, fallback_ttl: int, completed_ttl: int | None = None) -> None:
        self.client = client
        self.fallback_ttl = max(1, int(fallback_ttl))
        self.completed_ttl = max(1, int(completed_ttl if completed_ttl is not None else fallback_ttl))
        self._begin = client.register_script(_BEGIN)
        self._mark = client.register_script(_MARK)
        self._final = client.register_script(_COUNT_FINAL)
        self._count = client.register_script(_COUNT)

    @staticmethod
    def key(round_id: str) -> str:
        return f"{PREFIX}round:{{{round_id}}}"

    @classmethod
    def captures_key(cls, round_id: str) -> str:
        return cls.key(round_id) + ":c"

    def ids(self, count: int = 500) -> list[str]:
        """The ids of the rounds whose summaries are still kept (a SCAN: for the demo and tools, not hot paths)."""
        prefix = f"{PREFIX}round:{{"
        found = []
        for raw in self.client.scan_iter(match=prefix + "*", count=count):
            rest = _text(raw)[len(prefix) :]
            if rest.endswith("}"):
                found.append(rest[:-1])
        return found

    def _keys(self, capture_id: str) -> tuple[list[str], str]:
        round_id, field = split_capture_id(capture_id)
        return [self.key(round_id), self.captures_key(round_id)], field

    # -- a round --------------------------------------------------------------------------------------------------

    def start(self, round_id: str, ttl: int, **fields: str | int | float) -> None:
        """The round's summary, written before its captures are queued: ``expected`` is what ``done`` must reach."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key(round_id), mapping=dict(fields))  # type: ignore[arg-type]
        pipe.expire(self.key(round_id), max(1, int(ttl)))
        pipe.execute()

    def report(self, round_id: str) -> dict[str, Any]:
        """A round's counters: ``expected`` captures, ``done``, and one count per outcome."""
        raw = self.client.hgetall(self.key(round_id))
        report: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
        for key, value in report.items():
            if value.lstrip("-").isdigit():
                report[key] = int(value)
        return report

    def wait(self, round_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict[str, Any]:
        """Block until every capture of the round has a final outcome (or ``timeout``); returns the report."""
        end = time.monotonic() + timeout
        while True:
            report = self.report(round_id)
            if report.get("expected") is not None and report.get("done", 0) >= report["expected"]:
                return report
            if time.monotonic() > end:
                report["timed_out"] = True
                return report
            time.sleep(poll)

    # -- its captures: the delivery ledger (the pipeline's Ledger port) and the final counts ----------------------

    def begin(self, capture_id: str, attempt: int) -> tuple[str | None, int]:
        """In one round trip: where the capture was already delivered (None if not yet), and how many times this
        attempt has started — above 1 means the task was redelivered after its worker died."""
        keys, field = self._keys(capture_id)
        try:
            where, starts = self._begin(keys=keys, args=[field, attempt, self.fallback_ttl])
        except redis.RedisError as exc:
            raise _unavailable(exc, "ledger") from exc
        return (_text(where) or None), int(starts)

    def mark_delivered(self, capture_id: str, where: str) -> None:
        keys, field = self._keys(capture_id)
        try:
            self._mark(keys=keys, args=[field, where, self.fallback_ttl])
        except redis.RedisError as exc:
            # The profile is stored; losing the mark only risks a duplicate if this very task is redelivered, and
            # then the redelivered copy asks profefe for its capture_id first.
            note(exc, "ledger")

    def count_final(self, capture_id: str, outcome: str) -> bool:
        """Count ``outcome`` for the capture unless it already has one; True when this one counted."""
        keys, field = self._keys(capture_id)
        return bool(self._final(keys=keys, args=[field, outcome, self.fallback_ttl, self.completed_ttl]))

    def count(self, round_id: str, field: str) -> None:
        """A non-final event (a retry, a duplicate), counted every time."""
        self._count(keys=[self.key(round_id)], args=[field, self.fallback_ttl])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
