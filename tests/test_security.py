"""Defence in depth: a capture message is checked like a discovered pod, and a proxy path cannot leave its pod.

A capture message sits in Redis, where anyone with access to it can write one. The worker rebuilds its target with
the constructor discovery uses (:meth:`Target.from_dict`) and refuses, before fetching anything, a host name, a URL,
a link-local or cloud-metadata address, a bad port, a path with ``..`` or escapes, an unknown profile type. The
unit tables pin each rule; the integration test forges messages into a real worker's broker and proves, with a
recording HTTP listener on loopback, that none of them is ever fetched while a normal capture still works.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod
from kprofefe_sandbox.processes import free_port
from prometheus_client.parser import text_string_to_metric_families

from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.coordination.rounds import Rounds
from kprofefe_tasks.domain.errors import InvalidTargetError, PermanentError
from kprofefe_tasks.domain.targets import Target, check_type, refused
from kprofefe_tasks.io import pods
from kprofefe_tasks.io.kube import Kube, KubeOptions, proxy_resource
from kprofefe_tasks.worker.app import CAPTURE_QUEUE

VALID = Target(
    namespace="web",
    pod="api-7d9f8c6b5-x2x2x",
    uid="0d3f6c1e-8a52-4f5e-9a3b-2b1c7d9e0f11",
    ip="10.1.2.3",
    port=6060,
    path="/debug/pprof",
    service="api",
    container="app",
    node="node-a",
    types=("cpu", "heap"),
    labels=(("container", "app"), ("from", "kprofefe-tasks"), ("namespace", "web"), ("pod", "api-7d9f8c6b5-x2x2x")),
)


class _Drop:
    def __repr__(self) -> str:  # a stable test id (pytest-xdist compares them across workers)
        return "DROP"


DROP = _Drop()  # a key left out of the message


def message(**changes: Any) -> dict[str, Any]:
    data = VALID.to_dict()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not DROP}


# -- the constructor: one table of what a message may and may not say -----------------------------------------

REFUSED: list[tuple[dict[str, Any], str]] = [
    # hosts: only an IP literal, never something to resolve or parse
    ({"ip": "api.web.svc.cluster.local"}, "bad-ip"),
    ({"ip": "localhost"}, "bad-ip"),
    ({"ip": "metadata.google.internal"}, "bad-ip"),
    ({"ip": "http://10.1.2.3/"}, "bad-ip"),
    ({"ip": "http://169.254.169.254/latest/meta-data/"}, "bad-ip"),
    ({"ip": "10.1.2.3:6060"}, "bad-ip"),
    ({"ip": "[fd00::1]:6060"}, "bad-ip"),
    ({"ip": "[fd00::1]"}, "bad-ip"),
    ({"ip": "10.1.2.3/32"}, "bad-ip"),
    ({"ip": "user@10.1.2.3"}, "bad-ip"),
    ({"ip": " 10.1.2.3"}, "bad-ip"),
    ({"ip": "10.1.2.3\n"}, "bad-ip"),
    ({"ip": "010.001.002.003"}, "bad-ip"),  # octal to inet_aton
    ({"ip": "0x0a010203"}, "bad-ip"),
    ({"ip": "167838211"}, "bad-ip"),
    ({"ip": 167838211}, "bad-ip"),
    ({"ip": "fe80::1%eth0"}, "bad-ip"),  # a zone names an interface of the worker's own host
    ({"ip": ""}, "bad-ip"),
    ({"ip": None}, "bad-ip"),
    ({"ip": "0.0.0.0"}, "bad-ip"),  # dialling it reaches the worker's own host
    ({"ip": "::"}, "bad-ip"),
    ({"ip": "224.0.0.1"}, "bad-ip"),
    ({"ip": "ff02::1"}, "bad-ip"),
    ({"ip": "255.255.255.255"}, "bad-ip"),
    ({"ip": "a" * 100_000}, "bad-ip"),
    # link-local and cloud metadata
    ({"ip": "169.254.169.254"}, "link-local-ip"),
    ({"ip": "169.254.0.1"}, "link-local-ip"),
    ({"ip": "169.254.255.255"}, "link-local-ip"),
    ({"ip": "fe80::1"}, "link-local-ip"),
    ({"ip": "febf:ffff::1"}, "link-local-ip"),
    ({"ip": "fd00:ec2::254"}, "link-local-ip"),
    ({"ip": "FD00:EC2:0:0::254"}, "link-local-ip"),
    ({"ip": "::ffff:169.254.169.254"}, "link-local-ip"),  # IPv4-mapped: dials 169.254.169.254 itself
    ({"ip": "::ffff:a9fe:a9fe"}, "link-local-ip"),
    ({"ip": "64:ff9b::169.254.169.254"}, "link-local-ip"),  # NAT64: the gateway dials it
    # ports
    ({"port": 0}, "bad-port"),
    ({"port": 65536}, "bad-port"),
    ({"port": -1}, "bad-port"),
    ({"port": "80x"}, "bad-port"),
    ({"port": "6060"}, "bad-port"),  # our messages carry a number
    ({"port": 6060.0}, "bad-port"),
    ({"port": True}, "bad-port"),
    ({"port": None}, "bad-port"),
    # paths: the profefe.com/path rule
    ({"path": "/debug/../../etc"}, "bad-path"),
    ({"path": "../debug/pprof"}, "bad-path"),
    ({"path": "/debug/pprof/.."}, "bad-path"),
    ({"path": "/./debug"}, "bad-path"),
    ({"path": "/debug/%2e%2e/x"}, "bad-path"),
    ({"path": "/debug%2fpprof"}, "bad-path"),
    ({"path": "/debug/%252e%252e"}, "bad-path"),
    ({"path": "/debug\\..\\x"}, "bad-path"),
    ({"path": "//evil.example/x"}, "bad-path"),
    ({"path": "/x?y=1"}, "bad-path"),
    ({"path": "/x#y"}, "bad-path"),
    ({"path": "http://elsewhere/debug/pprof"}, "bad-path"),
    ({"path": "@10.0.0.9/debug/pprof"}, "bad-path"),
    ({"path": "relative/pprof"}, "bad-path"),
    ({"path": ""}, "bad-path"),
    ({"path": "/debug/pprof\n"}, "bad-path"),
    ({"path": "/" + "a" * 300}, "bad-path"),
    ({"path": ["/debug"]}, "bad-path"),
    # Kubernetes names
    ({"namespace": "Web"}, "bad-name"),
    ({"namespace": "web/../kube-system"}, "bad-name"),
    ({"namespace": "-web"}, "bad-name"),
    ({"namespace": "a.b"}, "bad-name"),  # a namespace is a label, not a subdomain
    ({"namespace": "a" * 64}, "bad-name"),
    ({"namespace": ""}, "bad-name"),
    ({"namespace": "web\n"}, "bad-name"),
    ({"pod": "api_1"}, "bad-name"),
    ({"pod": "api:6061"}, "bad-name"),  # would pick another port of the pods/proxy subresource
    ({"pod": "api/proxy"}, "bad-name"),
    ({"pod": "api..1"}, "bad-name"),
    ({"pod": "a" * 254}, "bad-name"),
    ({"pod": None}, "bad-name"),
    ({"container": "App"}, "bad-name"),
    ({"node": "node a"}, "bad-name"),
    # types
    ({"types": ["heap", "allocs"]}, "bad-types"),
    ({"types": ["../../x"]}, "bad-types"),
    ({"types": []}, "bad-types"),
    ({"types": "heap"}, "bad-types"),
    # service, labels, uid, the shape
    ({"service": ""}, "bad-service"),
    ({"service": "a\nb"}, "bad-service"),
    ({"service": "x" * 300}, "bad-service"),
    ({"service": 3}, "bad-service"),
    ({"labels": [["k"]]}, "bad-field"),
    ({"labels": [["k", 1]]}, "bad-field"),
    ({"labels": [["k", "a\x00b"]]}, "bad-field"),
    ({"labels": [["k", "v"]] * 33}, "bad-field"),
    ({"labels": "namespace=web"}, "bad-field"),
    ({"uid": "x" * 129}, "bad-field"),
    ({"ip": DROP}, "bad-field"),
    ({"port": DROP}, "bad-field"),
    ({"namespace": DROP}, "bad-field"),
    ({"pod": DROP}, "bad-field"),
    ({"service": DROP}, "bad-field"),
]


@pytest.mark.parametrize(("changes", "problem"), REFUSED, ids=[f"{c!r:.60}" for c, _ in REFUSED])
def test_a_message_discovery_would_not_have_written_is_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidTargetError) as err:
        Target.from_dict(message(**changes))
    assert err.value.problem == problem
    assert err.value.reason == "invalid-target"
    assert isinstance(err.value, PermanentError) and isinstance(err.value, ValueError)
    assert len(err.value.message) <= 300  # attacker-sized input never becomes an attacker-sized log line


@pytest.mark.parametrize("data", ["10.1.2.3", ["web", "api"], None, 6060])
def test_a_target_that_is_not_an_object_is_refused(data: Any) -> None:
    with pytest.raises(InvalidTargetError) as err:
        Target.from_dict(data)
    assert err.value.problem == "bad-field"


ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {}),
    ({"ip": "127.0.0.1"}, {}),  # loopback: the sandbox's pods
    ({"ip": "::1"}, {}),
    ({"ip": "fd00::12"}, {}),
    ({"ip": "2001:db8::7"}, {}),
    ({"ip": "FD00:0:0::12"}, {"ip": "fd00::12"}),  # canonical form
    ({"ip": "::ffff:10.1.2.3"}, {"ip": str(ipaddress.ip_address("::ffff:10.1.2.3"))}),  # as this Python prints it
    ({"ip": "100.64.0.9"}, {}),  # carrier-grade NAT ranges are pod ranges in some clusters
    ({"port": 1}, {}),
    ({"port": 65535}, {}),
    ({"path": "/"}, {}),
    ({"path": "/internal/pprof"}, {}),
    ({"path": "/debug/pprof/"}, {"path": "/debug/pprof"}),
    ({"path": "/a.b/c~d/e-f_g"}, {}),
    ({"path": DROP}, {"path": "/debug/pprof"}),
    ({"namespace": "a" * 63}, {}),
    ({"pod": "db-0.primary"}, {}),  # a pod name is a subdomain
    ({"pod": "a" * 253}, {}),
    ({"container": "", "node": "", "uid": ""}, {}),
    ({"service": "billing api, v2=x"}, {}),  # any printable text; the profefe client escapes it
    ({"types": ["heap", "heap"]}, {"types": ("heap",)}),
    ({"labels": []}, {"labels": ()}),
]


@pytest.mark.parametrize(("changes", "expected"), ACCEPTED, ids=[f"{c!r:.60}" for c, _ in ACCEPTED])
def test_a_message_discovery_could_have_written_is_rebuilt(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    target = Target.from_dict(message(**changes))
    want = {**message(**changes), **expected}
    for key, value in want.items():
        got = getattr(target, key)
        if key == "labels":
            value = tuple(tuple(kv) for kv in value)
        elif key == "types":
            value = tuple(value)
        assert got == value, (key, got, value)
    assert Target.from_dict(target.to_dict()) == target


def test_link_local_and_metadata_addresses_only_with_the_setting() -> None:
    for ip in ("169.254.169.254", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert Target.from_dict(message(ip=ip), allow_link_local=True).ip
        with pytest.raises(InvalidTargetError):
            Target.from_dict(message(ip=ip))
    with pytest.raises(InvalidTargetError):  # the setting relaxes the address rule only
        Target.from_dict(message(ip="169.254.169.254:80"), allow_link_local=True)
    assert Settings().allow_link_local is False and Settings().hostnetwork_any_port is False


@pytest.mark.parametrize("ptype", ["allocs", "profile", "HEAP", "", "../../../api/v1/secrets", "heap?x=1", None, 1])
def test_the_profile_type_of_a_message_must_be_known(ptype: Any) -> None:
    with pytest.raises(InvalidTargetError) as err:
        check_type(ptype)
    assert err.value.problem == "bad-types"


def test_a_refused_message_is_logged_and_counted_without_its_own_text() -> None:
    forged = message(namespace="x" * 10_000, pod="<script>" + "p" * 10_000, ip="evil.example")
    with pytest.raises(InvalidTargetError) as err:
        Target.from_dict(forged)
    result = refused(err.value, forged, "../../x", "r1/../../x", "task-1")
    assert (result.outcome, result.reason) == ("failed", "invalid-target")
    assert result.type == "invalid"  # a metric label never carries the message's text
    assert len(result.namespace) <= 63 and len(result.pod) <= 63 and "<" not in result.pod
    assert result.round == "r1....x" and result.task_id == "task-1"
    assert result.detail.startswith("bad-name: ") and len(result.detail) < 400
    genuine = refused(InvalidTargetError("x", problem="link-local-ip"), message(), "heap", "4f2a9c", "t")
    # a genuine target refused (a pod that no longer qualifies) keeps its names: its round still completes
    assert (genuine.namespace, genuine.pod, genuine.type, genuine.round) == ("web", VALID.pod, "heap", "4f2a9c")


# -- the proxy path: never leaves /api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/ ------------------------------

HOSTILE_PATHS = [
    "/debug/pprof/../../../../api/v1/namespaces/kube-system/secrets",
    "/debug/pprof/..",
    "/..",
    "/debug/./pprof/heap",
    "/debug/pprof/.",
    "/debug/pprof/%2e%2e/%2e%2e/secrets",
    "/debug/pprof/%2E%2E/secrets",
    "/debug/pprof/.%2e/secrets",
    "/debug/pprof/%252e%252e/secrets",  # double-encoded
    "/debug/pprof%2f..%2f..%2fsecrets",
    "/debug/pprof/%5c..%5csecrets",
    "/debug/pprof/..\\..\\secrets",
    "/debug\\pprof",
    "//debug/pprof/heap",
    "/debug//pprof/heap",
    "/debug/pprof/heap?x=/../../secrets",
    "/debug/pprof/heap#/../secrets",
    "/debug/pprof/heap;/../secrets",
    "/debug/pprof/heap/../../../x/",
    "debug/pprof/heap",
    "",
    "/debug/pprof/h\u00e9ap",
    "/debug/pprof/heap\n",
    "/debug/pprof/heap\x00",
    "/debug/pprof/ heap",
    "/" + "a" * 400,
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=[repr(p)[:50] for p in HOSTILE_PATHS])
def test_a_proxy_path_that_could_leave_the_pod_is_refused(path: str) -> None:
    with pytest.raises(InvalidTargetError) as err:
        proxy_resource("web", "api-1", 6060, path)
    assert err.value.problem == "bad-path"


@pytest.mark.parametrize(
    ("namespace", "pod", "port"),
    [("kube-system/../x", "api-1", 6060), ("web", "api-1:10250", 6060), ("web", "api-1/x", 6060), ("web", "a", 0)],
)
def test_the_proxy_names_and_port_are_checked_too(namespace: str, pod: str, port: int) -> None:
    with pytest.raises(InvalidTargetError):
        proxy_resource(namespace, pod, port, "/debug/pprof/heap")


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/debug/pprof/heap", "/api/v1/namespaces/web/pods/api-1:6060/proxy/debug/pprof/heap"),
        ("/internal/pprof/profile", "/api/v1/namespaces/web/pods/api-1:6060/proxy/internal/pprof/profile"),
        ("/heap", "/api/v1/namespaces/web/pods/api-1:6060/proxy/heap"),
        ("/", "/api/v1/namespaces/web/pods/api-1:6060/proxy/"),
    ],
)
def test_a_plain_proxy_path_is_sent_as_is(path: str, resource: str) -> None:
    assert proxy_resource("web", "api-1", 6060, path) == resource


def test_a_hostile_proxy_path_never_reaches_the_api_server(tmp_path: Path) -> None:
    """Through the real client and the API server double: the request is refused before it is sent, even when the
    profile type itself carries the escape (the capture task checks it first; this is the second line)."""
    with KubeAPIServer([make_pod("api-1", "web", ip="127.0.0.1")]) as api:
        kube = Kube.connect(KubeOptions(kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig"))))
        api.clear_requests()
        with pytest.raises(InvalidTargetError):
            kube.proxy_get("web", "api-1", 6060, "/debug/pprof/%2e%2e/%2e%2e/x", {}, (1.0, 1.0))
        settings = Settings(connect_timeout=1.0, read_timeout=1.0)
        with pytest.raises(InvalidTargetError):
            pods.fetch(VALID, "../../../../api/v1/namespaces/web/secrets", settings, cpu_seconds=1, kube=kube)
        assert api.requests == []


# -- kubectl profefe: the same skips, for listed and for named pods ---------------------------------------------


def test_kubectl_profefe_targets_shows_host_network_and_link_local_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kprofefe_tasks.cli import main

    enabled = {"profefe.com/enable": "true"}
    node_agent = make_pod("node-agent-x", "web", ip="127.0.0.1", annotations=enabled, containers=[("agent", [9100])])
    node_agent["spec"]["hostNetwork"] = True  # annotated for the default 6060, which none of its containers declares
    declared = make_pod("node-exporter-y", "web", ip="127.0.0.1", annotations=enabled, containers=[("app", [6060])])
    declared["spec"]["hostNetwork"] = True
    metadata = make_pod("odd-z", "web", ip="169.254.169.254", containers=[("app", [6060])])  # not annotated
    with KubeAPIServer([node_agent, declared, metadata]) as api:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace="web"))
        assert main(["--kubeconfig", kubeconfig, "targets", "-o", "json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [t["pod"] for t in listed["targets"]] == ["node-exporter-y"]
        skips = {s["pod"]: s["reason"] for s in listed["skipped"]}
        assert skips == {"node-agent-x": "host-network-port", "odd-z": "not-enabled"}
        # named, a pod is captured without the annotation, but never at an address the rules refuse
        assert main(["--kubeconfig", kubeconfig, "targets", "node-agent-x", "odd-z"]) == 0
        out = capsys.readouterr().out
        rows = {line.split()[1]: line.split()[2] for line in out.splitlines()[1:]}
        assert rows == {"node-agent-x": "host-network-port", "odd-z": "link-local-ip"}, out


# -- a real worker, messages forged into its broker -------------------------------------------------------------


class Recorder:
    """An HTTP listener on loopback that records every request: where a forged message would have sent a worker."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.paths.append(self.path)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Recorder]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """``kprofefe_captures_total`` from a worker's own /metrics, by (type, outcome, reason)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "kprofefe_captures":
            for sample in family.samples:
                if sample.name == "kprofefe_captures_total":
                    labels = sample.labels
                    counts[(labels["type"], labels["outcome"], labels["reason"])] = sample.value
    return counts


