"""A profefe-compatible HTTP server double for tests, benchmarks and hand runs.

It follows the contract the collector uploads to (profefe's ``/api/0`` API on badger storage), quirks
included: the ``{"code","body"}`` / ``{"code","error"}`` envelope with the HTTP status equal to ``code``,
``missing "service"``, unknown type names turning into ``unknown``, the double URL-decoding of ``labels``,
``from``/``to`` in exactly ``2006-01-02T15:04:05`` UTC, ``limit`` keeping the newest N, ``nothing found``, the
exact 400 messages for empty, unparseable and zero-sample bodies, ``created_at`` from the profile's
``time_nanos``, 20-character badger ids, no body size limit, and an empty 200 for other methods on
``/api/0/profiles``.

Where it differs from the real server, on purpose or for lack of a merge implementation:

- **merge** (``/api/0/profiles/merge`` and ``GET /api/0/profiles/<id1>+<id2>``) returns the newest matching
  profile's bytes unchanged instead of a merged profile (a real pprof merge rewrites every id and string
  index; nothing in this project reads merged profiles). The status codes, 404/405 and headers are the real ones.
- Bodies are checked with :func:`kprofefe_tasks.io.pprof.inspect`: Go's legacy *text* formats (a ``?debug=1``
  heap or goroutine dump), which the real server's parser may still accept, are rejected here as
  ``unrecognized profile format``; corrupt gzip is reported with an approximate Go message; a body that
  decompresses past :data:`~kprofefe_tasks.io.pprof.MAX_DECOMPRESSED_BYTES_DEFAULT` is rejected (the real server
  has no cap). Go's ``CheckValid`` checks (values per sample, location ids) are not repeated.
- Messages the reference does not pin down (``from`` after ``to``, bad ``limit``, bad ``labels``, bad
  ``created_at``) follow profefe's source as closely as it could be read; tests should match on the prefix.
- Labels with a repeated key keep the last value (``StoredProfile.labels`` is a dict).

Test hooks: :meth:`ProfefeServer.fail_next`, :meth:`~ProfefeServer.hang_next`, :meth:`~ProfefeServer.down` /
:meth:`~ProfefeServer.up` (connections refused, then the same port again), the ``requests`` log and
``upload_attempts``. Run by hand with ``python -m kprofefe_sandbox.profefe --port 10100``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import os
import posixpath
import random
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from kprofefe_tasks.io import pprof

DEFAULT_PORT = 10100  # profefe's own default listen port

#: profefe's profile type names; anything else is ``unknown``.
PROFEFE_TYPES = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate", "other", "trace")
UNKNOWN_TYPE = "unknown"
_UNMERGEABLE = frozenset({UNKNOWN_TYPE, "trace"})

TIME_FORMAT = "2006-01-02T15:04:05"  # Go layout, for messages; parsed by _parse_go_time

VERSION_BODY = {"version": "", "commit": "", "build_time": "", "go_version": "go1.19.8"}

_API = "/api/0"
_PROFILES_PATH = f"{_API}/profiles"
_MERGE_PATH = f"{_API}/profiles/merge"
_SERVICES_PATH = f"{_API}/services"
_VERSION_PATH = f"{_API}/version"

# How often serve_forever checks for shutdown; bounds how long down()/stop() take.
_POLL_INTERVAL_S = 0.05  # seconds
# Listen backlog: a benchmark opening many connections at once must not see refusals from a full queue.
_LISTEN_BACKLOG = 128


class RecordedRequest(NamedTuple):
    """One request as received: method, raw path and raw query string (still percent-encoded)."""

    method: str
    path: str
    query: str


@dataclass
class StoredProfile:
    id: str
    service: str
    type: str
    labels: dict[str, str]
    created_at: datetime
    body: bytes

    def to_json(self) -> dict[str, Any]:
        """profefe's Profile JSON: ``labels`` omitted when empty, ``created_at`` in whole seconds, UTC."""
        out: dict[str, Any] = {"id": self.id, "type": self.type, "service": self.service}
        if self.labels:
            out["labels"] = [{"key": k, "value": v} for k, v in sorted(self.labels.items())]
        out["created_at"] = _rfc3339(self.created_at)
        return out


