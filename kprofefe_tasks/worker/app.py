"""The Celery application: broker, queues, delivery guarantees, events. ``celery -A kprofefe_tasks ...``."""

from __future__ import annotations

from typing import Any

from celery import Celery

from kprofefe_tasks.config.settings import Settings, get_settings
from kprofefe_tasks.worker import compat, events, leases, transport

DISCOVERY_QUEUE = "discovery"  # its own queue: a capture backlog never delays discovery
CAPTURE_QUEUE = "capture"
UNACKED_MUTEX_EXPIRE_S = 15


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        # An unacknowledged task whose lease was not renewed this long (its worker died) is redelivered
        # (worker/leases.py); without leases it must exceed the longest capture (config/bounds.py checks it).
        "visibility_timeout": settings.visibility_timeout,
        # The mutex a sweeper holds while it restores; kombu's 5 min would, after a worker SIGKILLed mid-sweep,
        # hold every dead worker's captures that long. A sweep restores 1,000 messages in well under a second.
        "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
        # kombu's Redis channel allows 10 connections by default and raises (it does not wait) past them; a gevent
        # worker acknowledging hundreds of captures at once hit that, dropped its connection and restored every
        # unacknowledged capture (measured in bench/: the round's CPU captures ran twice).
        "max_connections": settings.broker_max_connections,
    }
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.results_url,
        "result_expires": settings.result_expires,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a Redis restart must not kill the workers
        # A full Redis (maxmemory, noeviction) answers the consumer's bookkeeping writes with an OOM error, which
        # kombu classes as a channel error: reconnect and carry on instead of ending the worker.
        "broker_channel_error_retry": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Late acks + reject on worker loss: a capture whose worker died is redelivered, not lost. The delivery
        # ledger (coordination.Rounds) stops redelivery loops and double uploads.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Reserve one task per pool slot: no worker hoards captures that an idle one could run.
        "worker_prefetch_multiplier": 1,
        "task_routes": {
            "kprofefe.discover": {"queue": DISCOVERY_QUEUE},
            "kprofefe.capture": {"queue": CAPTURE_QUEUE},
            "kprofefe.drain_spool": {"queue": CAPTURE_QUEUE},
        },
        "task_default_queue": CAPTURE_QUEUE,
        # Flower and `celery events` need these.
        "worker_send_task_events": settings.worker_events,
        # on, captures are queued one apply_async at a time (about 13 times the CPU of the bulk writer,
        # bench/RESULTS.md); off, Flower shows a capture from the moment a worker receives it, and the queue length
        # still shows the backlog
        "task_send_sent_event": settings.task_sent_events,
        "task_track_started": True,  # discovery only: captures turn it off (an extra result write each)
        "worker_hijack_root_logger": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_pool_limit": 10,
        # Celery keeps one result backend per thread unless told it is thread safe; under gevent every task is a new
        # greenlet, i.e. a new Redis connection pool and TCP connection per capture (found by bench/).
        "result_backend_thread_safe": True,
    }
    if settings.broker_url.startswith("amqp"):
        config["broker_transport_options"] = {}  # Redis-only options; AMQP redelivers on connection loss itself
    return config


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("kprofefe_tasks", include=["kprofefe_tasks.tasks"])
    celery_app.conf.update(celery_config(settings))
    # Our shortcuts through Celery/kombu internals, only on the versions they were written for (worker/compat.py).
    fast = compat.fast_paths(settings.fast_paths)
    celery_app.conf.kprofefe_fast_paths = fast
    if fast:
        # kombu's Redis transport minus a client object per publish and ack, for the URL Celery will really use:
        # CELERY_BROKER_URL (what `celery -b` sets) wins over ours, and may name another broker.
        celery_app.conf.broker_transport = transport.transport_for(str(celery_app.conf.broker_url))
        celery_app.steps["consumer"].add(events.TaskEventBatches)  # task events in batches under gevent and threads
    # Renew the leases on what each worker holds, so a capture still running is never handed out again.
    celery_app.conf.kprofefe_leases = compat.leases(settings.leases, str(celery_app.conf.broker_url))
    if celery_app.conf.kprofefe_leases:
        celery_app.steps["consumer"].add(leases.Leases)
    import beat_schedule  # the top-level, operator-facing schedule module

    celery_app.conf.beat_schedule = beat_schedule.build(settings)
    return celery_app


app = create_app()
