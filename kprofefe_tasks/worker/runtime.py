"""Per-process wiring: the clients a worker (or beat, or a shell) needs, built once per process on first use.

Built after the pool has started, so sockets belong to the process that uses them; rebuilt after a fork.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import redis
import requests

from kprofefe_tasks import coordination, metrics
from kprofefe_tasks.config.settings import Settings, get_settings
from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.errors import ConfigError, KprofefeError
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.io import budget, http, offload, pods
from kprofefe_tasks.io.kube import Kube
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import DirectorySink, ProfefeSink, Sink
from kprofefe_tasks.io.spool import Spool
from kprofefe_tasks.pipeline.capture import CapturePipeline, Policy

log = logging.getLogger("kprofefe.tasks")

POD_HTTP_POOL = 8  # connections kept per pod: one round asks a pod for at most six profiles at once
HOST_POOLS = 2000  # pods whose connections are cached; more just means new connections next round
PROFEFE_POOL = 1000  # connections to profefe: a gevent worker may upload hundreds of profiles at once


class OffHubSink:
    """A file sink whose writes run in the offload pool (kprofefe_tasks.io.offload)."""

    def __init__(self, sink: DirectorySink) -> None:
        self.sink = sink
        self.name = sink.name

    def store(self, delivery: Delivery) -> str:
        return offload.run_blocking(self.sink.store, delivery)


@dataclass
class Runtime:
    """Per-process clients, and the capture pipeline wired to them."""

    settings: Settings
    redis: redis.Redis
    pods_http: requests.Session
    sink: Sink
    spool: Spool
    bucket: coordination.TokenBucket | None
    rounds: coordination.Rounds
    inflight: coordination.Semaphore | None
    memory: budget.MemoryBudget
    pipeline: CapturePipeline = field(init=False)
    _kube: Kube | None = None
    _kube_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        s = self.settings
        sink: Sink = self.sink
        if s.offload and isinstance(sink, DirectorySink):
            sink = OffHubSink(sink)
        self.pipeline = CapturePipeline(
            policy=Policy(
                capture_retries=s.capture_retries,
                max_deliveries=s.max_deliveries,
                backoff_base=s.backoff_base,
                backoff_max=s.backoff_max,
                read_margin=s.read_margin,
            ),
            ledger=self.rounds,
            fetch=self.fetch,
            sink=sink,
            spool=self.spool,  # it runs its own file system work off the hub (Spool(blocking=...), build_runtime)
            lookup=self.sink if isinstance(self.sink, ProfefeSink) else None,
            pods=self,
            cpu_lock=lambda name: coordination.Lock(self.redis, name),
            semaphore=self.inflight,
            budget=self.memory,
        )

    def kube_or_none(self) -> Kube | None:
        """The Kubernetes client, or None when this process has no configuration for one."""
        with self._lock:
            if self._kube is None and not self._kube_error:
                try:
                    self._kube = Kube.connect()
                except ConfigError as exc:
                    self._kube_error = str(exc)
            return self._kube

    def kube(self) -> Kube:
        kube = self.kube_or_none()
        if kube is None:
            raise ConfigError(self._kube_error or "no Kubernetes configuration")
        return kube

    def fetch(self, target: Target, ptype: str, cpu_seconds: int, memory: pods.Memory) -> pods.Profile:
        kube = self.kube() if self.settings.capture_via == "proxy" else None
        return pods.fetch(
            target, ptype, self.settings, cpu_seconds=cpu_seconds, session=self.pods_http, kube=kube, memory=memory
        )

    def gone(self, target: Target) -> bool:
        """Whether the pod was deleted or replaced since discovery (asked only after a capture got no answer)."""
        try:
            kube = self.kube_or_none()
            if kube is None:
                return False
            pod = kube.get_pod(target.namespace, target.pod)
        except KprofefeError:
            return False
        if pod is None:
            return True
        meta = pod.get("metadata") or {}
        return bool(meta.get("deletionTimestamp")) or (bool(target.uid) and meta.get("uid") != target.uid)

    def update_spool_gauges(self) -> None:
        count, size = self.spool.stats()
        metrics.SPOOL_PROFILES.set(count)
        metrics.SPOOL_BYTES.set(size)


def build_runtime(settings: Settings) -> Runtime:
    client = coordination.connect(settings.locks_redis_url, settings.broker_max_connections)
    spool = Spool(
        settings.spool_dir,
        settings.spool_max_bytes,
        on_drop=_on_spool_drop,
        blocking=offload.run_blocking if settings.offload else None,
    )
    bucket = (
        coordination.TokenBucket(client, "uploads", settings.upload_rate, settings.upload_burst)
        if settings.upload_rate > 0
        else None
    )
    sink: Sink
    if settings.profefe_url:
        profefe = ProfefeClient(
            settings.profefe_url,
            session=http.session(4, PROFEFE_POOL),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.upload_timeout,
        )
        sink = ProfefeSink(
            profefe,
            bucket=bucket,
            attempts=settings.upload_attempts,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            on_retry=lambda reason: metrics.UPLOAD_RETRIES.labels(reason).inc(),
            on_wait=metrics.RATE_LIMIT_WAIT.inc,
            wait_max=settings.upload_wait_max,
        )
    else:
        sink = DirectorySink(settings.output_dir)
    return Runtime(
        settings=settings,
        redis=client,
        rounds=coordination.Rounds(
            client,
            fallback_ttl=settings.hand_round_ttl(),
            # a dead worker's copy comes back within the redelivery bound and checks the round as it starts
            completed_ttl=int(settings.redelivery_bound()) + coordination.ROUND_MARGIN_S,
        ),
        inflight=(
            coordination.Semaphore(client, "captures", settings.max_inflight_captures)
            if settings.max_inflight_captures > 0
            else None
        ),
        pods_http=http.session(HOST_POOLS, POD_HTTP_POOL),
        sink=sink,
        spool=spool,
        bucket=bucket,
        memory=memory_budget(settings),
    )


def memory_budget(settings: Settings) -> budget.MemoryBudget:
    """The worker's memory budget: the setting, or its share of the container's memory limit."""
    total = settings.memory_budget_bytes or budget.default_total()
    metrics.MEMORY_BUDGET_BYTES.set(total)
    return budget.MemoryBudget(
        total,
        settings.memory_budget_wait,
        on_change=metrics.MEMORY_RESERVED_BYTES.set,
        on_refuse=lambda kind: metrics.MEMORY_REFUSALS.labels(kind).inc(),
    )


_runtime: tuple[int, Runtime] | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime (a forked child builds its own)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime[0] != os.getpid():
            _runtime = (os.getpid(), build_runtime(get_settings()))
        return _runtime[1]


def _on_spool_drop(delivery: Delivery | None, reason: str) -> None:
    """Count a drop; the spool has logged it (with the entry, and namespace, pod and type when it could read them)."""
    metrics.SPOOL_DROPPED.labels(reason).inc()
