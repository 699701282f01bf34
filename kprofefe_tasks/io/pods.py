"""Taking one profile from one pod: the HTTP request, its deadlines and caps, and the answer's classification.

A capture connects only to the pod's own IP and declared port (or goes through the API server's pods/proxy
subresource): never a host from an annotation, never a redirect. Every body is bounded in size, time and
decompressed size, and checked to be pprof before anyone stores it.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import urllib3

from kprofefe_tasks.config.settings import HARD_DEADLINE_GRACE_S, Settings
from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.errors import (
    BusyError,
    KprofefeError,
    PermanentError,
    SkipError,
    TemporaryError,
    UnreachableError,
)
from kprofefe_tasks.domain.targets import Target
from kprofefe_tasks.io import offload, pprof
from kprofefe_tasks.io.budget import UNBOUNDED_RESERVATION
from kprofefe_tasks.io.http import retry_after
from kprofefe_tasks.io.kube import Kube, ProxiedAnswer

CHUNK_BYTES = 64 * 1024  # one socket read; small enough that a deadline check runs often
CPU_BUSY_MARKER = b"cpu profiling already in use"  # Go's answer to a second concurrent CPU profile


class Memory(Protocol):
    """A capture's reservation in the worker's memory budget (:mod:`kprofefe_tasks.io.budget`)."""

    def grow_to(self, nbytes: int) -> None: ...

    def shrink_to(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class Profile:
    """A validated pprof payload, ready for a sink."""

    body: bytes
    info: pprof.ProfileInfo
    taken_at: float  # unix seconds when the capture finished
    duration: float  # seconds the capture took, CPU window included


def delivery_for(capture_id: str, target: Target, ptype: str, profile: Profile) -> Delivery:
    """The record a sink stores for a profile just taken (shared by the workers and the CLI)."""
    return Delivery(
        capture_id=capture_id,
        service=target.service,
        ptype=ptype,
        namespace=target.namespace,
        pod=target.pod,
        labels=target.labels,
        taken_at=profile.taken_at,
        body=profile.body,
    )


def request_for(target: Target, ptype: str, cpu_seconds: int) -> tuple[str, dict[str, str]]:
    """The pprof path and query for a profile type: ``cpu`` is Go's ``/profile?seconds=N``."""
    base = target.path.rstrip("/")
    if ptype == "cpu":
        return f"{base}/profile", {"seconds": str(cpu_seconds)}
    return f"{base}/{ptype}", {}


def deadline_for(settings: Settings, ptype: str, cpu_seconds: int) -> float:
    """Seconds a whole capture may take: the CPU window plus a margin, or the snapshot read timeout."""
    return settings.cpu_deadline(cpu_seconds) if ptype == "cpu" else settings.read_timeout


def _read_capped(
    read1: Callable[[int], bytes], limit: int, deadline: float, what: str, memory: Memory = UNBOUNDED_RESERVATION
) -> bytes:
    """Read a body chunk by chunk; a never-ending or slow-drip body fails on size or time, not memory.
    Every chunk is reserved in the memory budget before it is kept, and so is the copy that joins them."""
    parts: list[bytes] = []
    try:
        return _read_parts(read1, limit, deadline, what, memory, parts)
    finally:
        parts.clear()  # on an error too: nothing read stays alive in a traceback's frame


def _read_parts(
    read1: Callable[[int], bytes], limit: int, deadline: float, what: str, memory: Memory, parts: list[bytes]
) -> bytes:
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TemporaryError(
                f"{what}: body not complete before the deadline ({size} bytes read)", reason="slow-body"
            )
        chunk = read1(CHUNK_BYTES)
        if not chunk:
            if len(parts) <= 1:
                return parts[0] if parts else b""
            memory.grow_to(2 * size)  # the parts and the joined body, for a moment
            body = b"".join(parts)
            parts.clear()
            memory.shrink_to(size)
            return body
        size += len(chunk)
        if size > limit:
            raise PermanentError(f"{what}: body larger than {limit} bytes", reason="too-large")
        memory.grow_to(size)
        parts.append(chunk)


def _declared_length(headers: Mapping[str, str]) -> int:
    for key, value in headers.items():
        if key.lower() == "content-length" and value.strip().isdigit():
            return int(value)
    return 0


def _check_length(headers: Mapping[str, str], limit: int, what: str) -> None:
    """Refuse a body whose declared ``Content-Length`` is already over the cap, before reading any of it."""
    for key, value in headers.items():
        if key.lower() == "content-length" and value.strip().isdigit() and int(value) > limit:
            raise PermanentError(f"{what}: body of {int(value)} bytes is larger than {limit}", reason="too-large")


