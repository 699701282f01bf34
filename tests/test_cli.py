"""``kubectl profefe``: every subcommand in-process against the sandbox API server, profefe and pprof farm (real
sockets on loopback), plus the installed console script run as a real subprocess (piped, and on a pty)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kprofefe_sandbox.farm import Behavior, PprofFarm, Target, payload
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod
from kprofefe_sandbox.processes import free_port
from kprofefe_sandbox.profefe import ProfefeServer

from kprofefe_tasks.cli import command_index, common, main
from kprofefe_tasks.cli.output import Progress, human_age, table
from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.io.profefe import ProfefeClient
from tests.conftest import Stack

FIXTURES = Path(__file__).parent / "fixtures" / "pprof"
CONSOLE_SCRIPT = Path(sys.executable).parent / "kubectl-profefe"
ENABLE = "profefe.com/enable"
FILE_RE = r"profile-{ptype}-{pod}-\d{{10}}\.pb\.gz"
SUBPROCESS_TIMEOUT = 60  # s: generous for a loaded 2-core machine; a normal run takes about 2 s


@pytest.fixture(autouse=True)
def _no_profefe_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads KPROFEFE_PROFEFE_URL as the default URL; a developer's shell must not change test outcomes.
    monkeypatch.delenv(common.PROFEFE_URL_ENV, raising=False)


@pytest.fixture
def kube() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as server:
        yield server


@pytest.fixture
def profefe() -> Iterator[ProfefeServer]:
    with ProfefeServer() as server:
        yield server


@pytest.fixture
def farm() -> Iterator[PprofFarm]:
    with PprofFarm() as f:
        yield f


@pytest.fixture
def kubeconfig(kube: KubeAPIServer, tmp_path: Path) -> Path:
    """The context's namespace is "web": commands without -n must work there (kube-profefe used "default")."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="web")