def start_forged_round(box: Any, round_id: str, expected: int) -> None:
    client = box.redis.client()
    try:
        Rounds(client, fallback_ttl=600).start(round_id, 600, expected=expected, targets=expected, entry="forged")
    finally:
        client.close()


def forge(box: Any, forged: list[tuple[dict[str, Any], Any]], round_id: str) -> None:
    """What an attacker with write access to Redis does: put capture messages on the capture queue."""
    client = box._client()
    try:
        for target, ptype in forged:
            client.send_task(
                "kprofefe.capture",
                kwargs={"target": target, "ptype": ptype, "round_id": round_id, "cpu_seconds": 1},
                queue=CAPTURE_QUEUE,
            )
    finally:
        client.close()


def forged_pod(name: str, **changes: Any) -> dict[str, Any]:
    return message(namespace="forged", pod=name, service=name, **changes)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_forged_capture_messages_are_refused_counted_and_never_fetched(tmp_path: Path) -> None:
    from tests.test_chaos import logged, open_sandbox

    with open_sandbox(tmp_path) as box, Recorder().running() as recorder:
        box.add_pod("good", host="127.77.9.1")
        local = {"ip": "127.0.0.1", "port": recorder.port}  # the recorder: a fetch of any of these would land there

        # direct mode: each forged target would make the worker dial the recorder, or fail to build a URL; none
        # needs a DNS query (URLs and other host names are in the unit table, never sent to a worker here)
        direct = [
            (forged_pod("by-name", ip="localhost", port=recorder.port), "heap"),  # /etc/hosts: no DNS query
            (forged_pod("with-port", ip=f"127.0.0.1:{recorder.port}", port=recorder.port), "heap"),
            (forged_pod("dot-dot", path="/debug/pprof/../../../admin", **local), "heap"),
            (forged_pod("encoded", path="/debug/%2e%2e/%2e%2e/admin", **local), "heap"),
            (forged_pod("bad-type", **local), "../../../admin"),
            (forged_pod("bad-port", ip="127.0.0.1", port=f"{recorder.port}x"), "heap"),
            (forged_pod("huge", path="/" + "a" * 100_000, **local), "heap"),
        ]
        metrics_port = free_port()
        worker = box.worker(KPROFEFE_METRICS_PORT=str(metrics_port))
        start_forged_round(box, "forged-direct", len(direct))
        forge(box, direct, "forged-direct")
        report = box.wait_round("forged-direct")
        assert (report["done"], report.get("failed")) == (len(direct), len(direct)), (report, box.logs())
        assert recorder.paths == []

        good = box.discover(namespaces=["chaos"], types=["heap"])["round"]
        assert box.wait_round(good)["ok"] == 1, box.logs()
        assert [p.labels["pod"] for p in box.profefe.profiles] == ["good"]
        counts = scrape(metrics_port)
        assert counts.get(("heap", "failed", "invalid-target")) == len(direct) - 1, counts
        assert counts.get(("invalid", "failed", "invalid-target")) == 1, counts
        assert counts.get(("heap", "ok", "ok")) == 1, counts
        logs = worker.output()
        for target, _ in direct:
            assert logged(logs, "failed", target["pod"]) == ["invalid-target"], (target["pod"], logs[-3000:])
        assert "a" * 400 not in logs  # the huge path is clipped in the log line
        worker.stop()

        # proxy mode for the link-local and metadata addresses: should a check ever fail, the request goes to the
        # API server double on loopback (which dials the recorder for these pods), never off this machine
        for name in ("meta-v4", "meta-v6", "meta-mapped", "link-v6"):
            box.kube.add_pod(make_pod(name, "forged", ip="127.0.0.1", containers=[("app", [recorder.port])]))
        via_proxy = [
            (forged_pod("meta-v4", ip="169.254.169.254", port=recorder.port), "heap"),
            (forged_pod("meta-v6", ip="fd00:ec2::254", port=recorder.port), "heap"),
            (forged_pod("meta-mapped", ip="::ffff:169.254.169.254", port=recorder.port), "goroutine"),
            (forged_pod("link-v6", ip="fe80::a9fe:a9fe", port=recorder.port), "heap"),
        ]
        metrics_port = free_port()
        box.kube.clear_requests()
        worker = box.worker(KPROFEFE_METRICS_PORT=str(metrics_port), KPROFEFE_CAPTURE_VIA="proxy")
        start_forged_round(box, "forged-proxy", len(via_proxy))
        forge(box, via_proxy, "forged-proxy")
        report = box.wait_round("forged-proxy")
        assert (report["done"], report.get("failed")) == (len(via_proxy), len(via_proxy)), (report, box.logs())
        assert recorder.paths == []
        assert [path for _, path, _ in box.kube.requests if "/forged/" in path] == []

        good = box.discover(namespaces=["chaos"], types=["goroutine"])["round"]
        assert box.wait_round(good)["ok"] == 1, box.logs()
        counts = scrape(metrics_port)
        assert counts.get(("heap", "failed", "invalid-target")) == 3, counts
        assert counts.get(("goroutine", "failed", "invalid-target")) == 1, counts
        assert counts.get(("goroutine", "ok", "ok")) == 1, counts
        logs = worker.output()
        for target, _ in via_proxy:
            assert logged(logs, "failed", target["pod"]) == ["invalid-target"], (target["pod"], logs[-3000:])
        assert "link-local-ip" in logs
        assert recorder.paths == []  # still nothing, after the good round went through
