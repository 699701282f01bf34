"""Chaos tier, issue 12's round at full size: uploads queued behind the rate limit for longer than the visibility
timeout, and still every pod asked once per type and every profile stored once.

Standalone on purpose (it needs only ``tests/test_chaos.py``'s sandbox): copied into an older checkout it measures
the same round there (bench/RESULTS.md, "Leases"). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.test_chaos import open_sandbox, round_complete, stored_counts

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

TYPES = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate")
PODS = 30


@pytest.mark.timeout(600)
def test_a_round_whose_uploads_wait_past_the_visibility_timeout_asks_each_pod_once_and_stores_each_once(
    tmp_path: Path,
) -> None:
    with open_sandbox(tmp_path) as box:
        targets = [box.add_pod(f"p-{i}", host=f"127.78.1.{i}") for i in range(1, PODS + 1)]
        # the figures: 3 uploads/s for 180 profiles is a minute of waiting, three visibility timeouts
        box.worker(KPROFEFE_UPLOAD_RATE="3", KPROFEFE_UPLOAD_BURST="3", KPROFEFE_VISIBILITY_TIMEOUT="20")
        started = time.monotonic()
        round_id = box.discover(namespaces=["chaos"], types=list(TYPES), cpu_seconds=5)["round"]
        report = box.wait_round(round_id, timeout=300)
        seconds = time.monotonic() - started
        expected = PODS * len(TYPES)
        # a profile spooled at the rate-limit bound is delivered by the drainer a little later
        end = time.monotonic() + 120
        while len(box.profefe.profiles) < expected and time.monotonic() < end:
            time.sleep(0.2)
        asked = sum(sum(t.requests.values()) for t in targets)
        counts = stored_counts(box.profefe)
        twice = sum(1 for n in counts.values() if n > 1)
        print(
            f"\nround {seconds:.1f} s, report {report}; pods asked {asked} for {expected} captures; "
            f"profefe stored {sum(counts.values())}, {twice} (pod, type) twice, {expected - len(counts)} missing"
        )
        assert round_complete(report) and report.get("ok") == expected, report
        assert asked == expected
        assert counts == {(f"p-{i}", t): 1 for i in range(1, PODS + 1) for t in TYPES}
