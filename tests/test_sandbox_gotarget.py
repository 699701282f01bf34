"""The real Go pprof target: it builds offline, serves every profile type, and behaves like Go does."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kprofefe_sandbox.gotarget import GoTarget, GoTargetError, GoUnavailableError, build, go_available
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod

pytestmark = pytest.mark.skipif(not go_available(), reason="the Go toolchain ('go') is not installed")

GZIP_MAGIC = b"\x1f\x8b"
# A debug=1 sample line: "<value> <count> @ <pc> <pc> ..." (block/mutex) or "<n>: <bytes> [..] @ ..." (heap).
SAMPLE_LINE = re.compile(r"^\d+(:)? .*@ 0x", re.MULTILINE)


@pytest.fixture(scope="module")
def binary() -> Path:
    return build()


@pytest.fixture(scope="module")
def target(binary: Path) -> Iterator[GoTarget]:
    with GoTarget(binary=binary) as t:
        yield t


def test_build_is_cached_by_source(binary: Path) -> None:
    assert binary.is_file()
    assert build() == binary  # second call reuses the binary instead of rebuilding
    assert binary.parent.parent.name == "gotarget"


def test_missing_toolchain_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no go on PATH
    assert not go_available()
    with pytest.raises(GoUnavailableError, match="not on PATH"):
        build(tmp_path / "cache")


def test_addresses(target: GoTarget) -> None:
    assert target.host == "127.0.0.1"
    assert target.port > 0
    assert target.addr == f"127.0.0.1:{target.port}"
    assert target.base_url == f"http://127.0.0.1:{target.port}/debug/pprof"
    assert target.running


def test_heap_is_a_gzipped_profile(target: GoTarget) -> None:
    resp = requests.get(f"{target.base_url}/heap", timeout=30)
    assert resp.status_code == 200
    assert resp.content[:2] == GZIP_MAGIC
    assert resp.headers["Content-Disposition"] == 'attachment; filename="heap"'


@pytest.mark.parametrize("kind", ["heap", "allocs", "block", "mutex", "goroutine"])
def test_every_profile_has_samples(target: GoTarget, kind: str) -> None:
    # Text form, because counting samples needs no protobuf parser; block and mutex are the ones that stay
    # empty unless the program enables them, and a profile registry rejects empty profiles.
    # A program that just started may not have contended yet: ask until a sample shows, within a deadline.
    deadline = time.monotonic() + 15
    while True:
        text = requests.get(f"{target.base_url}/{kind}", params={"debug": "1"}, timeout=30).text
        if kind == "goroutine" or SAMPLE_LINE.search(text) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if kind == "goroutine":
        assert re.search(r"^goroutine profile: total (\d+)", text, re.MULTILINE)
        assert "main.channelPingPong" in text
    else:
        assert SAMPLE_LINE.search(text), text[:500]


def test_cpu_profile(target: GoTarget) -> None:
    resp = requests.get(f"{target.base_url}/profile", params={"seconds": "1"}, timeout=60)
    assert resp.status_code == 200
    assert resp.content[:2] == GZIP_MAGIC
    assert resp.headers["Content-Disposition"] == 'attachment; filename="profile"'


def test_second_concurrent_cpu_profile_is_refused(target: GoTarget) -> None:
    # Both start together and each holds the profiler for 2 s, so they overlap even on a loaded machine;
    # Go lets exactly one run.
    barrier = threading.Barrier(2)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def fetch() -> None:
        barrier.wait(10)
        resp = requests.get(f"{target.base_url}/profile", params={"seconds": "2"}, timeout=60)
        with lock:
            results.append(resp)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.status_code for r in results) == [200, 500]
    refused = next(r for r in results if r.status_code == 500)
    assert "cpu profiling already in use" in refused.text


def test_unknown_profile_is_gos_404(target: GoTarget) -> None:
    resp = requests.get(f"{target.base_url}/nope", timeout=30)
    assert resp.status_code == 404
    assert resp.text.strip() == "Unknown profile"
    assert resp.headers["X-Go-Pprof"] == "1"


def test_custom_path(binary: Path) -> None:
    with GoTarget(binary=binary, path="/internal/pprof/") as t:
        assert t.base_url.endswith("/internal/pprof")
        heap = requests.get(f"{t.base_url}/heap", timeout=30)
        assert heap.status_code == 200
        assert heap.content[:2] == GZIP_MAGIC
        index = requests.get(f"{t.base_url}/", timeout=30)
        assert index.status_code == 200
        assert "goroutine" in index.text
        assert requests.get(f"{t.url}/debug/pprof/heap", timeout=30).status_code == 404
    assert not t.running


def test_explicit_addr_and_clean_stop(binary: Path) -> None:
    with GoTarget(binary=binary) as first:
        taken = first.addr
        # A second copy on a port in use fails fast with Go's own error, not a hang.
        with pytest.raises(GoTargetError, match="address already in use"):
            GoTarget(taken, binary=binary, start_timeout=20).start()
        pid = first.pid
    assert not first.running
    with GoTarget(taken, binary=binary) as again:  # the port is free again once stopped
        assert again.addr == taken
        assert again.pid != pid


def test_profiles_through_the_kube_api_proxy(target: GoTarget, tmp_path: Path) -> None:
    pod = make_pod("api-1", "prod", annotations={"profefe.com/enable": "true"})
    with KubeAPIServer([pod], proxy_targets={"prod/api-1": target.addr}) as kube:
        proxy = f"{kube.url}/api/v1/namespaces/prod/pods/api-1/proxy/debug/pprof"
        cpu = requests.get(f"{proxy}/profile", params={"seconds": "1"}, timeout=60)
        assert cpu.status_code == 200
        assert cpu.content[:2] == GZIP_MAGIC
        missing = requests.get(f"{proxy}/nope", timeout=30)
        assert missing.status_code == 404
        assert missing.headers["X-Go-Pprof"] == "1"

        from kubernetes import client, config

        cfg = client.Configuration()
        loader: Any = config.load_kube_config
        loader(config_file=str(kube.write_kubeconfig(tmp_path / "kc")), client_configuration=cfg)
        api: Any = client.CoreV1Api(client.ApiClient(cfg))
        heap = api.connect_get_namespaced_pod_proxy_with_path(
            "api-1", "prod", "debug/pprof/heap", _preload_content=False
        )
        assert heap.status == 200
        assert heap.data[:2] == GZIP_MAGIC
