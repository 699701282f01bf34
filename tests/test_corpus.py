"""Hostile input corpus: every way a pod annotation, a pprof target or profefe can be wrong, and its outcome.

This table is the user-facing contract. A capture ends in exactly one class: ``TemporaryError`` (retried a
bounded number of times, then counted ``failed``), ``PermanentError`` (counted ``failed`` at once; a profefe refusal
keeps the profile in ``rejected/``), ``SkipError`` (nothing to store: counted ``empty``/``skipped``), or a profile.
Annotations are checked at discovery: a bad one skips the pod with a reason, it never becomes a capture.

=============================================  ==========================  ====================================
input                                          outcome                     reason
=============================================  ==========================  ====================================
**annotations** (``pod_to_target``)
port ``abc`` / ``0`` / ``65536`` / ``-1`` /    skip                        ``bad-port``
full-width digits / ``1e3`` / undeclared name
port `` 6060 `` (blanks) / a declared name     target                      port 6060 / the named port
path ``../../x`` / ``http://elsewhere/`` /     skip                        ``bad-path``
10 KB / ``?x=1`` / ``//host/x`` / ``%2e%2e``
path ``/internal/pprof/``                      target                      path ``/internal/pprof``
service with spaces, ``,``, ``=``, unicode,    target                      service kept as written (trimmed)
``%+&#?/``
service empty / 300 chars / control char       skip                        ``bad-service``
types ``allocs`` / ``cpu,bogus`` / ``CPU`` /   skip                        ``bad-types``
empty
types ``heap heap,goroutine``                  target                      ``(heap, goroutine)``
enable ``True`` / ``false``                    skip                        ``bad-enable`` / ``not-enabled``
container that does not exist                  skip                        ``bad-container``
**target answers** (``capture.fetch``)
Go pprof, snapshot / CPU window                profile                     (CPU takes the window)
200 HTML index page                            PermanentError              ``invalid-html``
200 ``?debug=1`` text / ``debug=2`` dump       PermanentError              ``invalid-text``
200 JSON                                       PermanentError              ``invalid-json``
200 empty body                                 PermanentError              ``invalid-empty``
200 random bytes                               PermanentError              ``invalid-not-gzip``
200 truncated gzip                             PermanentError              ``invalid-truncated``
200 gzip bomb (inflates to 1 GiB)              PermanentError              ``invalid-too-large``, memory bounded
200 endless 1 GiB body                         PermanentError              ``too-large``, memory bounded
Content-Length over the cap                    PermanentError              ``too-large``, before reading
zero-sample block profile                      SkipError                   ``empty``
404 ``Unknown profile``                        PermanentError              ``not-found``
401 / 400 ``exceeds WriteTimeout``             PermanentError              ``target-4xx``
500 / 503                                      TemporaryError              ``target-5xx``
500 ``cpu profiling already in use``           BusyError                   ``cpu-busy`` (delay: the window)
429 ``Retry-After: 7``                         TemporaryError              ``target-429`` (delay 7 s)
302 to another host / 301 same host            PermanentError              ``redirect`` (never followed)
TLS alert on a plain-HTTP port                 PermanentError              ``target-protocol``
not HTTP / header line > 64 KiB / > 100        PermanentError              ``target-protocol``
headers
connection refused / reset before the answer   UnreachableError            ``target-unreachable``
closed without an answer                       UnreachableError            ``target-unreachable``
accepted, never answers                        UnreachableError            ``target-timeout`` (read timeout)
body drips one byte a second                   TemporaryError              ``slow-body`` (deadline)
body stalls past the read timeout              UnreachableError            ``target-timeout``
body shorter than Content-Length, reset        UnreachableError            ``target-reset``
mid-body, bad chunk framing
headers drip forever (gevent worker)           UnreachableError            ``target-timeout`` (hard deadline)
100 Continue then 200 / Content-Encoding gzip  profile                     (the bytes as sent)
**profefe answers** (``ProfefeClient.upload``)
400 malformed profile / unknown type / 401 /   PermanentError              ``profefe-<status>``
404 page / 413
400 ``no samples``                             SkipError                   ``empty``
429 / 500 / 502 HTML / 503                     TemporaryError              ``profefe-<status>``
200 not JSON / JSON without ``body`` /         TemporaryError              ``profefe-bad-answer``
``body: null``
hangs past the upload timeout                  TemporaryError              ``profefe-timeout``
connection refused                             TemporaryError              ``profefe-unreachable``
**profefe via the sink** (``ProfefeSink.store``)
500 then 200                                   stored once                 (second attempt)
500 on every attempt                           TemporaryError              (spooled by the task)
hangs past the timeout, then retried           stored once                 (the capture_id check)
=============================================  ==========================  ====================================

The last test runs one real worker over a round with every hostile target at once: the worker lives, the good pods
are stored, and every capture has its final outcome in the round's counters.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from kprofefe_sandbox.farm import Behavior, PprofFarm, debug_text, empty_payload, payload
from kprofefe_sandbox.profefe import ProfefeServer

from kprofefe_tasks.config.settings import PROFILE_TYPES, Settings
from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.errors import (
    BusyError,
    KprofefeError,
    PermanentError,
    SkipError,
    TemporaryError,
    UnreachableError,
)
from kprofefe_tasks.domain.targets import Skip, Target, pod_to_target
from kprofefe_tasks.io.pods import Profile, fetch
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import ProfefeSink
from tests.podfactory import pod
from tests.test_chaos import Sandbox, logged, open_sandbox, pod_at

MIB = 1024 * 1024
SETTINGS = Settings(
    read_timeout=2.0,
    read_margin=1.0,
    connect_timeout=1.0,
    max_profile_bytes=4 * MIB,
    max_decompressed_bytes=16 * MIB,
)
CPU_SECONDS = 1
HEAP = payload("heap")
#: A fetch may take its deadline plus one more blocked read before it notices; anything past this is a hang.
SLOW_BOUND_S = SETTINGS.read_timeout * 2 + SETTINGS.connect_timeout + 2.0
FAST_BOUND_S = 1.5  # an answer that is wrong from its first bytes is classified at once


# -- annotations ------------------------------------------------------------------------------------------------

PORTS = [("app", [("pprof", 7070), 6060])]

ANNOTATION_CASES: list[tuple[str, dict[str, str], str | dict[str, Any]]] = [
    # (case, annotations, the skip reason or the target fields expected)
    ("port-abc", {"profefe.com/port": "abc"}, "bad-port"),
    ("port-0", {"profefe.com/port": "0"}, "bad-port"),
    ("port-65536", {"profefe.com/port": "65536"}, "bad-port"),
    ("port-minus-1", {"profefe.com/port": "-1"}, "bad-port"),
    ("port-full-width-digits", {"profefe.com/port": "\uff16\uff10\uff16\uff10"}, "bad-port"),
    ("port-float", {"profefe.com/port": "1e3"}, "bad-port"),
    ("port-undeclared-name", {"profefe.com/port": "metrics"}, "bad-port"),
    ("port-blanks", {"profefe.com/port": " 6060 "}, {"port": 6060}),
    ("port-declared-name", {"profefe.com/port": "pprof"}, {"port": 7070}),
    ("path-dotdot", {"profefe.com/path": "../../x"}, "bad-path"),
    ("path-url", {"profefe.com/path": "http://elsewhere/"}, "bad-path"),
    ("path-10kb", {"profefe.com/path": "/" + "a" * 10240}, "bad-path"),
    ("path-query", {"profefe.com/path": "/debug/pprof?x=1"}, "bad-path"),
    ("path-network-path", {"profefe.com/path": "//elsewhere/x"}, "bad-path"),
    ("path-escaped-dotdot", {"profefe.com/path": "/a/%2e%2e/b"}, "bad-path"),
    ("path-trailing-slash", {"profefe.com/path": "/internal/pprof/"}, {"path": "/internal/pprof"}),
    ("service-spaces", {"profefe.com/service": "billing eu"}, {"service": "billing eu"}),
    ("service-comma-equals", {"profefe.com/service": "a,b=c"}, {"service": "a,b=c"}),
    ("service-unicode", {"profefe.com/service": "ünïcødé 服务"}, {"service": "ünïcødé 服务"}),
    ("service-url-chars", {"profefe.com/service": "100%+&#?/"}, {"service": "100%+&#?/"}),
    ("service-padded", {"profefe.com/service": "  padded  "}, {"service": "padded"}),
    ("service-empty", {"profefe.com/service": "   "}, "bad-service"),
    ("service-300-chars", {"profefe.com/service": "s" * 300}, "bad-service"),
    ("service-control-char", {"profefe.com/service": "bad\x00name"}, "bad-service"),
    ("types-allocs", {"profefe.com/types": "allocs"}, "bad-types"),
    ("types-unknown", {"profefe.com/types": "cpu,bogus"}, "bad-types"),
    ("types-upper-case", {"profefe.com/types": "CPU"}, "bad-types"),
    ("types-empty", {"profefe.com/types": " "}, "bad-types"),
    ("types-repeats", {"profefe.com/types": "heap heap,goroutine"}, {"types": ("heap", "goroutine")}),
    ("enable-True", {"profefe.com/enable": "True"}, "bad-enable"),
    ("enable-false", {"profefe.com/enable": "false"}, "not-enabled"),
    ("container-missing", {"profefe.com/container": "sidecar"}, "bad-container"),
]


@pytest.mark.parametrize(
    ("annotations", "expected"), [c[1:] for c in ANNOTATION_CASES], ids=[c[0] for c in ANNOTATION_CASES]
)
def test_annotation(annotations: dict[str, str], expected: str | dict[str, Any]) -> None:
    result = pod_to_target(pod(annotations=annotations, containers=PORTS), PROFILE_TYPES)
    if isinstance(expected, str):
        assert isinstance(result, Skip), result
        assert result.reason == expected
        assert len(result.detail) < 400  # a 10 KB annotation does not become a 10 KB log line
    else:
        assert isinstance(result, Target), result
        assert {k: getattr(result, k) for k in expected} == expected


# -- target answers ---------------------------------------------------------------------------------------------

Step = bytes | float | str
"""A scripted answer: bytes are sent, a float sleeps, ``"RST"`` resets the connection, ``"DRIP"`` sends a header
byte a second until the client leaves."""


class ScriptedServer:
    """A loopback TCP server that reads one request head, then plays a script of raw bytes, pauses and resets:
    the malformed HTTP a real server library would refuse to produce."""

    def __init__(self, host: str, script: Sequence[Step]) -> None:
        self.script = list(script)
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.host, self.port = host, int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name=f"scripted:{self.port}").start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._play, args=(conn,), daemon=True).start()

    def _play(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                for step in self.script:
                    if isinstance(step, float):
                        if self._stop.wait(step):
                            return
                    elif step == "RST":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    elif step == "DRIP":
                        # one header line, a byte a second: per-read timeouts never fire, and http.client's
                        # 64 KiB line limit is 18 hours away
                        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                        while not self._stop.wait(1.0):
                            conn.sendall(b"a")
                    elif isinstance(step, bytes):
                        conn.sendall(step)
            except OSError:
                return  # the client left: that is the point of most scripts


def head(status: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ok(body: bytes, *headers: str) -> list[Step]:
    return [head("200 OK", "Content-Type: application/octet-stream", *headers, length=len(body)) + body]


SCRIPTS: dict[str, list[Step]] = {
    "json-200": ok(b'{"error": "not here"}\n'),
    "empty-200": ok(b""),
    "debug2-goroutine-dump": ok(debug_text("goroutine", 2)),
    "not-http": [b"SSH-2.0-OpenSSH_9.2\r\n"],
    "header-line-70k": [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"],
    "headers-150": [b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 150 + b"\r\n"],
    "silent": [30.0],
    "close-without-answer": [],
    "content-length-lies": [head("200 OK", length=len(HEAP) + 4000) + HEAP],
    "body-stall": [head("200 OK", length=len(HEAP)) + HEAP[:100], 30.0],
    "reset-mid-body": [head("200 OK", length=len(HEAP)) + HEAP[:100], 0.2, "RST"],
    "bad-chunk-framing": [head("200 OK", "Transfer-Encoding: chunked") + b"zz\r\nabc\r\n"],
    "content-length-over-cap": [head("200 OK", length=SETTINGS.max_profile_bytes + 1), 30.0],
    "retry-after-429": [head("429 Too Many Requests", "Retry-After: 7", length=0)],
    "unavailable-503": [head("503 Service Unavailable", length=0)],
    "unauthorized-401": [head("401 Unauthorized", length=0)],
    "write-timeout-400": [head("400 Bad Request", length=47) + b"profile duration exceeds server's WriteTimeout\n"],
    "continue-then-200": [b"HTTP/1.1 100 Continue\r\n\r\n", *ok(HEAP)],
    "content-encoding-gzip": ok(HEAP, "Content-Encoding: gzip"),
    "moved-same-host": [head("301 Moved Permanently", "Location: /elsewhere/pprof/heap", length=0)],
}

FARM: dict[str, Behavior] = {
    "go": Behavior.GO,
    "html": Behavior.HTML,
    "text": Behavior.TEXT,
    "not-found": Behavior.NOT_FOUND,
    "error-500": Behavior.ERROR_500,
    "cpu-busy": Behavior.CPU_BUSY,
    "truncated-gzip": Behavior.TRUNCATED_GZIP,
    "gzip-bomb": Behavior.GZIP_BOMB,
    "huge-body": Behavior.HUGE_BODY,
    "slow-drip": Behavior.SLOW_DRIP,
    "reset": Behavior.RESET,
    "tls": Behavior.TLS,
    "empty-profile": Behavior.EMPTY_PROFILE,
    "garbage": Behavior.GARBAGE,
}


@dataclass
class Targets:
    """Every hostile endpoint of the direct-fetch cases, by case name."""

    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    servers: dict[str, ScriptedServer] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        host, port = self.addresses[name]
        return Target("corpus", name, "", host, port, "/debug/pprof", "corpus", "app", "node", ("heap",), ())


@pytest.fixture(scope="module")
def targets() -> Iterator[Targets]:
    found = Targets()
    with PprofFarm() as farm, contextlib.ExitStack() as exits:
        for i, (name, behavior) in enumerate(FARM.items(), start=1):
            t = farm.add(f"127.78.0.{i}", 0, behavior=behavior)
            found.addresses[name] = (t.host, t.port)
        for i, (name, script) in enumerate(SCRIPTS.items(), start=1):
            server = ScriptedServer(f"127.78.1.{i}", script)
            exits.callback(server.close)
            found.servers[name] = server
            found.addresses[name] = (server.host, server.port)
        # a redirect to another loopback host, which counts every connection it gets
        elsewhere = ScriptedServer("127.78.2.1", ok(HEAP))
        exits.callback(elsewhere.close)
        found.servers["elsewhere"] = elsewhere
        redirect = ScriptedServer(
            "127.78.2.2", [head("302 Found", f"Location: http://127.78.2.1:{elsewhere.port}/x", length=0)]
        )
        exits.callback(redirect.close)
        found.servers["redirect-elsewhere"] = redirect
        found.addresses["redirect-elsewhere"] = (redirect.host, redirect.port)
        found.addresses["refused"] = ("127.78.3.1", _closed_port("127.78.3.1"))
        yield found


def _closed_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def take(target: Target, ptype: str = "heap") -> tuple[Profile | KprofefeError, float]:
    started = time.monotonic()
    try:
        result: Profile | KprofefeError = fetch(
            target, ptype, SETTINGS, cpu_seconds=CPU_SECONDS, session=requests.Session()
        )
    except KprofefeError as exc:
        result = exc
    return result, time.monotonic() - started


TARGET_CASES: list[tuple[str, str, type[KprofefeError] | None, str, float]] = [
    # (case, profile type, error class or None for a profile, reason, seconds it may take)
    ("go", "heap", None, "", FAST_BOUND_S),
    ("go", "cpu", None, "", CPU_SECONDS + 2.0),
    ("html", "heap", PermanentError, "invalid-html", FAST_BOUND_S),
    ("text", "heap", PermanentError, "invalid-text", FAST_BOUND_S),
    ("debug2-goroutine-dump", "goroutine", PermanentError, "invalid-text", FAST_BOUND_S),
    ("json-200", "heap", PermanentError, "invalid-json", FAST_BOUND_S),
    ("empty-200", "heap", PermanentError, "invalid-empty", FAST_BOUND_S),
    ("garbage", "heap", PermanentError, "invalid-not-gzip", FAST_BOUND_S),
    ("truncated-gzip", "heap", PermanentError, "invalid-truncated", FAST_BOUND_S),
    ("empty-profile", "block", SkipError, "empty", FAST_BOUND_S),
    ("not-found", "heap", PermanentError, "not-found", FAST_BOUND_S),
    ("unauthorized-401", "heap", PermanentError, "target-4xx", FAST_BOUND_S),
    ("write-timeout-400", "cpu", PermanentError, "target-4xx", FAST_BOUND_S),
    ("error-500", "heap", TemporaryError, "target-5xx", FAST_BOUND_S),
    ("unavailable-503", "heap", TemporaryError, "target-5xx", FAST_BOUND_S),
    ("cpu-busy", "cpu", BusyError, "cpu-busy", FAST_BOUND_S),
    ("retry-after-429", "heap", TemporaryError, "target-429", FAST_BOUND_S),
    ("moved-same-host", "heap", PermanentError, "redirect", FAST_BOUND_S),
    ("tls", "heap", PermanentError, "target-protocol", FAST_BOUND_S),
    ("not-http", "heap", PermanentError, "target-protocol", FAST_BOUND_S),
    ("header-line-70k", "heap", PermanentError, "target-protocol", FAST_BOUND_S),
    ("headers-150", "heap", PermanentError, "target-protocol", FAST_BOUND_S),
    ("refused", "heap", UnreachableError, "target-unreachable", FAST_BOUND_S),
    ("reset", "heap", UnreachableError, "target-unreachable", FAST_BOUND_S),
    ("close-without-answer", "heap", UnreachableError, "target-unreachable", FAST_BOUND_S),
    ("silent", "heap", UnreachableError, "target-timeout", SLOW_BOUND_S),
    ("slow-drip", "heap", TemporaryError, "slow-body", SLOW_BOUND_S),
    ("body-stall", "heap", UnreachableError, "target-timeout", SLOW_BOUND_S),
    ("content-length-lies", "heap", UnreachableError, "target-reset", FAST_BOUND_S),
    ("reset-mid-body", "heap", UnreachableError, "target-reset", FAST_BOUND_S),
    ("bad-chunk-framing", "heap", UnreachableError, "target-reset", FAST_BOUND_S),
    ("content-length-over-cap", "heap", PermanentError, "too-large", FAST_BOUND_S),
    ("continue-then-200", "heap", None, "", FAST_BOUND_S),
    ("content-encoding-gzip", "heap", None, "", FAST_BOUND_S),
]


@pytest.mark.parametrize(
    ("name", "ptype", "error", "reason", "bound"),
    TARGET_CASES,
    ids=[f"{c[0]}-{c[1]}" for c in TARGET_CASES],
)
def test_target_answer(
    targets: Targets, name: str, ptype: str, error: type[KprofefeError] | None, reason: str, bound: float
) -> None:
    result, seconds = take(targets.target(name), ptype)
    if error is None:
        assert isinstance(result, Profile), result
        assert result.body == payload("cpu" if ptype == "cpu" else ptype)  # the bytes as sent, never decoded
    else:
        assert type(result) is error, result
        assert result.reason == reason, result
        assert len(str(result)) < 400  # an HTML page or a 70 KB header does not flood a log line
    assert seconds < bound, f"{name}: {seconds:.1f}s"


def test_cpu_busy_and_retry_after_carry_their_delay(targets: Targets) -> None:
    busy, _ = take(targets.target("cpu-busy"), "cpu")
    assert isinstance(busy, TemporaryError) and busy.delay == CPU_SECONDS  # the holder's window is over by then
    limited, _ = take(targets.target("retry-after-429"))
    assert isinstance(limited, TemporaryError) and limited.delay == 7.0


def test_a_redirect_to_another_host_is_never_followed(targets: Targets) -> None:
    result, _ = take(targets.target("redirect-elsewhere"))
    assert isinstance(result, PermanentError) and result.reason == "redirect", result
    assert "127.78.2.1" in result.message  # the log says where it pointed
    assert targets.servers["elsewhere"].connections == 0


@pytest.mark.parametrize(
    ("name", "reason"), [("gzip-bomb", "invalid-too-large"), ("huge-body", "too-large")], ids=["bomb", "1gib-body"]
)
def test_memory_stays_bounded(targets: Targets, name: str, reason: str) -> None:
    tracemalloc.start()
    try:
        result, seconds = take(targets.target(name))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, PermanentError) and result.reason == reason, result
    # a 1 GiB body or inflation is cut at the caps: the peak is about one cap, never the payload
    assert peak < SETTINGS.max_decompressed_bytes + SETTINGS.max_profile_bytes + 16 * MIB, peak
    assert seconds < 10


GEVENT_FETCH = """
from gevent import monkey

