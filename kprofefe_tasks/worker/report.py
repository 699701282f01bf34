"""One log line, one metric and one round count per capture outcome: what operators and ``wait_round`` read."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from kprofefe_tasks import coordination, metrics
from kprofefe_tasks.domain.delivery import capture_id_for
from kprofefe_tasks.domain.outcomes import FINAL_OUTCOMES, CaptureResult, Outcome
from kprofefe_tasks.domain.targets import Skip

log = logging.getLogger("kprofefe.tasks")

_INFO = frozenset({Outcome.OK, Outcome.EMPTY, Outcome.DUPLICATE, Outcome.RETRIED})
_ERROR = frozenset({Outcome.FAILED, Outcome.POISON, Outcome.REJECTED})


def count_outcome(rounds: coordination.Rounds, round_id: str, capture_id: str, outcome: str) -> None:
    """Count in the round: each capture's final outcome once, a retry or a duplicate every time."""
    if not round_id:
        return
    try:
        if outcome == Outcome.DUPLICATE:
            rounds.count(round_id, "duplicates")
            # the first delivery stored the profile but died before counting it: for the round, it is stored
            rounds.count_final(capture_id, Outcome.OK)
        elif outcome in FINAL_OUTCOMES:
            rounds.count_final(capture_id, outcome)
        else:
            rounds.count(round_id, outcome)
    except redis.RedisError as exc:
        coordination.note(exc, "round-count")


def record(result: CaptureResult, rounds: coordination.Rounds) -> dict[str, Any]:
    """Log, count and return (as the task's result) how a capture ended or why it runs again."""
    metrics.CAPTURES.labels(result.type, result.outcome, result.reason or result.outcome).inc()
    if result.outcome in (Outcome.OK, Outcome.SPOOLED):
        metrics.PROFILE_BYTES.labels(result.type).inc(result.size)
    capture_id = capture_id_for(result.round, result.namespace, result.pod, result.type)
    count_outcome(rounds, result.round, capture_id, result.outcome)
    level = logging.ERROR if result.outcome in _ERROR else logging.INFO if result.outcome in _INFO else logging.WARNING
    fields = result.to_dict()
    detail = fields.pop("detail")
    log.log(
        level,
        "capture %s %s/%s %s%s%s",
        result.outcome,
        result.namespace,
        result.pod,
        result.type,
        f" ({result.reason})" if result.reason else "",
        f": {detail}" if detail else "",
        extra=fields,
    )
    return fields


def report_skips(skips: Sequence[Skip], round_id: str) -> None:
    """A metric per skip, and a warning for each skip a user can act on (not the pods simply not annotated)."""
    for skip in skips:
        metrics.SKIPPED.labels(skip.reason).inc()
        if skip.reason != "not-enabled":
            log.warning(
                "skip %s: %s",
                skip.key,
                skip.detail,
                extra={**skip.to_dict(), "outcome": "skipped", "round": round_id},
            )