def classify_status(status: int, body: bytes, headers: Mapping[str, str], what: str, cpu_seconds: int) -> None:
    """Raise the right error for a non-200 answer from a pprof endpoint."""
    snippet = body[:200].decode("utf-8", "replace")
    if status == 500 and CPU_BUSY_MARKER in body:
        # someone else (a human with go tool pprof?) holds the CPU profiler; it is free after a window
        raise BusyError(f"{what}: {snippet}", reason="cpu-busy", delay=float(cpu_seconds))
    if 300 <= status < 400:
        raise PermanentError(f"{what}: redirect to {headers.get('Location', '?')!r} not followed", reason="redirect")
    if status == 404:
        raise PermanentError(f"{what}: 404 {snippet}", reason="not-found")
    if status == 429:
        raise TemporaryError(f"{what}: 429 {snippet}", reason="target-429", delay=retry_after(headers))
    if status >= 500:
        raise TemporaryError(f"{what}: {status} {snippet}", reason="target-5xx")
    raise PermanentError(f"{what}: {status} {snippet}", reason=f"target-{status // 100}xx")


def validate(
    body: bytes,
    what: str,
    max_decompressed: int,
    memory: Memory = UNBOUNDED_RESERVATION,
    pause: pprof.Pause | None = None,
) -> pprof.ProfileInfo:
    """Check that ``body`` is a pprof profile; an empty one is a skip, anything else not pprof is permanent.

    The decompressed copy is reserved in ``memory`` as it grows and given back afterwards; ``pause`` (a gevent
    worker's :class:`~kprofefe_tasks.io.offload.Cooperator`) lets the hub run between steps of the work."""
    try:
        info = pprof.inspect(
            body, max_decompressed, pause=pause, on_inflate=lambda inflated: memory.grow_to(len(body) + inflated)
        )
    except pprof.PprofError as exc:
        raise PermanentError(f"{what}: not a pprof profile ({exc})", reason=f"invalid-{exc.reason}") from exc
    finally:
        memory.shrink_to(len(body))
    if info.is_empty:
        raise SkipError(f"{what}: profile has no samples", reason="empty")
    return info


def _green_timeout(seconds: float) -> Any | None:
    """A gevent timer when this process runs gevent-patched sockets (the worker's ``-P gevent``), else None.

    Socket timeouts bound each read, not the answer: a target that sends a header byte a second never trips them,
    and the body deadline only starts once the headers are in. A gevent timer interrupts the greenlet wherever it
    blocks. Outside gevent (a plain thread, a shell) only the per-read bounds apply.
    """
    try:
        from gevent import Timeout, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return None
    if not monkey.is_module_patched("socket"):
        return None
    return Timeout(seconds)


def fetch(
    target: Target,
    ptype: str,
    settings: Settings,
    *,
    cpu_seconds: int,
    session: requests.Session | None = None,
    kube: Kube | None = None,
    memory: Memory = UNBOUNDED_RESERVATION,
) -> Profile:
    """Take one profile. Direct to the pod IP by default; through the API server when ``kube`` is given.
    The body and its decompressed copy are reserved in ``memory`` (the worker's budget) as they grow."""
    budget = deadline_for(settings, ptype, cpu_seconds) + settings.connect_timeout + HARD_DEADLINE_GRACE_S
    timer = _green_timeout(budget)
    try:
        if timer is None:
            return _fetch(target, ptype, settings, cpu_seconds=cpu_seconds, session=session, kube=kube, memory=memory)
        with timer:
            return _fetch(target, ptype, settings, cpu_seconds=cpu_seconds, session=session, kube=kube, memory=memory)
    except KprofefeError as exc:
        raise _detached(exc) from None
    except BaseException as exc:
        if exc is not timer:
            raise
        raise UnreachableError(
            f"{target.key} {ptype}: no complete answer within {budget:.0f}s", reason="target-timeout"
        ) from None


def _detached(exc: KprofefeError) -> KprofefeError:
    """The error without its traceback and the errors it was raised from. Their frames hold the body read so far
    and its decompressed copy; a retry keeps the error, and those buffers would outlive the capture's reservation
    in the memory budget (measured: a hostile round's peak RSS was 2.5 times idle plus the budget)."""
    exc.__traceback__ = None
    exc.__cause__ = None
    exc.__context__ = None
    return exc


