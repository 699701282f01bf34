"""What workers agree on through Redis: the cluster-wide upload rate, per-pod CPU locks, the capture semaphore,
and each round's summary and per-capture ledger (which keeps a redelivered capture from being stored twice)."""

from kprofefe_tasks.coordination.client import PREFIX, connect, note
from kprofefe_tasks.coordination.limits import Lock, Semaphore, TokenBucket
from kprofefe_tasks.coordination.rounds import ROUND_MARGIN_S, Rounds, round_ttl

__all__ = ["PREFIX", "ROUND_MARGIN_S", "Lock", "Rounds", "Semaphore", "TokenBucket", "connect", "note", "round_ttl"]
