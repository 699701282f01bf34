"""``python -m bench leases``: what the lease machinery costs a capture worker, on the real Redis.

A worker renews the leases on everything it holds every ``KPROFEFE_VISIBILITY_TIMEOUT / 4`` (one pipelined
``ZADD XX`` per 1,000 messages), sweeps for expired leases as often (a ``ZCOUNT``), and moves due spread captures
every second (one ``EVAL``). None of it is per capture; this measures each operation's CPU in the worker process
(``time.process_time``, so Redis's own time is not counted) with ``--held`` messages really held through kombu,
and turns it into CPU per capture at ``--throughput`` captures per second per worker (RESULTS.md: about 190/s).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection

from bench import harness  # first: points this process at the benchmark's Redis database
from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.worker import delayed, leases, sweeper
from kprofefe_tasks.worker.app import CAPTURE_QUEUE


def _cpu_per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench leases", description=__doc__)
    parser.add_argument("--held", type=int, default=500, help="messages the worker holds (its -c)")
    parser.add_argument("--calls", type=int, default=200, help="calls of each operation measured")
    parser.add_argument("--throughput", type=float, default=190.0, help="captures/s of one worker")
    args = parser.parse_args(argv)
    settings = Settings()
    client = harness.redis_client()
    client.flushdb()
    try:
        with Connection(harness.BROKER) as conn:
            queue = conn.SimpleQueue(CAPTURE_QUEUE, no_ack=False)
            for n in range(args.held):
                queue.put({"n": n})
            messages = [queue.get(block=True, timeout=10) for _ in range(args.held)]
            channel = queue.consumer.channel
            qos = channel.qos
            tags = leases.held(qos)
            assert len(tags) == args.held, (len(tags), args.held)
            with channel.conn_or_acquire() as redis_client:
                renew = _cpu_per_call(lambda: leases.renew(redis_client, qos.unacked_index_key, tags), args.calls)
                promote = _cpu_per_call(lambda: delayed.promote(redis_client, CAPTURE_QUEUE), args.calls)
            sweep = _cpu_per_call(lambda: sweeper.sweep_once(channel), args.calls)
            for message in messages:
                message.ack()
            queue.close()
    finally:
        client.flushdb()
    interval = settings.sweep_interval()
    per_second = renew / interval + sweep / interval + promote / delayed.PROMOTE_INTERVAL
    figures = {
        "held": args.held,
        "renew_ms_per_call": round(renew * 1e3, 3),
        "sweep_ms_per_call": round(sweep * 1e3, 3),
        "promote_ms_per_call": round(promote * 1e3, 3),
        "renew_and_sweep_every_s": interval,
        "promote_every_s": delayed.PROMOTE_INTERVAL,
        "cpu_ms_per_worker_second": round(per_second * 1e3, 4),
        "throughput_per_worker": args.throughput,
        "cpu_ms_per_capture": round(per_second / args.throughput * 1e3, 5),
    }
    print(json.dumps(figures, indent=2))
    return 0
