"""One exception tree for everything that can go wrong with a target, a profile or a sink.

Every failure is classified by what a retry can do about it, because that decides what the worker does next::

    KprofefeError                 base; ``reason`` is a short machine word used as a metric label
    ├── TemporaryError            a retry may help (timeouts, refused connections, 5xx, 429); ``delay`` hints when
    │   ├── UnreachableError      the target did not answer at all: maybe the pod is gone (ask before retrying)
    │   └── BusyError             a known wait, not a failure: the pod's CPU profiler is busy for one window
    ├── PermanentError            a retry will not help (HTML instead of pprof, 404, bad annotation, 4xx)
    │   ├── ConfigError           our own configuration is wrong; raised at start-up, never per target
    │   ├── InvalidTargetError    a target fails the checks discovery applies (a forged or corrupt queue message,
    │   │                         a link-local pod IP, a proxy path that would leave the pod): never fetched
    │   └── SpoolError            the spool could not keep a profile (disk full: ``spool-full``; read-only, I/O
    │                             error, permission: ``spool-error``): that profile is lost, counted
    └── SkipError                 nothing is wrong, there is just nothing to store (empty profile, pod gone)

Messages are truncated so an HTML error page never floods a log line.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 300  # a log line, not a dump of the body that caused it


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


class KprofefeError(Exception):
    """Base of every error this package raises on purpose."""

    default_reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        self.message = _clip(message)
        self.reason = reason or self.default_reason
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class TemporaryError(KprofefeError):
    """A retry may succeed. ``delay`` is the server's or our own hint, in seconds (None: use backoff)."""

    default_reason = "temporary"

    def __init__(self, message: str, *, reason: str | None = None, delay: float | None = None) -> None:
        super().__init__(message, reason=reason)
        self.delay = delay


class UnreachableError(TemporaryError):
    """The target did not answer (refused, timed out, reset mid-body): retry, unless its pod is gone."""

    default_reason = "target-unreachable"


class BusyError(TemporaryError):
    """Waiting for a pod's CPU profiler, held by us or by someone else: costs time, not a retry of the budget."""

    default_reason = "cpu-busy"


class PermanentError(KprofefeError):
    """Retrying the same request gives the same answer."""

    default_reason = "permanent"


class ConfigError(PermanentError):
    """A setting or schedule entry is invalid; names the variable and what it accepts."""

    default_reason = "config"


class SkipError(KprofefeError):
    """Nothing to store, and that is normal (an empty block profile, a pod deleted since discovery)."""

    default_reason = "skipped"


class InvalidTargetError(PermanentError, ValueError):
    """A target that must not be dialled: a field fails the rule discovery applies to it.

    Raised by :meth:`kprofefe_tasks.domain.targets.Target.from_dict` (the one door for a target, from discovery or
    off the queue) and by the proxy path builder. ``reason`` is always ``invalid-target`` (one metric label for a
    capture refused this way); ``problem`` names the rule (``bad-ip``, ``link-local-ip``, ``bad-port``,
    ``bad-path``, ...), which discovery reports as the pod's skip reason. A ``ValueError`` too, so code that already
    guards a message's parsing with ``except ValueError`` keeps refusing it.
    """

    default_reason = "invalid-target"

    def __init__(self, message: str, *, problem: str = "invalid-target") -> None:
        super().__init__(message)
        self.problem = problem


class SpoolError(PermanentError):
    """The spool could not write a profile: its filesystem is full (``spool-full``: ENOSPC, EDQUOT) or refuses the
    write for another reason (``spool-error``: read-only, I/O error, permission). Permanent for this capture: the
    profile is not kept anywhere, so the capture ends ``failed`` with this reason. The spool itself is not marked
    broken: the next write tries again, and succeeds once space is freed."""

    default_reason = "spool-error"
