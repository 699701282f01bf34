"""The delivery ledger: which captures already landed, and how often each attempt started (redelivery loops)."""

from __future__ import annotations

import redis

from kprofefe_tasks.coordination.client import PREFIX
from kprofefe_tasks.coordination.client import unavailable as _unavailable

LEDGER_TTL = 2 * 24 * 3600  # s: longer than any redelivery, short enough to not grow forever


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
