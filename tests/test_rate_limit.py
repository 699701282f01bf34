"""The upload rate limit has a bound: a profile that cannot get an upload slot in time is spooled, never held.

A round bigger than ``KPROFEFE_UPLOAD_RATE`` allows used to keep its last captures waiting in the bucket without
limit (minutes, at deploy/'s 50/s and a few thousand pods). Now each upload waits at most
``KPROFEFE_UPLOAD_WAIT_MAX``; the profile then goes to the spool and the worker's drainer delivers it once the rate
allows, exactly once.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from kprofefe_sandbox.kubeapi import make_pod
from kprofefe_sandbox.profefe import ProfefeServer

from kprofefe_tasks import tasks
from kprofefe_tasks.domain.errors import TemporaryError
from kprofefe_tasks.io.sinks import ProfefeSink
from tests.conftest import Stack
from tests.test_corpus import client_for, delivery


class EmptyBucket:
    """A bucket that never has a token: every ask says 'wait a second'."""

    rate = 0.5

    def __init__(self) -> None:
        self.asked = 0

    def wait_time(self, tokens: int = 1) -> float:
        self.asked += 1
        return 1.0


def test_an_upload_waits_for_a_slot_at_most_wait_max_then_fails_temporarily() -> None:
    slept: list[float] = []
    waited: list[float] = []
    bucket = EmptyBucket()
    with ProfefeServer() as server:
        sink = ProfefeSink(
            client_for(server, 1.0),
            bucket=bucket,  # type: ignore[arg-type]
            attempts=3,
            backoff_base=0.05,
            backoff_max=0.1,
            sleep=slept.append,
            on_wait=waited.append,
            wait_max=5.0,
        )
        with pytest.raises(TemporaryError) as caught:
            sink.store(delivery())
        assert server.upload_attempts == 0  # never sent: no slot
    assert caught.value.reason == "rate-limited"
    assert sum(slept) == 5.0 and waited == [5.0]  # the bound, no more; and the wait is still counted
    assert bucket.asked == 6


@pytest.mark.integration
def test_rate_limit_starvation_spools_and_the_drainer_delivers_each_once(stack: Stack) -> None:
    pods = [stack.farm.add(f"127.34.0.{i}", 6060) for i in range(1, 5)]
    for i, pod in enumerate(pods):
        stack.kube.add_pod(make_pod(f"api-{i}", "web", annotations={"profefe.com/enable": "true"}, ip=pod.host))
    # one upload every 2 s, a burst of 1, and at most 0.5 s of waiting: most of the round cannot upload in place
    stack.worker(KPROFEFE_UPLOAD_RATE="0.5", KPROFEFE_UPLOAD_BURST="1", KPROFEFE_UPLOAD_WAIT_MAX="0.5")

    summary = tasks.discover.delay(namespaces="web", types=["heap", "goroutine"]).get(timeout=60)
    report = tasks.wait_round(summary["round"], timeout=60)
    assert not report.get("timed_out"), (report, stack.logs())
    assert report.get("spooled", 0) >= 4, report  # starved, bounded, spooled: none held, none lost
    assert report["ok"] + report["spooled"] == 8, report

    deadline_s = 8 * 2 + 30  # the rate lets one through every 2 s; the drainer runs every 0.5 s here
    end = time.monotonic() + deadline_s
    while len(stack.profefe.profiles) < 8:
        assert time.monotonic() < end, (len(stack.profefe.profiles), stack.logs())
        time.sleep(0.1)
    stored = Counter((p.labels["pod"], p.type) for p in stack.profefe.profiles)
    assert stored == {(f"api-{i}", t): 1 for i in range(4) for t in ("heap", "goroutine")}, stored
    assert "rate-limited" in stack.logs()
