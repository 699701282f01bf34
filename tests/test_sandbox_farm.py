"""The simulated pprof farm, exercised over real loopback sockets with ``requests`` (and raw sockets where
``requests`` would hide what is on the wire)."""

from __future__ import annotations

import gzip
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from kprofefe_sandbox.farm import (
    CPU_BUSY_TEXT,
    TLS_ALERT,
    Behavior,
    PprofFarm,
    Target,
    loopback_addresses,
    profile_name,
)

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent / "fixtures" / "pprof"
SNAPSHOTS = ("heap", "allocs", "block", "mutex", "goroutine", "threadcreate")
BUSY_BODY = CPU_BUSY_TEXT + "\n"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.pb.gz").read_bytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def top_level_fields(message: bytes) -> dict[int, int]:
    """Count of each top-level field in a protobuf message (independent of the farm's own walker)."""
    counts: dict[int, int] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = message[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(message):
        key = varint()
        wire = key & 7
        if wire == 0:
            varint()
        elif wire == 2:
            length = varint()
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise AssertionError(f"bad wire type {wire}")
        counts[key >> 3] = counts.get(key >> 3, 0) + 1
    assert pos == len(message)
    return counts


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def raw_exchange(host: str, port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` and read until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.fixture(scope="module")
def farm() -> Iterator[PprofFarm]:
    """One target per behaviour on 127.0.0.1, ephemeral ports."""
    farm = PprofFarm()
    for behavior in Behavior:
        farm.add("127.0.0.1", 0, behavior=behavior)
    farm.add("127.0.0.1", 0, behavior=Behavior.GZIP_BOMB, size=32 << 20)
    with farm:
        yield farm


def by_behavior(farm: PprofFarm, behavior: Behavior) -> Target:
    return next(t for t in farm.targets if t.behavior is behavior)


# --- pure helpers -------------------------------------------------------------------------------------------


def test_loopback_addresses_skip_0_and_255_and_stay_in_127() -> None:
    assert loopback_addresses(3, "127.1.0.254") == ["127.1.0.254", "127.1.1.1", "127.1.1.2"]
    assert len(set(loopback_addresses(1000))) == 1000
    with pytest.raises(ValueError):
        loopback_addresses(3, "127.255.255.253")


def test_profile_name_classifies_paths() -> None:
    assert profile_name("/debug/pprof", "/debug/pprof/profile") == "cpu"
    assert profile_name("/debug/pprof", "/debug/pprof/heap") == "heap"
    assert profile_name("/debug/pprof", "/debug/pprof/") == "index"
    assert profile_name("/debug/pprof", "/debug/pprofx") == "other"
    assert profile_name("", "/heap") == "heap"


# --- GO -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_go_snapshot_is_the_recorded_payload(farm: PprofFarm, name: str) -> None:
    target = by_behavior(farm, Behavior.GO)
    response = requests.get(f"{target.url}/{name}", timeout=5)
    assert response.status_code == 200
    assert response.content == fixture(name)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert response.headers["Content-Length"] == str(len(fixture(name)))
    assert target.requests[name] >= 1


def test_go_cpu_blocks_for_seconds_and_returns_cpu_profile() -> None:
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0)
        started = time.monotonic()
        response = requests.get(f"{target.url}/profile", params={"seconds": "1"}, timeout=10)
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed >= 0.99
    assert response.content == fixture("cpu")
    assert response.headers["Content-Disposition"] == 'attachment; filename="profile"'
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert target.requests["cpu"] == 1 and target.cpu_refused == 0


def test_go_second_cpu_request_is_refused_like_go() -> None:
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0)
        first: list[requests.Response] = []
        thread = threading.Thread(
            target=lambda: first.append(requests.get(f"{target.url}/profile?seconds=2", timeout=10))
        )
        thread.start()
        wait_until(lambda: farm.in_flight() == 1)
        second = requests.get(f"{target.url}/profile?seconds=2", timeout=10)
        thread.join(10)
    assert second.status_code == 500
    assert second.text == BUSY_BODY
    assert second.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert second.headers["X-Go-Pprof"] == "1"
    assert "Content-Disposition" not in second.headers
    assert first[0].status_code == 200 and first[0].content == fixture("cpu")
    assert target.cpu_refused == 1
    assert target.cpu_concurrent_max == 2
    assert farm.peak_concurrent_cpu_requests() == 2


def test_go_delta_profile_waits_and_is_named_delta() -> None:
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0)
        started = time.monotonic()
        response = requests.get(f"{target.url}/goroutine?seconds=1", timeout=10)
        assert time.monotonic() - started >= 0.99
        assert response.content == fixture("goroutine")
        assert response.headers["Content-Disposition"] == 'attachment; filename="goroutine-delta"'
        bad = requests.get(f"{target.url}/heap?seconds=abc", timeout=5)
        assert bad.status_code == 400 and "seconds" in bad.text


def test_go_debug_index_and_not_found(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.GO)
    text = requests.get(f"{target.url}/heap?debug=1", timeout=5)
    assert text.status_code == 200
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text.text.startswith("heap profile:")
    dump = requests.get(f"{target.url}/goroutine?debug=2", timeout=5)
    assert dump.text.startswith("goroutine 1 [running]:")

    index = requests.get(f"{target.url}/", timeout=5)
    assert index.status_code == 200
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Types of profiles available" in index.text
    assert requests.get(target.url, timeout=5).text == index.text

    unknown = requests.get(f"{target.url}/nosuch", timeout=5)
    assert (unknown.status_code, unknown.text) == (404, "Unknown profile\n")
    assert unknown.headers["X-Go-Pprof"] == "1"

    outside = requests.get(f"http://{target.host}:{target.port}/metrics", timeout=5)
    assert (outside.status_code, outside.text) == (404, "404 page not found\n")
    assert "X-Go-Pprof" not in outside.headers
    assert target.requests["nosuch"] == 1 and target.requests["other"] >= 1


def test_custom_base_path() -> None:
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0, path="/internal/pprof/")
        assert target.url.endswith("/internal/pprof")
        assert requests.get(f"{target.url}/heap", timeout=5).content == fixture("heap")
        assert requests.get(f"http://127.0.0.1:{target.port}/debug/pprof/heap", timeout=5).status_code == 404


def test_write_timeout_is_emulated() -> None:
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0, write_timeout_s=10)
        response = requests.get(f"{target.url}/profile?seconds=10", timeout=5)
        assert response.status_code == 400
        assert response.text == "profile duration exceeds server's WriteTimeout\n"


def test_client_leaving_stops_the_cpu_profile_like_go() -> None:
    """Go's handler sleeps on the request context, so a collector that gives up frees the CPU profiler."""
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0)
        with socket.create_connection(("127.0.0.1", target.port), timeout=5) as sock:
            sock.sendall(b"GET /debug/pprof/profile?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(lambda: farm.in_flight() == 1)
        wait_until(lambda: farm.in_flight() == 0)
        response = requests.get(f"{target.url}/profile?seconds=1", timeout=10)
        assert response.status_code == 200
        assert target.cpu_refused == 0


# --- HTTP plumbing ------------------------------------------------------------------------------------------


def test_keep_alive_by_default_and_close_on_request(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.GO)
    request = b"GET /debug/pprof/mutex HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", target.port), timeout=5) as sock:
        sock.sendall(request + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    body = fixture("mutex")
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert received.count(b"\r\n\r\n" + body) == 2
    assert received.endswith(body)
    assert b"Connection: close" in received


def test_head_request_has_no_body(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.GO)
    response = requests.head(f"{target.url}/heap", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(fixture("heap")))
    assert response.content == b""


def test_add_while_running_port_zero_lookup_and_counters() -> None:
    with PprofFarm() as farm:
        target = farm.add("127.0.0.1", 0)
        assert target.port != 0
        assert farm.target("127.0.0.1", target.port) is target
        with pytest.raises(KeyError):
            farm.target("127.0.0.1", 1)
        for _ in range(3):
            requests.get(f"{target.url}/heap", timeout=5)
        assert farm.total_requests() == 3 and target.requests["heap"] == 3
        assert farm.peak_concurrent_requests() == 1
        farm.reset_counters()
        assert farm.total_requests() == 0 and not target.requests


def test_stop_then_start_again() -> None:
    farm = PprofFarm()
    target = farm.add("127.0.0.1", 0)
    farm.start()
    port = target.port
    farm.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{target.url}/heap", timeout=5)
    with farm:
        assert target.port == port
        assert requests.get(f"{target.url}/heap", timeout=5).status_code == 200


def test_stop_cancels_running_cpu_profiles_promptly() -> None:
    farm = PprofFarm().start()
    target = farm.add("127.0.0.1", 0)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            requests.get(f"{target.url}/profile?seconds=30", timeout=40)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    wait_until(lambda: farm.in_flight() == 1)
    started = time.monotonic()
    farm.stop()
    assert time.monotonic() - started < 5
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)


# --- fault modes --------------------------------------------------------------------------------------------


def test_html(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.HTML)
    response = requests.get(f"{target.url}/heap", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<html>")


def test_text(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.TEXT)
    response = requests.get(f"{target.url}/goroutine", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith("goroutine profile: total")


def test_not_found(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.NOT_FOUND)
    response = requests.get(f"{target.url}/heap", timeout=5)
    assert (response.status_code, response.text) == (404, "Unknown profile\n")
    assert response.headers["X-Go-Pprof"] == "1"
    assert response.headers["Content-Type"].startswith("text/plain")


def test_error_500(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.ERROR_500)
    response = requests.get(f"{target.url}/heap", timeout=5)
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("text/plain")


def test_cpu_busy_refuses_cpu_at_once_and_serves_the_rest(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.CPU_BUSY)
    started = time.monotonic()
    response = requests.get(f"{target.url}/profile?seconds=5", timeout=10)
    assert time.monotonic() - started < 4
    assert (response.status_code, response.text) == (500, BUSY_BODY)
    assert target.cpu_refused >= 1
    assert requests.get(f"{target.url}/heap", timeout=5).content == fixture("heap")


def test_truncated_gzip(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.TRUNCATED_GZIP)
    response = requests.get(f"{target.url}/heap", timeout=5)
    assert response.status_code == 200
    assert response.content == fixture("heap")[: len(fixture("heap")) // 2]
    with pytest.raises(EOFError):
        gzip.decompress(response.content)


def test_gzip_bomb_is_small_and_inflates_to_a_gibibyte(farm: PprofFarm) -> None:
    target = next(t for t in farm.targets if t.behavior is Behavior.GZIP_BOMB and t.size == 1 << 30)
    response = requests.get(f"{target.url}/heap", timeout=30)
    assert response.status_code == 200
    body = response.content
    assert body.startswith(b"\x1f\x8b") and len(body) < 2 << 20
    assert struct.unpack("<I", body[-4:])[0] == 1 << 30  # gzip ISIZE: inflated length mod 2**32
    inflater = zlib.decompressobj(31)
    head = inflater.decompress(body, 16 << 20)
    assert head == bytes(16 << 20) and not inflater.eof


def test_gzip_bomb_is_a_complete_valid_gzip(farm: PprofFarm) -> None:
    target = next(t for t in farm.targets if t.behavior is Behavior.GZIP_BOMB and t.size == 32 << 20)
    body = requests.get(f"{target.url}/heap", timeout=30).content
    inflater = zlib.decompressobj(31)
    inflated = inflater.decompress(body) + inflater.flush()
    assert inflater.eof and not inflater.unused_data
    assert inflated == bytes(32 << 20)


def test_empty_profile_has_zero_samples_for_block_and_mutex(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.EMPTY_PROFILE)
    for name in ("block", "mutex"):
        recorded = top_level_fields(gzip.decompress(fixture(name)))
        assert recorded.get(2, 0) > 0  # the fixtures do have samples: the farm must derive empty ones
        response = requests.get(f"{target.url}/{name}", timeout=5)
        assert response.status_code == 200
        fields = top_level_fields(gzip.decompress(response.content))
        assert fields.get(2, 0) == 0
        assert fields.get(1, 0) == recorded[1] and fields.get(6, 0) > 0  # sample_type, string_table kept
    assert requests.get(f"{target.url}/heap", timeout=5).content == fixture("heap")


def test_garbage(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.GARBAGE)
    response = requests.get(f"{target.url}/heap", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert len(response.content) > 0 and not response.content.startswith(b"\x1f\x8b")


def test_redirect_points_to_the_sink(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.REDIRECT)
    response = requests.get(f"{target.url}/heap", timeout=5, allow_redirects=False)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location == f"http://127.0.0.1:{farm.redirect_port}/elsewhere"
    followed = requests.get(location, timeout=5)
    assert followed.status_code == 200 and followed.headers["Content-Type"].startswith("text/plain")


def test_reset_gives_a_connection_error(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.RESET)
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"{target.url}/heap", timeout=5)
    assert "reset" in str(caught.value).lower()


def test_tls_answers_with_an_alert_record(farm: PprofFarm) -> None:
    target = by_behavior(farm, Behavior.TLS)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{target.url}/heap", timeout=5)
    raw = raw_exchange("127.0.0.1", target.port, b"GET /debug/pprof/heap HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw == TLS_ALERT


def test_slow_drip_defeats_nothing_but_a_read_timeout_and_stop_is_prompt() -> None:
    farm = PprofFarm().start()
    try:
        slow = farm.add("127.0.0.1", 0, behavior=Behavior.SLOW_DRIP, drip_interval_s=2.0)
        # Headers come at once, so the read timeout fires in the body, between drips.
        with pytest.raises((requests.Timeout, requests.ConnectionError)) as caught:
            requests.get(f"{slow.url}/profile", timeout=1)
        assert "timed out" in str(caught.value).lower()

        dripping = farm.add("127.0.0.1", 0, behavior=Behavior.SLOW_DRIP)
        attached = requests.get(f"{dripping.url}/heap", stream=True, timeout=5)
        assert attached.status_code == 200
        drops = attached.iter_content(chunk_size=1)
        assert next(drops) + next(drops) == b"\x1f\x8b"
    finally:
        started = time.monotonic()
        farm.stop()
        stop_seconds = time.monotonic() - started
    assert stop_seconds < 5
    attached.close()


def test_huge_body_streams_without_being_built() -> None:
    farm = PprofFarm().start()
    try:
        huge = farm.add("127.0.0.1", 0, behavior=Behavior.HUGE_BODY)
        before = rss_mib()
        response = requests.get(f"{huge.url}/heap", stream=True, timeout=10)
        assert response.status_code == 200 and "Content-Length" not in response.headers
        received = bytearray()
        for chunk in response.iter_content(chunk_size=64 * 1024):
            received += chunk
            if len(received) >= 1_000_000:
                break
        assert received.startswith(b"\x1f\x8b") and len(received) >= 1_000_000
        assert rss_mib() - before < 200  # a materialised body would be 1 GiB

        small = farm.add("127.0.0.1", 0, behavior=Behavior.HUGE_BODY, size=300_000)
        assert len(requests.get(f"{small.url}/heap", timeout=10).content) == 300_000
    finally:
        started = time.monotonic()
        farm.stop()
        assert time.monotonic() - started < 5
    response.close()


# --- scale --------------------------------------------------------------------------------------------------


def test_many_binds_each_address_on_one_port() -> None:
    port = free_port()
    with PprofFarm.many(200, port=port, first="127.77.0.1") as farm:
        assert len({t.host for t in farm.targets}) == 200
        assert {t.port for t in farm.targets} == {port}
        with requests.Session() as session:
            for target in farm.targets:
                assert session.get(f"{target.url}/heap", timeout=5).content == fixture("heap")
        assert all(t.requests["heap"] == 1 for t in farm.targets)
        assert farm.total_requests() == 200


def test_300_concurrent_cpu_profiles() -> None:
    port = free_port()
    n = 300
    results: list[int] = []
    barrier = threading.Barrier(n)

    with PprofFarm.many(n, port=port, first="127.78.0.1") as farm:

        def fetch(target: Target) -> None:
            barrier.wait(timeout=30)
            response = requests.get(f"{target.url}/profile?seconds=2", timeout=30)
            results.append(response.status_code if response.content == fixture("cpu") else -1)

        threads = [threading.Thread(target=fetch, args=(t,)) for t in farm.targets]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        assert results == [200] * n
        assert elapsed < 10
        assert farm.peak_concurrent_cpu_requests() >= 50  # they overlapped (all 300, unless very loaded)
        assert all(t.cpu_concurrent_max == 1 and t.cpu_refused == 0 for t in farm.targets)


def test_cli_serves_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kprofefe_sandbox.farm",
            "--count",
            "2",
            "--port",
            str(port),
            "--first",
            "127.79.0.1",
            "--fault",
            "not_found",
            "--stats-interval",
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],  # ``-m`` resolves the package from the repository root
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("serving 2 GO targets")
        assert "not_found" in lines[1] and "127.79.0.3" in lines[1]
        good = requests.get(f"http://127.79.0.2:{port}/debug/pprof/heap", timeout=5)
        assert good.content == fixture("heap")
        assert requests.get(f"http://127.79.0.3:{port}/debug/pprof/heap", timeout=5).status_code == 404
        process.terminate()
        assert process.wait(10) == 0
        assert "requests=2" in process.stdout.read()
    finally:
        process.kill()
        process.wait(10)
