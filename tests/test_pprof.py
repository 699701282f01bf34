"""kprofefe_tasks.io.pprof against the real Go payloads in tests/fixtures/pprof and hand-built edge cases."""

from __future__ import annotations

import gzip
import random
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from kprofefe_tasks.io import pprof
from kprofefe_tasks.io.pprof import PprofError, ProfileInfo
from tests.protobuf import f_len, f_var, varint

FIXTURES = Path(__file__).parent / "fixtures" / "pprof"
MIB = 1024 * 1024

# fixture file → profefe type it must detect to (Go's allocs endpoint serves a heap profile)
EXPECTED_TYPES = {
    "cpu": "cpu",
    "heap": "heap",
    "allocs": "heap",
    "block": "block",
    "mutex": "mutex",
    "goroutine": "goroutine",
    "threadcreate": "threadcreate",
}


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.pb.gz").read_bytes()


# --- a minimal protobuf writer, to build profiles the fixtures do not cover ------------------------------------


def packed(values: Iterable[int]) -> bytes:
    return b"".join(varint(v) for v in values)


def build_profile(
    sample_types: list[tuple[str, str]],
    samples: list[tuple[list[int], list[int]]],
    *,
    functions: dict[int, str] | None = None,
    period_type: tuple[str, str] | None = None,
    period: int = 0,
    time_nanos: int = 0,
) -> bytes:
    """Raw (uncompressed) Profile protobuf. Location i points at function i, one line each."""
    strings = [""]

    def sid(text: str) -> int:
        if text not in strings:
            strings.append(text)
        return strings.index(text)

    parts = [f_len(1, f_var(1, sid(t)) + f_var(2, sid(u))) for t, u in sample_types]
    for locations, values in samples:
        parts.append(f_len(2, f_len(1, packed(locations)) + f_len(2, packed(values))))
    for fid, name in (functions or {}).items():
        parts.append(f_len(4, f_var(1, fid) + f_len(4, f_var(1, fid) + f_var(2, 10))))
        parts.append(f_len(5, f_var(1, fid) + f_var(2, sid(name)) + f_var(3, sid(name))))
    if period_type is not None:
        parts.append(f_len(11, f_var(1, sid(period_type[0])) + f_var(2, sid(period_type[1]))))
    parts.append(f_var(12, period))
    if time_nanos:
        parts.append(f_var(9, time_nanos))
    parts.extend(f_len(6, s.encode()) for s in strings)
    return b"".join(parts)


CONTENTION = [("contentions", "count"), ("delay", "nanoseconds")]


# --- the real fixtures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_every_fixture_inspects_and_detects_its_type(name: str) -> None:
    data = fixture(name)
    info = pprof.inspect(data)
    assert info.detected_type == EXPECTED_TYPES[name]
    assert pprof.candidate_types(info) == {EXPECTED_TYPES[name]}
    assert not info.is_empty and info.sample_count > 0
    assert info.compressed_size == len(data)
    assert info.decompressed_size == len(gzip.decompress(data))
    # recorded on 2026-11-26 around 00:41:56 UTC
    assert 1_795_653_700 * 10**9 < info.time_nanos < 1_795_653_800 * 10**9
    assert info.period_type is not None


def test_fixture_headers_match_what_go_wrote() -> None:
    cpu = pprof.inspect(fixture("cpu"))
    assert cpu.sample_types == (("samples", "count"), ("cpu", "nanoseconds"))
    assert cpu.period_type == ("cpu", "nanoseconds")
    assert cpu.period == 10_000_000  # 100 Hz
    assert cpu.duration_nanos > 2 * 10**9  # a ?seconds=2 capture
    assert cpu.sample_count == 74

    heap = pprof.inspect(fixture("heap"))
    assert heap.sample_types == (
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    )
    assert heap.period_type == ("space", "bytes")
    assert heap.duration_nanos == 0

    # allocs carries two samples whose values are all zero; they still count as samples
    allocs = pprof.inspect(fixture("allocs"))
    assert (allocs.sample_count, allocs.zero_value_samples) == (5, 2)