def add_pod(
    kube: KubeAPIServer,
    farm: PprofFarm,
    name: str,
    namespace: str = "web",
    *,
    behavior: Behavior = Behavior.GO,
    enabled: bool = True,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> Target:
    """A pod backed by its own farm target on 127.0.0.1:<free port> (the port annotated, as pod IPs are shared)."""
    target = farm.add("127.0.0.1", 0, behavior=behavior)
    notes = dict(annotations or {})
    if enabled:
        notes.setdefault(ENABLE, "true")
        notes.setdefault("profefe.com/port", str(target.port))
    kube.add_pod(
        make_pod(
            name,
            namespace,
            annotations=notes,
            labels=labels,
            ip="127.0.0.1",
            containers=[("app", [target.port])],
        )
    )
    return target


def run(capsys: pytest.CaptureFixture[str], *argv: str, prog: str | None = None) -> tuple[int, str, str]:
    code = main(list(argv), prog=prog)
    out, err = capsys.readouterr()
    return code, out, err


def with_time(body: bytes, moment: datetime) -> bytes:
    """The profile with ``time_nanos`` set to ``moment`` (a repeated scalar field: the last one wins)."""
    nanos = int(moment.timestamp() * 1e9)
    tag = bytearray([0x48])  # field 9 (time_nanos), varint
    while True:
        low = nanos & 0x7F
        nanos >>= 7
        tag.append(low | (0x80 if nanos else 0))
        if not nanos:
            break
    return gzip.compress(gzip.decompress(body) + bytes(tag))


def proxy_paths(kube: KubeAPIServer) -> list[str]:
    return [path for _, path, _ in kube.requests if "/proxy/" in path]


# -- capture ---------------------------------------------------------------------------------------------------


def test_capture_through_the_api_server_writes_kube_profefe_file_names(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path, tmp_path: Path
) -> None:
    api = add_pod(kube, farm, "api-1")
    elsewhere = add_pod(kube, farm, "api-1", "other")  # same name, other namespace: not in the context's scope
    out_dir = tmp_path / "out"

    code, out, err = run(
        capsys, "--kubeconfig", str(kubeconfig), "capture", "--seconds", "1", "--output-dir", str(out_dir)
    )

    assert code == 0, err
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.pb.gz"))
    assert len(files) == len(PROFILE_TYPES)
    for ptype in PROFILE_TYPES:
        (path,) = [f for f in files if re.fullmatch("web/" + FILE_RE.format(ptype=ptype, pod="api-1"), f)]
        assert (out_dir / path).read_bytes() == payload(ptype)
        assert str(out_dir / path) in out  # the summary's DETAIL is the file
    assert api.requests["cpu"] == 1 and api.requests["heap"] == 1
    assert sum(elsewhere.requests.values()) == 0
    assert len(proxy_paths(kube)) == len(PROFILE_TYPES)
    assert any(p.endswith(f"/pods/api-1:{api.port}/proxy/debug/pprof/profile") for p in proxy_paths(kube))
    assert out.splitlines()[0].split() == ["POD", "NAMESPACE", "TYPE", "OUTCOME", "SIZE", "DETAIL"]
    assert "[6/6]" in err  # plain progress lines when stderr is not a terminal


def test_capture_direct_dials_the_pod_ip_and_accepts_flags_after_the_subcommand(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path, tmp_path: Path
) -> None:
    target = add_pod(kube, farm, "db-0", "data")
    out_dir = tmp_path / "out"

    code, _, err = run(
        capsys,
        "capture",
        "db-0",
        "-t",
        "heap,goroutine",
        "-t",
        "cpu",
        "--seconds",
        "1",
        "--direct",
        "--output-dir",
        str(out_dir),
        "-n",
        "data",
        "--kubeconfig",
        str(kubeconfig),
    )

    assert code == 0, err
    assert sorted(p.name.split("-")[1] for p in (out_dir / "data").iterdir()) == ["cpu", "goroutine", "heap"]
    assert proxy_paths(kube) == []
    assert target.requests["heap"] == 1 and target.requests["block"] == 0


def test_capture_pushes_to_profefe_with_labels_and_pins_the_json_shape(
    capsys: pytest.CaptureFixture[str],
    kube: KubeAPIServer,
    farm: PprofFarm,
    profefe: ProfefeServer,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    add_pod(kube, farm, "api-1", labels={"app.kubernetes.io/name": "api", "app.kubernetes.io/version": "1.2"})

    code, out, err = run(
        capsys,
        "--kubeconfig",
        str(kubeconfig),
        "--profefe-hostport",
        profefe.url,
        "capture",
        "-t",
        "heap,cpu",
        "--seconds",
        "1",
        "-o",
        "json",
    )

    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"items", "counts"}
    assert data["counts"] == {"ok": 2}
    assert [i["type"] for i in data["items"]] == ["cpu", "heap"]  # profile type order, not finishing order
    item = data["items"][1]
    assert set(item) == {
        "namespace",
        "pod",
        "service",
        "type",
        "outcome",
        "reason",
        "bytes",
        "seconds",
        "where",
        "detail",
        "round",  # this run's id: the capture_id label's source, as a worker round's id is
        "task_id",  # empty: the CLI runs no task (the same record as a worker's result)
    }
    assert (item["namespace"], item["pod"], item["service"], item["outcome"]) == ("web", "api-1", "api", "ok")
    assert len(item["round"]) == 12 and item["task_id"] == ""
    assert item["bytes"] == len(payload("heap"))
    stored = {p.id: p for p in profefe.profiles}
    assert set(stored) == {i["where"] for i in data["items"]}
    heap = stored[item["where"]]
    assert (heap.service, heap.type, heap.body) == ("api", "heap", payload("heap"))
    labels = {k: v for k, v in heap.labels.items() if k != "capture_id"}
    assert labels == {
        "namespace": "web",
        "pod": "api-1",
        "container": "app",
        "node": "node-1",
        "version": "1.2",
        "from": "kprofefe-tasks",
    }
    assert not (tmp_path / "web").exists()


def test_a_failing_target_exits_1_and_the_summary_shows_its_error(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path, tmp_path: Path
) -> None:
    add_pod(kube, farm, "good")
    add_pod(kube, farm, "broken", behavior=Behavior.HTML)

    code, out, err = run(
        capsys,
        "--kubeconfig",
        str(kubeconfig),
        "capture",
        "-t",
        "heap",
        "--output-dir",
        str(tmp_path / "out"),
        "-o",
        "wide",
    )

    assert code == 1
    assert out.splitlines()[0].split() == [
        "POD",
        "NAMESPACE",
        "TYPE",
        "OUTCOME",
        "SIZE",
        "DETAIL",
        "SERVICE",
        "REASON",
        "SECONDS",
    ]
    assert "invalid-html" in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["good"].split()[3] == "ok"
    assert rows["broken"].split()[3] == "failed"
    assert "not a pprof profile" in rows["broken"]
    assert "1 failed, 1 ok" in err


def test_no_pod_matching_exits_1_with_a_reason(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path
) -> None:
    add_pod(kube, farm, "plain", enabled=False)

    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "capture", "-l", "app=nothing")
    assert (code, out) == (1, "")
    assert err.strip() == 'error: no pod to capture in namespace "web" with selector "app=nothing"'

    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "capture")
    assert (code, out) == (1, "")
    assert "1 skipped: not-enabled 1" in err and "kubectl profefe targets" in err

    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "capture", "ghost")
    assert (code, out) == (1, "")
    assert 'pods "ghost" not found in namespace "web"' in err


