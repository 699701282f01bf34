"""Figures the docs state, checked against the code or the manifests they describe, so they cannot drift.

Each claim is a pattern in a doc with one number in it, and where that number comes from. The settings table in
the README is generated (``python -m kprofefe_tasks.config.settings --update README.md``) and checked elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kprofefe_tasks.config import sizing
from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.coordination.rounds import ROUND_MARGIN_S
from kprofefe_tasks.io import budget, spool
from kprofefe_tasks.worker import events, hublag

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = Settings()
MIB = 1024 * 1024


def _env_value(manifest: str, name: str) -> str:
    for doc in yaml.safe_load_all((ROOT / manifest).read_text()):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env") or ():
                if env["name"] == name:
                    return str(env["value"])
    raise AssertionError(f"{name} not set in {manifest}")


def _rabbit_consumer_timeout_h() -> float:
    text = (ROOT / "deploy/components/rabbitmq/30-kprofefe.conf").read_text()
    match = re.search(r"^consumer_timeout\s*=\s*(\d+)", text, re.M)
    assert match
    return int(match.group(1)) / 3_600_000


CLAIMS: list[tuple[str, str, Callable[[], float]]] = [
    # (file, pattern with one number group, the number's source)
    ("deploy/README.md", r"the longest capture \+ (\d+) s\)", lambda: ROUND_MARGIN_S),
    (
        "deploy/README.md",
        r"task results \((\d+) h, `KPROFEFE_RESULT_EXPIRES",
        lambda: DEFAULTS.result_expires / 3600,
    ),
    ("deploy/README.md", r"CPU window \((\d+) s\) \+ read margin", lambda: DEFAULTS.cpu_seconds),
    ("deploy/README.md", r"read margin \((\d+) s\)", lambda: DEFAULTS.read_margin),
    ("deploy/README.md", r"`KPROFEFE_CPU_SECONDS` \((\d+) s", lambda: DEFAULTS.cpu_seconds),
    ("deploy/README.md", r"`KPROFEFE_METRICS_PORT` \((\d+)\)", lambda: DEFAULTS.metrics_port),
    (
        "deploy/README.md",
        r"`KPROFEFE_SPOOL_MAX_BYTES` at (\d+) MiB",
        lambda: int(_env_value("deploy/base/capture.yaml", "KPROFEFE_SPOOL_MAX_BYTES")) / MIB,
    ),
    ("deploy/README.md", r"raises `consumer_timeout` to (\d+) h", _rabbit_consumer_timeout_h),
    ("README.md", r"in batches every ([\d.]+) s", lambda: events.FLUSH_INTERVAL),
    ("README.md", r"sizing.py` has the formula, `\((\d+) MiB", lambda: sizing.BASE_BYTES / sizing.MIB),
    ("README.md", r"pods \u00d7 2 \u00d7 types \u00d7 \(([\d.]+) KB", lambda: sizing.QUEUED_CAPTURE_BYTES / 1000),
    ("README.md", r"types \u00d7 \([\d.]+ KB \+ (\d+) B\)\)", lambda: sizing.LEDGER_CAPTURE_BYTES),
    ("README.md", r"\+ \d+ B\)\) \u00d7 ([\d.]+)`", lambda: sizing.HEADROOM),
    ("README.md", r"pods \u00d7 (\d+) \u00d7 types", lambda: sizing.ROUNDS_QUEUED),
    ("README.md", r"the longest capture \+ (\d+) s\)", lambda: ROUND_MARGIN_S),
    ("deploy/README.md", r"--maxmemory (\d+)mb", lambda: sizing.maxmemory_mb(sizing.BASE_PODS)),
    ("README.md", r"dropped once older than (\d+) h \(`reason=\"orphan\"`\)", lambda: spool.ORPHAN_AGE / 3600),
    ("README.md", r"Unset, it is (\d+)% of the container", lambda: budget.LIMIT_FRACTION * 100),
    ("README.md", r"0: (\d+)% of the container's memory limit", lambda: budget.LIMIT_FRACTION * 100),
    ("README.md", r"`memory.limit_in_bytes`\), (\d+) MiB when there is", lambda: budget.FALLBACK_TOTAL_BYTES / MIB),
    ("README.md", r"(\d+) MiB in the 1 GiB capture pod", lambda: round(budget.default_total(1024 * MIB) / MIB)),
    ("README.md", r"A capture holding up to (\d+) MiB never", lambda: budget.SHARE_MAX_BYTES / MIB),
    ("README.md", r"asks for a (\d+) ms sleep", lambda: hublag.PROBE_INTERVAL_S * 1000),
    ("deploy/base/capture.yaml", r"unset, (\d+)% of this limit", lambda: budget.LIMIT_FRACTION * 100),
]


@pytest.mark.parametrize(("doc", "pattern", "source"), CLAIMS, ids=[c[1][:40] for c in CLAIMS])
def test_the_docs_state_the_figure_the_code_has(doc: str, pattern: str, source: Callable[[], float]) -> None:
    text = " ".join((ROOT / doc).read_text().split())  # a claim may wrap across lines
    found = [float(m) for m in re.findall(pattern, text)]
    assert found, f"{doc}: no match for {pattern!r} (reworded? update the claim here)"
    assert set(found) == {float(source())}, (doc, pattern, found, source())


def test_the_rabbitmq_overlay_tells_the_workers_the_consumer_timeout_the_broker_has() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/components/rabbitmq/broker-env.yaml").read_text()))
    values = {
        env["value"]
        for doc in docs
        for container in doc["spec"]["template"]["spec"]["containers"]
        for env in container.get("env") or ()
        if env["name"] == "KPROFEFE_AMQP_CONSUMER_TIMEOUT"
    }
    assert values == {str(int(_rabbit_consumer_timeout_h() * 3600))}, values


def test_the_stated_redelivery_bound_is_the_default_lease_plus_a_sweep() -> None:
    bound = DEFAULTS.redelivery_bound()
    assert bound == DEFAULTS.visibility_timeout * 1.25  # the lease, and one sweep a quarter of it
    claims = {
        "README.md": [r"\((\d+) s with the defaults; measured", r"dead worker's captures within (\d+) s"],
        "deploy/README.md": [r"plus a quarter of it \((\d+) s\)"],
        "deploy/base/capture.yaml": [r"a quarter of it \((\d+) s\)"],
    }
    for doc, patterns in claims.items():
        text = " ".join((ROOT / doc).read_text().replace("#", " ").split())
        for pattern in patterns:
            found = {float(m) for m in re.findall(pattern, text)}
            assert found == {bound}, (doc, pattern, found)
