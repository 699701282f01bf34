"""The gate on our shortcuts through Celery/kombu internals, and the stock path it falls back to.

On the tested minor versions the bulk writer, the one-client transport and the event batches are on; on any other
version, or with ``KPROFEFE_FAST_PATHS=off``, the app is stock Celery. The last test runs a whole round that way
with a real worker, so the fallback is not a path nobody ever ran.
"""

from __future__ import annotations

from importlib import metadata

import pytest
from kprofefe_sandbox.kubeapi import make_pod

from kprofefe_tasks import tasks
from kprofefe_tasks.config.settings import PROFILE_TYPES, ConfigError, Settings, from_env
from kprofefe_tasks.worker import bulk, compat, events, transport
from kprofefe_tasks.worker.app import create_app
from tests.conftest import Stack

ENABLE = {"profefe.com/enable": "true"}


def test_the_pins_in_pyproject_match_the_versions_the_shortcuts_were_written_for() -> None:
    # the venv was installed from pyproject.toml: if this fails, someone bumped one without the other
    for name, want in compat.TESTED.items():
        assert compat.minor(metadata.version(name)) == want, name


@pytest.mark.parametrize(
    ("versions", "off"),
    [
        ({"celery": "5.7.0", "kombu": "5.7.0"}, {}),
        ({"celery": "5.7.3", "kombu": "5.7.12"}, {}),
        ({"celery": "5.8.0", "kombu": "5.7.0"}, {"celery": "5.8.0"}),
        ({"celery": "5.7.0", "kombu": "6.0.0"}, {"kombu": "6.0.0"}),
        ({"celery": "5.7.0"}, {"kombu": "missing"}),
        ({"celery": "weird", "kombu": "5.7.0"}, {"celery": "weird"}),
    ],
)
def test_untested_versions_are_named(versions: dict[str, str], off: dict[str, str]) -> None:
    assert compat.untested(versions) == off
    assert compat.fast_paths("auto", versions) is (not off)


def test_off_means_off_even_on_the_tested_versions() -> None:
    assert compat.fast_paths("off", {"celery": "5.7.0", "kombu": "5.7.0"}) is False
    assert compat.fast_paths("auto", {"celery": "5.7.0", "kombu": "5.7.0"}) is True


def test_the_setting_takes_only_auto_or_off() -> None:
    assert from_env({"KPROFEFE_FAST_PATHS": "off"}).fast_paths == "off"
    with pytest.raises(ConfigError, match="KPROFEFE_FAST_PATHS"):
        from_env({"KPROFEFE_FAST_PATHS": "on"})


def test_a_stock_app_has_none_of_the_shortcuts() -> None:
    stock = create_app(Settings(broker_url="redis://127.0.0.1:6379/0", fast_paths="off"))
    assert stock.conf.broker_transport is None  # kombu picks its own Redis transport from the URL
    assert events.TaskEventBatches not in stock.steps["consumer"]
    assert bulk.supported(stock) is False

    fast = create_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert fast.conf.broker_transport == transport.TRANSPORT
    assert events.TaskEventBatches in fast.steps["consumer"]
    assert bulk.supported(fast) is True


@pytest.mark.integration
def test_a_round_on_stock_celery_stores_everything(stack: Stack) -> None:
    pods = [stack.farm.add(f"127.33.0.{i}", 6060) for i in range(1, 4)]
    for i, pod in enumerate(pods):
        stack.kube.add_pod(make_pod(f"api-{i}", "web", annotations=ENABLE, ip=pod.host))
    stack.worker(KPROFEFE_FAST_PATHS="off")

    summary = tasks.discover.delay(namespaces="web", cpu_seconds=1).get(timeout=60)
    report = tasks.wait_round(summary["round"], timeout=90)

    assert summary["fan_out"] == "apply_async"  # the worker queued through Celery's own apply_async
    assert not report.get("timed_out"), (report, stack.logs())
    assert report["ok"] == 3 * len(PROFILE_TYPES), stack.logs()
    stored = {(p.labels["pod"], p.type) for p in stack.profefe.profiles}
    assert stored == {(f"api-{i}", t) for i in range(3) for t in PROFILE_TYPES}
    assert len(stack.profefe.profiles) == len(stored)  # once each