def test_a_named_pod_is_captured_without_annotations_on_the_given_port(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path, tmp_path: Path
) -> None:
    target = add_pod(kube, farm, "legacy", enabled=False)
    kube.replace_pod(
        make_pod("legacy", "web", ip="127.0.0.1", ready=False, containers=[("app", [target.port])])
    )  # failing its readiness probe: often why someone wants a profile

    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "targets", "legacy", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["targets"][0]["port"] == 6060  # no annotation, no flag: Go's conventional port

    code, _, err = run(
        capsys,
        "--kubeconfig",
        str(kubeconfig),
        "capture",
        "legacy",
        "--port",
        str(target.port),
        "-t",
        "goroutine",
        "--output-dir",
        str(tmp_path),
    )
    assert code == 0, err
    assert target.requests["goroutine"] == 1


def test_parallel_bounds_captures_in_flight_and_cpu_profiles_never_overlap_on_a_pod(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path, tmp_path: Path
) -> None:
    pods = [add_pod(kube, farm, f"api-{i}") for i in range(3)]
    farm.reset_counters()

    code, _, err = run(
        capsys,
        "--kubeconfig",
        str(kubeconfig),
        "capture",
        "--seconds",
        "1",
        "--parallel",
        "2",
        "-t",
        "cpu,heap",
        "--output-dir",
        str(tmp_path),
    )

    assert code == 0, err
    assert 1 <= farm.peak_concurrent_requests() <= 2
    assert all(p.cpu_concurrent_max == 1 and p.cpu_refused == 0 for p in pods)


# -- targets ---------------------------------------------------------------------------------------------------


