"""How a capture ends: the outcome words, the reasons the pipeline itself gives, and the one record of a result.

The values are the words on the wire (task results, logs, the ``outcome``/``reason`` metric labels, ``-o json``);
they are ``StrEnum`` so they compare equal to those strings and nothing downstream has to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    OK = "ok"  # stored
    EMPTY = "empty"  # the profile had no samples: nothing to store, nothing wrong
    SPOOLED = "spooled"  # taken, profefe did not take it within the retry budget: on disk, re-sent later
    REJECTED = "rejected"  # taken, profefe refused it for good: kept in the spool's rejected/ folder
    SKIPPED = "skipped"  # not taken, for a reason that is not a failure (the pod is gone)
    FAILED = "failed"  # not taken
    EXPIRED = "expired"  # waited in the queue past its interval: dropped so rounds do not pile up
    POISON = "poison"  # started too often (workers died running it): given up
    DUPLICATE = "duplicate"  # a redelivered copy whose profile had already landed
    RETRIED = "retried"  # not an end: the capture runs again later
    CANCELLED = "cancelled"  # the CLI was interrupted before this capture ran


#: outcomes that end a capture and count once per capture in its round; ``duplicate`` counts as the ``ok`` the
#: first delivery could not count, ``retried`` is not an end
FINAL_OUTCOMES = frozenset(
    {
        Outcome.OK,
        Outcome.EMPTY,
        Outcome.SPOOLED,
        Outcome.REJECTED,
        Outcome.SKIPPED,
        Outcome.FAILED,
        Outcome.EXPIRED,
        Outcome.POISON,
    }
)


class Reason(StrEnum):
    """Reasons the pipeline decides on itself; errors from the doors carry their own (``target-5xx``, ...)."""

    ALREADY_DELIVERED = "already-delivered"  # the ledger has this capture as delivered
    STORED_BEFORE_REDELIVERY = "stored-before-redelivery"  # profefe has it, the dead worker never marked it
    REDELIVERED = "redelivered"  # poison: started more than KPROFEFE_MAX_DELIVERIES times
    POD_GONE = "pod-gone"  # the target did not answer and its pod is deleted or replaced
    CPU_LOCKED = "cpu-locked"  # another capture of ours holds this pod's CPU profiler
    INFLIGHT_LIMIT = "inflight-limit"  # the cluster-wide capture semaphore is full
    REDIS_UNAVAILABLE = "redis-unavailable"
    EMPTY = "empty"
    EXPIRED = "expired"
    REVOKED = "revoked"
    FROM_SPOOL = "from-spool"
    SPOOL_FULL = "spool-full"  # the spool's filesystem is full: the profile could not be kept (failed)
    SPOOL_ERROR = "spool-error"  # the spool refused the write otherwise (read-only, I/O error, permission)
    MEMORY_BUDGET = "memory-budget"  # no room in the worker's memory budget (waited too long, or never fits)


@dataclass(frozen=True)
class CaptureResult:
    """How one (pod, type) capture ended: the task's result, the log line's fields and the CLI's row."""

    namespace: str
    pod: str
    service: str
    type: str
    outcome: str
    reason: str = ""
    detail: str = ""
    size: int = 0  # bytes of the profile as served (gzip)
    seconds: float = 0.0  # the capture's duration, CPU window included
    where: str = ""  # a profefe id, a file, ``spool:<entry>``
    round: str = ""
    task_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "type": self.type,
            "service": self.service,
            "outcome": str(self.outcome),
            "reason": str(self.reason),
            "detail": self.detail,
            "bytes": self.size,
            "seconds": round(self.seconds, 3),
            "where": self.where,
            "round": self.round,
            "task_id": self.task_id,
        }

    def line(self) -> str:
        """The progress line of a finished capture."""
        tail = self.where if self.outcome == Outcome.OK else (self.detail or self.reason)
        return f"{self.outcome} {self.namespace}/{self.pod} {self.type}" + (f": {tail}" if tail else "")
