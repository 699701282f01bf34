"""What is inside a pprof payload, read without a protobuf dependency and without touching the network.

A Go ``net/http/pprof`` answer is a gzip-compressed ``perftools.profiles.Profile`` protobuf. Workers inspect
every payload before uploading it, so a misconfigured target (an HTML page, ``?debug=1`` text, a JSON error) or
an empty block/mutex profile is caught here, with a short machine ``reason``, instead of by profefe.

The reader walks the protobuf wire format with index arithmetic and keeps only the header fields, the sample
count and the string-table offsets; locations and functions are skipped unless the profile is a contention
profile, where they are the only way to tell block from mutex (see :func:`detect_type`).

Failure reasons (:attr:`PprofError.reason`):

``empty``         no bytes at all, or a gzip stream that decompresses to nothing
``html``          markup (``<!DOCTYPE``, ``<html``, anything starting with ``<``)
``json``          a JSON document (an API error from some other server)
``text``          printable text: Go's ``?debug=1`` output, a plain-text error page
``not-gzip``      neither gzip nor a raw Profile protobuf
``corrupt-gzip``  gzip magic, but the stream is damaged (bad header, CRC, deflate data, trailing garbage)
``truncated``     the gzip stream stops before its end
``too-large``     decompresses to more than the cap (a gzip bomb, or a cap set too low)
``not-protobuf``  decompressed fine, but the bytes are not a valid Profile
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

# A real heap or goroutine profile of a big service decompresses to tens of MB; 256 MiB leaves room for that
# while keeping one worker's memory bounded against a gzip bomb.
MAX_DECOMPRESSED_BYTES_DEFAULT = 256 * 1024 * 1024  # bytes (256 MiB)

# How much of the head sniff() looks at: enough to see a doctype or a full line of debug=1 text.
SNIFF_WINDOW_BYTES = 512  # bytes

# Output per zlib call: bounds the transient chunk so the cap, not the chunk, decides peak memory.
_INFLATE_CHUNK_BYTES = 1024 * 1024  # bytes
# With a ``pause`` (a gevent worker): output per zlib call and bytes walked between two pauses. Inflating
# 256 KiB or walking 64 KiB of samples takes about a millisecond here, so the pause can yield every few ms.
_COOPERATIVE_CHUNK_BYTES = 256 * 1024  # bytes
_WALK_STEP_BYTES = 64 * 1024  # bytes
# Compressed input per zlib call: zlib copies the input it has not consumed yet at every call, so feeding a
# ~1 MB gzip bomb whole costs a 1 MB copy per output chunk, for every bomb in flight.
_INPUT_STEP_BYTES = 64 * 1024  # bytes

#: called between steps of work; a gevent worker yields to its hub in it (kprofefe_tasks.io.offload)
Pause = Callable[[], None]
#: told the decompressed size before each chunk is kept; may raise to stop (a memory budget refusing)
OnInflate = Callable[[int], None]

GZIP_MAGIC = b"\x1f\x8b"

#: profefe's type names that a Go profile can carry (``other``/``trace`` are never detected).
PROFILE_TYPE_NAMES = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate")

_HEAP_SAMPLE_TYPES = frozenset({"alloc_objects", "alloc_space", "inuse_objects", "inuse_space"})
_CONTENTION_TYPES = frozenset({"block", "mutex"})
# Go >= 1.22 puts runtime-internal lock contention it could not attribute under this pseudo-function.
_LOST_RUNTIME_LOCK = "runtime._LostContendedRuntimeLock"

# Profile fields by number, from google/pprof proto/profile.proto.
_F_SAMPLE_TYPE = 1
_F_SAMPLE = 2
_F_LOCATION = 4
_F_FUNCTION = 5
_F_STRING_TABLE = 6
_F_TIME_NANOS = 9
_F_DURATION_NANOS = 10
_F_PERIOD_TYPE = 11
_F_PERIOD = 12
# Go's decoder rejects a known field sent with the wrong wire type; so do we, so garbage rarely passes.
_LEN_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 11})
_VARINT_FIELDS = frozenset({7, 8, 9, 10, 12, 14})  # 13 (comment) is repeated: packed or not

_WT_VARINT = 0
_WT_I64 = 1
_WT_LEN = 2
_WT_I32 = 5


class PprofError(ValueError):
    """The bytes are not a usable pprof profile. ``reason`` is one word from the module docstring."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class _Malformed(Exception):
    """Internal: the protobuf walk failed; converted to PprofError by the caller that knows the context."""