def test_targets_lists_targets_and_skip_reasons_in_the_context_namespace(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path
) -> None:
    api = add_pod(kube, farm, "api-1", annotations={"profefe.com/service": "api", "profefe.com/types": "heap,cpu"})
    add_pod(kube, farm, "plain", enabled=False)
    add_pod(kube, farm, "typo", enabled=False, annotations={ENABLE: "true", "profefe.com/port": "http-pprof"})
    add_pod(kube, farm, "elsewhere", "other")

    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "targets")

    assert code == 0, err
    first, second = out.split("\n\n")
    assert first + "\n" == table(
        ["NAMESPACE", "POD", "SERVICE", "ADDRESS", "TYPES"],
        [["web", "api-1", "api", f"127.0.0.1:{api.port}", "heap,cpu"]],
    )
    lines = second.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "SKIP", "DETAIL"]
    assert lines[1].split()[:3] == ["web", "plain", "not-enabled"]
    assert lines[2].split()[:3] == ["web", "typo", "bad-port"]
    assert "elsewhere" not in out

    code, out, _ = run(capsys, "--kubeconfig", str(kubeconfig), "targets", "-A", "-o", "yaml")
    data = yaml.safe_load(out)
    assert code == 0
    assert set(data) == {"targets", "skipped"}
    assert [(t["namespace"], t["pod"]) for t in data["targets"]] == [("other", "elsewhere"), ("web", "api-1")]
    assert set(data["targets"][1]) == {
        "namespace",
        "pod",
        "uid",
        "ip",
        "port",
        "path",
        "service",
        "container",
        "node",
        "types",
        "labels",
    }
    assert data["targets"][1]["types"] == ["heap", "cpu"]
    assert data["targets"][1]["labels"]["pod"] == "api-1"
    assert data["skipped"][0] == {
        "namespace": "web",
        "pod": "plain",
        "reason": "not-enabled",
        "detail": 'no profefe.com/enable: "true" annotation',
    }

    code, out, _ = run(capsys, "--kubeconfig", str(kubeconfig), "targets", "-n", "other", "-o", "wide")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "NAMESPACE",
        "POD",
        "SERVICE",
        "ADDRESS",
        "TYPES",
        "PATH",
        "CONTAINER",
        "NODE",
    ]
    assert out.splitlines()[1].split()[:2] == ["other", "elsewhere"]


# -- get / merge -----------------------------------------------------------------------------------------------


@pytest.fixture
def stored(profefe: ProfefeServer) -> dict[str, str]:
    """Three profiles of "api": heap 10 minutes ago, cpu 20 minutes ago, heap 2 hours ago. Returns their ids."""
    client = ProfefeClient(profefe.url)
    now = datetime.now(UTC)
    ids = {}
    for name, ptype, age, labels in (
        ("recent-heap", "heap", timedelta(minutes=10), {"namespace": "web", "pod": "api-1", "node": "n1", "from": "x"}),
        ("recent-cpu", "cpu", timedelta(minutes=20), {"pod": "api-2"}),
        ("old-heap", "heap", timedelta(hours=2), {}),
    ):
        body = with_time((FIXTURES / f"{ptype}.pb.gz").read_bytes(), now - age)
        ids[name] = client.upload(body, service="api", ptype=ptype, labels=labels).id
    return ids


def test_get_profiles_defaults_to_the_last_hour(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer, stored: dict[str, str]
) -> None:
    code, out, err = run(capsys, "get", "profiles", "--service", "api", "--profefe-hostport", profefe.url)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "SERVICE", "TYPE", "CREATED", "AGE", "LABELS"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[2]) for r in rows] == [(stored["recent-cpu"], "cpu"), (stored["recent-heap"], "heap")]
    assert rows[0][4] == "20m" and rows[1][4] == "10m"
    assert rows[1][5] == "namespace=web,pod=api-1,+2"

    code, out, _ = run(
        capsys,
        "get",
        "profiles",
        "--service",
        "api",
        "--from",
        "3h",
        "--type",
        "heap",
        "--profefe-hostport",
        profefe.url,
    )
    assert [line.split()[0] for line in out.splitlines()[1:]] == [stored["old-heap"], stored["recent-heap"]]

    code, out, _ = run(
        capsys,
        "get",
        "profiles",
        "--service",
        "api",
        "-o",
        "wide",
        "--label",
        "pod=api-1",
        "--profefe-hostport",
        profefe.url,
    )
    assert out.splitlines()[1].split()[5] == "from=x,namespace=web,node=n1,pod=api-1"


