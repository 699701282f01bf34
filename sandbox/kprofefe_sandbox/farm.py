"""A farm of simulated Go ``net/http/pprof`` endpoints, with fault modes.

Integration tests, benchmarks and the local demo need pprof targets without building and running
thousands of Go programs. :class:`PprofFarm` serves any number of them from one asyncio event loop in a
background thread: each :class:`Target` is its own listening socket (``127.x.y.z:port``) that answers like
Go's ``net/http/pprof`` (real recorded payloads, CPU profiles that block for ``seconds``, one CPU profile at a
time) or misbehaves in one of the ways a collector must survive (:class:`Behavior`). The HTTP/1.1 server is
deliberately small: request line and headers, keep-alive by default, ``Content-Length`` bodies, chunked
bodies for the streaming fault modes. That is enough for ``requests`` and for a Go reverse proxy.

Run ``python -m kprofefe_sandbox.farm --count N --port 6060`` for manual trials.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import email.utils
import enum
import functools
import gzip
import html
import http
import importlib.resources
import ipaddress
import logging
import math
import os
import re
import resource
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_BASE_PATH = "/debug/pprof"
DEFAULT_PORT = 6060
"""The port Go services conventionally serve pprof on."""
DEFAULT_FIRST_ADDRESS = "127.1.0.1"
"""First address of :meth:`PprofFarm.many`: away from 127.0.0.1, where local services listen."""

GO_DEFAULT_CPU_SECONDS = 30
"""What Go's ``/profile`` records when ``seconds`` is absent, zero or not an integer."""
GO_DEFAULT_TRACE_SECONDS = 1.0
"""What Go's ``/trace`` records when ``seconds`` is absent."""
HUGE_BODY_DEFAULT_BYTES = 1 << 30
"""HUGE_BODY stream length and GZIP_BOMB inflated size: far above any sane profile size cap."""
DRIP_INTERVAL_S = 1.0
"""SLOW_DRIP pace: one byte per interval keeps a per-read timeout of a few seconds from ever firing."""
STREAM_CHUNK_BYTES = 64 * 1024
"""HUGE_BODY write unit; with asyncio's write buffer limits this bounds the farm's memory per connection."""
GARBAGE_BYTES = 4096
MAX_REQUEST_HEAD_BYTES = 64 * 1024
"""Request line plus headers; Go allows 1 MiB, but pprof clients send a few hundred bytes."""
MAX_REQUEST_BODY_BYTES = 1 << 20
LISTEN_BACKLOG = 1024
"""Benchmarks open hundreds of connections to one target at once; the default of 100 would drop SYNs."""
STOP_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 60.0
"""Upper bound for a call into the loop thread (binding thousands of sockets takes about a second)."""
FDS_PER_TARGET = 3
"""Listener + server side of a connection + client side when the client shares the process."""
FD_HEADROOM = 256

PROFILE_NAMES = ("cpu", "heap", "allocs", "block", "mutex", "goroutine", "threadcreate")
SNAPSHOT_PROFILES = frozenset(PROFILE_NAMES) - {"cpu"}
"""Go's ``profileSupportsDelta``: every snapshot profile accepts ``?seconds=N``."""
GZIP_MAGIC = b"\x1f\x8b"
TLS_ALERT = b"\x15\x03\x01\x00\x02\x02\x46"
"""TLS 1.0 record, fatal alert ``protocol_version``: what a TLS-only port says to plain HTTP."""
CPU_BUSY_TEXT = "Could not enable CPU profiling: cpu profiling already in use"


