"""The Celery and kombu versions our shortcuts through their internals were written for, and the gate on them.

Three places reach past Celery's public API because bench/ measured them paying off (bench/RESULTS.md):

- :mod:`~kprofefe_tasks.worker.bulk` writes Celery's protocol-2 message and kombu's Redis envelope itself;
- :mod:`~kprofefe_tasks.worker.transport` overrides kombu's private ``Channel._create_client``;
- :mod:`~kprofefe_tasks.worker.events` sets the event dispatcher's buffer and flushes it from a thread.

A fourth, :mod:`~kprofefe_tasks.worker.leases`, reads kombu's record of the messages a worker holds
(``QoS._delivered``) to renew their leases. It is not a shortcut but the exactly-once guarantee for long captures,
so ``KPROFEFE_FAST_PATHS=off`` keeps it; it too needs the tested kombu minor version (:func:`leases`), and without
it the start-up check (:mod:`kprofefe_tasks.config.bounds`) asks for a visibility timeout longer than any capture.

The three shortcuts are used only when the installed Celery and kombu have the minor versions in :data:`TESTED` (the
ones ``tests/test_bulk.py``, ``tests/test_broker.py`` and the pipeline tests pass with) and ``KPROFEFE_FAST_PATHS`` is
not ``off``. Anything else, an upgrade included, runs stock Celery: slower fan-out and acks, correct behaviour. The
stock path is tested too (``tests/test_compat.py`` runs a whole round with ``KPROFEFE_FAST_PATHS=off``).
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata

log = logging.getLogger("kprofefe.compat")

#: distribution -> (major, minor) the shortcuts were written for; pyproject.toml pins the same minors
TESTED: dict[str, tuple[int, int]] = {"celery": (5, 7), "kombu": (5, 7)}


def minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def untested(versions: dict[str, str]) -> dict[str, str]:
    """The distributions whose installed version differs from :data:`TESTED` (name -> version)."""
    return {
        name: versions.get(name, "missing") for name, want in TESTED.items() if minor(versions.get(name, "")) != want
    }


@functools.cache
def installed() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in TESTED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def fast_paths(setting: str, versions: dict[str, str] | None = None) -> bool:
    """Whether the shortcuts may be used: ``KPROFEFE_FAST_PATHS`` is ``auto`` and the versions are the tested ones."""
    if setting == "off":
        return False
    off = untested(versions if versions is not None else installed())
    if off:
        _warn_once(tuple(sorted(off.items())))
        return False
    return True


@functools.cache
def _warn_once(off: tuple[tuple[str, str], ...]) -> None:
    want = ", ".join(f"{n} {a}.{b}" for n, (a, b) in TESTED.items())
    have = ", ".join(f"{n} {v}" for n, v in off)
    log.warning("fast paths off: written for %s, installed %s; running stock Celery/kombu", want, have)


def leases(setting: str, broker_url: str, versions: dict[str, str] | None = None) -> bool:
    """Whether the worker renews leases (:mod:`~kprofefe_tasks.worker.leases`): ``KPROFEFE_LEASES`` is ``auto``, the
    broker is Redis, and kombu is the minor version whose ``QoS`` internals the renewal reads."""
    if setting == "off" or not broker_url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        return False
    off = untested(versions if versions is not None else installed())
    if "kombu" in off:
        _warn_once(tuple(sorted(off.items())))
        return False
    return True