def test_get_profiles_json_and_name_shapes(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer, stored: dict[str, str]
) -> None:
    code, out, _ = run(capsys, "get", "profiles", "--service", "api", "-o", "json", "--profefe-hostport", profefe.url)
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"items"}
    first = data["items"][0]
    assert set(first) == {"id", "service", "type", "created_at", "labels"}
    assert (first["id"], first["service"], first["type"], first["labels"]) == (
        stored["recent-cpu"],
        "api",
        "cpu",
        {"pod": "api-2"},
    )
    assert datetime.fromisoformat(first["created_at"]) > datetime.now(UTC) - timedelta(minutes=21)

    code, out, _ = run(
        capsys, "get", "profiles", "--service", "api", "-o", "name", "--limit", "1", "--profefe-hostport", profefe.url
    )
    assert out == f"profile/{stored['recent-heap']}\n"


def test_empty_results_are_a_note_on_stderr_and_exit_0(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer
) -> None:
    code, out, err = run(capsys, "get", "profiles", "--service", "nobody", "--profefe-hostport", profefe.url)
    assert (code, out) == (0, "")
    assert err.startswith("No profiles found for service 'nobody' between ")

    code, out, err = run(
        capsys, "get", "profiles", "--service", "nobody", "-o", "json", "--profefe-hostport", profefe.url
    )
    assert (code, json.loads(out), err) == (0, {"items": []}, "")

    code, out, err = run(capsys, "get", "services", "--profefe-hostport", profefe.url)
    assert (code, out, err) == (0, "", "No services found.\n")


def test_get_services_and_profile_types(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer, stored: dict[str, str]
) -> None:
    code, out, _ = run(capsys, "get", "services", "--profefe-hostport", profefe.url)
    assert (code, out) == (0, "SERVICE\napi\n")
    code, out, _ = run(capsys, "get", "services", "-o", "json", "--profefe-hostport", profefe.url)
    assert json.loads(out) == {"items": ["api"]}
    code, out, _ = run(capsys, "get", "profile-types", "-o", "name")
    assert out.splitlines()[:2] == ["type/cpu", "type/heap"]