@dataclass(frozen=True)
class ProfileInfo:
    """The header of a profile, its sample count and sizes; enough to route, label and reject payloads."""

    sample_types: tuple[tuple[str, str], ...]
    period_type: tuple[str, str] | None
    sample_count: int
    time_nanos: int
    duration_nanos: int
    compressed_size: int
    decompressed_size: int
    period: int = 0
    #: samples whose values are all zero (they still count for profefe, which only rejects zero samples)
    zero_value_samples: int = 0
    #: for contentions/delay profiles only: "block" or "mutex" from the samples' leaf frames, None if unknown
    contention_kind: str | None = None

    @property
    def is_empty(self) -> bool:
        """No samples: profefe answers 400 ``profile is empty: no samples``; normal for block/mutex."""
        return self.sample_count == 0

    @property
    def detected_type(self) -> str | None:
        return detect_type(self)


def sniff(data: bytes) -> str | None:
    """A reason when the head of ``data`` is clearly not a pprof payload, else None. Reads 512 bytes at most.

    None does not mean valid, only "not obviously something else". A profile protobuf can never start with
    ``<``, ``{`` or ``[`` (those bytes are group wire types on fields a Profile does not have), and every Go
    profile has control bytes in its first ValueType, so these rules do not reject real profiles.
    """
    if not data:
        return "empty"
    if data[:2] == GZIP_MAGIC:
        return None
    head = bytes(data[:SNIFF_WINDOW_BYTES]).lstrip(b" \t\r\n\f\v")
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip(b" \t\r\n\f\v")
    if not head:
        return "text"  # whitespace only
    first = head[:1]
    if first == b"<":
        return "html"
    if first in (b"{", b"["):
        return "json"
    if _looks_like_text(head):
        return "text"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The window may cut a multi-byte character in half; only a cut at the very end is forgiven.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r\f\v" for ch in text)


def decompress(data: bytes, max_bytes: int) -> bytes:
    """Gunzip ``data`` (all concatenated members), never producing more than ``max_bytes``.

    Input without the gzip magic is returned unchanged if it parses as a Profile protobuf (Go always gzips,
    other producers may not); otherwise PprofError. A gzip bomb stops with ``too-large`` once the cap is
    passed, having allocated about ``max_bytes`` at most.
    """
    if not data:
        raise PprofError("empty", "empty body")
    if data[:2] != GZIP_MAGIC:
        try:
            _walk(data)
        except _Malformed as exc:
            reason = sniff(data) or "not-gzip"
            raise PprofError(reason, f"neither gzip nor a pprof protobuf ({exc})") from None
        return data
    return bytes(_gunzip(data, max_bytes))


def _gunzip(data: bytes, max_bytes: int, pause: Pause | None = None, on_inflate: OnInflate | None = None) -> bytearray:
    """Inflate every member, chunk by chunk: ``on_inflate`` hears of each chunk before it is kept, ``pause``
    runs between chunks, and the cap stops a bomb after about ``max_bytes`` of output, whatever it would become."""
    out = bytearray()
    try:
        return _inflate_members(data, max_bytes, pause, on_inflate, out)
    except BaseException:
        out.clear()  # freed now, not when a kept traceback's frames go
        raise


