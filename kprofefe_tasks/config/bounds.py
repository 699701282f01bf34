"""The sum of a capture's waits, from the settings, and the start-up check of it against the broker's redelivery.

Every wait in a capture has a bound (the CPU window and its read margin, the connect timeout, each upload's
rate-limit wait, connect, read and backoff, then the wait before asking profefe about an upload that timed out):
:func:`capture_terms` lists them with the variables that set them, and their sum is
:meth:`Settings.capture_bound`. A profile still not uploaded when the upload's share runs out goes to the spool.

The broker may hand a message to a second worker while the first still runs it:

- Redis with leases (the default): never while the holder renews (:mod:`kprofefe_tasks.worker.leases`); the
  lease only has to outlast a few missed renewals, so ``KPROFEFE_VISIBILITY_TIMEOUT`` has a floor, not the sum.
- Redis without leases (``KPROFEFE_LEASES=off``, or a kombu version the renewal was not written for): once a
  message has been unacknowledged for ``KPROFEFE_VISIBILITY_TIMEOUT``; it must exceed the sum.
- RabbitMQ: when a message has been unacknowledged for the broker's ``consumer_timeout``
  (``KPROFEFE_AMQP_CONSUMER_TIMEOUT``), counted from delivery: an ETA capture waits for its spread offset
  unacknowledged, so the longest spread window counts too.

:func:`problems` returns what is inconsistent, naming the variables; a worker will not start with any
(:func:`check`, from ``worker_init``). ``python -m kprofefe_tasks.config.bounds`` prints the sum and the check.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kprofefe_tasks.config.settings import HARD_DEADLINE_GRACE_S, Settings

MIN_LEASE_S = 8  # the lease outlives three missed renewals (a quarter each) of at least 2 s: a Redis blip, a GC pause


@dataclass(frozen=True)
class Term:
    what: str
    seconds: float
    variables: tuple[str, ...]


def capture_terms(s: Settings, cpu_seconds: int) -> list[Term]:
    """The bounded waits of one capture, in order; their sum is ``s.capture_bound(cpu_seconds)``."""
    one_upload = s.upload_wait_max + s.connect_timeout + s.upload_timeout + s.backoff_max
    return [
        Term(f"CPU window {cpu_seconds} s + read margin", s.cpu_deadline(cpu_seconds), ("cpu_seconds", "READ_MARGIN")),
        Term("connecting to the pod", s.connect_timeout, ("CONNECT_TIMEOUT",)),
        Term(
            "the fetch's hard-deadline grace (memory-budget waits and inspection run inside it)",
            HARD_DEADLINE_GRACE_S,
            (),
        ),
        Term(
            f"{s.upload_attempts} uploads, each rate-limit wait + connect + upload + backoff",
            s.upload_attempts * one_upload,
            ("UPLOAD_ATTEMPTS", "UPLOAD_WAIT_MAX", "CONNECT_TIMEOUT", "UPLOAD_TIMEOUT", "BACKOFF_MAX"),
        ),
        Term("waiting before asking profefe about an upload that timed out", s.upload_timeout, ("UPLOAD_TIMEOUT",)),
    ]


def explain(s: Settings, cpu_seconds: int) -> str:
    terms = capture_terms(s, cpu_seconds)
    parts = [
        f"{t.seconds:g} s {t.what}" + (f" ({', '.join(_var(v) for v in t.variables)})" if t.variables else "")
        for t in terms
    ]
    return f"{s.capture_bound(cpu_seconds):g} s = " + " + ".join(parts)


def _var(name: str) -> str:
    return "KPROFEFE_CPU_SECONDS or the schedule's cpu_seconds" if name == "cpu_seconds" else f"KPROFEFE_{name}"


def problems(s: Settings, *, leases: bool, cpu_seconds: int, held_spread: float = 0.0) -> list[str]:
    """What is inconsistent between the capture bound and the broker's redelivery (empty: nothing).

    ``cpu_seconds`` is the longest CPU window the schedule asks for; ``held_spread`` the longest a capture may wait
    for its spread offset unacknowledged in a worker (Celery ETA tasks: AMQP, or ``task-sent`` events on)."""
    found: list[str] = []
    bound = s.capture_bound(cpu_seconds)
    if s.broker_url.startswith(("amqp", "pyamqp")):
        if bound + held_spread >= s.amqp_consumer_timeout:
            found.append(
                f"KPROFEFE_AMQP_CONSUMER_TIMEOUT={s.amqp_consumer_timeout} (RabbitMQ's consumer_timeout) is not longer "
                f"than a capture's longest wait unacknowledged, {bound + held_spread:g} s: {explain(s, cpu_seconds)}"
                + (f" + {held_spread:g} s spread offset (the schedule's interval)" if held_spread else "")
                + ". RabbitMQ would close the channel and redeliver captures still running. Raise consumer_timeout "
                "on the broker and KPROFEFE_AMQP_CONSUMER_TIMEOUT with it, or lower the terms named."
            )
        return found
    if leases:
        if s.visibility_timeout < MIN_LEASE_S:
            found.append(
                f"KPROFEFE_VISIBILITY_TIMEOUT={s.visibility_timeout} is below {MIN_LEASE_S} s: the lease a worker "
                f"renews every quarter of it would end after a short Redis blip, and a running capture be taken again."
            )
        return found
    if s.visibility_timeout <= bound + held_spread:
        found.append(
            f"KPROFEFE_VISIBILITY_TIMEOUT={s.visibility_timeout} is not longer than a capture's longest wait "
            f"unacknowledged, {bound + held_spread:g} s: {explain(s, cpu_seconds)}"
            + (f" + {held_spread:g} s spread offset" if held_spread else "")
            + f". Leases are off (KPROFEFE_LEASES={s.leases}, or an untested kombu version: see the log), so the "
            "broker would hand a capture still running to a second worker. Raise KPROFEFE_VISIBILITY_TIMEOUT above "
            f"{bound + held_spread:g}, lower the terms named, or run with KPROFEFE_LEASES=auto on kombu 5.7."
        )
    return found


def longest_cpu_seconds(s: Settings, schedule_cpu: Sequence[int] = ()) -> int:
    return max([s.cpu_seconds, *schedule_cpu])


def check(s: Settings, *, leases: bool, cpu_seconds: int, held_spread: float = 0.0) -> None:
    """Stop the process, naming the variables, when the configuration is inconsistent."""
    found = problems(s, leases=leases, cpu_seconds=cpu_seconds, held_spread=held_spread)
    if found:
        raise SystemExit("kprofefe: inconsistent configuration:\n  - " + "\n  - ".join(found))


def main() -> int:
    from kprofefe_tasks.worker import startup  # the worker's view: broker, leases, fan-out method

    s, cpu, leases, spread = startup.inputs()
    print(f"longest capture: {explain(s, cpu)}")
    print(f"leases: {'on' if leases else 'off'}; a dead worker's captures run again within {s.redelivery_bound():g} s")
    found = problems(s, leases=leases, cpu_seconds=cpu, held_spread=spread)
    for problem in found:
        print(f"problem: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