def test_block_and_mutex_headers_are_identical_so_the_leaf_frame_decides() -> None:
    block = pprof.inspect(fixture("block"))
    mutex = pprof.inspect(fixture("mutex"))
    for info in (block, mutex):
        assert info.sample_types == tuple(CONTENTION)
        assert info.period_type == ("contentions", "count")
        assert info.period == 1
    assert (block.contention_kind, mutex.contention_kind) == ("block", "mutex")


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_raw_uncompressed_protobuf_is_accepted(name: str) -> None:
    raw = gzip.decompress(fixture(name))
    info = pprof.inspect(raw)
    assert info.detected_type == EXPECTED_TYPES[name]
    assert info.compressed_size == info.decompressed_size == len(raw)
    assert pprof.decompress(raw, MIB) == raw
    assert pprof.sniff(raw) is None


def test_decompress_returns_the_protobuf_and_handles_concatenated_members() -> None:
    raw = gzip.decompress(fixture("goroutine"))
    assert pprof.decompress(fixture("goroutine"), MIB) == raw
    two_members = gzip.compress(raw[:700]) + gzip.compress(raw[700:])
    assert pprof.decompress(two_members, MIB) == raw
    assert pprof.inspect(two_members).detected_type == "goroutine"


# --- sniffing ---------------------------------------------------------------------------------------------

