"""What workers agree on through Redis: the cluster-wide upload rate, per-pod CPU locks, the capture semaphore,
the delivery ledger that keeps a redelivered capture from being stored twice, and the round counters."""

from kprofefe_tasks.coordination.client import PREFIX, connect
from kprofefe_tasks.coordination.ledger import LEDGER_TTL, Ledger
from kprofefe_tasks.coordination.limits import Lock, Semaphore, TokenBucket
from kprofefe_tasks.coordination.rounds import RoundCounters

__all__ = ["LEDGER_TTL", "PREFIX", "Ledger", "Lock", "RoundCounters", "Semaphore", "TokenBucket", "connect"]
