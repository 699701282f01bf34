"""A round's outcome counters: each capture's final outcome counted once, whatever the redeliveries."""

from __future__ import annotations

import time
from typing import Any

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

    def start(self, round_id: str, **fields: str | int | float) -> None:
        """The round's record, written before its captures are queued: ``expected`` is what ``done`` must reach."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key(round_id), mapping=dict(fields))  # type: ignore[arg-type]
        pipe.expire(self.key(round_id), self.ttl)
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