@dataclass
class _Fault:
    status: int
    body: bytes
    content_type: str


class _HttpError(Exception):
    """A JSON error answer: the handler turns it into ``{"code": status, "error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


# --- Go-compatible parsing helpers --------------------------------------------------------------------------


def _go_quote(text: str) -> str:
    """Go's ``%q`` / strconv.Quote for the strings that end up in error messages."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


_GO_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


class _EscapeError(ValueError):
    pass


_HEX = frozenset("0123456789abcdefABCDEF")


def _query_unescape(text: str) -> str:
    """Go's url.QueryUnescape: ``+`` is a space, ``%XX`` a byte, a bad escape an error (Python keeps it)."""
    if "%" not in text and "+" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            if i + 2 >= n or text[i + 1] not in _HEX or text[i + 2] not in _HEX:
                raise _EscapeError(f"invalid URL escape {_go_quote(text[i : i + 3])}")
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        elif ch == "+":
            out.append(0x20)
            i += 1
        else:
            out += ch.encode("utf-8")
            i += 1
    # Go keeps invalid UTF-8 as bytes and its JSON encoder writes U+FFFD for them; "replace" lands there too.
    return out.decode("utf-8", "replace")


def _parse_query(raw: str) -> dict[str, list[str]]:
    """Go 1.19's url.ParseQuery as r.URL.Query() uses it: bad pairs (bad escape, ``;``) are silently dropped."""
    values: dict[str, list[str]] = {}
    for pair in raw.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        try:
            key = _query_unescape(key)
            value = _query_unescape(value)
        except _EscapeError:
            continue
        values.setdefault(key, []).append(value)
    return values


def _get(query: dict[str, list[str]], key: str) -> str:
    return query.get(key, [""])[0]


def parse_labels(raw: str) -> list[tuple[str, str]]:
    """profefe's Labels.FromString: split on ``,``, then on the first ``=``, URL-decode each side again, trim,
    skip empty keys, sort by key. ``raw`` is the already-decoded ``labels`` query value."""
    labels: list[tuple[str, str]] = []
    if not raw:
        return labels
    for chunk in raw.split(","):
        key, _, value = chunk.partition("=")
        key = _query_unescape(key).strip()
        value = _query_unescape(value).strip()
        if not key:
            continue
        labels.append((key, value))
    labels.sort(key=lambda kv: kv[0])
    return labels


def profile_type(raw: str) -> str:
    """profefe's ProfileType.FromString: exact (case-sensitive) name after trimming spaces, else ``unknown``."""
    name = raw.strip()
    return name if name in PROFEFE_TYPES else UNKNOWN_TYPE


_GO_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?")


@dataclass(frozen=True, order=True)
class _GoTime:
    """A parsed ``2006-01-02T15:04:05`` value as UTC nanoseconds since the epoch (Go allows year 0)."""

    unix_nanos: int

    def go_string(self) -> str:
        """Go's Time.String() for a UTC time, used in the "min after max" message."""
        seconds, nanos = divmod(self.unix_nanos, 1_000_000_000)
        days, rem = divmod(seconds, 86400)
        year, month, day = _civil_from_days(days)
        text = f"{year:04d}-{month:02d}-{day:02d} {rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}"
        if nanos:
            text += "." + f"{nanos:09d}".rstrip("0")
        return text + " +0000 UTC"


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _parse_go_time(text: str) -> _GoTime:
    """time.Parse("2006-01-02T15:04:05", text): no zone, fractional seconds allowed (Go allows them when
    parsing); the zero time (year 1, Jan 1, 00:00:00) counts as invalid, like profefe's IsZero check."""
    match = _GO_TIME.fullmatch(text)
    if not match:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac = match.group(7) or ""
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise ValueError(text)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(text)
    nanos = int((frac + "000000000")[:9]) if frac else 0
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    value = _GoTime(seconds * 1_000_000_000 + nanos)
    if value.unix_nanos == _ZERO_TIME_NANOS:
        raise ValueError(text)
    return value


