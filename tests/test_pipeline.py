"""End to end on real parts: a real Celery worker process, the machine's Redis, the real kubernetes and requests
clients over HTTP to the API server and profefe doubles, and pprof targets (simulated, and a real Go program)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest
import redis
from kprofefe_sandbox import gotarget
from kprofefe_sandbox.farm import Behavior
from kprofefe_sandbox.kubeapi import make_pod

from kprofefe_tasks import tasks
from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.domain.targets import Target, pod_to_target
from kprofefe_tasks.io import pprof
from kprofefe_tasks.io.kube import Kube
from tests.conftest import Stack

pytestmark = pytest.mark.integration

ENABLE = {"profefe.com/enable": "true"}


def run_round(timeout: float = 60.0, **kwargs: object) -> dict:
    summary = tasks.discover.delay(**kwargs).get(timeout=30)
    report = tasks.wait_round(summary["round"], timeout=timeout)
    assert not report.get("timed_out"), report
    return {"summary": summary, "report": report}


def test_a_round_stores_one_profile_per_type_for_ready_annotated_pods_only(stack: Stack) -> None:
    a = stack.farm.add("127.31.0.1", 6060)
    b = stack.farm.add("127.31.0.2", 7070, path="/internal/pprof")
    stack.kube.add_pod(
        make_pod(
            "api-6d5f7c9b8-aaaaa",
            "web",
            annotations=ENABLE,
            ip=a.host,
            owner=("ReplicaSet", "api-6d5f7c9b8"),
            node="node-a",
        )
    )
    stack.kube.add_pod(
        make_pod(
            "billing-0",
            "pay",
            ip=b.host,
            containers=[("app", [7070])],
            node="node-b",
            annotations={
                **ENABLE,
                "profefe.com/port": "7070",
                "profefe.com/path": "/internal/pprof",
                "profefe.com/service": "billing, eu=1",
            },
        )
    )
    stack.kube.add_pod(make_pod("plain", "web", ip="127.31.0.3"))  # not annotated
    stack.kube.add_pod(make_pod("pending", "web", annotations=ENABLE, phase="Pending", ip=None))
    stack.kube.add_pod(make_pod("unready", "web", annotations=ENABLE, ready=False, ip="127.31.0.4"))
    stack.worker()

    result = run_round(namespaces="all", cpu_seconds=1)

    assert result["summary"]["targets"] == 2
    assert result["summary"]["skipped"] == {"not-enabled": 1, "not-ready": 1}  # Pending is filtered server-side
    assert result["report"]["ok"] == 12, stack.logs()
    stored = stack.profefe.profiles
    assert len(stored) == 12
    by_service: dict[str, set[str]] = {}
    for p in stored:
        by_service.setdefault(p.service, set()).add(p.type)
    assert by_service == {"api": set(PROFILE_TYPES), "billing, eu=1": set(PROFILE_TYPES)}
    billing = next(p for p in stored if p.service == "billing, eu=1" and p.type == "heap")
    assert {k: v for k, v in billing.labels.items() if k != "capture_id"} == {
        "namespace": "pay",
        "pod": "billing-0",
        "container": "app",
        "node": "node-b",
        "from": "kprofefe-tasks",
    }
    # the server-side filters went over the wire
    list_queries = [q for m, path, q in stack.kube.requests if path == "/api/v1/pods"]
    assert list_queries and all(q.get("fieldSelector") == "status.phase=Running" for q in list_queries)
    # the CPU request asked for the configured window, at the annotated path
    assert a.requests["cpu"] == 1 and b.requests["cpu"] == 1
    cpu = next(p for p in stored if p.type == "cpu")
    assert gzip.decompress(cpu.body)  # a real gzipped profile reached profefe intact


def test_label_selector_namespace_and_single_pod_scope(stack: Stack) -> None:
    for i, (ns, tier) in enumerate([("web", "front"), ("web", "back"), ("api", "back")], start=1):
        t = stack.farm.add(f"127.31.1.{i}", 6060)
        stack.kube.add_pod(make_pod(f"p{i}", ns, annotations=ENABLE, ip=t.host, labels={"tier": tier}))
    stack.worker()
    result = run_round(namespaces=["web"], selector="tier=back", types=["heap"])
    assert result["summary"]["targets"] == 1
    assert [(p.labels["pod"], p.type) for p in stack.profefe.profiles] == [("p2", "heap")]
    run_round(namespaces=["api"], pods=["p3"], types=["goroutine"])
    assert sorted((p.labels["pod"], p.type) for p in stack.profefe.profiles) == [("p2", "heap"), ("p3", "goroutine")]


def test_paging_lists_every_pod_exactly_once(stack: Stack) -> None:
    for i in range(1, 8):
        t = stack.farm.add(f"127.31.2.{i}", 6060)
        stack.kube.add_pod(make_pod(f"p{i}", "web", annotations=ENABLE, ip=t.host))
    stack.worker(KPROFEFE_KUBE_PAGE_SIZE="3")
    result = run_round(types=["heap"])
    assert result["summary"]["targets"] == 7
    assert sorted(p.labels["pod"] for p in stack.profefe.profiles) == [f"p{i}" for i in range(1, 8)]
    pages = [q for m, path, q in stack.kube.requests if path == "/api/v1/pods"]
    assert len(pages) == 3 and all(q.get("limit") == "3" for q in pages)


def test_directory_sink_uses_kube_profefe_file_names(stack: Stack) -> None:
    t = stack.farm.add("127.31.3.1", 6060)
    stack.kube.add_pod(make_pod("api-0", "web", annotations=ENABLE, ip=t.host))
    stack.worker(KPROFEFE_PROFEFE_URL="")
    run_round(types=["heap", "goroutine"])
    files = sorted(p.relative_to(stack.tmp / "profiles").as_posix() for p in (stack.tmp / "profiles").rglob("*"))
    names = [f for f in files if f.endswith(".pb.gz")]
    assert len(names) == 2
    for name, ptype in zip(names, ["goroutine", "heap"], strict=True):
        assert name.startswith(f"web/profile-{ptype}-api-0-") and name[:-6].rsplit("-", 1)[1].isdigit()
    assert (stack.tmp / "profiles" / names[1]).read_bytes() == (
        Path(__file__).parent / "fixtures/pprof/heap.pb.gz"
    ).read_bytes()


def test_failures_are_classified_counted_and_the_worker_keeps_going(stack: Stack) -> None:
    cases = {
        "html": Behavior.HTML,
        "notfound": Behavior.NOT_FOUND,
        "garbage": Behavior.GARBAGE,
        "redirect": Behavior.REDIRECT,
        "error": Behavior.ERROR_500,
        "good": Behavior.GO,
    }
    for i, (name, behavior) in enumerate(cases.items(), start=1):
        t = stack.farm.add(f"127.31.4.{i}", 6060, behavior=behavior)
        stack.kube.add_pod(make_pod(name, "web", annotations=ENABLE, ip=t.host))
    stack.worker(KPROFEFE_CAPTURE_RETRIES="1")
    result = run_round(types=["heap"])
    report = result["report"]
    assert report["ok"] == 1 and report["failed"] == 5, (report, stack.logs())
    assert [p.labels["pod"] for p in stack.profefe.profiles] == ["good"]
    log = stack.logs()
    for reason in ("invalid-html", "not-found", "invalid-not-gzip", "redirect", "target-5xx"):
        assert f"({reason})" in log or reason in log, reason


def test_empty_profiles_are_counted_skips_not_errors(stack: Stack) -> None:
    t = stack.farm.add("127.31.5.1", 6060, behavior=Behavior.EMPTY_PROFILE)
    stack.kube.add_pod(make_pod("quiet", "web", annotations=ENABLE, ip=t.host))
    stack.worker()
    report = run_round(types=["block", "mutex"])["report"]
    assert report.get("empty") == 2 and report.get("failed") is None, report
    assert stack.profefe.profiles == []


@pytest.mark.skipif(not gotarget.go_available(), reason="needs Go (apt-get install golang-go; .ci/run does)")
def test_a_real_go_program_is_profiled(stack: Stack) -> None:
    with gotarget.GoTarget("127.2.0.1:0") as go:
        stack.kube.add_pod(
            make_pod(
                "go-0",
                "apps",
                ip=go.host,
                containers=[("app", [go.port])],
                annotations={**ENABLE, "profefe.com/port": str(go.port)},
            )
        )
        stack.worker()
        report = run_round(cpu_seconds=1)["report"]
    assert report["ok"] == 6, (report, stack.logs())
    assert {p.type for p in stack.profefe.profiles} == set(PROFILE_TYPES)
    assert all(p.service == "go-0" for p in stack.profefe.profiles)
    # Go records the window it was asked for in the profile itself: the CPU request asked for 1 s, not Go's 30
    cpu = next(p for p in stack.profefe.profiles if p.type == "cpu")
    assert 0.9e9 <= pprof.inspect(cpu.body).duration_nanos <= 3e9


def test_discovery_retries_when_the_api_server_is_briefly_down(stack: Stack) -> None:
    t = stack.farm.add("127.31.7.1", 6060)
    stack.kube.add_pod(make_pod("api-0", "web", annotations=ENABLE, ip=t.host))
    worker = stack.worker()
    stack.kube.stop()
    result = tasks.discover.delay(types=["heap"])
    # the first attempt fails against the stopped API server and says it will retry; only then is it back
    deadline = time.monotonic() + 30
    while "retrying" not in worker.output():
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    stack.kube.start()
    summary = result.get(timeout=60)
    assert summary["targets"] == 1
    assert tasks.wait_round(summary["round"], timeout=30)["ok"] == 1
    assert "retrying" in stack.logs()


def test_a_capture_queued_by_hand_returns_its_result_while_round_captures_store_none(
    stack: Stack, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = stack.farm.add("127.31.0.40", 6060)
    stack.kube.add_pod(make_pod("api-7d9f-x2", "web", annotations=ENABLE, ip=target.host))
    stack.worker()
    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))  # the shell's kubeconfig

    # the README's snippet ("Trigger by hand from a Python shell"), as written
    pod = Kube.connect().get_pod("web", "api-7d9f-x2")
    assert pod is not None
    target_ = pod_to_target(pod, ["heap"])
    assert isinstance(target_, Target)
    result = tasks.capture.delay(target_.to_dict(), "heap").get(timeout=60)

    assert result["outcome"] == "ok" and (result["pod"], result["type"]) == ("api-7d9f-x2", "heap"), result
    assert result["where"] in {p.id for p in stack.profefe.profiles}
    run_round(namespaces=["web"], types=["goroutine"])
    assert len(stack.profefe.profiles) == 2
    # two results stored: the hand-queued capture and the discovery; the round's capture stored none
    assert len(redis_client.keys("celery-task-meta-*")) == 2