def test_get_profile_by_id_writes_the_stored_bytes(
    capsys: pytest.CaptureFixture[str],
    profefe: ProfefeServer,
    stored: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wanted = next(p for p in profefe.profiles if p.id == stored["recent-cpu"])
    target = tmp_path / "cpu.pb.gz"

    code, out, err = run(
        capsys, "get", "profile", stored["recent-cpu"], "-O", str(target), "--profefe-hostport", profefe.url
    )
    assert code == 0, err
    assert target.read_bytes() == wanted.body
    assert out == "" and f"go tool pprof {target}" in err

    monkeypatch.chdir(tmp_path)  # the default file name lands in the working directory
    code, _, err = run(capsys, "get", "profile", f"profile/{stored['recent-cpu']}", "--profefe-hostport", profefe.url)
    assert code == 0, err
    assert (tmp_path / f"{stored['recent-cpu']}.pb.gz").read_bytes() == wanted.body

    code, _, err = run(capsys, "get", "profile", "nosuchid", "--profefe-hostport", profefe.url)
    assert code == 1 and len(err.splitlines()) == 1 and "nosuchid" in err


def test_merge_downloads_the_merged_profile(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer, stored: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "merged.pb.gz"
    code, _, err = run(
        capsys, "merge", "--service", "api", "--type", "heap", "-O", str(target), "--profefe-hostport", profefe.url
    )
    assert code == 0, err
    newest_heap = next(p for p in profefe.profiles if p.id == stored["recent-heap"])
    assert target.read_bytes() == newest_heap.body  # the double "merges" to the newest profile's bytes
    merge_query = next(r.query for r in profefe.requests if r.path == "/api/0/profiles/merge")
    assert "service=api" in merge_query and "type=heap" in merge_query

    code, _, err = run(
        capsys, "merge", "--service", "api", "--type", "mutex", "-O", str(target), "--profefe-hostport", profefe.url
    )
    assert code == 1
    assert err.startswith("error: no mutex profiles of service 'api' between")


# -- load ------------------------------------------------------------------------------------------------------


def test_load_detects_every_fixture_type_and_stores_it(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer
) -> None:
    files = sorted(FIXTURES.glob("*.pb.gz"))
    assert len(files) == 7

    code, out, err = run(
        capsys,
        "load",
        *map(str, files),
        "--service",
        "local",
        "--label",
        "go=1.19",
        "-o",
        "json",
        "--profefe-hostport",
        profefe.url,
    )

    assert code == 0, err
    items = json.loads(out)["items"]
    assert set(items[0]) == {"file", "type", "bytes", "outcome", "id", "detail"}
    detected = {Path(i["file"]).name.split(".")[0]: i["type"] for i in items}
    assert detected == {
        "allocs": "heap",
        "block": "block",
        "cpu": "cpu",
        "goroutine": "goroutine",
        "heap": "heap",
        "mutex": "mutex",
        "threadcreate": "threadcreate",
    }
    by_id = {p.id: p for p in profefe.profiles}
    for item, path in zip(items, files, strict=True):
        assert item["outcome"] == "stored"
        profile = by_id[item["id"]]
        assert (profile.service, profile.type, profile.body, profile.labels) == (
            "local",
            item["type"],
            path.read_bytes(),
            {"go": "1.19"},
        )


def test_load_reports_a_file_that_is_not_a_profile(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer, tmp_path: Path
) -> None:
    junk = tmp_path / "page.html"
    junk.write_text("<html>not a profile</html>")
    code, out, _ = run(
        capsys, "load", str(junk), str(FIXTURES / "heap.pb.gz"), "--service", "s", "--profefe-hostport", profefe.url
    )
    assert code == 1
    assert "<failed: not a pprof profile (html)>" in out
    assert len(profefe.profiles) == 1


# -- errors ----------------------------------------------------------------------------------------------------


def test_profefe_down_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    for argv in (
        ["get", "services"],
        ["get", "profiles", "--service", "api"],
        ["load", str(FIXTURES / "heap.pb.gz"), "--service", "s"],
    ):
        code, out, err = run(capsys, *argv, "--profefe-hostport", down)
        assert (code, out) == (1, ""), argv
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"error: cannot reach profefe at {down}")

    target = add_pod(kube, farm, "api-1")
    code, _, err = run(capsys, "--kubeconfig", str(kubeconfig), "capture", "--profefe-hostport", down)
    assert code == 1 and err.startswith("error: cannot reach profefe") and len(err.splitlines()) == 1
    assert sum(target.requests.values()) == 0  # failed before spending a CPU window


def test_version_prints_the_client_then_fails_on_profefe_down(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer
) -> None:
    code, out, _ = run(capsys, "version", "-o", "json", "--profefe-hostport", profefe.url)
    assert code == 0
    data = json.loads(out)
    assert data["clientVersion"] == "0.1.0"
    assert data["profefe"]["url"] == profefe.url and data["profefe"]["version"]["go_version"] == "go1.19.8"

    code, out, err = run(capsys, "version", "--profefe-hostport", f"127.0.0.1:{free_port()}")  # host:port works
    assert (code, out) == (1, "Client Version: 0.1.0\n")
    assert err.startswith("error: cannot reach profefe at http://127.0.0.1:") and len(err.splitlines()) == 1


def test_missing_kubeconfig_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "--kubeconfig", str(tmp_path / "missing"), "targets")
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("error: no Kubernetes configuration")


