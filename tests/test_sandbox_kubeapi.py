"""The Kubernetes API test double, exercised through the real ``kubernetes`` client and ``requests``."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kprofefe_sandbox.kubeapi import (
    KubeAPIServer,
    SelectorError,
    make_pod,
    parse_label_selector,
)
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

BLOB = bytes(range(256)) * 4096  # 1 MiB covering every byte value: catches text decoding and truncation


def load_client(kubeconfig: Path) -> Any:
    """A CoreV1Api for ``kubeconfig``, typed Any: the models make every field Optional, which would bury the
    assertions in None checks."""
    cfg = client.Configuration()
    # client_configuration keeps the process-wide default untouched, so tests cannot leak into each other.
    loader: Any = config.load_kube_config
    loader(config_file=str(kubeconfig), client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


def core_api(server: KubeAPIServer, tmp_path: Path, namespace: str = "default") -> Any:
    return load_client(server.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace))


def status_of(err: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.value.body or "null")
    return body


def names(pod_list: Any) -> list[str]:
    return [p.metadata.name for p in pod_list.items]


@pytest.fixture
def server() -> Iterator[KubeAPIServer]:
    pods = [
        make_pod(
            "api-1",
            "prod",
            labels={"app": "api", "tier": "web"},
            annotations={"profefe.com/enable": "true"},
            owner=("ReplicaSet", "api-7d9f8c6b5"),
        ),
        make_pod("api-2", "prod", labels={"app": "api", "tier": "web"}, node="node-2"),
        make_pod("worker-1", "prod", labels={"app": "worker"}, phase="Pending", ip=None, ready=False),
        make_pod("db-0", "data", labels={"app": "db", "replicas": "3"}, owner=("StatefulSet", "db")),
        make_pod("debug", "default", deleting=True),
    ]
    with KubeAPIServer(pods) as srv:
        yield srv


# -- the pod shape ----------------------------------------------------------------------------------------


def test_make_pod_has_the_fields_collectors_read() -> None:
    pod = make_pod(
        "api-1",
        "prod",
        annotations={"profefe.com/port": "7070"},
        containers=[("app", [6060, 8080]), ("sidecar", [])],
        owner=("ReplicaSet", "api-7d9f8c6b5"),
        deleting=True,
        uid="1234",
    )
    meta = pod["metadata"]
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert meta["uid"] == "1234"
    assert meta["annotations"] == {"profefe.com/port": "7070"}
    assert meta["labels"] == {"pod-template-hash": "7d9f8c6b5"}
    assert meta["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert meta["ownerReferences"][0]["apiVersion"] == "apps/v1"
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["deletionTimestamp"].endswith("Z")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "sidecar"]
    assert [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]] == [6060, 8080]
    assert "ports" not in pod["spec"]["containers"][1]
    assert pod["spec"]["nodeName"] == "node-1"
    status = pod["status"]
    assert status["podIP"] == "10.0.0.1"
    assert status["podIPs"] == [{"ip": "10.0.0.1"}]
    assert status["hostIP"]
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True"


def test_make_pod_not_ready_and_without_ip() -> None:
    pod = make_pod("p", ip=None, ready=False, phase="Pending")
    assert "podIP" not in pod["status"]
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"
    assert pod["status"]["containerStatuses"][0]["ready"] is False
    # Siblings of one owner share the owner's uid, as on a real cluster.
    a = make_pod("a", owner=("ReplicaSet", "rs-1"))
    b = make_pod("b", owner=("ReplicaSet", "rs-1"))
    assert a["metadata"]["ownerReferences"][0]["uid"] == b["metadata"]["ownerReferences"][0]["uid"]
    assert a["metadata"]["uid"] != b["metadata"]["uid"]


# -- lists and gets through the real client ---------------------------------------------------------------


def test_list_all_namespaces_deserializes_in_the_real_client(server: KubeAPIServer, tmp_path: Path) -> None:
    pods = core_api(server, tmp_path).list_pod_for_all_namespaces()
    assert names(pods) == ["db-0", "debug", "api-1", "api-2", "worker-1"]  # ordered by namespace/name
    api1 = pods.items[2]
    assert api1.metadata.annotations == {"profefe.com/enable": "true"}
    assert api1.metadata.owner_references[0].name == "api-7d9f8c6b5"
    assert api1.metadata.labels["pod-template-hash"] == "7d9f8c6b5"
    assert api1.spec.containers[0].ports[0].container_port == 6060
    assert api1.status.pod_ip == "10.0.0.1"
    assert api1.metadata.creation_timestamp is not None
    assert pods.items[1].metadata.deletion_timestamp is not None
    assert pods.items[4].status.pod_ip is None


def test_list_items_omit_kind_like_the_real_server(server: KubeAPIServer) -> None:
    body = requests.get(f"{server.url}/api/v1/namespaces/prod/pods", timeout=10).json()
    assert body["kind"] == "PodList"
    assert body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"].isdigit()
    assert "continue" not in body["metadata"]
    assert [i["metadata"]["name"] for i in body["items"]] == ["api-1", "api-2", "worker-1"]
    assert all("kind" not in i and "apiVersion" not in i for i in body["items"])


def test_namespaced_list_uses_the_namespace(server: KubeAPIServer, tmp_path: Path) -> None:
    assert names(core_api(server, tmp_path).list_namespaced_pod("data")) == ["db-0"]
    assert names(core_api(server, tmp_path).list_namespaced_pod("nowhere")) == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=api", ["api-1", "api-2"]),
        ("app==worker", ["worker-1"]),
        ("app!=api", ["db-0", "debug", "worker-1"]),  # != also matches pods without the label
        ("app in (db,worker)", ["db-0", "worker-1"]),
        ("app notin (db, worker)", ["debug", "api-1", "api-2"]),
        ("tier", ["api-1", "api-2"]),
        ("!tier", ["db-0", "debug", "worker-1"]),
        ("app=api,tier=web,pod-template-hash", ["api-1"]),
        ("app in (api,db),!pod-template-hash", ["db-0", "api-2"]),
        ("replicas>2", ["db-0"]),
        ("app=nothing", []),
    ],
)
def test_label_selectors(server: KubeAPIServer, tmp_path: Path, selector: str, expected: list[str]) -> None:
    got = core_api(server, tmp_path).list_pod_for_all_namespaces(label_selector=selector)
    assert names(got) == expected
    assert server.requests[-1][2]["labelSelector"] == selector


def test_bad_label_selector_is_a_400_status(server: KubeAPIServer, tmp_path: Path) -> None:
    with pytest.raises(ApiException) as err:
        core_api(server, tmp_path).list_pod_for_all_namespaces(label_selector="app in (api")
    assert err.value.status == 400
    assert status_of(err)["reason"] == "BadRequest"
    with pytest.raises(SelectorError):
        parse_label_selector("a=b,,c")
    with pytest.raises(SelectorError):
        parse_label_selector("bad key=x")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("status.phase=Running", ["db-0", "debug", "api-1", "api-2"]),
        ("status.phase!=Running", ["worker-1"]),
        ("metadata.name==api-2", ["api-2"]),
        ("metadata.namespace=data", ["db-0"]),
        ("spec.nodeName=node-2,status.phase=Running", ["api-2"]),
    ],
)
def test_field_selectors(server: KubeAPIServer, tmp_path: Path, selector: str, expected: list[str]) -> None:
    got = core_api(server, tmp_path).list_pod_for_all_namespaces(field_selector=selector)
    assert names(got) == expected


def test_unknown_field_is_rejected_like_the_real_server(server: KubeAPIServer, tmp_path: Path) -> None:
    with pytest.raises(ApiException) as err:
        core_api(server, tmp_path).list_pod_for_all_namespaces(field_selector="spec.color=blue")
    assert err.value.status == 400
    body = status_of(err)
    assert body["kind"] == "Status"
    assert body["message"] == "field label not supported: spec.color"


def test_paging_returns_every_pod_once(server: KubeAPIServer, tmp_path: Path) -> None:
    api = core_api(server, tmp_path)
    seen: list[str] = []
    tokens: list[str] = []
    token: str | None = None
    for _ in range(10):  # bounded: 5 pods in pages of 2 need 3 requests
        page = api.list_pod_for_all_namespaces(limit=2, _continue=token)
        assert len(page.items) <= 2
        seen += names(page)
        token = page.metadata._continue
        if not token:
            break
        tokens.append(token)
    assert sorted(seen) == sorted(p["metadata"]["name"] for p in server.pods())
    assert len(seen) == len(set(seen)) == 5
    assert len(tokens) == 2
    sent = [q for m, p, q in server.requests if p == "/api/v1/pods"]
    assert [q.get("limit") for q in sent] == ["2", "2", "2"]
    assert [q.get("continue") for q in sent[1:]] == tokens


def test_first_page_counts_what_is_left(server: KubeAPIServer) -> None:
    meta = requests.get(f"{server.url}/api/v1/pods", params={"limit": "2"}, timeout=10).json()["metadata"]
    assert meta["remainingItemCount"] == 3
    json.loads(base64.b64decode(meta["continue"]))  # opaque to clients, but base64 JSON like the real one
    # With a selector the real server cannot count the rest, so it leaves the count out.
    meta = requests.get(
        f"{server.url}/api/v1/pods", params={"limit": "1", "labelSelector": "app=api"}, timeout=10
    ).json()["metadata"]
    assert "continue" in meta
    assert "remainingItemCount" not in meta


def test_invalid_continue_token_is_a_400(server: KubeAPIServer, tmp_path: Path) -> None:
    with pytest.raises(ApiException) as err:
        core_api(server, tmp_path).list_pod_for_all_namespaces(limit=2, _continue="not-a-token!")
    assert err.value.status == 400
    assert "continue" in status_of(err)["message"]


def test_read_pod_and_404_status(server: KubeAPIServer, tmp_path: Path) -> None:
    api = core_api(server, tmp_path)
    pod = api.read_namespaced_pod("api-2", "prod")
    assert pod.kind == "Pod"
    assert pod.spec.node_name == "node-2"
    with pytest.raises(ApiException) as err:
        api.read_namespaced_pod("ghost", "prod")
    assert err.value.status == 404
    assert status_of(err) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "ghost" not found',
        "reason": "NotFound",
        "details": {"name": "ghost", "kind": "pods"},
        "code": 404,
    }


def test_watch_is_refused_not_faked(server: KubeAPIServer) -> None:
    resp = requests.get(f"{server.url}/api/v1/pods", params={"watch": "true"}, timeout=10)
    assert resp.status_code == 400
    assert "watch" in resp.json()["message"]


def test_discovery_and_unknown_paths(server: KubeAPIServer) -> None:
    assert requests.get(f"{server.url}/version", timeout=10).json()["gitVersion"].startswith("v1.")
    assert requests.get(f"{server.url}/api", timeout=10).json()["versions"] == ["v1"]
    assert requests.get(f"{server.url}/apis", timeout=10).json()["kind"] == "APIGroupList"
    resources = requests.get(f"{server.url}/api/v1", timeout=10).json()["resources"]
    assert "pods" in [r["name"] for r in resources]
    resp = requests.get(f"{server.url}/api/v1/nodes", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["kind"] == "Status"
    resp = requests.post(f"{server.url}/api/v1/namespaces/prod/pods", json={}, timeout=10)
    assert resp.status_code == 405


def test_table_for_kubectl(server: KubeAPIServer) -> None:
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    table = requests.get(f"{server.url}/api/v1/namespaces/prod/pods", headers=headers, timeout=10).json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Ready", "Status"]
    assert [r["cells"][:3] for r in table["rows"]] == [
        ["api-1", "1/1", "Running"],
        ["api-2", "1/1", "Running"],
        ["worker-1", "0/1", "Pending"],
    ]


# -- mutation while running --------------------------------------------------------------------------------


def test_pods_can_change_while_serving(server: KubeAPIServer, tmp_path: Path) -> None:
    api = core_api(server, tmp_path)
    rv_before = int(api.list_namespaced_pod("prod").metadata.resource_version)
    server.add_pod(make_pod("api-3", "prod", labels={"app": "api"}))
    server.delete_pod("prod", "api-1")
    uid = server.get_pod("prod", "api-2")["metadata"]["uid"]  # type: ignore[index]
    server.replace_pod(make_pod("api-2", "prod", labels={"app": "api"}, phase="Failed"))
    listed = api.list_namespaced_pod("prod", label_selector="app=api")
    assert names(listed) == ["api-2", "api-3"]
    assert listed.items[0].status.phase == "Failed"
    assert listed.items[0].metadata.uid == uid  # an update keeps the pod's identity
    assert int(listed.metadata.resource_version) > rv_before
    assert int(listed.items[0].metadata.resource_version) > rv_before
    with pytest.raises(ValueError):
        server.add_pod(make_pod("api-3", "prod"))
    with pytest.raises(KeyError):
        server.delete_pod("prod", "api-1")
    with pytest.raises(KeyError):
        server.replace_pod(make_pod("nope", "prod"))


def test_concurrent_mutation_and_listing_stay_consistent(tmp_path: Path) -> None:
    with KubeAPIServer() as srv:
        api = core_api(srv, tmp_path)
        stop = threading.Event()

        def churn() -> None:
            for i in range(100):
                if stop.is_set():
                    return
                srv.add_pod(make_pod(f"p{i}", "churn"))

        writer = threading.Thread(target=churn)
        writer.start()
        counts = [len(api.list_namespaced_pod("churn").items) for _ in range(20)]
        stop.set()
        writer.join(10)
        assert counts == sorted(counts)  # pods only get added, so each list sees at least the last one's
        assert len(api.list_namespaced_pod("churn").items) == len(srv.pods())


# -- auth ------------------------------------------------------------------------------------------------


def test_bearer_token(tmp_path: Path) -> None:
    with KubeAPIServer([make_pod("p")], token="s3cret") as srv:
        assert names(core_api(srv, tmp_path).list_namespaced_pod("default")) == ["p"]
        kubeconfig = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        assert kubeconfig["users"][0]["user"] == {"token": "s3cret"}
        assert os.stat(tmp_path / "kubeconfig").st_mode & 0o077 == 0

        resp = requests.get(f"{srv.url}/api/v1/pods", timeout=10)
        assert resp.status_code == 401
        assert resp.json()["reason"] == "Unauthorized"

        kubeconfig["users"][0]["user"]["token"] = "wrong"
        (tmp_path / "wrong").write_text(yaml.safe_dump(kubeconfig))
        with pytest.raises(ApiException) as err:
            load_client(tmp_path / "wrong").list_namespaced_pod("default")
        assert err.value.status == 401
        assert status_of(err)["message"] == "Unauthorized"


def test_kubeconfig_context_namespace(server: KubeAPIServer, tmp_path: Path) -> None:
    path = server.write_kubeconfig(tmp_path / "kc", namespace="prod", context="demo")
    list_contexts: Any = config.list_kube_config_contexts
    contexts, current = list_contexts(config_file=str(path))
    assert [c["name"] for c in contexts] == ["demo"]
    assert current["name"] == "demo"
    assert current["context"]["namespace"] == "prod"
    assert yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"] == server.url


# -- pods/proxy ------------------------------------------------------------------------------------------


class _Upstream(BaseHTTPRequestHandler):
    """A stand-in pprof endpoint: a binary body with and without Content-Length, and a Go-style 404."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/debug/pprof/heap"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", 'attachment; filename="heap"')
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)
        elif self.path.startswith("/stream"):
            # No length: the body ends when the connection closes, so the proxy must re-frame it.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(0, len(BLOB), 50_000):
                self.wfile.write(BLOB[i : i + 50_000])
            self.close_connection = True
        else:
            body = b"Unknown profile\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("X-Go-Pprof", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Upstream,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_proxy_through_the_real_client_keeps_binary_bodies(
    tmp_path: Path, upstream: tuple[str, list[tuple[str, str | None]]]
) -> None:
    target, seen = upstream
    with KubeAPIServer([make_pod("api-1", "prod")], token="t0k", proxy_targets={"prod/api-1": target}) as srv:
        api = core_api(srv, tmp_path)
        resp = api.connect_get_namespaced_pod_proxy_with_path(
            "api-1", "prod", "debug/pprof/heap", _preload_content=False
        )
        assert resp.status == 200
        assert resp.data == BLOB
        assert resp.headers["Content-Disposition"] == 'attachment; filename="heap"'
        assert resp.headers["Content-Type"] == "application/octet-stream"
    # The API server's own credentials never reach the pod.
    assert seen == [("/debug/pprof/heap", None)]
    assert ("GET", "/api/v1/namespaces/prod/pods/api-1/proxy/debug/pprof/heap", {}) in srv.requests