def _inflate_members(
    data: bytes, max_bytes: int, pause: Pause | None, on_inflate: OnInflate | None, out: bytearray
) -> bytearray:
    step = _COOPERATIVE_CHUNK_BYTES if pause is not None else _INFLATE_CHUNK_BYTES
    view = memoryview(data)
    pos = 0
    total = len(data)
    while pos < total:
        if total - pos >= 2 and view[pos : pos + 2] != GZIP_MAGIC:
            # Go's multistream reader also fails on bytes after the last member.
            raise PprofError("corrupt-gzip", f"{total - pos} bytes of non-gzip data after a gzip member")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        fed = pos  # input is fed in slices: zlib copies what it has not consumed at every call (unconsumed_tail)
        pending: memoryview | bytes = b""
        try:
            while True:
                if not pending and fed < total:
                    pending = view[fed : fed + _INPUT_STEP_BYTES]
                    fed += len(pending)
                room = max_bytes - len(out)
                # Ask for one byte more than the room left: getting it proves the cap is exceeded.
                chunk = inflater.decompress(pending, min(room + 1, step))
                if len(out) + len(chunk) > max_bytes:
                    raise PprofError("too-large", f"decompresses to more than {max_bytes} bytes")
                if on_inflate is not None and chunk:
                    on_inflate(len(out) + len(chunk))
                out += chunk
                if pause is not None:
                    pause()
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and not chunk and fed >= total):
                    break
        except zlib.error as exc:
            raise PprofError("corrupt-gzip", f"bad gzip stream: {exc}") from None
        if not inflater.eof:
            raise PprofError("truncated", "gzip stream ends before its trailer")
        pos = fed - len(inflater.unused_data) - len(inflater.unconsumed_tail)
    return out


def inspect(
    data: bytes,
    max_decompressed: int = MAX_DECOMPRESSED_BYTES_DEFAULT,
    *,
    pause: Pause | None = None,
    on_inflate: OnInflate | None = None,
) -> ProfileInfo:
    """Sniff, decompress and parse ``data``. Raises PprofError with a reason; zero samples is NOT an error.

    ``pause`` makes it cooperative: it is called every ~256 KiB inflated and every ~64 KiB walked, so a caller on
    an event loop can yield there; the answer is the same with or without it. ``on_inflate(total)`` is called with
    the decompressed size before each chunk is kept (a memory budget grows there, or raises to stop).
    """
    if not data:
        raise PprofError("empty", "empty body")
    raw: bytes | bytearray
    if data[:2] == GZIP_MAGIC:
        raw = _gunzip(data, max_decompressed, pause, on_inflate)
        if not raw:
            raise PprofError("empty", "gzip stream decompresses to nothing")
        try:
            walked = _walk(raw, pause)
        except _Malformed as exc:
            raise PprofError("not-protobuf", f"gzip content is not a pprof profile: {exc}") from None
    else:
        if len(data) > max_decompressed:
            raise PprofError("too-large", f"raw profile larger than {max_decompressed} bytes")
        raw = data
        try:
            walked = _walk(raw, pause)
        except _Malformed as exc:
            reason = sniff(data) or "not-gzip"
            raise PprofError(reason, f"neither gzip nor a pprof protobuf ({exc})") from None
    return _info(raw, walked, compressed_size=len(data), pause=pause)