class _Forbidden(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Forbidden",
                "code": 403,
                "message": 'pods is forbidden: User "dev" cannot list resource "pods" in API group "" '
                'in the namespace "web"',
            }
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_forbidden_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, out, err = run(capsys, "-s", f"http://127.0.0.1:{server.server_address[1]}", "-n", "web", "capture")
    finally:
        server.shutdown()
        server.server_close()
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("error: Error from server (Forbidden): listing pods in web: 403 pods is forbidden")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["capture", "-t", "allocs"], "stored as 'heap'"),
        (["capture", "--seconds", "0"], "must be at least 1"),
        (["capture", "--request-timeout", "soon"], "invalid timeout"),
        (["get", "profiles"], "--service"),
        (["get", "profiles", "--service", "a", "--from", "yesterday"], "invalid time"),
        (["get", "profiles", "--service", "a", "--from", "1h", "--to", "2h"], "is after --to"),
        (["load", "x.pb.gz", "--service", "a", "--label", "nolabel"], "expected key=value"),
        (["capture", "a", "-l", "app=x", "--kubeconfig", "/dev/null"], "cannot be used together"),
    ],
)
def test_bad_flag_values_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert message in err
    assert "Traceback" not in err


# -- parsing ---------------------------------------------------------------------------------------------------


def test_durations_and_times() -> None:
    assert common.parse_duration("1h30m") == 5400
    assert common.parse_duration("-30m") == 1800  # kube-profefe's "ago"
    assert common.parse_duration("1.5h") == 5400
    assert common.parse_duration("1d") == 86400
    assert common.parse_duration("250ms") == 0.25
    for bad in ("", "30", "1x", "h", "1h 30m"):
        with pytest.raises(ValueError):
            common.parse_duration(bad)
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert common.time_arg("2h").resolve(now) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert common.time_arg("now").resolve(now) == now
    assert common.time_arg("2024-05-01T10:00:00Z").resolve(now) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert common.time_arg("2024-05-01T12:00:00+02:00").resolve(now) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert common.time_arg("2024-05-01T10:00:00").resolve(now) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # profefe's
    assert common.time_range(None, None, now) == (now - timedelta(hours=1), now)
    assert common.time_range(None, common.time_arg("1d"), now) == (
        now - timedelta(days=1, hours=1),
        now - timedelta(days=1),
    )
    assert common.request_timeout("0") is None
    assert common.request_timeout("5") == 5.0
    assert common.request_timeout("1m30s") == 90.0


def test_kube_profefe_negative_durations_are_accepted_after_from(
    capsys: pytest.CaptureFixture[str], profefe: ProfefeServer, stored: dict[str, str]
) -> None:
    code, out, err = run(
        capsys, "get", "profiles", "--service", "api", "--from", "-3h", "--to", "-1h", "--profefe-hostport", profefe.url
    )
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == [stored["old-heap"]]


def test_subcommand_position_and_kprofefe_collector_compatibility(
    capsys: pytest.CaptureFixture[str],
    kube: KubeAPIServer,
    farm: PprofFarm,
    profefe: ProfefeServer,
    kubeconfig: Path,
) -> None:
    assert command_index(["-n", "web", "--kubeconfig=x", "-A", "demo", "--once", "-n", "z"]) == 4
    assert command_index(["--profefe-hostport", "capture", "get"]) == 2
    assert command_index(["-A"]) is None

    add_pod(kube, farm, "api-1", "team")
    # kube-profefe's collector CronJob arguments, unchanged: capture every annotated pod and push
    code, _, err = run(
        capsys,
        "--all-namespaces",
        "--profefe-hostport",
        profefe.url,
        "--kubeconfig",
        str(kubeconfig),
        "-t",
        "heap",
        prog="kprofefe",
    )
    assert code == 0, err
    assert profefe.count(service="api-1", type="heap") == 1


def test_demo_gets_every_argument_after_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-n", "web", "demo", "--help", prog="kprofefe")
    assert code == 0
    assert out.startswith("usage: kprofefe demo") and "--once" in out


def test_human_age_matches_kubectl() -> None:
    assert [human_age(s) for s in (5, 119, 150, 600, 3600 * 5 + 60, 3600 * 30, 86400 * 3 + 3600, 86400 * 400)] == [
        "5s",
        "119s",
        "2m30s",
        "10m",
        "5h1m",
        "30h",
        "3d1h",
        "400d",
    ]


