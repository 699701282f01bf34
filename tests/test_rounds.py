"""A round's keys on the real Redis: the ledger, the counts, and lifetimes that follow from the schedule.

Two keys per round and nothing per capture; the per-capture hash goes the moment the round completes, and every key
written expires, even one written for a round nobody started.
"""

from __future__ import annotations

import pytest
import redis

from kprofefe_tasks.coordination.rounds import ROUND_MARGIN_S, Rounds, round_ttl
from kprofefe_tasks.domain.delivery import capture_id_for

pytestmark = pytest.mark.integration  # the machine's Redis (no worker processes)

FALLBACK_TTL = 900


@pytest.fixture
def rounds(redis_client: redis.Redis) -> Rounds:
    return Rounds(redis_client, fallback_ttl=FALLBACK_TTL)


def cid(round_id: str, pod: str, ptype: str = "heap") -> str:
    return capture_id_for(round_id, "web", pod, ptype)


def test_the_lifetime_is_spread_wait_redelivery_and_the_capture(rounds: Rounds) -> None:
    assert round_ttl(spread_window=100, expires_in=600, redelivery_bound=300, capture_bound=358) == (
        100 + 600 + 300 + 358 + ROUND_MARGIN_S
    )


def test_a_capture_begins_once_per_attempt_and_a_redelivery_counts_up(rounds: Rounds) -> None:
    rounds.start("r1", 1000, expected=2)
    assert rounds.begin(cid("r1", "a"), 0) == (None, 1)
    assert rounds.begin(cid("r1", "a"), 0) == (None, 2)  # the same message again: its worker died
    assert rounds.begin(cid("r1", "a"), 1) == (None, 1)  # a retry is a new attempt
    rounds.mark_delivered(cid("r1", "a"), "profefe-1")
    assert rounds.begin(cid("r1", "a"), 1) == ("profefe-1", 1)


def test_finals_count_once_and_the_ledger_goes_when_the_round_completes(
    rounds: Rounds, redis_client: redis.Redis
) -> None:
    rounds.start("r2", 1000, expected=2, entry="test")
    rounds.begin(cid("r2", "a"), 0)
    assert rounds.count_final(cid("r2", "a"), "ok") is True
    assert rounds.count_final(cid("r2", "a"), "failed") is False  # a redelivered copy: not counted again
    assert redis_client.exists(Rounds.captures_key("r2"))
    rounds.count("r2", "retried")
    assert rounds.count_final(cid("r2", "b"), "empty") is True

    assert not redis_client.exists(Rounds.captures_key("r2"))  # complete: no per-capture state is left
    report = rounds.report("r2")
    assert {k: report[k] for k in ("expected", "done", "ok", "empty", "retried", "entry")} == {
        "expected": 2,
        "done": 2,
        "ok": 1,
        "empty": 1,
        "retried": 1,
        "entry": "test",
    }
    assert 0 < redis_client.ttl(Rounds.key("r2")) <= 1000


def test_a_late_redelivery_after_completion_asks_and_does_not_count(rounds: Rounds, redis_client: redis.Redis) -> None:
    rounds.start("r3", 1000, expected=1)
    rounds.begin(cid("r3", "a"), 0)
    rounds.mark_delivered(cid("r3", "a"), "profefe-1")
    rounds.count_final(cid("r3", "a"), "ok")
    # the worker died before its ack; the message comes back after the round is over
    assert rounds.begin(cid("r3", "a"), 0) == (None, 2)  # "started before": the pipeline asks profefe first
    rounds.mark_delivered(cid("r3", "a"), "profefe-1")
    assert rounds.count_final(cid("r3", "a"), "ok") is False
    assert rounds.report("r3")["done"] == 1
    assert not redis_client.exists(Rounds.captures_key("r3"))  # and nothing was written back


def test_keys_of_a_round_nobody_started_still_expire(rounds: Rounds, redis_client: redis.Redis) -> None:
    by_hand = cid("task-7f3a", "a")  # a capture queued by hand: its task id stands for the round
    rounds.begin(by_hand, 0)
    rounds.count("task-7f3a", "retried")
    for key in (Rounds.key("task-7f3a"), Rounds.captures_key("task-7f3a")):
        assert 0 < redis_client.ttl(key) <= FALLBACK_TTL, key
    assert rounds.count_final(by_hand, "ok") is True  # no expected count: it never "completes", it expires


def test_the_round_started_ttl_is_kept_by_later_writes(rounds: Rounds, redis_client: redis.Redis) -> None:
    rounds.start("r4", 5000, expected=10)
    rounds.begin(cid("r4", "a"), 0)
    assert FALLBACK_TTL < redis_client.ttl(Rounds.key("r4")) <= 5000
    # the per-capture hash lives as long as its round, not the fallback's shorter lifetime
    assert FALLBACK_TTL < redis_client.ttl(Rounds.captures_key("r4")) <= 5000


def test_both_keys_share_a_cluster_slot(rounds: Rounds) -> None:
    # one script touches both: Redis Cluster needs them in one slot, which the {round} hash tag gives
    assert Rounds.key("abc").split("{")[1].split("}")[0] == Rounds.captures_key("abc").split("{")[1].split("}")[0]


def test_bytes_per_capture_while_a_round_runs(rounds: Rounds, redis_client: redis.Redis) -> None:
    captures = [cid("r5", f"api-{i:04d}", t) for i in range(1000) for t in ("cpu", "heap", "block")]
    rounds.start("r5", 1000, expected=len(captures) + 1)
    for n, capture in enumerate(captures):
        rounds.begin(capture, 0)
        rounds.mark_delivered(capture, f"c8m3q1k2d9s0v{n:07d}")  # a profefe id's length
        rounds.count_final(capture, "ok")
    used = redis_client.memory_usage(Rounds.captures_key("r5"), samples=0)
    assert used is not None
    per_capture = used / len(captures)
    # what docs/README sizing assumes for a running round; a completed one keeps only its summary
    assert per_capture < 120, per_capture


def test_a_complete_rounds_summary_is_kept_only_for_the_redelivery_bound(redis_client: redis.Redis) -> None:
    rounds = Rounds(redis_client, fallback_ttl=FALLBACK_TTL, completed_ttl=120)
    rounds.start("r6", 5000, expected=1)
    rounds.begin(cid("r6", "a"), 0)
    assert redis_client.ttl(Rounds.key("r6")) > 4000
    rounds.count_final(cid("r6", "a"), "ok")
    assert 0 < redis_client.ttl(Rounds.key("r6")) <= 120
    assert rounds.report("r6")["ok"] == 1