def detect_type(info: ProfileInfo) -> str | None:
    """profefe's type name for a profile, from its sample types; None when they do not say.

    cpu: ``samples/count`` + ``cpu/nanoseconds``. heap: any of ``alloc_objects alloc_space inuse_objects
    inuse_space`` (Go's ``allocs`` endpoint serves the same sample types: it is a heap profile for profefe).
    goroutine / threadcreate: ``goroutine/count`` / ``threadcreate/count``.

    block vs mutex: Go writes both through ``printCountCycleProfile`` (runtime/pprof, read in Go 1.19) as
    ``contentions/count`` + ``delay/nanoseconds`` with ``period_type contentions/count`` and ``period 1``: the
    headers are identical, the fixtures included; neither the block rate nor the mutex fraction is recorded.
    What differs is where the stack is taken: the mutex profile records the *unlocker* (leaf frame
    ``sync.(*Mutex).Unlock``, ``sync.(*RWMutex).RUnlock``, ``runtime.unlock``...), the block profile the
    *waiter* (``sync.(*Mutex).Lock``, ``sync.(*Cond).Wait``, ``runtime.chanrecv1``, ``runtime.selectgo``...).
    So: any sample whose leaf function name contains ``unlock`` (any case), or is Go 1.22's
    ``runtime._LostContendedRuntimeLock``, makes it mutex, otherwise block. Limits: an empty contention profile
    has no stacks and detects as None (see :func:`candidate_types`); a profile from a non-Go producer, or
    stripped of function names, is classified by the same rule and may be wrong.
    """
    names = {name for name, _unit in info.sample_types}
    if ("cpu", "nanoseconds") in info.sample_types:
        return "cpu"
    if names & _HEAP_SAMPLE_TYPES:
        return "heap"
    if "goroutine" in names:
        return "goroutine"
    if "threadcreate" in names:
        return "threadcreate"
    if "contentions" in names or "delay" in names:
        return info.contention_kind
    return None


def candidate_types(info: ProfileInfo) -> frozenset[str]:
    """Every profefe type the payload could be: one name, ``{"block", "mutex"}`` for an empty contention
    profile, or empty when the sample types are not Go's. Use it to check a payload matches what was asked."""
    detected = detect_type(info)
    if detected is not None:
        return frozenset({detected})
    names = {name for name, _unit in info.sample_types}
    if "contentions" in names or "delay" in names:
        return _CONTENTION_TYPES
    return frozenset()


# --- the protobuf walk ------------------------------------------------------------------------------------


@dataclass
class _Walked:
    sample_type_idx: list[tuple[int, int]]
    period_type_idx: tuple[int, int] | None
    sample_count: int
    zero_value_samples: int
    strings: list[tuple[int, int]]  # (start, end) offsets into the buffer
    time_nanos: int
    duration_nanos: int
    period: int