class Behavior(enum.Enum):
    """How a target answers. GO, CPU_BUSY and EMPTY_PROFILE route by path like Go; the fault modes answer
    every path alike and at once (no ``seconds`` wait), so fault tests stay fast."""

    GO = "go"
    """Like Go's net/http/pprof (see the module docstring)."""
    HTML = "html"
    """200 text/html index page for every path: a web UI on the pprof port."""
    TEXT = "text"
    """200 text/plain like ``?debug=1`` output for every path."""
    NOT_FOUND = "not_found"
    """404 ``Unknown profile`` with ``X-Go-Pprof: 1`` for every path."""
    ERROR_500 = "error_500"
    CPU_BUSY = "cpu_busy"
    """CPU requests get Go's 500 "already in use" (someone else is profiling); other paths as GO."""
    TRUNCATED_GZIP = "truncated_gzip"
    """200 with the first half of the payload (honest Content-Length of the half)."""
    GZIP_BOMB = "gzip_bomb"
    """200 with ~1 MiB of gzip that inflates to ``size`` zero bytes."""
    HUGE_BODY = "huge_body"
    """200 chunked stream of ``size`` bytes of gzip-magic-prefixed junk."""
    SLOW_DRIP = "slow_drip"
    """Headers, then one byte every ``drip_interval_s`` until the client leaves."""
    RESET = "reset"
    """Reads the request, then resets the connection (RST, not FIN)."""
    REDIRECT = "redirect"
    """302 to ``http://127.0.0.1:<farm.redirect_port>/elsewhere``, a 200 text/plain sink."""
    TLS = "tls"
    """Answers plain HTTP with a TLS alert record, then closes."""
    EMPTY_PROFILE = "empty_profile"
    """As GO, but block and mutex are valid profiles with zero samples (no SetBlockProfileRate)."""
    GARBAGE = "garbage"
    """200 octet-stream of random bytes that never start with the gzip magic."""
    LARGE_PROFILE = "large_profile"
    """200 with a valid heap profile whose gzip body is about ``size`` bytes (random sample values, so it
    compresses poorly and inspecting it is real work), for every path."""


@dataclass(eq=False)
class Target:
    """One simulated pprof endpoint and what it has seen. Counters are written by the farm's loop thread;
    read them from tests as plain values (``target.requests["heap"]``)."""

    host: str
    port: int
    path: str = DEFAULT_BASE_PATH
    behavior: Behavior = Behavior.GO
    size: int = HUGE_BODY_DEFAULT_BYTES
    """Bytes streamed by HUGE_BODY, inflated size of GZIP_BOMB."""
    drip_interval_s: float = DRIP_INTERVAL_S
    snapshot_delay_s: float = 0.0
    """GO: a snapshot (heap, goroutine, ...) is answered this long after it was asked, as by a busy service."""
    write_timeout_s: float = 0.0
    """Emulates ``http.Server.WriteTimeout``: ``seconds`` at or above it get Go's 400. 0 = none, as in Go."""
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    """Requests by profile name: ``cpu`` (for ``/profile``), ``heap``, ..., ``index`` for the base path,
    the raw name for unknown profiles, ``other`` for paths outside the base path."""
    cpu_concurrent_max: int = 0
    """Most CPU requests in flight at once, refused ones included: a collector must keep this at 1."""
    cpu_refused: int = 0
    """CPU requests answered with "cpu profiling already in use"."""
    _cpu_active: bool = field(default=False, init=False, repr=False)
    _cpu_in_flight: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = "/" + self.path.strip("/") if self.path.strip("/") else ""

    @property
    def url(self) -> str:
        """Base URL of the pprof handlers, e.g. ``http://127.1.0.1:6060/debug/pprof``."""
        return f"http://{self.host}:{self.port}{self.path}"


# --- payloads ----------------------------------------------------------------------------------------------


_PAYLOADS: dict[str, bytes] = {}
_EMPTY_PAYLOADS: dict[str, bytes] = {}
_BOMBS: dict[int, bytes] = {}
_LARGE: dict[int, bytes] = {}
_payload_lock = threading.Lock()


