"""Celery signal handlers: metrics endpoint, logging, the worker's background threads, expired captures."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from kprofefe_tasks import logs, metrics
from kprofefe_tasks.config.settings import get_settings
from kprofefe_tasks.domain.outcomes import CaptureResult, Outcome, Reason
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.io import offload
from kprofefe_tasks.worker import delayed, drainer, hublag, startup, sweeper
from kprofefe_tasks.worker.app import CAPTURE_QUEUE, app
from kprofefe_tasks.worker.report import record
from kprofefe_tasks.worker.runtime import runtime

log = logging.getLogger("kprofefe.tasks")

_stop_threads = threading.Event()


@signals.worker_init.connect
def _check_bounds(**_: Any) -> None:
    """Refuse to start when a capture could outlive the broker's redelivery (SystemExit passes Celery's handler)."""
    startup.check()


@signals.worker_init.connect
@signals.beat_init.connect
def _serve_metrics(**_: Any) -> None:
    """Before the broker connection: /healthz answers for a live process even while Redis is still coming up."""
    settings = get_settings()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_host)


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    # Building the Kubernetes client loads its configuration and models: about 0.4 s on the hub, measured. Done
    # here, before any task, so the first discovery or pod-gone check does not hold every capture for it.
    runtime().kube_or_none()
    if settings.hub_lag_warn > 0 and offload.gevent_patched():
        hublag.start(settings.hub_lag_warn)
        log.info("event-loop lag probe started (warns above %.0f ms)", settings.hub_lag_warn * 1000)
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        threading.Thread(
            target=sweeper.sweep_forever,
            args=(app, _stop_threads, settings.sweep_interval()),
            name="kprofefe-unacked-sweep",
            daemon=True,
        ).start()
        if CAPTURE_QUEUE in _consumed_queues(sender):
            threading.Thread(
                target=delayed.promote_forever,
                args=(app, _stop_threads, CAPTURE_QUEUE),
                name="kprofefe-delayed",
                daemon=True,
            ).start()
    if settings.profefe_url:
        threading.Thread(
            target=drainer.drain_forever,
            args=(_stop_threads, settings.spool_drain_interval),
            name="kprofefe-spool-drain",
            daemon=True,
        ).start()


def _consumed_queues(consumer: Any) -> set[str]:
    try:
        return set(consumer.app.amqp.queues.consume_from)
    except AttributeError:  # not a worker's consumer: assume every queue
        return {CAPTURE_QUEUE}


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    _stop_threads.set()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _on_setup_logger(logger: logging.Logger, **_: Any) -> None:
    settings = get_settings()
    logs.install(settings.log_level, settings.log_format, logger)


@signals.task_revoked.connect
def _on_revoked(request: Any = None, expired: bool = False, **_: Any) -> None:
    """An expired capture waited longer than its interval: dropped so rounds do not pile up, and counted."""
    if request is None or getattr(request, "name", "") != "kprofefe.capture":
        return
    kwargs = getattr(request, "kwargs", None) or {}
    try:
        target = Target.from_dict(kwargs["target"], allow_link_local=get_settings().allow_link_local)
    except (KeyError, TypeError, ValueError):
        return
    result = CaptureResult(
        namespace=target.namespace,
        pod=target.pod,
        service=target.service,
        type=str(kwargs.get("ptype", "")),
        outcome=Outcome.EXPIRED if expired else Outcome.FAILED,
        reason=Reason.EXPIRED if expired else Reason.REVOKED,
        round=str(kwargs.get("round_id", "")),
        task_id=str(getattr(request, "id", "")),
    )
    record(result, runtime().rounds)