def _varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _int64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _walk(buf: bytes | bytearray, pause: Pause | None = None) -> _Walked:
    """One pass over the top-level fields. Hot path: single-byte keys and lengths are decoded inline.
    With ``pause``, it is called each time the walk has passed another ~64 KiB (one comparison per field)."""
    end = len(buf)
    pos = 0
    step = _WALK_STEP_BYTES if pause is not None else end + 1
    mark = step
    sample_types: list[tuple[int, int]] = []
    period_type: tuple[int, int] | None = None
    strings: list[tuple[int, int]] = []
    samples = 0
    zero_samples = 0
    time_nanos = duration_nanos = period = 0
    while pos < end:
        if pos >= mark and pause is not None:
            pause()
            mark = pos + step
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        field = key >> 3
        wire = key & 7
        if field == 0:
            raise _Malformed(f"field number 0 at offset {pos}")
        if wire == _WT_LEN:
            if pos >= end:
                raise _Malformed("truncated length")
            size = buf[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _varint(buf, pos, end)
            nxt = pos + size
            if nxt > end:
                raise _Malformed(f"field {field} runs past the end")
            if field == _F_SAMPLE:
                samples += 1
                # Fast path for Go's layout, [location_id packed][value packed], short lengths; else the
                # general walk. Half the cost of a big profile is here, hence the inlining.
                inner = pos
                if size and buf[inner] == 0x0A:
                    skip, inner = _varint(buf, inner + 1, nxt)
                    inner += skip
                if inner < nxt and buf[inner] == 0x12:
                    vsize, vstart = _varint(buf, inner + 1, nxt)
                    if vstart + vsize == nxt:
                        if buf.count(0, vstart, nxt) == vsize:
                            zero_samples += 1
                    elif _sample_values_zero(buf, pos, nxt):
                        zero_samples += 1
                elif size and _sample_values_zero(buf, pos, nxt):
                    zero_samples += 1
            elif field == _F_STRING_TABLE:
                if not strings and size:
                    raise _Malformed("string_table[0] must be ''")
                strings.append((pos, nxt))
            elif field == _F_SAMPLE_TYPE:
                sample_types.append(_value_type(buf, pos, nxt))
            elif field == _F_PERIOD_TYPE:
                period_type = _value_type(buf, pos, nxt)
            elif field in _VARINT_FIELDS:
                raise _Malformed(f"field {field} has wire type {wire}")
            pos = nxt
        elif wire == _WT_VARINT:
            if field in _LEN_FIELDS:
                raise _Malformed(f"field {field} has wire type {wire}")
            value, pos = _varint(buf, pos, end)
            if field == _F_TIME_NANOS:
                time_nanos = _int64(value)
            elif field == _F_DURATION_NANOS:
                duration_nanos = _int64(value)
            elif field == _F_PERIOD:
                period = _int64(value)
        elif wire in (_WT_I64, _WT_I32):
            if field in _LEN_FIELDS or field in _VARINT_FIELDS:
                raise _Malformed(f"field {field} has wire type {wire}")
            pos += 8 if wire == _WT_I64 else 4
            if pos > end:
                raise _Malformed("truncated fixed-width field")
        else:
            raise _Malformed(f"unsupported wire type {wire} at offset {pos}")
    if not strings:
        # Go's decoder resolves string index 0 for every profile, so a profile without a table is malformed.
        raise _Malformed("no string table")
    return _Walked(sample_types, period_type, samples, zero_samples, strings, time_nanos, duration_nanos, period)


def _sample_values_zero(buf: bytes | bytearray, pos: int, end: int) -> bool:
    """True when every value of the Sample in buf[pos:end] is 0. A packed run of zero varints is all 0x00."""
    saw_value = False
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == _WT_LEN:
            size, pos = _varint(buf, pos, end)
            nxt = pos + size
            if nxt > end:
                raise _Malformed("sample field runs past its end")
            if key >> 3 == 2:
                saw_value = True
                if buf.count(0, pos, nxt) != size:
                    return False
            pos = nxt
        elif wire == _WT_VARINT:
            value, pos = _varint(buf, pos, end)
            if key >> 3 == 2:
                saw_value = True
                if value:
                    return False
        elif wire == _WT_I64:
            pos += 8
        elif wire == _WT_I32:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire} in a sample")
    return saw_value


def _value_type(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    type_idx = unit_idx = 0
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == _WT_VARINT:
            value, pos = _varint(buf, pos, end)
            if key >> 3 == 1:
                type_idx = value
            elif key >> 3 == 2:
                unit_idx = value
        elif wire == _WT_LEN:
            size, pos = _varint(buf, pos, end)
            pos += size
        elif wire == _WT_I64:
            pos += 8
        elif wire == _WT_I32:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire} in a ValueType")
    if pos > end:
        raise _Malformed("ValueType runs past its end")
    return type_idx, unit_idx


def _string(buf: bytes | bytearray, strings: list[tuple[int, int]], index: int) -> str:
    if not 0 <= index < len(strings):
        raise _Malformed(f"string index {index} out of range (table has {len(strings)})")
    start, stop = strings[index]
    return bytes(buf[start:stop]).decode("utf-8", "replace")


