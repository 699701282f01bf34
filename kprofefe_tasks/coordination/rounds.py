"""A round's outcome counters: each capture's final outcome counted once, whatever the redeliveries."""

from __future__ import annotations

import redis

from kprofefe_tasks.coordination.client import PREFIX

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