GO_HEAP_DEBUG1 = b"""heap profile: 3: 1574208 [3: 1574208] @ heap/1048576
1: 524288 [1: 524288] @ 0x4a3c5d 0x4a3b8a 0x43aed8 0x46a2e1
#\t0x4a3c5c\tmain.leak+0x3c\t/src/main.go:21
"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "html"),
        (b"\r\n  \t<!doctype HTML>", "html"),
        (b"<HTML><head><title>/debug/pprof/</title>", "html"),
        (b'\xef\xbb\xbf  <html lang="en">', "html"),
        (b'{"error":"not found"}', "json"),
        (b'  [{"a":1}]', "json"),
        (GO_HEAP_DEBUG1, "text"),
        (b"goroutine profile: total 6\n3 @ 0x43b1d6 0x46a2e1\n", "text"),
        (b"Unknown profile\n", "text"),
        (b"Could not enable CPU profiling: cpu profiling already in use\n", "text"),
        (b"   \n\n", "text"),
        ("profil d'erreur: durée dépassée\n".encode(), "text"),
        (b"\x1f\x8b\x08\x00", None),  # gzip magic: leave it to decompress()
        (bytes(range(256)), None),
    ],
)
def test_sniff(body: bytes, reason: str | None) -> None:
    assert pprof.sniff(body) == reason


def test_sniff_forgives_a_multibyte_character_cut_by_the_window() -> None:
    body = b"a" * (pprof.SNIFF_WINDOW_BYTES - 1) + "é".encode()  # 2 bytes: the window cuts it
    assert pprof.sniff(body) == "text"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html>\n<p>Login</p>", "html"),
        (b'{"code":404}', "json"),
        (GO_HEAP_DEBUG1, "text"),
        (b"not a profile", "text"),
    ],
)
def test_inspect_rejects_what_sniff_recognises(body: bytes, reason: str) -> None:
    with pytest.raises(PprofError) as caught:
        pprof.inspect(body)
    assert caught.value.reason == reason
    assert caught.value.message
    assert isinstance(caught.value, ValueError)


# --- broken gzip ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [2, 10, 300, -8, -1])
def test_truncated_gzip(keep: int) -> None:
    data = fixture("heap")
    with pytest.raises(PprofError) as caught:
        pprof.inspect(data[:keep])
    assert caught.value.reason == "truncated"


def test_corrupt_gzip() -> None:
    data = bytearray(fixture("heap"))
    data[-6] ^= 0xFF  # inside the CRC32 trailer
    with pytest.raises(PprofError) as caught:
        pprof.inspect(bytes(data))
    assert caught.value.reason == "corrupt-gzip"

    with pytest.raises(PprofError) as caught:
        pprof.inspect(fixture("heap") + b"trailing junk")
    assert caught.value.reason == "corrupt-gzip"

    with pytest.raises(PprofError) as caught:
        pprof.inspect(b"\x1f\x8b" + b"\x00" * 40)  # magic, then not a gzip header
    assert caught.value.reason == "corrupt-gzip"


def test_gzip_of_nothing_is_empty_and_gzip_of_garbage_is_not_protobuf() -> None:
    with pytest.raises(PprofError) as caught:
        pprof.inspect(gzip.compress(b""))
    assert caught.value.reason == "empty"

    garbage = random.Random(7).randbytes(4096)
    with pytest.raises(PprofError) as caught:
        pprof.inspect(gzip.compress(garbage))
    assert caught.value.reason == "not-protobuf"


def test_garbage_bytes_are_not_gzip() -> None:
    rng = random.Random(42)
    for _ in range(50):
        garbage = b"\x00\xff" + rng.randbytes(rng.randrange(1, 2000))
        with pytest.raises(PprofError) as caught:
            pprof.inspect(garbage)
        assert caught.value.reason == "not-gzip"
        with pytest.raises(PprofError):
            pprof.decompress(garbage, MIB)


def _gzip_bomb(total_bytes: int) -> bytes:
    """One gzip member holding ``total_bytes`` zeros (a multiple of 1 MiB), ~1 KB per MiB, built in well under a
    second: after a full flush the compressor forgets its history, so every further MiB of zeros compresses to
    the same bytes, which are repeated; the trailer's CRC and size are computed for the whole stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    head = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-8]  # final empty block, without the trailer written for 2 MiB
    crc = 0
    for _ in range(total_bytes // MIB):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, total_bytes & 0xFFFFFFFF)
    return head + block * (total_bytes // MIB - 1) + end + trailer


def test_the_bomb_builder_makes_a_valid_gzip_stream() -> None:
    assert gzip.decompress(_gzip_bomb(8 * MIB)) == bytes(8 * MIB)


@pytest.fixture(scope="module")
def gigabyte_bomb() -> bytes:
    return _gzip_bomb(1024 * MIB)


def test_gzip_bomb_fails_fast_with_bounded_memory(gigabyte_bomb: bytes) -> None:
    assert len(gigabyte_bomb) < 2 * MIB  # 1 GiB of zeros squeezes to ~1 MB
    cap = 16 * MIB
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(PprofError) as caught:
            pprof.inspect(gigabyte_bomb, max_decompressed=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too-large"
    assert time.monotonic() - started < 10  # inflating the whole GiB would take several seconds more
    assert peak < cap + 8 * MIB  # the cap plus one chunk, never the gigabyte


def test_gzip_bomb_fails_under_the_default_cap(gigabyte_bomb: bytes) -> None:
    with pytest.raises(PprofError) as caught:
        pprof.decompress(gigabyte_bomb, pprof.MAX_DECOMPRESSED_BYTES_DEFAULT)
    assert caught.value.reason == "too-large"


def test_cap_is_exact() -> None:
    raw = gzip.decompress(fixture("cpu"))
    assert pprof.decompress(fixture("cpu"), len(raw)) == raw
    with pytest.raises(PprofError) as caught:
        pprof.decompress(fixture("cpu"), len(raw) - 1)
    assert caught.value.reason == "too-large"
    with pytest.raises(PprofError) as caught:
        pprof.inspect(raw, max_decompressed=len(raw) - 1)
    assert caught.value.reason == "too-large"


# --- hand-built profiles ----------------------------------------------------------------------------------


def test_zero_sample_profile_is_empty_not_an_error() -> None:
    raw = build_profile(CONTENTION, [], period_type=("contentions", "count"), period=1)
    info = pprof.inspect(gzip.compress(raw))
    assert info.is_empty and info.sample_count == 0
    # no stacks: block and mutex cannot be told apart
    assert info.detected_type is None
    assert pprof.candidate_types(info) == {"block", "mutex"}


@pytest.mark.parametrize(
    ("leaf", "kind"),
    [
        ("sync.(*Mutex).Unlock", "mutex"),
        ("sync.(*RWMutex).RUnlock", "mutex"),
        ("runtime.unlock", "mutex"),
        ("runtime._LostContendedRuntimeLock", "mutex"),
        ("sync.(*Mutex).Lock", "block"),
        ("sync.(*Cond).Wait", "block"),
        ("runtime.chanrecv1", "block"),
        ("runtime.selectgo", "block"),
    ],
)
def test_contention_kind_from_the_leaf_frame(leaf: str, kind: str) -> None:
    raw = build_profile(
        CONTENTION,
        [([1, 2], [3, 1000])],
        functions={1: leaf, 2: "main.worker"},
        period_type=("contentions", "count"),
        period=1,
    )
    assert pprof.inspect(raw).detected_type == kind


def test_the_leaf_is_the_first_location_not_a_caller() -> None:
    # a caller has "Unlock" in its name, but the sample's leaf frame is a channel receive
    raw = build_profile(CONTENTION, [([1, 2], [1, 5])], functions={1: "runtime.chanrecv1", 2: "main.releaseAndUnlock"})
    assert pprof.inspect(raw).detected_type == "block"


@pytest.mark.parametrize(
    ("sample_types", "expected"),
    [
        ([("samples", "count"), ("cpu", "nanoseconds")], "cpu"),
        ([("inuse_space", "bytes")], "heap"),
        ([("goroutine", "count")], "goroutine"),
        ([("threadcreate", "count")], "threadcreate"),
        ([("wall", "nanoseconds")], None),
        ([], None),
    ],
)
def test_detect_type_from_sample_types(sample_types: list[tuple[str, str]], expected: str | None) -> None:
    info = pprof.inspect(build_profile(sample_types, [([1], [1] * len(sample_types))]))
    assert pprof.detect_type(info) == expected == info.detected_type


def test_values_all_zero_are_counted_packed_or_not() -> None:
    types = [("goroutine", "count"), ("extra", "count")]
    raw = build_profile(types, [([1], [0, 0]), ([1], [0, 7]), ([1], [5, 0])])
    # same three samples with values written unpacked, one varint per value
    unpacked = b"".join(
        [f_len(1, f_var(1, 1) + f_var(2, 2)), f_len(1, f_var(1, 3) + f_var(2, 2))]
        + [f_len(2, f_var(1, 1) + f_var(2, a) + f_var(2, b)) for a, b in ((0, 0), (0, 7), (5, 0))]
        + [f_len(6, s) for s in (b"", b"goroutine", b"count", b"extra")]
    )
    for data in (raw, unpacked):
        info = pprof.inspect(data)
        assert (info.sample_count, info.zero_value_samples) == (3, 1)


def test_negative_and_large_int64_header_fields() -> None:
    raw = build_profile([("goroutine", "count")], [([1], [1])], time_nanos=-5)
    assert pprof.inspect(raw).time_nanos == -5
    big = 2**62 + 3
    assert pprof.inspect(build_profile([("goroutine", "count")], [([1], [1])], time_nanos=big)).time_nanos == big


@pytest.mark.parametrize(
    "raw",
    [
        f_var(1, 5) + f_len(6, b""),  # sample_type must be a message, not a varint
        f_len(9, b"xx") + f_len(6, b""),  # time_nanos must be a varint
        f_len(6, b"not empty"),  # string_table[0] must be ""
        f_len(1, f_var(1, 9)) + f_len(6, b""),  # string index out of range
        f_len(2, b""),  # no string table at all
        f_len(6, b"") + b"\x0b",  # group wire type
        f_len(6, b"") + b"\x12\x05ab",  # length past the end
        f_len(6, b"") + b"\x48\xff\xff",  # varint cut short
    ],
)
def test_malformed_protobuf(raw: bytes) -> None:
    with pytest.raises(PprofError) as caught:
        pprof.inspect(gzip.compress(raw))
    assert caught.value.reason == "not-protobuf"


def test_pprof_error_carries_reason_and_message() -> None:
    err = PprofError("html", "an HTML page")
    assert (err.reason, err.message, str(err)) == ("html", "an HTML page", "html: an HTML page")


def test_profile_info_is_immutable() -> None:
    info = pprof.inspect(fixture("heap"))
    assert isinstance(info, ProfileInfo)
    with pytest.raises(AttributeError):
        info.sample_count = 0  # type: ignore[misc]


def test_five_megabyte_profile_inspects_in_reasonable_time() -> None:
    rng = random.Random(3)
    functions = {i: f"github.com/acme/svc/pkg{i % 50}.(*T{i}).Method{i}" for i in range(1, 2001)}
    heap_types = [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count")]
    base = build_profile(heap_types, [], functions=functions, period_type=("space", "bytes"), period=524288)
    # 1000 distinct 32-frame samples, repeated: building 50k distinct ones would cost more than inspecting them
    distinct = b"".join(
        f_len(2, f_len(1, packed(rng.randrange(1, 2001) for _ in range(32))) + f_len(2, packed([5, 9000, 5])))
        for _ in range(1000)
    )
    raw = base + distinct * 70  # protobuf fields may come in any order
    data = gzip.compress(raw, 6)
    assert len(raw) > 4 * MIB
    started = time.monotonic()
    info = pprof.inspect(data)
    elapsed = time.monotonic() - started
    assert info.sample_count == 70_000
    assert info.detected_type == "heap"
    # ~0.1 s on an idle laptop; the bound only catches an accidental quadratic walk
    assert elapsed < 10


# --- cooperative (streaming) inspection: what a gevent worker runs -----------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_cooperative_inspection_gives_the_same_answer_on_every_fixture(name: str) -> None:
    data = fixture(name)
    sizes: list[int] = []
    assert pprof.inspect(data, pause=lambda: None, on_inflate=sizes.append) == pprof.inspect(data)
    assert sizes and sizes == sorted(sizes)  # told before each chunk is kept, growing
    assert sizes[-1] == pprof.inspect(data).decompressed_size


def test_cooperative_inspection_pauses_every_few_hundred_kilobytes() -> None:
    functions = {i: f"pkg.F{i}" for i in range(1, 101)}
    base = build_profile([("inuse_space", "bytes")], [], functions=functions)
    raw = base + f_len(2, f_len(1, packed([1, 2, 3])) + f_len(2, packed([7]))) * 200_000
    pauses = 0

    def pause() -> None:
        nonlocal pauses
        pauses += 1

    info = pprof.inspect(gzip.compress(raw, 1), pause=pause)
    assert info == pprof.inspect(gzip.compress(raw, 1))
    assert info.sample_count == 200_000
    # one pause per 256 KiB inflated plus one per 64 KiB walked: no step runs over a big buffer unbroken
    assert pauses >= len(raw) // (64 * 1024)


def test_a_bomb_is_cut_at_the_cap_while_streaming(gigabyte_bomb: bytes) -> None:
    cap = 16 * MIB
    told: list[int] = []
    with pytest.raises(PprofError) as caught:
        pprof.inspect(gigabyte_bomb, max_decompressed=cap, pause=lambda: None, on_inflate=told.append)
    assert caught.value.reason == "too-large"
    assert max(told) <= cap  # nothing past the cap was ever kept


def test_on_inflate_can_stop_a_bomb_before_the_cap(gigabyte_bomb: bytes) -> None:
    class Refused(Exception):
        pass

    def budget(total: int) -> None:
        if total > 4 * MIB:
            raise Refused

    tracemalloc.start()
    try:
        with pytest.raises(Refused):
            pprof.inspect(gigabyte_bomb, pause=lambda: None, on_inflate=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB
