"""Shared fixtures. The integration tier runs real Celery worker processes against the machine's real Redis,
with the Kubernetes API, profefe and the pprof targets stood in by HTTP servers on loopback."""

from __future__ import annotations

import os

# The test process talks to the same broker as the workers it starts; set before anything builds the app.
TEST_REDIS_DB = int(os.environ.get("KPROFEFE_TEST_REDIS_DB", "11"))
TEST_BROKER = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
os.environ["KPROFEFE_BROKER_URL"] = TEST_BROKER
os.environ["KPROFEFE_REDIS_URL"] = TEST_BROKER
os.environ["KPROFEFE_METRICS_PORT"] = "0"

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
from kprofefe_sandbox.farm import PprofFarm  # noqa: E402
from kprofefe_sandbox.kubeapi import KubeAPIServer  # noqa: E402
from kprofefe_sandbox.processes import CeleryProcess, free_port, worker_args  # noqa: E402
from kprofefe_sandbox.profefe import ProfefeServer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_BROKER)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("the integration tier needs Redis on 127.0.0.1:6379 (see README: make test starts nothing else)")
    client.flushdb()
    yield client
    client.flushdb()


@dataclass
class Stack:
    """One sandbox cluster: API server double, profefe double, a farm of pprof targets, and worker processes."""

    tmp: Path
    kube: KubeAPIServer
    profefe: ProfefeServer
    farm: PprofFarm
    kubeconfig: Path
    processes: list[CeleryProcess] = field(default_factory=list)

    def env(self, **overrides: Any) -> dict[str, str]:
        env = {
            "KPROFEFE_BROKER_URL": TEST_BROKER,
            "KPROFEFE_REDIS_URL": TEST_BROKER,
            "KPROFEFE_PROFEFE_URL": self.profefe.url,
            "KPROFEFE_SPOOL_DIR": str(self.tmp / "spool"),
            "KPROFEFE_OUTPUT_DIR": str(self.tmp / "profiles"),
            "KPROFEFE_CPU_SECONDS": "1",
            "KPROFEFE_BACKOFF_BASE": "0.05",
            "KPROFEFE_BACKOFF_MAX": "0.5",
            "KPROFEFE_METRICS_PORT": "0",
            "KPROFEFE_SPOOL_DRAIN_INTERVAL": "0.5",
            "KPROFEFE_CONNECT_TIMEOUT": "1",
            "KPROFEFE_READ_TIMEOUT": "3",
            "KPROFEFE_READ_MARGIN": "3",
            "KUBECONFIG": str(self.kubeconfig),
        }
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def worker(
        self, concurrency: int = 50, queues: str = "discovery,capture", wait: bool = True, **env: Any
    ) -> CeleryProcess:
        proc = CeleryProcess(
            "worker",
            [*worker_args(queues=queues, concurrency=concurrency), "--loglevel", "INFO"],
            self.env(**env),
            self.tmp / f"worker-{len(self.processes)}.log",
        )
        self.processes.append(proc)
        return proc.start(wait=wait)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.output()[-4000:]}" for p in self.processes)


@pytest.fixture
def stack(tmp_path: Path, redis_client: redis.Redis) -> Iterator[Stack]:
    with contextlib.ExitStack() as stack_:
        kube = stack_.enter_context(KubeAPIServer())
        profefe = stack_.enter_context(ProfefeServer())
        farm = stack_.enter_context(PprofFarm())
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        s = Stack(tmp=tmp_path, kube=kube, profefe=profefe, farm=farm, kubeconfig=kubeconfig)
        try:
            yield s
        finally:
            for proc in s.processes:
                proc.stop()


__all__ = ["FIXTURES", "TEST_BROKER", "Stack", "free_port"]