def payload(name: str) -> bytes:
    """The recorded ``<name>.pb.gz`` shipped in ``sandbox/payloads`` (loaded once)."""
    with _payload_lock:
        if name not in _PAYLOADS:
            resource_path = importlib.resources.files(__package__ or "kprofefe_sandbox")
            _PAYLOADS[name] = (resource_path / "payloads" / f"{name}.pb.gz").read_bytes()
        return _PAYLOADS[name]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _strip_fields(message: bytes, drop: frozenset[int]) -> bytes:
    """Copy a protobuf message without the given top-level fields."""
    out = bytearray()
    pos = 0
    while pos < len(message):
        start = pos
        key, pos = _varint(message, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if key >> 3 not in drop:
            out += message[start:pos]
    return bytes(out)


# perftools.profiles.Profile fields: 2 = sample, 4 = location, 5 = function. Dropping the samples (and what
# only they referenced) leaves sample_type, string_table, period, ... : what Go writes when block/mutex
# profiling was never enabled.
_SAMPLE_FIELDS = frozenset({2, 4, 5})


def empty_payload(name: str) -> bytes:
    """``name``'s recorded profile without samples: a valid, zero-sample gzipped profile.

    The recorded block and mutex fixtures do have samples (the recording program enabled both), so the empty
    variants are derived rather than recorded."""
    with _payload_lock:
        cached = _EMPTY_PAYLOADS.get(name)
    if cached is None:
        message = _strip_fields(gzip.decompress(payload(name)), _SAMPLE_FIELDS)
        cached = gzip.compress(message, mtime=0)
        with _payload_lock:
            _EMPTY_PAYLOADS[name] = cached
    return cached


def gzip_bomb(inflated_size: int = HUGE_BODY_DEFAULT_BYTES) -> bytes:
    """One gzip member that inflates to ``inflated_size`` (rounded up to MiB) zero bytes, ~1000:1.

    Built without ever holding the inflated data: after a full flush, deflate output for a zero MiB no longer
    depends on history, so one compressed block is repeated. Takes ~0.3 s per GiB (the CRC); cached."""
    mib = max(1, -(-inflated_size // (1 << 20)))
    with _payload_lock:
        cached = _BOMBS.get(mib)
    if cached is not None:
        return cached
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    bomb = header + block * mib + final + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    with _payload_lock:
        _BOMBS[mib] = bomb
    return bomb


_OR_HIGH = bytes(b | 0x80 for b in range(256))
_AND_LOW = bytes(b & 0x7F for b in range(256))


def large_profile(size: int) -> bytes:
    """A valid gzipped heap profile of about ``size`` bytes: the recorded heap profile plus random samples.

    Every added sample reuses one recorded stack and has four random 3-byte values (one per heap sample type),
    written with strided slice assignments so a 10 MB body takes well under a second to build; cached per size.
    """
    with _payload_lock:
        cached = _LARGE.get(size)
    if cached is not None:
        return cached
    base = gzip.decompress(payload("heap"))
    stack = bytes([0x0A, 3, 1, 2, 3])  # location ids 1, 2, 3 (packed)
    values = bytes([0x12, 12]) + bytes(12)  # four 3-byte varints, filled below
    inner = stack + values
    sample = bytes([0x12, len(inner)]) + inner
    # gzip -1 squeezes these samples to ~0.64 of their size (measured: 12.5 MB raw -> 8.0 MB)
    count = max(1, int(size / (len(sample) * 0.64)))
    body = bytearray(sample * count)
    first_value = 2 + len(stack) + 2
    for byte in range(12):
        noise = os.urandom(count)
        noise = noise.translate(_AND_LOW if byte % 3 == 2 else _OR_HIGH)
        body[first_value + byte :: len(sample)] = noise
    built = gzip.compress(base + bytes(body), compresslevel=1, mtime=0)
    with _payload_lock:
        _LARGE[size] = built
    return built


def index_html(base_path: str) -> bytes:
    """Go's ``/debug/pprof/`` index page (same template, fixed counts)."""
    counts = {"allocs": 27, "block": 2, "goroutine": 6, "heap": 12, "mutex": 1, "threadcreate": 6}
    names = sorted([*counts, "cmdline", "profile", "trace"])
    rows = "".join(
        f"<tr><td>{counts.get(n, 0)}</td><td><a href='{n}?debug=1'>{html.escape(n)}</a></td></tr>\n" for n in names
    )
    items = "".join(f"<li><div class=profile-name>{html.escape(n)}: </div> {n} profile</li>\n" for n in names)
    title = html.escape(base_path + "/")
    return (
        f"<html>\n<head>\n<title>{title}</title>\n<style>\n.profile-name{{\n\tdisplay:inline-block;\n"
        f"\twidth:6rem;\n}}\n</style>\n</head>\n<body>\n{title}<br>\n<br>\nTypes of profiles available:\n"
        f"<table>\n<thead><td>Count</td><td>Profile</td></thead>\n{rows}</table>\n"
        f'<a href="goroutine?debug=2">full goroutine stack dump</a>\n<br>\n<p>\nProfile Descriptions:\n'
        f"<ul>\n{items}</ul>\n</p>\n</body>\n</html>"
    ).encode()


_FRAMES = (
    "#\t0x4a8f31\tmain.burn+0x51\t\t/src/target/main.go:31\n#\t0x4a9125\tmain.main.func1+0x25\t/src/target/main.go:58\n"
)


def debug_text(name: str, debug: int = 1) -> bytes:
    """Plausible ``?debug=N`` text for a profile: what a collector must never upload."""
    if name == "goroutine" and debug >= 2:
        return (
            b"goroutine 1 [running]:\nmain.main()\n\t/src/target/main.go:64 +0x1c5\n\n"
            b"goroutine 18 [select]:\nmain.burn()\n\t/src/target/main.go:31 +0x51\n"
        )
    if name in ("heap", "allocs"):
        text = (
            "heap profile: 3: 6144 [27: 55296] @ heap/524288\n"
            f"1: 2048 [9: 18432] @ 0x4a8f31 0x4a9125\n{_FRAMES}\n"
            "# runtime.MemStats\n# Alloc = 1718064\n# TotalAlloc = 5107416\n# Sys = 13223952\n"
        )
    elif name in ("block", "mutex"):
        text = f"--- {'contention' if name == 'block' else 'mutex'}:\ncycles/second=2496000000\n"
        text += f"1503214 2 @ 0x4a8f31 0x4a9125\n{_FRAMES}"
    else:
        label = name if name in SNAPSHOT_PROFILES else "goroutine"
        text = f"{label} profile: total 6\n2 @ 0x4a8f31 0x4a9125\n{_FRAMES}"
    return text.encode()


# --- HTTP plumbing -----------------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]


class _Protocol(asyncio.StreamReaderProtocol):
    """Stream protocol that also notices the peer leaving: Go cancels the request context (and stops a CPU
    profile early) when the client disconnects, and stream readers alone only see that on the next read."""

    def __init__(self, farm: PprofFarm, target: Target) -> None:
        self.farm = farm
        self.target = target
        self.gone = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        super().__init__(asyncio.StreamReader(limit=MAX_REQUEST_HEAD_BYTES), self._connected)

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.farm._serve_connection(self.target, self, reader, writer))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.farm._protocols.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        self.farm._protocols.discard(self)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self.gone.set()
        return bool(super().eof_received())


class _Conn:
    """Response side of one connection, for one request at a time."""

    def __init__(self, protocol: _Protocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.protocol = protocol
        self.reader = reader
        self.writer = writer
        self.keep_alive = True
        self.head_only = False
        self.http10 = False

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the client left first (Go's ``sleep(r, d)``)."""
        try:
            await asyncio.wait_for(self.protocol.gone.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    def _head(self, status: int, headers: Iterable[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if not self.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        all_headers = [("Content-Type", content_type), *headers, ("Content-Length", str(len(body)))]
        self.writer.write(self._head(status, all_headers) + (b"" if self.head_only else body))
        await self.writer.drain()

    async def send_go_error(self, status: int, text: str) -> None:
        """Go's ``serveError``."""
        headers = [("X-Content-Type-Options", "nosniff"), ("X-Go-Pprof", "1")]
        await self.send(status, "text/plain; charset=utf-8", f"{text}\n".encode(), headers)

    async def start_stream(self, status: int, content_type: str) -> bool:
        """Headers of a body of unknown length; False for HEAD (no body follows)."""
        if self.http10:
            # HTTP/1.0 has no chunked encoding: the end of the body is the end of the connection.
            self.keep_alive = False
            framing = []
        else:
            framing = [("Transfer-Encoding", "chunked")]
        self.writer.write(self._head(status, [("Content-Type", content_type), *framing]))
        await self.writer.drain()
        return not self.head_only

    async def stream(self, data: bytes) -> None:
        if self.http10:
            self.writer.write(data)
        else:
            self.writer.writelines((f"{len(data):x}\r\n".encode(), data, b"\r\n"))
        await self.writer.drain()

    async def end_stream(self) -> None:
        if not self.http10:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()

    def reset(self) -> None:
        """Close with SO_LINGER 0 so the kernel sends RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.keep_alive = False


_GO_INT = re.compile(r"[+-]?[0-9]+")


def _go_int(text: str | None) -> int | None:
    """``strconv.Atoi``: None where Go returns an error."""
    if text is None or not _GO_INT.fullmatch(text):
        return None
    return int(text)


def _go_float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def profile_name(base_path: str, request_path: str) -> str:
    """What a request asks for, as counted in :attr:`Target.requests`."""
    if request_path in (base_path, base_path + "/") or (not base_path and request_path == ""):
        return "index"
    if not request_path.startswith(base_path + "/"):
        return "other"
    name = request_path[len(base_path) + 1 :]
    return "cpu" if name == "profile" else name


def _raise_fd_limit(targets: int) -> None:
    """Every target is a listening socket and benchmarks add a connection (often both ends, when the client
    runs in the same process) per target, so 1000+ targets outgrow the usual soft limit of 1024 descriptors.
    Raising the soft limit up to the hard limit needs no privilege."""
    needed = FDS_PER_TARGET * targets + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        # An unlimited hard limit can still exceed the kernel's nr_open; ask for what is needed instead.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < targets + FD_HEADROOM:
        logger.warning("RLIMIT_NOFILE is %d: too low to listen on %d targets", soft, targets)


def loopback_addresses(n: int, first: str = DEFAULT_FIRST_ADDRESS) -> list[str]:
    """``n`` consecutive 127/8 addresses from ``first``, skipping those ending in .0 or .255."""
    address = ipaddress.IPv4Address(first)
    out: list[str] = []
    while len(out) < n:
        if not address.is_loopback:
            raise ValueError(f"{n} addresses from {first} leave 127.0.0.0/8")
        if int(address) & 0xFF not in (0, 255):
            out.append(str(address))
        address += 1
    return out


# --- the farm ----------------------------------------------------------------------------------------------


class PprofFarm:
    """Many simulated pprof targets on one asyncio loop in a background thread.

    ``with PprofFarm.many(1000) as farm: ...`` or ``farm = PprofFarm(); t = farm.add("127.0.0.1", 0);
    farm.start()``. Targets can be added while running. ``stop()`` closes every socket and connection."""

    def __init__(self, targets: Iterable[Target] = ()) -> None:
        self.targets: list[Target] = list(targets)
        self._by_address: dict[tuple[str, int], Target] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._protocols: set[_Protocol] = set()
        self._conn_tasks: set[asyncio.Future[None]] = set()
        self._sink = Target("127.0.0.1", 0, behavior=Behavior.TEXT)
        self._in_flight = 0
        self._peak = 0
        self._cpu_in_flight = 0
        self._cpu_peak = 0

    @classmethod
    def many(cls, n: int, *, port: int = DEFAULT_PORT, first: str = DEFAULT_FIRST_ADDRESS) -> Self:
        """``n`` GO targets on ``first``, ``first + 1``, ... all on ``port``; not started. Linux routes all of
        127/8 to loopback, so binding each address needs no setup."""
        return cls(Target(host, port) for host in loopback_addresses(n, first))

    # lifecycle

    def start(self) -> Self:
        """Bind every target and serve; returns self. A farm stopped earlier can be started again."""
        if self._loop is not None:
            return self
        _raise_fd_limit(len(self.targets) + 1)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="pprof-farm", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self._call(self._bind_all([self._sink, *self.targets]))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close listeners and connections, cancel sleeps and streams; returns promptly whatever the clients
        are doing."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("pprof farm shutdown did not finish in %.0f s", STOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._loop is not None

    # targets

    def add(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        path: str = DEFAULT_BASE_PATH,
        behavior: Behavior = Behavior.GO,
        **options: float,
    ) -> Target:
        """Add a target (``options``: the other :class:`Target` fields, e.g. ``size``). Bound at once when the
        farm runs, so ``target.port`` is real even for ``port=0``."""
        target = Target(host, port, path, behavior)
        for name, value in options.items():
            if name not in ("size", "drip_interval_s", "write_timeout_s", "snapshot_delay_s"):
                raise TypeError(f"unknown target option {name!r}")
            setattr(target, name, type(getattr(target, name))(value))
        if self._loop is not None:
            _raise_fd_limit(len(self.targets) + 2)
            self._call(self._bind_all([target]))
        self.targets.append(target)
        return target

    def target(self, host: str, port: int) -> Target:
        with self._lock:
            found = self._by_address.get((host, port))
        if found is not None:
            return found
        for target in self.targets:
            if (target.host, target.port) == (host, port):
                return target
        raise KeyError(f"no target {host}:{port}")

    @property
    def redirect_port(self) -> int:
        """Port of the 127.0.0.1 sink that REDIRECT targets point to (0 until started)."""
        return self._sink.port

    # counters

    def total_requests(self) -> int:
        with self._lock:
            return sum(sum(t.requests.values()) for t in self.targets)

    def peak_concurrent_requests(self) -> int:
        """Most requests in flight at once, farm-wide, since start or the last :meth:`reset_counters`."""
        return self._peak

    def peak_concurrent_cpu_requests(self) -> int:
        return self._cpu_peak

    def in_flight(self) -> int:
        return self._in_flight

    def reset_counters(self) -> None:
        with self._lock:
            for target in self.targets:
                target.requests.clear()
                target.cpu_concurrent_max = target._cpu_in_flight
                target.cpu_refused = 0
            self._peak = self._in_flight
            self._cpu_peak = self._cpu_in_flight

    @contextlib.contextmanager
    def _counting(self, target: Target, name: str) -> Iterator[None]:
        cpu = name == "cpu"
        with self._lock:
            target.requests[name] += 1
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            if cpu:
                target._cpu_in_flight += 1
                target.cpu_concurrent_max = max(target.cpu_concurrent_max, target._cpu_in_flight)
                self._cpu_in_flight += 1
                self._cpu_peak = max(self._cpu_peak, self._cpu_in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if cpu:
                    target._cpu_in_flight -= 1
                    self._cpu_in_flight -= 1

    # loop thread

    def _call(self, coro: object) -> None:
        assert self._loop is not None and asyncio.iscoroutine(coro)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    async def _bind_all(self, targets: Iterable[Target]) -> None:
        loop = asyncio.get_running_loop()
        for target in targets:
            server = await loop.create_server(
                functools.partial(_Protocol, self, target),
                target.host,
                target.port,
                reuse_address=True,
                backlog=LISTEN_BACKLOG,
            )
            self._servers.append(server)
            target.port = server.sockets[0].getsockname()[1]
            if target is not self._sink:
                with self._lock:
                    self._by_address[(target.host, target.port)] = target

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S / 2)

    # HTTP

    async def _serve_connection(
        self, target: Target, protocol: _Protocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        conn = _Conn(protocol, reader, writer)
        try:
            while conn.keep_alive:
                request = await self._read_request(conn)
                if request is None:
                    break
                with self._counting(target, profile_name(target.path, request.path)):
                    await self._handle(target, conn, request)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:
            logger.exception("pprof farm: %s:%d failed", target.host, target.port)
        finally:
            self._conn_tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(self, conn: _Conn) -> _Request | None:
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            conn.keep_alive = False
            await conn.send(431, "text/plain; charset=utf-8", b"431 Request Header Fields Too Large")
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            conn.keep_alive = False
            await conn.send(400, "text/plain; charset=utf-8", b"400 Bad Request")
            return None
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        connection = headers.get("connection", "").lower()
        conn.http10 = version == "HTTP/1.0"
        conn.keep_alive = "close" not in connection and (not conn.http10 or "keep-alive" in connection)
        conn.head_only = method == "HEAD"
        await self._discard_body(conn, headers)
        return _Request(method, url.path, query, version, headers)

    async def _discard_body(self, conn: _Conn, headers: dict[str, str]) -> None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            received = 0
            while True:
                size_line = await conn.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                received += size
                if received > MAX_REQUEST_BODY_BYTES:
                    raise ConnectionError("request body too large")
                await conn.reader.readexactly(size + 2)
                if size == 0:
                    return
        length = _go_int(headers.get("content-length")) or 0
        if length > MAX_REQUEST_BODY_BYTES:
            raise ConnectionError("request body too large")
        if length > 0:
            await conn.reader.readexactly(length)

    async def _handle(self, target: Target, conn: _Conn, request: _Request) -> None:
        name = profile_name(target.path, request.path)
        behavior = target.behavior
        if behavior in (Behavior.GO, Behavior.CPU_BUSY, Behavior.EMPTY_PROFILE):
            await self._serve_go(target, conn, request, name)
        elif behavior is Behavior.HTML:
            await conn.send(200, "text/html; charset=utf-8", index_html(target.path))
        elif behavior is Behavior.TEXT:
            await conn.send(200, "text/plain; charset=utf-8", debug_text(name))
        elif behavior is Behavior.NOT_FOUND:
            await conn.send_go_error(404, "Unknown profile")
        elif behavior is Behavior.ERROR_500:
            await conn.send(500, "text/plain; charset=utf-8", b"Internal Server Error\n")
        elif behavior is Behavior.TRUNCATED_GZIP:
            body = payload(name if name in PROFILE_NAMES else "heap")
            await conn.send(200, "application/octet-stream", body[: len(body) // 2])
        elif behavior is Behavior.GZIP_BOMB:
            bomb = await asyncio.get_running_loop().run_in_executor(None, gzip_bomb, target.size)
            await conn.send(200, "application/octet-stream", bomb, [_attachment(name)])
        elif behavior is Behavior.HUGE_BODY:
            await self._serve_huge(target, conn)
        elif behavior is Behavior.LARGE_PROFILE:
            body = await asyncio.get_running_loop().run_in_executor(None, large_profile, target.size)
            await conn.send(200, "application/octet-stream", body, [_attachment(name)])
        elif behavior is Behavior.SLOW_DRIP:
            await self._serve_drip(target, conn)
        elif behavior is Behavior.RESET:
            conn.reset()
        elif behavior is Behavior.REDIRECT:
            location = f"http://127.0.0.1:{self._sink.port}/elsewhere"
            body = f'<a href="{location}">Found</a>.\n\n'.encode()
            await conn.send(302, "text/html; charset=utf-8", body, [("Location", location)])
        elif behavior is Behavior.TLS:
            conn.keep_alive = False
            conn.writer.write(TLS_ALERT)
            await conn.writer.drain()
        elif behavior is Behavior.GARBAGE:
            # a fixed binary prefix: random bytes alone start like JSON or gzip now and then, and tests that
            # expect 'not a profile, not anything else' would flake
            junk = b"\x00\xff" + os.urandom(GARBAGE_BYTES - 2)
            await conn.send(200, "application/octet-stream", bytes([junk[0] & 0x0F]) + junk[1:])
        else:  # pragma: no cover - every member is handled above
            raise AssertionError(behavior)

    async def _serve_go(self, target: Target, conn: _Conn, request: _Request, name: str) -> None:
        nosniff = ("X-Content-Type-Options", "nosniff")
        if name == "other":
            await conn.send(404, "text/plain; charset=utf-8", b"404 page not found\n", [nosniff])
        elif name == "index":
            await conn.send(200, "text/html; charset=utf-8", index_html(target.path), [nosniff])
        elif name == "cpu":
            await self._serve_cpu(target, conn, request)
        elif name in SNAPSHOT_PROFILES:
            await self._serve_snapshot(target, conn, request, name)
        elif name == "cmdline":
            await conn.send(200, "text/plain; charset=utf-8", b"/app/server\x00-listen=:6060", [nosniff])
        elif name == "symbol":
            await conn.send(200, "text/plain; charset=utf-8", b"num_symbols: 1\n", [nosniff])
        elif name == "trace":
            seconds = _go_float(request.query.get("seconds"))
            seconds = seconds if seconds and seconds > 0 else GO_DEFAULT_TRACE_SECONDS
            if _exceeds_write_timeout(target, seconds):
                await conn.send_go_error(400, "profile duration exceeds server's WriteTimeout")
            elif await conn.sleep(seconds):
                trace = b"go 1.19 trace\x00\x00\x00"
                await conn.send(200, "application/octet-stream", trace, [nosniff, _attachment("trace")])
            else:
                conn.keep_alive = False
        else:
            await conn.send_go_error(404, "Unknown profile")

    async def _serve_cpu(self, target: Target, conn: _Conn, request: _Request) -> None:
        seconds = _go_int(request.query.get("seconds")) or 0
        if seconds <= 0:
            seconds = GO_DEFAULT_CPU_SECONDS
        if _exceeds_write_timeout(target, seconds):
            await conn.send_go_error(400, "profile duration exceeds server's WriteTimeout")
            return
        if target.behavior is Behavior.CPU_BUSY or target._cpu_active:
            with self._lock:
                target.cpu_refused += 1
            await conn.send_go_error(500, CPU_BUSY_TEXT)
            return
        target._cpu_active = True
        try:
            finished = await conn.sleep(seconds)
        finally:
            target._cpu_active = False
        if not finished:
            conn.keep_alive = False
            return
        headers = [("X-Content-Type-Options", "nosniff"), _attachment("cpu")]
        await conn.send(200, "application/octet-stream", payload("cpu"), headers)

    async def _serve_snapshot(self, target: Target, conn: _Conn, request: _Request, name: str) -> None:
        nosniff = ("X-Content-Type-Options", "nosniff")
        debug = _go_int(request.query.get("debug")) or 0
        body = payload(name)
        if target.behavior is Behavior.EMPTY_PROFILE and name in ("block", "mutex"):
            body = empty_payload(name)
        seconds_text = request.query.get("seconds", "")
        if seconds_text:
            # Go serves a delta profile over ``seconds``; the recorded payload stands in for the delta.
            seconds = _go_int(seconds_text)
            if seconds is None or seconds <= 0:
                await conn.send_go_error(400, 'invalid value for "seconds" - must be a positive integer')
            elif _exceeds_write_timeout(target, seconds):
                await conn.send_go_error(400, "profile duration exceeds server's WriteTimeout")
            elif debug != 0:
                await conn.send_go_error(400, "seconds and debug params are incompatible")
            elif await conn.sleep(seconds):
                headers = [nosniff, _attachment(f"{name}-delta")]
                await conn.send(200, "application/octet-stream", body, headers)
            else:
                conn.keep_alive = False
        elif debug != 0:
            await conn.send(200, "text/plain; charset=utf-8", debug_text(name, debug), [nosniff])
        elif target.snapshot_delay_s <= 0 or await conn.sleep(target.snapshot_delay_s):
            await conn.send(200, "application/octet-stream", body, [nosniff, _attachment(name)])
        else:
            conn.keep_alive = False

    async def _serve_huge(self, target: Target, conn: _Conn) -> None:
        if not await conn.start_stream(200, "application/octet-stream"):
            return
        # One random block, resent: the point is volume, and building the body would defeat the test.
        junk = os.urandom(STREAM_CHUNK_BYTES)
        chunk = GZIP_MAGIC + junk[2:]
        remaining = target.size
        while remaining > 0:
            if conn.protocol.gone.is_set():
                conn.keep_alive = False
                return
            piece = chunk if remaining >= len(chunk) else chunk[:remaining]
            await conn.stream(piece)
            remaining -= len(piece)
            chunk = junk
        await conn.end_stream()

    async def _serve_drip(self, target: Target, conn: _Conn) -> None:
        if not await conn.start_stream(200, "application/octet-stream"):
            return
        conn.keep_alive = False
        drip = GZIP_MAGIC + b"\x08"
        sent = 0
        while True:
            await conn.stream(drip[sent : sent + 1] or b"\x00")
            sent += 1
            if not await conn.sleep(target.drip_interval_s):
                return


def _attachment(name: str) -> tuple[str, str]:
    return ("Content-Disposition", f'attachment; filename="{"profile" if name == "cpu" else name}"')


def _exceeds_write_timeout(target: Target, seconds: float) -> bool:
    return target.write_timeout_s > 0 and seconds >= target.write_timeout_s


# --- CLI -------------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kprofefe_sandbox.farm", description="Serve simulated Go pprof targets."
    )
    parser.add_argument("--count", type=int, default=10, help="GO targets on consecutive loopback addresses")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--first", default=DEFAULT_FIRST_ADDRESS, help="first loopback address")
    parser.add_argument("--path", default=DEFAULT_BASE_PATH, help="pprof base path")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=[b.value for b in Behavior],
        help="add one more target with this behaviour on the next address (repeatable)",
    )
    parser.add_argument("--stats-interval", type=float, default=10.0, help="seconds between stat lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    addresses = loopback_addresses(args.count + len(args.fault), args.first)
    behaviors = [Behavior.GO] * args.count + [Behavior(value) for value in args.fault]
    farm = PprofFarm(Target(a, args.port, args.path, b) for a, b in zip(addresses, behaviors, strict=True))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    started = time.monotonic()
    with farm:
        if farm.targets:
            first, last = farm.targets[0], farm.targets[args.count - 1] if args.count else farm.targets[0]
            print(f"serving {args.count} GO targets {first.url} .. {last.url}", flush=True)
        for target in farm.targets[args.count :]:
            print(f"  {target.behavior.value:>15}: {target.url}", flush=True)
        print(f"pid {os.getpid()}, rss {_rss_mib():.0f} MiB; Ctrl-C to stop", flush=True)
        try:
            while not stopping.wait(args.stats_interval):
                _print_stats(farm, started)
        except KeyboardInterrupt:
            pass
        _print_stats(farm, started)
    return 0


def _print_stats(farm: PprofFarm, started: float) -> None:
    refused = sum(t.cpu_refused for t in farm.targets)
    print(
        f"{time.monotonic() - started:7.0f}s requests={farm.total_requests()} in_flight={farm.in_flight()} "
        f"peak={farm.peak_concurrent_requests()} peak_cpu={farm.peak_concurrent_cpu_requests()} "
        f"cpu_refused={refused} rss={_rss_mib():.0f}MiB",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