monkey.patch_all()
import json, sys, time
import requests
from kprofefe_tasks.io.pods import fetch
from kprofefe_tasks.domain.errors import KprofefeError
from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.domain.targets import Target

target = Target("corpus", "drip", "", sys.argv[1], int(sys.argv[2]), "/debug/pprof", "s", "app", "n", ("heap",), ())
settings = Settings(read_timeout=2.0, connect_timeout=1.0)
started = time.monotonic()
try:
    fetch(target, "heap", settings, cpu_seconds=1, session=requests.Session())
    out = {"class": "profile"}
except KprofefeError as exc:
    out = {"class": type(exc).__name__, "reason": exc.reason}
out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"""


def test_headers_dripping_forever_hit_the_hard_deadline_in_a_gevent_worker() -> None:
    """Socket timeouts are per read: one header line a second never trips them. The worker's gevent pool bounds
    the whole answer (read timeout + connect timeout + 2 s grace = 5 s here)."""
    drip = ScriptedServer("127.78.4.1", ["DRIP"])
    try:
        done = subprocess.run(
            [sys.executable, "-c", GEVENT_FETCH, drip.host, str(drip.port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        drip.close()
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["class"], out["reason"]) == ("UnreachableError", "target-timeout"), out
    assert 4.0 <= out["seconds"] < 15, out


# -- profefe answers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profefe() -> Iterator[ProfefeServer]:
    with ProfefeServer() as server:
        yield server


@pytest.fixture
def fresh_profefe(profefe: ProfefeServer) -> ProfefeServer:
    profefe.up()
    profefe.clear()
    return profefe


def client_for(server: ProfefeServer, read_timeout: float = 1.0) -> ProfefeClient:
    return ProfefeClient(server.url, session=requests.Session(), connect_timeout=1.0, read_timeout=read_timeout)


BIG_HTML = "<html><body><h1>502 Bad Gateway</h1>" + "<p>nginx</p>" * 2000 + "</body></html>"
JSON = "application/json"

PROFEFE_CASES: list[tuple[str, tuple[int, str, str] | None, bytes, str, type[KprofefeError], str]] = [
    # (case, injected answer or None for the real server's, body uploaded, type, error class, reason)
    ("malformed-profile", None, b"not a profile", "heap", PermanentError, "profefe-400"),
    ("empty-body", None, b"", "heap", PermanentError, "profefe-400"),
    ("no-samples", None, empty_payload("block"), "block", SkipError, "empty"),
    ("unknown-type-allocs", None, HEAP, "allocs", PermanentError, "profefe-400"),
    ("401", (401, "unauthorized\n", "text/plain"), HEAP, "heap", PermanentError, "profefe-401"),
    ("404-page", (404, "404 page not found\n", "text/plain"), HEAP, "heap", PermanentError, "profefe-404"),
    (
        "413-html",
        (413, "<html>413 Request Entity Too Large</html>", "text/html"),
        HEAP,
        "heap",
        PermanentError,
        "profefe-413",
    ),
    ("429", (429, '{"code":429,"error":"slow down"}', JSON), HEAP, "heap", TemporaryError, "profefe-429"),
    ("500", (500, '{"code":500,"error":"internal server error"}', JSON), HEAP, "heap", TemporaryError, "profefe-500"),
    ("502-html", (502, BIG_HTML, "text/html"), HEAP, "heap", TemporaryError, "profefe-502"),
    ("503-empty", (503, "", "text/plain"), HEAP, "heap", TemporaryError, "profefe-503"),
    ("200-html", (200, "<html>maintenance</html>", "text/html"), HEAP, "heap", TemporaryError, "profefe-bad-answer"),
    ("200-no-body", (200, '{"code":200}', JSON), HEAP, "heap", TemporaryError, "profefe-bad-answer"),
    ("200-list", (200, "[]", JSON), HEAP, "heap", TemporaryError, "profefe-bad-answer"),
]


@pytest.mark.parametrize(
    ("fault", "body", "ptype", "error", "reason"), [c[1:] for c in PROFEFE_CASES], ids=[c[0] for c in PROFEFE_CASES]
)
def test_profefe_answer(
    fresh_profefe: ProfefeServer,
    fault: tuple[int, str, str] | None,
    body: bytes,
    ptype: str,
    error: type[KprofefeError],
    reason: str,
) -> None:
    if fault is not None:
        fresh_profefe.fail_next(1, *fault)
    started = time.monotonic()
    with pytest.raises(KprofefeError) as caught:
        client_for(fresh_profefe).upload(body, service="corpus", ptype=ptype, labels={"pod": "p"})
    assert type(caught.value) is error, caught.value
    assert caught.value.reason == reason
    assert len(str(caught.value)) < 400
    assert time.monotonic() - started < FAST_BOUND_S
    assert fresh_profefe.profiles == []


def test_profefe_answer_200_with_a_null_body(fresh_profefe: ProfefeServer) -> None:
    fresh_profefe.fail_next(1, 200, '{"code":200,"body":null}', JSON)
    with pytest.raises(TemporaryError) as caught:
        client_for(fresh_profefe).upload(HEAP, service="corpus", ptype="heap")
    assert caught.value.reason == "profefe-bad-answer"


def test_profefe_hanging_past_the_upload_timeout(fresh_profefe: ProfefeServer) -> None:
    fresh_profefe.hang_next(1, 3.0)
    started = time.monotonic()
    with pytest.raises(TemporaryError) as caught:
        client_for(fresh_profefe, read_timeout=1.0).upload(HEAP, service="corpus", ptype="heap")
    assert caught.value.reason == "profefe-timeout"
    assert 0.9 <= time.monotonic() - started < 2.5


def test_profefe_refusing_connections(fresh_profefe: ProfefeServer) -> None:
    fresh_profefe.down()
    try:
        with pytest.raises(TemporaryError) as caught:
            client_for(fresh_profefe).upload(HEAP, service="corpus", ptype="heap")
    finally:
        fresh_profefe.up()
    assert caught.value.reason == "profefe-unreachable"


def sink_for(server: ProfefeServer, attempts: int = 3, read_timeout: float = 1.0) -> ProfefeSink:
    return ProfefeSink(
        client_for(server, read_timeout), bucket=None, attempts=attempts, backoff_base=0.05, backoff_max=0.1
    )


def delivery(
    service: str = "corpus", labels: Sequence[tuple[str, str]] = (), capture_id: str = "r/ns/p/heap"
) -> Delivery:
    return Delivery(
        capture_id=capture_id,
        service=service,
        ptype="heap",
        namespace="ns",
        pod="p",
        labels=(("pod", "p"), *labels),
        taken_at=time.time(),
        body=HEAP,
    )


def test_sink_retries_a_5xx_and_stores_once(fresh_profefe: ProfefeServer) -> None:
    fresh_profefe.fail_next(1, 500, '{"code":500,"error":"internal server error"}', JSON)
    profile_id = sink_for(fresh_profefe).store(delivery())
    assert [p.id for p in fresh_profefe.profiles] == [profile_id]
    assert fresh_profefe.upload_attempts == 2


def test_sink_gives_up_after_its_attempts_so_the_task_can_spool(fresh_profefe: ProfefeServer) -> None:
    fresh_profefe.fail_next(3, 503, "", "text/plain")
    with pytest.raises(TemporaryError) as caught:
        sink_for(fresh_profefe, attempts=3).store(delivery())
    assert caught.value.reason == "profefe-503"
    assert fresh_profefe.upload_attempts == 3 and fresh_profefe.profiles == []


def test_sink_retry_after_a_timeout_does_not_store_twice(fresh_profefe: ProfefeServer) -> None:
    fresh_profefe.hang_next(1, 1.5)
    sink_for(fresh_profefe, read_timeout=1.0).store(delivery())
    # store() returns only after it looked for the hung upload's profile instead of sending it again: from then on
    # nothing of ours is in flight, so one upload request and one profile are the whole story
    _wait(lambda: len(fresh_profefe.profiles) >= 1, 10.0)
    assert fresh_profefe.upload_attempts == 1
    assert len(fresh_profefe.profiles) == 1


NAMES = ["billing, eu=1", "a b", "ünïcødé 服务", "k=v,x=y", "100%+&#?/", "tab\tinside"]


@pytest.mark.parametrize("name", NAMES, ids=["comma-equals", "space", "unicode", "pairs", "url-chars", "tab"])
def test_service_and_label_values_are_stored_intact(fresh_profefe: ProfefeServer, name: str) -> None:
    sink_for(fresh_profefe).store(delivery(service=name, labels=[("note", name), ("p%=,", "+ &")]))
    (stored,) = fresh_profefe.profiles
    assert stored.service == name
    assert stored.labels["note"] == name and stored.labels["p%=,"] == "+ &"


def _wait(condition: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


# -- one worker, every hostile target in one round ---------------------------------------------------------------

#: (pod, farm behaviour or script name, types annotation, outcome, reason) - the round's expected result per pod.
HOSTILE_ROUND: list[tuple[str, Behavior | str, str, str, str]] = [
    ("good-billing", Behavior.GO, "heap", "ok", ""),
    ("good-unicode", Behavior.GO, "heap", "ok", ""),
    ("good-spaces", Behavior.GO, "heap", "ok", ""),
    ("html", Behavior.HTML, "heap", "failed", "invalid-html"),
    ("text", Behavior.TEXT, "heap", "failed", "invalid-text"),
    ("notfound", Behavior.NOT_FOUND, "heap", "failed", "not-found"),
    ("err500", Behavior.ERROR_500, "heap", "failed", "target-5xx"),
    ("cpubusy", Behavior.CPU_BUSY, "cpu", "failed", "cpu-busy"),
    ("truncated", Behavior.TRUNCATED_GZIP, "heap", "failed", "invalid-truncated"),
    ("bomb", Behavior.GZIP_BOMB, "heap", "failed", "invalid-too-large"),
    ("huge", Behavior.HUGE_BODY, "heap", "failed", "too-large"),
    ("drip", Behavior.SLOW_DRIP, "heap", "failed", "slow-body"),
    ("reset", Behavior.RESET, "heap", "failed", "target-unreachable"),
    ("redirect", Behavior.REDIRECT, "heap", "failed", "redirect"),
    ("tls", Behavior.TLS, "heap", "failed", "target-protocol"),
    ("quiet", Behavior.EMPTY_PROFILE, "block", "empty", "empty"),
    ("garbage", Behavior.GARBAGE, "heap", "failed", "invalid-not-gzip"),
    ("header-drip", "DRIP", "heap", "failed", "target-timeout"),
    ("body-stall", "body-stall", "heap", "failed", "target-timeout"),
    ("short-body", "content-length-lies", "heap", "failed", "target-reset"),
    ("refused", "refused", "heap", "failed", "target-unreachable"),
]
GOOD_SERVICES = {"good-billing": "billing, eu=1", "good-unicode": "ünïcødé 服务", "good-spaces": "a b=c d"}
BAD_ANNOTATIONS = {
    "bad-port": {"profefe.com/port": "abc"},
    "bad-path": {"profefe.com/path": "../../x"},
    "bad-types": {"profefe.com/types": "allocs"},
    "bad-service": {"profefe.com/service": "x\x00y"},
}


def _add_hostile_pods(box: Sandbox, exits: contextlib.ExitStack) -> None:
    for i, (name, kind, types, _, _) in enumerate(HOSTILE_ROUND, start=1):
        host = f"127.78.5.{i}"
        annotations = {"profefe.com/types": types}
        if name in GOOD_SERVICES:
            annotations["profefe.com/service"] = GOOD_SERVICES[name]
        if isinstance(kind, Behavior):
            t = box.farm.add(host, 0, behavior=kind)
            port = t.port
        elif kind == "refused":
            port = _closed_port(host)
        else:
            server = ScriptedServer(host, ["DRIP"] if kind == "DRIP" else SCRIPTS[kind])
            exits.callback(server.close)
            port = server.port
        box.kube.add_pod(pod_at(name, host, port, annotations=annotations))
    for j, (reason, annotations) in enumerate(BAD_ANNOTATIONS.items(), start=1):
        box.kube.add_pod(pod_at(reason, f"127.78.6.{j}", 6060, annotations=annotations))


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_one_worker_survives_a_round_with_every_hostile_target_at_once(tmp_path: Path) -> None:
    with open_sandbox(tmp_path) as box, contextlib.ExitStack() as exits:
        _add_hostile_pods(box, exits)
        worker = box.worker(
            KPROFEFE_READ_TIMEOUT="2",
            KPROFEFE_READ_MARGIN="1",
            KPROFEFE_CAPTURE_RETRIES="1",
            KPROFEFE_MAX_PROFILE_BYTES=str(4 * MIB),
            KPROFEFE_MAX_DECOMPRESSED_BYTES=str(16 * MIB),
        )
        summary = box.discover(namespaces=["chaos"], cpu_seconds=CPU_SECONDS)
        report = box.wait_round(summary["round"], timeout=120)
        logs = box.all_logs()

        assert summary["skipped"] == dict.fromkeys(BAD_ANNOTATIONS, 1), summary
        assert summary["captures"] == len(HOSTILE_ROUND)
        expected = Counter(outcome for *_, outcome, _ in HOSTILE_ROUND)
        outcomes = {k: v for k, v in report.items() if k in ("ok", "empty", "failed", "skipped", "spooled")}
        assert outcomes == expected and report["done"] == len(HOSTILE_ROUND), (report, logs)
        for name, _, _, outcome, reason in HOSTILE_ROUND:
            assert logged(logs, outcome, name) == [reason], (name, outcome, reason, box.logs())
        # the worker is alive, its memory bounded, and it stored the good pods' profiles intact
        assert worker.proc is not None and worker.proc.poll() is None
        assert _peak_rss_mib(worker.pid) < 400
        assert sorted(p.service for p in box.profefe.profiles) == sorted(GOOD_SERVICES.values())
        assert all(p.body == HEAP for p in box.profefe.profiles)


def _peak_rss_mib(pid: int) -> float:
    status: Mapping[str, str] = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmHWM"].split()[0]) / 1024