def test_progress_redraws_one_line_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = Progress(4, stream)
    progress.update(running=2, force=True)
    progress.finished("ok web/a heap", running=1)
    progress.finished("failed web/b cpu: refused", failed=True, running=0)
    progress.close()
    text = stream.getvalue()
    assert text.count("\n") == 2  # the failure, and the final bar; everything else redrawn with \r
    assert "failed web/b cpu: refused\n" in text
    last = text.split("\n")[-2]
    assert "\r" in last and "2/4" in last and "failed 1" in last


# -- the installed console script ------------------------------------------------------------------------------


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", common.PROFEFE_URL_ENV)}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config from the machine
    return env


def test_console_script_piped_prints_plain_progress_and_json(
    kube: KubeAPIServer, farm: PprofFarm, profefe: ProfefeServer, kubeconfig: Path, tmp_path: Path
) -> None:
    add_pod(kube, farm, "api-1")
    env = {**_cli_env(tmp_path), "KUBECONFIG": str(kubeconfig)}

    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "capture", "--seconds", "1", "--push", "-o", "json"],
        env={**env, common.PROFEFE_URL_ENV: profefe.url},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )

    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and progress[-1].startswith("[6/6] ok web/api-1 ")
    ids = [item["where"] for item in json.loads(done.stdout)["items"]]
    assert sorted(ids) == sorted(p.id for p in profefe.profiles)

    raw = subprocess.run(
        [str(CONSOLE_SCRIPT), "get", "profile", ids[0], "-O", "-", "--profefe-hostport", profefe.url],
        env=env,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert raw.returncode == 0
    assert raw.stdout == next(p.body for p in profefe.profiles if p.id == ids[0])


def test_console_script_without_any_kube_configuration_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "capture"],
        env=_cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: no Kubernetes configuration") and len(done.stderr.splitlines()) == 1


def test_console_script_on_a_terminal_draws_a_progress_bar(
    kube: KubeAPIServer, farm: PprofFarm, kubeconfig: Path, tmp_path: Path
) -> None:
    add_pod(kube, farm, "api-1")
    controller, terminal = pty.openpty()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(os.close, controller)
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "capture", "--seconds", "1", "--output-dir", str(tmp_path / "out")],
            env={**_cli_env(tmp_path), "KUBECONFIG": str(kubeconfig)},
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        cleanup.callback(proc.kill)
        screen = b""
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        summary = proc.stdout.read().decode()
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == 0
    text = screen.decode()
    assert "\r" in text and "[########################] 6/6" in text
    assert "[1/6]" not in text  # no plain lines on a terminal
    assert summary.count(" ok ") == 6


# -- --via-queue (real Redis and a real worker process) ---------------------------------------------------------


@pytest.mark.integration
def test_capture_via_queue_hands_the_round_to_the_workers(capsys: pytest.CaptureFixture[str], stack: Stack) -> None:
    target = stack.farm.add("127.0.0.1", 0)
    stack.kube.add_pod(
        make_pod(
            "api-1",
            "web",
            annotations={ENABLE: "true", "profefe.com/port": str(target.port)},
            ip="127.0.0.1",
            containers=[("app", [target.port])],
        )
    )
    stack.kube.add_pod(make_pod("plain", "web", ip="127.0.0.1"))
    stack.worker(concurrency=4)

    code, out, err = run(
        capsys, "capture", "--via-queue", "-n", "web", "-t", "heap,cpu", "--seconds", "1", "-o", "json"
    )

    assert code == 0, err + stack.logs()
    data = json.loads(out)
    assert set(data) == {"round", "discovery", "report"}
    assert data["discovery"]["round"] == data["round"]
    assert (data["discovery"]["targets"], data["discovery"]["captures"]) == (1, 2)
    assert data["discovery"]["skipped"] == {"not-enabled": 1}
    assert (data["report"]["expected"], data["report"]["done"], data["report"]["ok"]) == (2, 2, 2)
    assert sorted(p.type for p in stack.profefe.profiles) == ["cpu", "heap"]
    assert f"round {data['round']}: 1 pod(s), 2 captures queued" in err