def _info(buf: bytes | bytearray, walked: _Walked, compressed_size: int, pause: Pause | None = None) -> ProfileInfo:
    try:
        sample_types = tuple(
            (_string(buf, walked.strings, t), _string(buf, walked.strings, u)) for t, u in walked.sample_type_idx
        )
        period_type = None
        if walked.period_type_idx is not None:
            t, u = walked.period_type_idx
            period_type = (_string(buf, walked.strings, t), _string(buf, walked.strings, u))
        kind = None
        names = {name for name, _unit in sample_types}
        if walked.sample_count and ("contentions" in names or "delay" in names):
            kind = _contention_kind(buf, walked.strings, pause)
    except _Malformed as exc:
        raise PprofError("not-protobuf", f"not a valid pprof profile: {exc}") from None
    return ProfileInfo(
        sample_types=sample_types,
        period_type=period_type,
        sample_count=walked.sample_count,
        time_nanos=walked.time_nanos,
        duration_nanos=walked.duration_nanos,
        compressed_size=compressed_size,
        decompressed_size=len(buf),
        period=walked.period,
        zero_value_samples=walked.zero_value_samples,
        contention_kind=kind,
    )


def _first_varint_field(buf: bytes | bytearray, pos: int, end: int, wanted: int) -> int | None:
    """The first value of varint field ``wanted`` (packed or not) in the message buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == _WT_VARINT:
            value, pos = _varint(buf, pos, end)
            if key >> 3 == wanted:
                return value
        elif wire == _WT_LEN:
            size, pos = _varint(buf, pos, end)
            if key >> 3 == wanted and size:
                value, _ = _varint(buf, pos, pos + size)
                return value
            pos += size
        elif wire == _WT_I64:
            pos += 8
        elif wire == _WT_I32:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")
    return None


def _first_len_field(buf: bytes | bytearray, pos: int, end: int, wanted: int) -> tuple[int, int] | None:
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == _WT_VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _WT_LEN:
            size, pos = _varint(buf, pos, end)
            if key >> 3 == wanted:
                return pos, min(pos + size, end)
            pos += size
        elif wire == _WT_I64:
            pos += 8
        elif wire == _WT_I32:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")
    return None


def _contention_kind(buf: bytes | bytearray, strings: list[tuple[int, int]], pause: Pause | None = None) -> str | None:
    """Second pass, contention profiles only (small): leaf function of each sample → "mutex" or "block"."""
    leaf_locations: list[int] = []
    location_function: dict[int, int] = {}
    function_name: dict[int, int] = {}
    end = len(buf)
    pos = 0
    step = _WALK_STEP_BYTES if pause is not None else end + 1
    mark = step
    while pos < end:
        if pos >= mark and pause is not None:
            pause()
            mark = pos + step
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire != _WT_LEN:
            if wire == _WT_VARINT:
                _, pos = _varint(buf, pos, end)
            else:
                pos += 8 if wire == _WT_I64 else 4
            continue
        size, pos = _varint(buf, pos, end)
        nxt = pos + size
        field = key >> 3
        if field == _F_SAMPLE:
            loc = _first_varint_field(buf, pos, nxt, 1)
            if loc is not None:
                leaf_locations.append(loc)
        elif field == _F_LOCATION:
            loc_id = _first_varint_field(buf, pos, nxt, 1)
            line = _first_len_field(buf, pos, nxt, 4)  # line[0] is the innermost (inlined) frame
            if loc_id is not None and line is not None:
                func_id = _first_varint_field(buf, line[0], line[1], 1)
                if func_id is not None:
                    location_function[loc_id] = func_id
        elif field == _F_FUNCTION:
            func_id = _first_varint_field(buf, pos, nxt, 1)
            name_idx = _first_varint_field(buf, pos, nxt, 2)
            if func_id is not None and name_idx is not None:
                function_name[func_id] = name_idx
        pos = nxt
    known = 0
    for loc in leaf_locations:
        name_idx = function_name.get(location_function.get(loc, -1), -1)
        if not 0 <= name_idx < len(strings):
            continue
        known += 1
        name = _string(buf, strings, name_idx)
        if "unlock" in name.lower() or name == _LOST_RUNTIME_LOCK:
            return "mutex"
    return "block" if known else None