def _fetch(
    target: Target,
    ptype: str,
    settings: Settings,
    *,
    cpu_seconds: int,
    session: requests.Session | None,
    kube: Kube | None,
    memory: Memory,
) -> Profile:
    path, params = request_for(target, ptype, cpu_seconds)
    what = f"{target.key} {ptype}"
    total = deadline_for(settings, ptype, cpu_seconds)
    timeout = (settings.connect_timeout, total)
    started = time.monotonic()
    deadline = started + total
    if kube is not None:
        answer = kube.proxy_get(target.namespace, target.pod, target.port, path, params, timeout)
        if isinstance(answer, ProxiedAnswer):
            classify_status(answer.status, answer.body, answer.headers, what, cpu_seconds)
            raise PermanentError(f"{what}: unexpected answer {answer.status}", reason="target-error")
        try:
            status = int(answer.status)
            headers = dict(answer.headers)
            _check_length(headers, settings.max_profile_bytes, what)
            memory.grow_to(_declared_length(headers))  # a declared length is reserved before the first byte
            body = _read_capped(
                lambda n: answer.read1(n, decode_content=False), settings.max_profile_bytes, deadline, what, memory
            )
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise UnreachableError(f"{what}: {exc}", reason="target-unreachable") from exc
        finally:
            answer.release_conn()
    else:
        web = session or requests.Session()
        url = f"http://{target.address}{path}"
        try:
            response = web.get(url, params=params, timeout=timeout, stream=True, allow_redirects=False)
        except requests.Timeout as exc:
            raise UnreachableError(f"{what}: timed out ({exc.__class__.__name__})", reason="target-timeout") from exc
        except requests.ConnectionError as exc:
            cause = _innermost(exc)
            if isinstance(cause, http.client.HTTPException) and not isinstance(cause, ConnectionError):
                # not HTTP at all (TLS on a plain port, another protocol): retrying gets the same bytes
                raise PermanentError(
                    f"{what}: not an HTTP answer: {_root_cause(exc)}", reason="target-protocol"
                ) from exc
            raise UnreachableError(f"{what}: {_root_cause(exc)}", reason="target-unreachable") from exc
        except requests.RequestException as exc:
            raise PermanentError(f"{what}: {exc}", reason="target-protocol") from exc
        try:
            status = response.status_code
            headers = dict(response.headers)
            _check_length(headers, settings.max_profile_bytes, what)
            memory.grow_to(_declared_length(headers))  # a declared length is reserved before the first byte
            raw = response.raw
            body = _read_capped(
                lambda n: raw.read1(n, decode_content=False), settings.max_profile_bytes, deadline, what, memory
            )
        except urllib3.exceptions.TimeoutError as exc:
            # the body stalled longer than a read may wait: a hung or overloaded pod, not a broken one
            raise UnreachableError(f"{what}: body stalled: {_root_cause(exc)}", reason="target-timeout") from exc
        except (requests.RequestException, OSError, urllib3.exceptions.ProtocolError) as exc:
            # urllib3 reports a connection closed or reset mid-body (a pod restarted, OOM-killed, or its chunked
            # stream cut short) as a ProtocolError: the next attempt may well get the whole profile
            raise UnreachableError(f"{what}: body read failed: {_root_cause(exc)}", reason="target-reset") from exc
        except Exception as exc:  # anything else urllib3 raises while reading is not an HTTP body we can use
            if isinstance(exc, (PermanentError, TemporaryError)):
                raise
            raise PermanentError(f"{what}: {exc.__class__.__name__}: {exc}", reason="target-protocol") from exc
        finally:
            response.close()
    if status != 200:
        classify_status(status, body, headers, what, cpu_seconds)
    info = validate(body, what, settings.max_decompressed_bytes, memory, offload.cooperative(settings.offload))
    finished = time.monotonic()
    return Profile(body=body, info=info, taken_at=time.time(), duration=finished - started)


def _innermost(exc: BaseException) -> BaseException:
    """requests wraps urllib3 wraps the socket or http.client error that says what happened."""
    seen = exc
    for _ in range(10):
        inner = seen.__cause__ or seen.__context__
        if inner is None:
            break
        seen = inner
    for arg in getattr(seen, "args", ()):  # urllib3's ProtocolError carries the cause as an argument
        if isinstance(arg, BaseException):
            return arg
    return seen


def _root_cause(exc: BaseException) -> str:
    cause = _innermost(exc)
    return f"{cause.__class__.__name__}: {cause}"
