"""The sum of a capture's bounded waits, and the start-up check of it against the broker's redelivery."""

from __future__ import annotations

import pytest

from kprofefe_tasks.config import bounds
from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.worker import compat

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
TESTED = {"celery": "5.7.0", "kombu": "5.7.1"}


def test_the_terms_add_up_to_the_capture_bound_and_name_their_variables() -> None:
    s = Settings(broker_url=REDIS)
    for cpu in (1, 30, 120):
        terms = bounds.capture_terms(s, cpu)
        assert sum(t.seconds for t in terms) == pytest.approx(s.capture_bound(cpu))
    text = bounds.explain(s, 30)
    assert text.startswith(f"{s.capture_bound(30):g} s = ")
    for name in ("KPROFEFE_UPLOAD_WAIT_MAX", "KPROFEFE_UPLOAD_ATTEMPTS", "KPROFEFE_READ_MARGIN", "KPROFEFE_CPU"):
        assert name in text


def test_with_leases_the_defaults_are_consistent_and_only_a_tiny_lease_is_refused() -> None:
    assert bounds.problems(Settings(broker_url=REDIS), leases=True, cpu_seconds=30) == []
    # a capture of any length: the lease is renewed while it runs
    assert bounds.problems(Settings(broker_url=REDIS), leases=True, cpu_seconds=3000, held_spread=3600) == []
    (problem,) = bounds.problems(Settings(broker_url=REDIS, visibility_timeout=4), leases=True, cpu_seconds=30)
    assert "KPROFEFE_VISIBILITY_TIMEOUT=4" in problem


def test_without_leases_the_visibility_timeout_must_exceed_the_longest_capture() -> None:
    s = Settings(broker_url=REDIS, visibility_timeout=300, leases="off")
    (problem,) = bounds.problems(s, leases=False, cpu_seconds=30)
    assert "KPROFEFE_VISIBILITY_TIMEOUT=300" in problem and "KPROFEFE_LEASES=off" in problem
    assert f"above {s.capture_bound(30):g}" in problem
    longer = s.replace(visibility_timeout=int(s.capture_bound(30)) + 1)
    assert bounds.problems(longer, leases=False, cpu_seconds=30) == []
    # an ETA capture waits for its offset unacknowledged too
    assert bounds.problems(longer, leases=False, cpu_seconds=30, held_spread=600)
    with pytest.raises(SystemExit, match="KPROFEFE_VISIBILITY_TIMEOUT=300"):
        bounds.check(s, leases=False, cpu_seconds=30)


def test_on_rabbitmq_the_consumer_timeout_must_exceed_the_capture_and_its_spread_wait() -> None:
    s = Settings(broker_url=AMQP, redis_url=REDIS)
    assert bounds.problems(s, leases=False, cpu_seconds=30, held_spread=600) == []  # 690 + 600 < 1800
    short = s.replace(amqp_consumer_timeout=900)
    (problem,) = bounds.problems(short, leases=False, cpu_seconds=30, held_spread=600)
    assert "KPROFEFE_AMQP_CONSUMER_TIMEOUT=900" in problem and "spread offset" in problem
    assert bounds.problems(short, leases=False, cpu_seconds=30) == []


def test_leases_need_redis_the_tested_kombu_and_not_off() -> None:
    assert compat.leases("auto", REDIS, TESTED)
    assert not compat.leases("off", REDIS, TESTED)
    assert not compat.leases("auto", AMQP, TESTED)
    assert not compat.leases("auto", REDIS, {**TESTED, "kombu": "5.8.0"})
    assert compat.leases("auto", REDIS, {**TESTED, "celery": "5.8.0"})  # the renewal reads kombu only