_ZERO_TIME_NANOS = _days_from_civil(1, 1, 1) * 86400 * 1_000_000_000


def _parse_time_param(query: dict[str, list[str]], key: str) -> _GoTime:
    value = _get(query, key)
    if not value:
        raise _HttpError(400, f"bad request: missing {_go_quote(key)}")
    try:
        return _parse_go_time(value)
    except ValueError:
        raise _HttpError(
            400,
            f"bad request: bad {_go_quote(key)} timestamp {_go_quote(value)}: "
            f"time in unsupported format {_go_quote(value)}",
        ) from None


def _go_atoi(text: str) -> int:
    """strconv.Atoi, raising with Go's message."""
    if re.fullmatch(r"[+-]?\d+", text) is None:
        raise ValueError(f"strconv.Atoi: parsing {_go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"strconv.Atoi: parsing {_go_quote(text)}: value out of range")
    return value


def _unix_nanos(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _rfc3339(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def go_json(value: Any) -> bytes:
    """encoding/json as json.NewEncoder(w).Encode writes it: compact, ``<>&`` and U+2028/9 escaped, ``\\n``."""
    parts: list[str] = []
    _encode_json(value, parts)
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def _encode_json(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif value is None:
        out.append("null")
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(_json_string(str(key)))
            out.append(":")
            _encode_json(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode_json(item, out)
        out.append("]")
    else:  # pragma: no cover - only the shapes above are ever encoded
        raise TypeError(f"cannot encode {type(value).__name__}")


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_HTML_SAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ch in _JSON_HTML_SAFE:
            out.append(_JSON_HTML_SAFE[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _json_reply(status: int, body: Any = None, error: str | None = None) -> _Reply:
    envelope: dict[str, Any] = {"code": status}
    if error is not None:
        envelope["error"] = error
    else:
        envelope["body"] = body
    return _Reply(status, go_json(envelope), "application/json")


# Go's http.ParseData → profefe messages, by pprof reason. Only "empty" and "unrecognized" are pinned by the
# reference; the gzip ones are what Go's gzip reader says for the common case of each.
_MALFORMED = "malformed profile (could not parse pprof profile: {})"
_PARSE_MESSAGES = {
    "empty": "parsing profile: empty input file",
    "truncated": "decompressing profile: unexpected EOF",
    "corrupt-gzip": "decompressing profile: gzip: invalid header",
    "too-large": "decompressing profile: larger than the test double accepts",
}
_UNRECOGNIZED = "parsing profile: unrecognized profile format"
NO_SAMPLES_MESSAGE = "malformed profile (profile is empty: no samples)"


class _IdGenerator:
    """badger ids are xids: 4-byte seconds, 3-byte machine, 2-byte pid, 3-byte counter, base32hex, 20 chars.

    Within one server they strictly increase, so sorting by id is sorting by upload order."""

    _COUNTER_LIMIT = 1 << 24

    def __init__(self) -> None:
        self._machine = random.getrandbits(24).to_bytes(3, "big")
        self._pid = (os.getpid() & 0xFFFF).to_bytes(2, "big")
        self._counter = random.getrandbits(22)  # low start: overflow needs 12M ids in one second
        self._last_seconds = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            seconds = max(int(time.time()), self._last_seconds)
            self._counter += 1
            if self._counter >= self._COUNTER_LIMIT:
                self._counter = 0
                seconds = max(seconds, self._last_seconds + 1)
            self._last_seconds = seconds
            raw = (
                (seconds & 0xFFFFFFFF).to_bytes(4, "big") + self._machine + self._pid + self._counter.to_bytes(3, "big")
            )
        return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


# --- HTTP plumbing ------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # up() re-binds the port while old connections sit in TIME_WAIT
    request_queue_size = _LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], double: ProfefeServer) -> None:
        self.double = double
        self.closing = False
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        # Set by down()/stop(): wakes handlers sleeping in hang_next() so they give up instead of answering.
        self.halted = threading.Event()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up, or down() cutting a connection, is routine here: no traceback on stderr.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        with self.connections_lock:
            self.closing = True
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: requests.Session reuses the connection
    server_version = "profefe-double"
    # Headers and body leave in one write (buffered wfile) and without Nagle delays: a keep-alive client
    # otherwise waits for a delayed ACK on every request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)
            closing = self.server.closing
        if closing:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        double = self.server.double
        split = urlsplit(self.path)
        double._record(RecordedRequest(self.command, split.path, split.query))
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(_Reply(400, b"400 Bad Request", "text/plain; charset=utf-8"))
            return
        try:
            reply = double._handle(self.command, split.path, split.query, body, self.server.halted)
        except Exception:
            reply = _json_reply(500, error="internal server error")
        if reply is None:  # the server went down while this request hung: vanish without an answer
            self.close_connection = True
            return
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            if reply.content_type:
                self.send_header("Content-Type", reply.content_type)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True


# --- the server ---------------------------------------------------------------------------------------------


class ProfefeServer:
    """A profefe double on ``host:port`` (port 0: any free port). ``start()`` it, or use it as a context
    manager.

    State (stored profiles, the request log, fault queues) lives here, not in the socket, so it survives
    :meth:`down` / :meth:`up`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._profiles: list[StoredProfile] = []
        self._requests: list[RecordedRequest] = []
        self._upload_attempts = 0
        self._faults: list[_Fault] = []
        self._hangs: list[float] = []
        self._ids = _IdGenerator()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> ProfefeServer:
        with self._lifecycle:
            if self._httpd is None:
                self._bind(self._port if self._port is not None else self._requested_port)
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; stored profiles stay readable."""
        with self._lifecycle:
            self._unbind()

    def down(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        with self._lifecycle:
            if self._port is None:
                raise RuntimeError("down() before start()")
            self._unbind()

    def up(self) -> None:
        """Listen again on the same port (SO_REUSEADDR), so clients that saw refusals recover."""
        with self._lifecycle:
            if self._port is None:
                raise RuntimeError("up() before start()")
            if self._httpd is None:
                self._bind(self._port)

    @property
    def is_up(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> ProfefeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _bind(self, port: int) -> None:
        httpd = _HTTPServer((self.host, port), self)
        self._port = httpd.server_address[1]
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"profefe-double:{self._port}",
            daemon=True,
        )
        thread.start()
        self._httpd, self._thread = httpd, thread

    def _unbind(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.halted.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.cut_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # inspection

    @property
    def profiles(self) -> list[StoredProfile]:
        """Stored profiles, oldest upload first (copies: mutating them does not change the store)."""
        with self._lock:
            return [dataclasses.replace(p, labels=dict(p.labels)) for p in self._profiles]

    def count(self, **filters: Any) -> int:
        """Stored profiles matching every filter: StoredProfile fields by equality, ``labels`` as a subset."""
        names = {f.name for f in dataclasses.fields(StoredProfile)}
        unknown = set(filters) - names
        if unknown:
            raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}")
        want_labels: dict[str, str] = filters.pop("labels", None) or {}
        with self._lock:
            return sum(
                1
                for p in self._profiles
                if all(getattr(p, k) == v for k, v in filters.items())
                and all(p.labels.get(k) == v for k, v in want_labels.items())
            )

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def upload_attempts(self) -> int:
        """Every POST to /api/0/profiles received, whatever the answer (faults included)."""
        with self._lock:
            return self._upload_attempts

    def clear(self) -> None:
        """Forget stored profiles, the request log, the attempt counter and pending faults."""
        with self._lock:
            self._profiles.clear()
            self._requests.clear()
            self._upload_attempts = 0
            self._faults.clear()
            self._hangs.clear()

    # fault injection

    def fail_next(self, n: int, status: int, body: bytes | str, content_type: str = "application/json") -> None:
        """The next ``n`` uploads get this answer and are not stored."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        with self._lock:
            self._faults.extend(_Fault(status, data, content_type) for _ in range(n))

    def hang_next(self, n: int, seconds: float) -> None:
        """The next ``n`` uploads sleep ``seconds``, then are handled normally: they may be stored after the
        client gave up, as with a slow real server. down()/stop() cut the sleep short and drop the request."""
        with self._lock:
            self._hangs.extend([seconds] * n)

    # request handling (called from handler threads)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _handle(
        self, method: str, raw_path: str, raw_query: str, body: bytes, halted: threading.Event
    ) -> _Reply | None:
        path = posixpath.normpath(_query_path(raw_path)) if raw_path else "/"
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        query = _parse_query(raw_query)
        try:
            if path == _MERGE_PATH:
                return self._merge(query)
            if path == _PROFILES_PATH:
                if method == "POST":
                    return self._upload(query, body, halted)
                if method in ("GET", "HEAD"):
                    return self._find(query)
                return _Reply(200, b"", "")  # Go writes no Content-Type for an empty body
            if path.startswith(_PROFILES_PATH + "/"):
                return self._get_by_ids(path[len(_PROFILES_PATH) + 1 :])
            if path == _SERVICES_PATH:
                return self._services()
            if path == _VERSION_PATH:
                return _json_reply(200, VERSION_BODY)
        except _HttpError as exc:
            return _json_reply(exc.status, error=exc.message)
        return _Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _upload(self, query: dict[str, list[str]], body: bytes, halted: threading.Event) -> _Reply | None:
        with self._lock:
            self._upload_attempts += 1
            hang = self._hangs.pop(0) if self._hangs else None
        if hang is not None and halted.wait(hang):
            return None
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            return _Reply(fault.status, fault.body, fault.content_type)

        service = _get(query, "service")
        if not service:
            raise _HttpError(400, 'bad request: missing "service"')
        labels = _labels_param(query)
        created_at: datetime | None = None
        if raw_created := _get(query, "created_at"):
            try:
                created_at = _datetime(_parse_go_time(raw_created))
            except (ValueError, OverflowError):
                raise _HttpError(400, f"bad request: time in unsupported format {_go_quote(raw_created)}") from None
        ptype = profile_type(_get(query, "type"))
        if ptype == UNKNOWN_TYPE:
            raise _HttpError(400, "bad request: unknown profile type")

        if ptype != "trace":  # profefe stores traces as they come; everything else must parse as pprof
            try:
                info = pprof.inspect(body)
            except pprof.PprofError as exc:
                detail = _PARSE_MESSAGES.get(exc.reason, _UNRECOGNIZED)
                raise _HttpError(400, _MALFORMED.format(detail)) from None
            if info.is_empty:
                raise _HttpError(400, NO_SAMPLES_MESSAGE)
            if info.time_nanos > 0:
                created_at = _EPOCH + timedelta(microseconds=info.time_nanos // 1000)
        if created_at is None:
            created_at = datetime.now(UTC)
        stored = StoredProfile(
            id=self._ids.next(),
            service=service,
            type=ptype,
            labels=dict(labels),
            created_at=created_at.replace(microsecond=0),
            body=body,
        )
        with self._lock:
            self._profiles.append(stored)
        return _json_reply(200, stored.to_json())

    def _find_params(self, query: dict[str, list[str]]) -> tuple[str, str, list[StoredProfile]]:
        """Check list/merge parameters in profefe's order; return (service, type, matches oldest first)."""
        service = _get(query, "service")
        if not service:
            raise _HttpError(400, 'bad request: missing "service"')
        ptype = profile_type(_get(query, "type"))
        labels = _labels_param(query)
        created_min = _parse_time_param(query, "from")
        created_max = _parse_time_param(query, "to")
        limit = 0
        if raw_limit := _get(query, "limit"):
            try:
                limit = _go_atoi(raw_limit)
            except ValueError as exc:
                raise _HttpError(400, f"bad request: bad limit {_go_quote(raw_limit)}: {exc}") from None
        if created_min > created_max:
            raise _HttpError(
                400,
                "bad request: profile created time min after max: "
                f"min {created_min.go_string()}, max {created_max.go_string()}",
            )
        with self._lock:
            found = [
                p
                for p in self._profiles
                if p.service == service
                and (ptype == UNKNOWN_TYPE or p.type == ptype)
                and all(p.labels.get(k) == v for k, v in labels)
                and created_min.unix_nanos <= _unix_nanos(p.created_at) <= created_max.unix_nanos
            ]
        found.sort(key=lambda p: (p.created_at, p.id))
        if limit > 0:
            found = found[-limit:]
        return service, ptype, found

    def _find(self, query: dict[str, list[str]]) -> _Reply:
        _service, _ptype, found = self._find_params(query)
        if not found:
            raise _HttpError(404, "nothing found")
        return _json_reply(200, [p.to_json() for p in found])

    def _merge(self, query: dict[str, list[str]]) -> _Reply:
        _service, ptype, found = self._find_params(query)
        if ptype in _UNMERGEABLE:
            raise _HttpError(405, f"can't merge profiles of {ptype} type")
        if not found:
            raise _HttpError(404, "nothing found")
        return _profile_bytes(found[-1], ptype)

    def _get_by_ids(self, raw: str) -> _Reply:
        raw = raw.strip("/")
        wanted = raw.split("+")
        with self._lock:
            by_id = {p.id: p for p in self._profiles}
        found = [by_id.get(pid) for pid in wanted]
        if not raw or any(p is None for p in found):
            raise _HttpError(500, f"failed to get profile by id {_go_quote(raw)}")
        newest = max((p for p in found if p is not None), key=lambda p: (p.created_at, p.id))
        return _profile_bytes(newest, None)

    def _services(self) -> _Reply:
        with self._lock:
            services = sorted({p.service for p in self._profiles})
        if not services:
            raise _HttpError(404, "nothing found")
        return _json_reply(200, services)


def _profile_bytes(stored: StoredProfile, disposition_type: str | None) -> _Reply:
    headers: tuple[tuple[str, str], ...] = ()
    if disposition_type is not None:
        headers = (("Content-Disposition", f'attachment; filename="{disposition_type}"'),)
    return _Reply(200, stored.body, "application/octet-stream", headers)


def _labels_param(query: dict[str, list[str]]) -> list[tuple[str, str]]:
    raw = _get(query, "labels")
    try:
        return parse_labels(raw)
    except _EscapeError as exc:
        raise _HttpError(400, f"bad request: bad labels {_go_quote(raw)}: {exc}") from None


def _query_path(raw_path: str) -> str:
    """r.URL.Path: the percent-decoded path (``+`` stays a plus in a path)."""
    try:
        return _query_unescape(raw_path.replace("+", "%2B"))
    except _EscapeError:
        return raw_path


def _datetime(value: _GoTime) -> datetime:
    return _EPOCH + timedelta(microseconds=value.unix_nanos // 1000)


# --- CLI ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kprofefe_sandbox.profefe",
        description="Run the profefe test double until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port (default: %(default)s)")
    args = parser.parse_args(argv)
    # Ctrl-C stops it even when started in the background: a shell without job control starts `cmd &` with
    # SIGINT ignored, and Python keeps an inherited SIG_IGN (the test suite run under nohup hung here)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with ProfefeServer(args.host, args.port) as server:
        print(f"profefe double listening on {server.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
        print(f"stored {len(server.profiles)} profile(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