def test_proxy_forwards_query_port_and_errors(upstream: tuple[str, list[tuple[str, str | None]]]) -> None:
    target, seen = upstream
    host, port = target.split(":")
    # The override here is host only, so the port must come from the URL.
    pod = make_pod("api-1", "prod", containers=[("app", [1])])
    with KubeAPIServer([pod], proxy_targets={"prod/api-1": host}) as srv:
        base = f"{srv.url}/api/v1/namespaces/prod/pods/api-1:{port}/proxy"
        resp = requests.get(f"{base}/debug/pprof/heap", params={"seconds": "1", "gc": "1"}, timeout=30)
        assert resp.status_code == 200
        assert resp.content == BLOB
        assert seen[-1][0] == "/debug/pprof/heap?seconds=1&gc=1"

        resp = requests.get(f"{base}/stream", timeout=30)
        assert resp.status_code == 200
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert resp.content == BLOB

        resp = requests.get(f"{base}/debug/pprof/nope", timeout=30)
        assert resp.status_code == 404
        assert resp.text == "Unknown profile\n"
        assert resp.headers["X-Go-Pprof"] == "1"


def test_proxy_uses_first_container_port_and_loopback_pod_ip(
    upstream: tuple[str, list[tuple[str, str | None]]],
) -> None:
    target, seen = upstream
    host, port = target.split(":")
    pod = make_pod("api-1", "prod", ip=host, containers=[("app", [int(port)]), ("side", [1])])
    with KubeAPIServer([pod]) as srv:
        resp = requests.get(f"{srv.url}/api/v1/namespaces/prod/pods/api-1/proxy/debug/pprof/heap", timeout=30)
        assert resp.status_code == 200
        assert len(resp.content) == len(BLOB)
    assert seen == [("/debug/pprof/heap", None)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_proxy_refused_is_a_503_status(tmp_path: Path) -> None:
    port = _closed_port()
    with KubeAPIServer([make_pod("api-1", "prod")], proxy_targets={"prod/api-1": f"127.0.0.1:{port}"}) as srv:
        api = core_api(srv, tmp_path)
        with pytest.raises(ApiException) as err:
            api.connect_get_namespaced_pod_proxy_with_path("api-1", "prod", "debug/pprof/heap")
        assert err.value.status == 503
        body = status_of(err)
        assert body["kind"] == "Status"
        assert body["reason"] == "ServiceUnavailable"
        assert body["message"] == (
            f"error trying to reach service: dial tcp 127.0.0.1:{port}: connect: connection refused"
        )


def test_proxy_never_dials_a_fake_pod_ip(server: KubeAPIServer) -> None:
    resp = requests.get(f"{server.url}/api/v1/namespaces/prod/pods/api-1/proxy/debug/pprof/heap", timeout=10)
    assert resp.status_code == 503
    assert "10.0.0.1:6060" in resp.json()["message"]
    assert "loopback" in resp.json()["message"]


def test_proxy_to_a_missing_pod_is_404(server: KubeAPIServer, tmp_path: Path) -> None:
    with pytest.raises(ApiException) as err:
        core_api(server, tmp_path).connect_get_namespaced_pod_proxy_with_path("ghost", "prod", "x")
    assert err.value.status == 404
    assert status_of(err)["message"] == 'pods "ghost" not found'


def test_stop_closes_keep_alive_connections(tmp_path: Path) -> None:
    srv = KubeAPIServer([make_pod("p")]).start()
    session = requests.Session()
    assert session.get(f"{srv.url}/api/v1/pods", timeout=10).status_code == 200
    srv.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{srv.url}/api/v1/pods", timeout=10)
    srv.stop()  # idempotent
    # An outage and recovery: the same URL serves the same pods again.
    with srv:
        assert session.get(f"{srv.url}/api/v1/pods", timeout=10).json()["items"][0]["metadata"]["name"] == "p"


def test_stop_cuts_an_in_flight_proxy(tmp_path: Path) -> None:
    # An upstream that accepts and never answers, like a CPU profile mid-window.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        srv = KubeAPIServer([make_pod("p")], proxy_targets={"default/p": target}).start()
        outcome: list[BaseException | int] = []

        def fetch() -> None:
            try:
                url = f"{srv.url}/api/v1/namespaces/default/pods/p/proxy/debug/pprof/profile"
                outcome.append(requests.get(url, timeout=60).status_code)
            except requests.RequestException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=fetch)
        thread.start()
        deadline = time.monotonic() + 20
        while not any("/proxy/" in p for _, p, _ in srv.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        srv.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - started < 20  # far below the proxy's 120 s read timeout
    assert len(outcome) == 1
    assert outcome[0] == 503 or isinstance(outcome[0], requests.ConnectionError)


# -- CLI -------------------------------------------------------------------------------------------------


def test_cli_serves_a_yaml_file(tmp_path: Path) -> None:
    pods_file = tmp_path / "pods.yaml"
    pods_file.write_text(
        yaml.safe_dump(
            [
                make_pod("full", "prod"),
                {"name": "short", "namespace": "prod", "annotations": {"profefe.com/enable": "true"}},
            ]
        )
    )
    kubeconfig = tmp_path / "kc.yaml"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kprofefe_sandbox.kubeapi",
            "--pods",
            str(pods_file),
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until served; the timeout below bounds the whole test
        assert "serving 2 pods on http://127.0.0.1:" in first
        deadline = time.monotonic() + 20
        while not kubeconfig.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pods = load_client(kubeconfig).list_namespaced_pod("prod")
        assert names(pods) == ["full", "short"]
        assert pods.items[1].metadata.annotations == {"profefe.com/enable": "true"}
    finally:
        proc.terminate()
        proc.wait(10)
