"""A Kubernetes core/v1 API server test double: pods, selectors, paging and the pods/proxy subresource.

Tests, benchmarks and the local demo point the real ``kubernetes`` client (or ``kubectl``, or ``requests``)
at it through a kubeconfig from :meth:`KubeAPIServer.write_kubeconfig`. Everything it answers is shaped like a
real API server's JSON: ``PodList`` items without ``apiVersion``/``kind``, ``Status`` objects for every error,
opaque ``continue`` tokens, and ``pods/{name}[:port]/proxy/...`` forwarding with the API server's 503 on a
refused dial.

Deliberate limits, stated so nobody relies on them: no watch, no writes over HTTP (mutate with
:meth:`KubeAPIServer.add_pod` and friends), and continue pages are served from the current pod set rather than
a snapshot. The proxy only ever dials loopback addresses: sandbox pod IPs are fake, so a pod that should be
reachable needs a loopback IP or a ``proxy_targets`` override.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import copy
import hmac
import http.client
import ipaddress
import json
import logging
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

log = logging.getLogger(__name__)

JSON = dict[str, Any]

PROXY_CONNECT_TIMEOUT_S = 5.0
"""Loopback dials either connect at once or are refused; a hang means something is badly wrong."""

PROXY_READ_TIMEOUT_S = 120.0
"""A CPU profile blocks for its whole window before the first byte, so reads must outwait it."""

PROXY_CHUNK_BYTES = 64 * 1024
"""Proxied bodies are copied in chunks of this size, never held whole in memory."""

REQUEST_LOG_MAX = 100_000
"""Entries kept in :attr:`KubeAPIServer.requests`; the oldest go first, so long benchmarks stay bounded."""

LISTEN_BACKLOG = 128
"""socketserver's default of 5 makes bursts of concurrent clients wait on SYN retries for a second or more."""

SERVER_GIT_VERSION = "v1.29.0"
"""What ``/version`` claims; a real release string keeps kubectl's version-skew check quiet."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers the proxy never copies upstream: hop-by-hop ones, the API server's own auth (the real one strips it
# after authenticating) and framing it recomputes.
_NOT_FORWARDED_UP = _HOP_BY_HOP | {"host", "authorization", "content-length"}
# Headers the proxy never copies back: framing, plus ones BaseHTTPRequestHandler already sends.
_NOT_FORWARDED_DOWN = _HOP_BY_HOP | {"content-length", "date", "server"}

_OWNER_API_VERSIONS = {
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _host_ip_for(node: str) -> str:
    # Stable per node so pods on one node share an instance id, as they do on a real cluster.
    n = int.from_bytes(uuid.uuid5(uuid.NAMESPACE_DNS, node).bytes[:2], "big")
    return f"172.18.{n % 250}.{2 + (n >> 8) % 250}"


def make_pod(
    name: str,
    namespace: str = "default",
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    ip: str | None = "10.0.0.1",
    phase: str = "Running",
    ready: bool = True,
    node: str | None = "node-1",
    containers: Sequence[tuple[str, Sequence[int]]] | None = None,
    owner: tuple[str, str] | None = None,
    deleting: bool = False,
    uid: str | None = None,
    host_ip: str | None = None,
) -> JSON:
    """A complete core/v1 Pod as the API server returns it from ``GET .../pods/{name}``.

    ``containers`` is ``[(name, [ports])]`` (default one ``app`` container on 6060); ``owner`` is
    ``(kind, name)``. ``ip=None`` gives a pod without an IP yet; ``host_ip`` defaults to a stable fake address
    derived from ``node``.
    """
    now = _now()
    containers = [("app", [6060])] if containers is None else containers
    pod_labels = dict(labels or {})
    metadata: JSON = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "resourceVersion": "1",
        "creationTimestamp": now,
    }
    if owner is not None:
        kind, owner_name = owner
        metadata["ownerReferences"] = [
            {
                "apiVersion": _OWNER_API_VERSIONS.get(kind, "v1"),
                "kind": kind,
                "name": owner_name,
                # Siblings share their owner's uid, as on a real cluster.
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{kind}/{owner_name}")),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        if kind == "ReplicaSet" and "-" in owner_name:
            pod_labels.setdefault("pod-template-hash", owner_name.rsplit("-", 1)[1])
    # The real server omits empty maps rather than sending {}.
    if pod_labels:
        metadata["labels"] = pod_labels
    if annotations:
        metadata["annotations"] = dict(annotations)
    if deleting:
        metadata["deletionTimestamp"] = now
        metadata["deletionGracePeriodSeconds"] = 30

    spec_containers: list[JSON] = []
    statuses: list[JSON] = []
    running = phase == "Running"
    for cname, ports in containers:
        image = f"registry.example.com/{cname}:1.0"
        container: JSON = {
            "name": cname,
            "image": image,
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
        if ports:
            container["ports"] = [{"containerPort": int(p), "protocol": "TCP"} for p in ports]
        spec_containers.append(container)
        state: JSON = {"running": {"startedAt": now}} if running else {"waiting": {"reason": "ContainerCreating"}}
        statuses.append(
            {
                "name": cname,
                "state": state,
                "lastState": {},
                "ready": ready and running,
                "restartCount": 0,
                "image": image,
                "imageID": f"{image}@sha256:{uuid.uuid5(uuid.NAMESPACE_URL, image).hex * 2}",
                "containerID": f"containerd://{uuid.uuid4().hex * 2}",
                "started": running,
            }
        )

    spec: JSON = {
        "containers": spec_containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
    }
    if node:
        spec["nodeName"] = node

    ready_word = "True" if ready and running else "False"
    conditions: list[JSON] = [
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
        {"type": "Ready", "status": ready_word, "lastProbeTime": None, "lastTransitionTime": now},
        {"type": "ContainersReady", "status": ready_word, "lastProbeTime": None, "lastTransitionTime": now},
        {
            "type": "PodScheduled",
            "status": "True" if node else "False",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        },
    ]
    status: JSON = {"phase": phase, "conditions": conditions, "qosClass": "BestEffort", "startTime": now}
    if node:
        host = host_ip or _host_ip_for(node)
        status["hostIP"] = host
        status["hostIPs"] = [{"ip": host}]
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    status["containerStatuses"] = statuses
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


# -- selectors ------------------------------------------------------------------------------------------


class SelectorError(ValueError):
    """A label or field selector the real API server would reject with 400."""


_LABEL_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^(?P<key>{_LABEL_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_NOT_EXISTS_RE = re.compile(rf"^!\s*(?P<key>{_LABEL_KEY})$")
_COMPARE_RE = re.compile(rf"^(?P<key>{_LABEL_KEY})\s*(?P<op>==|!=|=|>|<)\s*(?P<value>[^\s]*)$")
_EXISTS_RE = re.compile(rf"^(?P<key>{_LABEL_KEY})$")
_VALUE_RE = re.compile(rf"^{_LABEL_VALUE}$")

LabelRequirement = Callable[[Mapping[str, str]], bool]


def _split_top_level(text: str) -> list[str]:
    # Commas separate requirements except inside "in (a,b)" sets.
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectorError(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _checked_value(value: str, requirement: str) -> str:
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r} in {requirement!r}")
    return value


def _label_requirement(req: str) -> LabelRequirement:
    if m := _SET_RE.match(req):
        key = m["key"]
        values = frozenset(_checked_value(v.strip(), req) for v in m["values"].split(","))
        if m["op"] == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: key not in labels or labels[key] not in values
    if m := _NOT_EXISTS_RE.match(req):
        key = m["key"]
        return lambda labels: key not in labels
    if m := _COMPARE_RE.match(req):
        key, op, value = m["key"], m["op"], m["value"]
        if op in (">", "<"):
            try:
                bound = int(value)
            except ValueError:
                raise SelectorError(
                    f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an integer: {req!r}"
                ) from None

            def compare(labels: Mapping[str, str]) -> bool:
                try:
                    have = int(labels[key])
                except (KeyError, ValueError):
                    return False
                return have > bound if op == ">" else have < bound

            return compare
        value = _checked_value(value, req)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if m := _EXISTS_RE.match(req):
        key = m["key"]
        return lambda labels: key in labels
    raise SelectorError(f"unable to parse requirement: {req!r}")


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse the full label selector syntax; every returned requirement must hold (comma = AND)."""
    if not text.strip():
        return []
    parts = _split_top_level(text)
    if any(not p for p in parts):
        raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
    return [_label_requirement(p) for p in parts]


def _field_getters() -> dict[str, Callable[[JSON], str]]:
    def get(*path: str) -> Callable[[JSON], str]:
        def getter(pod: JSON) -> str:
            node: Any = pod
            for step in path:
                node = node.get(step) if isinstance(node, dict) else None
            if isinstance(node, bool):
                return "true" if node else "false"
            return "" if node is None else str(node)

        return getter

    return {
        "metadata.name": get("metadata", "name"),
        "metadata.namespace": get("metadata", "namespace"),
        "spec.nodeName": get("spec", "nodeName"),
        "spec.restartPolicy": get("spec", "restartPolicy"),
        "spec.schedulerName": get("spec", "schedulerName"),
        "spec.serviceAccountName": get("spec", "serviceAccountName"),
        "spec.hostNetwork": get("spec", "hostNetwork"),
        "status.phase": get("status", "phase"),
        "status.podIP": get("status", "podIP"),
        "status.nominatedNodeName": get("status", "nominatedNodeName"),
    }


POD_FIELD_GETTERS = _field_getters()
"""The pod fields the real API server accepts in a field selector (minus ``status.podIPs``)."""

_FIELD_RE = re.compile(r"^(?P<field>[^\s=!]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s]*)$")

FieldRequirement = Callable[[JSON], bool]


def _field_requirement(req: str) -> FieldRequirement:
    m = _FIELD_RE.match(req)
    if m is None:
        raise SelectorError(f"invalid selector: {req!r}; can't understand {req!r}")
    field, op, value = m["field"], m["op"], m["value"]
    getter = POD_FIELD_GETTERS.get(field)
    if getter is None:
        raise SelectorError(f"field label not supported: {field}")
    if field == "spec.hostNetwork" and value == "false":
        # An unset hostNetwork means false on the real server.
        return lambda pod: (getter(pod) in ("", "false")) == (op != "!=")
    if op == "!=":
        return lambda pod: getter(pod) != value
    return lambda pod: getter(pod) == value


def parse_field_selector(text: str) -> list[FieldRequirement]:
    """Parse a pod field selector (``=``, ``==``, ``!=``, comma = AND)."""
    if not text.strip():
        return []
    return [_field_requirement(p.strip()) for p in text.split(",")]


# -- wire helpers ---------------------------------------------------------------------------------------


def status_object(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    """A ``Status`` failure body exactly as the API server sends it."""
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


class _APIError(Exception):
    def __init__(self, status: JSON) -> None:
        super().__init__(status["message"])
        self.status = status


def _not_found(name: str) -> _APIError:
    return _APIError(status_object(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}))


def _bad_request(message: str) -> _APIError:
    return _APIError(status_object(400, "BadRequest", message))


def _unavailable(message: str) -> _APIError:
    return _APIError(status_object(503, "ServiceUnavailable", message))


def _encode_continue(resource_version: int, after_key: str) -> str:
    # Same shape as the real server's token: base64 JSON with a start key just past the last item returned.
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": after_key + "\x00"})
    return base64.b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> str:
    try:
        data = json.loads(base64.b64decode(token.encode(), validate=True))
        start = data["start"]
        if data.get("v") != "meta.k8s.io/v1" or not isinstance(start, str) or not isinstance(data["rv"], int):
            raise ValueError("unsupported continue token")
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise _bad_request(f"continue key is not valid: {exc}") from None
    return start


def _pod_key(pod: JSON) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def _new_pod_key(pod: JSON) -> str:
    meta = pod.get("metadata") or {}
    if not meta.get("name"):
        raise ValueError("pod has no metadata.name")
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dial_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_DISCOVERY_API = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
_DISCOVERY_APIS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
_DISCOVERY_V1 = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "list"],
            "shortNames": ["po"],
            "categories": ["all"],
        },
        {
            "name": "pods/proxy",
            "singularName": "",
            "namespaced": True,
            "kind": "PodProxyOptions",
            "verbs": ["get"],
        },
    ],
}
_VERSION = {
    "major": "1",
    "minor": SERVER_GIT_VERSION.split(".")[1],
    "gitVersion": SERVER_GIT_VERSION,
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.21.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_TABLE_COLUMNS = [
    {"name": "Name", "type": "string", "format": "name", "description": "Name of the pod", "priority": 0},
    {"name": "Ready", "type": "string", "format": "", "description": "Ready containers", "priority": 0},
    {"name": "Status", "type": "string", "format": "", "description": "Pod status", "priority": 0},
    {"name": "Restarts", "type": "string", "format": "", "description": "Container restarts", "priority": 0},
    {"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0},
    {"name": "IP", "type": "string", "format": "", "description": "Pod IP", "priority": 1},
    {"name": "Node", "type": "string", "format": "", "description": "Node name", "priority": 1},
]


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def pod_table(pod_list: JSON) -> JSON:
    """The ``meta.k8s.io/v1`` Table that ``kubectl get pods`` asks for, built from a PodList."""
    rows = []
    for pod in pod_list["items"]:
        meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        statuses = status.get("containerStatuses") or []
        ready = sum(1 for c in statuses if c.get("ready"))
        phase = "Terminating" if meta.get("deletionTimestamp") else status.get("phase", "Unknown")
        cells = [
            meta["name"],
            f"{ready}/{len(spec.get('containers') or [])}",
            phase,
            str(sum(int(c.get("restartCount", 0)) for c in statuses)),
            _age(meta.get("creationTimestamp")),
            status.get("podIP") or "<none>",
            spec.get("nodeName") or "<none>",
        ]
        # kubectl reads namespace, labels and age columns from this object, not from the cells.
        row_meta = copy.deepcopy(meta)
        rows.append(
            {
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": row_meta,
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": pod_list["metadata"],
        "columnDefinitions": _TABLE_COLUMNS,
        "rows": rows,
    }


_LIST_ALL_RE = re.compile(r"^/api/v1/pods/?$")
_LIST_NS_RE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/?$")
_GET_RE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$")
_PROXY_RE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<spec>[^/]+)/proxy(?P<rest>/.*)?$")


# -- server ---------------------------------------------------------------------------------------------


class KubeAPIServer:
    """Serves a mutable set of pods over the core/v1 wire format on 127.0.0.1; a context manager.

    ``proxy_targets`` maps ``"namespace/name"`` to ``"host"`` or ``"host:port"`` for the pods/proxy
    subresource, because sandbox pod IPs are fake. ``token``, when set, is the bearer token every request
    must carry.
    """

    def __init__(
        self,
        pods: Iterable[JSON] = (),
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        proxy_targets: dict[str, str] | None = None,
    ) -> None:
        self.token = token
        self.host = host
        self._port = port
        self.proxy_targets: dict[str, str] = dict(proxy_targets or {})
        self._lock = threading.Lock()
        self._pods: dict[str, JSON] = {}
        self._resource_version = 1000
        self._requests: collections.deque[tuple[str, str, dict[str, str]]] = collections.deque(maxlen=REQUEST_LOG_MAX)
        self._upstreams: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for pod in pods:
            self.add_pod(pod)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        if self._httpd is not None:
            raise RuntimeError("KubeAPIServer already started")
        self._httpd = _HTTPServer((self.host, self._port), _Handler, self)
        # Pinned so that a stop()/start() cycle (an API server outage) comes back on the same URL.
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="kubeapi", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        # Keep-alive clients and in-flight proxies would otherwise hold their threads (and sockets) open.
        httpd.close_connections()
        with self._lock:
            upstreams = list(self._upstreams)
        for sock in upstreams:
            _shutdown_quietly(sock)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port; still known after :meth:`stop`, and reused by the next :meth:`start`."""
        if self._port == 0:
            raise RuntimeError("KubeAPIServer not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- pods --------------------------------------------------------------------------------------------

    def _stored(self, pod: JSON, previous: JSON | None) -> JSON:
        pod = copy.deepcopy(pod)
        pod["apiVersion"], pod["kind"] = "v1", "Pod"
        meta = pod.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("pod has no metadata.name")
        meta.setdefault("namespace", "default")
        if previous is not None:
            # An update, not a re-creation: identity and age stay (delete + add to model a new pod).
            meta["uid"] = previous["metadata"]["uid"]
            meta["creationTimestamp"] = previous["metadata"]["creationTimestamp"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        pod.setdefault("spec", {}).setdefault("containers", [])
        pod.setdefault("status", {})
        self._resource_version += 1
        meta["resourceVersion"] = str(self._resource_version)
        return pod

    def add_pod(self, pod: JSON) -> None:
        """Store a copy of ``pod``; ``ValueError`` if one with that namespace/name exists."""
        key = _new_pod_key(pod)
        with self._lock:
            if key in self._pods:
                raise ValueError(f"pod {key} already exists")
            self._pods[key] = self._stored(pod, None)

    def replace_pod(self, pod: JSON) -> None:
        """Update the stored pod with the same namespace/name, keeping its uid and creationTimestamp.

        ``KeyError`` if absent. To model a pod re-created under the same name, delete and add instead.
        """
        key = _new_pod_key(pod)
        with self._lock:
            if key not in self._pods:
                raise KeyError(f"pod {key} does not exist")
            self._pods[key] = self._stored(pod, self._pods[key])

    def delete_pod(self, namespace: str, name: str) -> None:
        """Remove a pod at once (no graceful termination); ``KeyError`` if absent."""
        with self._lock:
            key = f"{namespace}/{name}"
            if key not in self._pods:
                raise KeyError(f"pod {key} does not exist")
            del self._pods[key]
            self._resource_version += 1

    def get_pod(self, namespace: str, name: str) -> JSON | None:
        with self._lock:
            pod = self._pods.get(f"{namespace}/{name}")
            return copy.deepcopy(pod) if pod is not None else None

    def pods(self) -> list[JSON]:
        """Copies of all stored pods, ordered by namespace/name."""
        with self._lock:
            return [copy.deepcopy(self._pods[k]) for k in sorted(self._pods)]

    # -- request log -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """A snapshot of ``(method, decoded path, {query key: first value})`` for the requests so far."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, method: str, path: str, query: dict[str, str]) -> None:
        with self._lock:
            self._requests.append((method, path, query))

    # -- kubeconfig --------------------------------------------------------------------------------------

    def write_kubeconfig(self, path: str | Path, namespace: str = "default", context: str = "sandbox") -> Path:
        """Write a kubeconfig whose current context points at this server with ``namespace``."""
        user: JSON = {"token": self.token} if self.token is not None else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(config, sort_keys=False))
        # It may hold a bearer token.
        out.chmod(0o600)
        return out

    # -- API ---------------------------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        expected = f"Bearer {self.token}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    def _list(self, namespace: str | None, query: dict[str, str]) -> JSON:
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(query.get("fieldSelector", ""))
        except SelectorError as exc:
            raise _bad_request(str(exc)) from None
        if query.get("watch", "") in ("1", "true", "True"):
            raise _bad_request("watch is not supported by the sandbox API server")
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise _bad_request(f"limit: Invalid value: {query['limit']!r}") from None
        start = _decode_continue(query["continue"]) if query.get("continue") else ""

        with self._lock:
            rv = self._resource_version
            keys = sorted(self._pods)
            matching = []
            for key in keys:
                pod = self._pods[key]
                if namespace is not None and pod["metadata"]["namespace"] != namespace:
                    continue
                if start and key < start:
                    continue
                pod_labels = pod["metadata"].get("labels") or {}
                if all(req(pod_labels) for req in labels) and all(req(pod) for req in fields):
                    matching.append((key, pod))
            page = matching[:limit] if limit > 0 else matching
            items = []
            for _, pod in page:
                item = copy.deepcopy(pod)
                item.pop("apiVersion", None)
                item.pop("kind", None)
                items.append(item)

        meta: JSON = {"resourceVersion": str(rv)}
        remaining = len(matching) - len(page)
        if remaining > 0:
            meta["continue"] = _encode_continue(rv, page[-1][0])
            # The real server can only count what is left when no selector filters the rest.
            if not labels and not fields:
                meta["remainingItemCount"] = remaining
        return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}

    def _get(self, namespace: str, name: str) -> JSON:
        pod = self.get_pod(namespace, name)
        if pod is None:
            raise _not_found(name)
        return pod

    def _proxy_target(self, namespace: str, spec: str) -> tuple[str, str, int]:
        """Resolve ``[scheme:]name[:port]`` to ``(pod name, host, port)`` the way the API server does."""
        parts = spec.split(":")
        if len(parts) == 3:
            scheme, name, port_spec = parts
        elif len(parts) == 2:
            scheme, (name, port_spec) = "", parts
        else:
            scheme, name, port_spec = "", spec, ""
        pod = self._get(namespace, name)
        if scheme not in ("", "http"):
            raise _unavailable(f"error trying to reach service: the sandbox proxies plain http only, not {scheme}")
        containers = pod["spec"].get("containers") or []
        all_ports = [p for c in containers for p in c.get("ports") or []]
        if port_spec.isdigit():
            port = int(port_spec)
        elif port_spec:
            named = [p["containerPort"] for p in all_ports if p.get("name") == port_spec]
            if not named:
                raise _unavailable(f"error trying to reach service: no port named {port_spec!r} on pod {name}")
            port = int(named[0])
        else:
            # Like the real server: the first declared container port, else plain HTTP's 80.
            port = int(all_ports[0]["containerPort"]) if all_ports else 80

        override = self.proxy_targets.get(f"{namespace}/{name}")
        if override:
            host, sep, override_port = override.rpartition(":")
            if sep and override_port.isdigit() and not host.endswith(":"):
                return name, host.strip("[]"), int(override_port)
            return name, override.strip("[]"), port
        host = str(pod["status"].get("podIP") or "")
        if not host:
            raise _unavailable(f"error trying to reach service: pod {name} has no IP address")
        return name, host, port


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: KubeAPIServer) -> None:
        self.api = api
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self._conns_lock:
            self._conns.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            _shutdown_quietly(sock)


def _shutdown_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kprofefe-sandbox-kubeapi"

    @property
    def api(self) -> KubeAPIServer:
        return cast(_HTTPServer, self.server).api

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kubeapi %s - " + format, self.address_string(), *args)

    def _send_json(self, code: int, body: JSON) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_list(self, pod_list: JSON) -> None:
        # kubectl asks for server-side printing; answering in kind gives it its usual columns.
        self._send_json(200, pod_table(pod_list) if self._wants_table() else pod_list)

    def _wants_table(self) -> bool:
        return "as=Table" in (self.headers.get("Accept") or "")

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, PROXY_CHUNK_BYTES))
            if not chunk:
                break
            length -= len(chunk)

    def _parse(self) -> tuple[str, str, dict[str, str]]:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self.api._record(self.command, path, query)
        return path, split.query, query

    def _reject_method(self) -> None:
        self._discard_body()
        self._parse()
        if not self.api._authorized(self.headers.get("Authorization")):
            self._send_json(401, status_object(401, "Unauthorized", "Unauthorized"))
            return
        self._send_json(405, status_object(405, "MethodNotAllowed", "the sandbox API server only serves GET requests"))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _reject_method

    def do_GET(self) -> None:
        path, raw_query, query = self._parse()
        if not self.api._authorized(self.headers.get("Authorization")):
            self._send_json(401, status_object(401, "Unauthorized", "Unauthorized"))
            return
        try:
            self._route(path, raw_query, query)
        except _APIError as exc:
            self._send_json(int(exc.status["code"]), exc.status)

    def _route(self, path: str, raw_query: str, query: dict[str, str]) -> None:
        api = self.api
        if m := _PROXY_RE.match(path):
            self._proxy(m["ns"], m["spec"], m["rest"] or "/", raw_query)
        elif m := _GET_RE.match(path):
            pod = api._get(m["ns"], m["name"])
            if self._wants_table():
                self._send_json(
                    200,
                    pod_table({"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]}, "items": [pod]}),
                )
            else:
                self._send_json(200, pod)
        elif m := _LIST_NS_RE.match(path):
            self._send_list(api._list(m["ns"], query))
        elif _LIST_ALL_RE.match(path):
            self._send_list(api._list(None, query))
        elif path in ("/api", "/api/"):
            self._send_json(200, _DISCOVERY_API)
        elif path in ("/apis", "/apis/"):
            self._send_json(200, _DISCOVERY_APIS)
        elif path in ("/api/v1", "/api/v1/"):
            self._send_json(200, _DISCOVERY_V1)
        elif path == "/version":
            self._send_json(200, _VERSION)
        elif path in ("/healthz", "/livez", "/readyz"):
            self._send_text(200, "ok")
        else:
            self._send_json(404, status_object(404, "NotFound", "the server could not find the requested resource", {}))

    def _proxy(self, namespace: str, spec: str, rest: str, raw_query: str) -> None:
        name, host, port = self.api._proxy_target(namespace, spec)
        dial = _dial_name(host, port)
        if not _is_loopback(host):
            # Sandbox pod IPs are made up; dialing them would send traffic off this machine.
            raise _unavailable(
                f"error trying to reach service: dial tcp {dial}: the sandbox only dials loopback addresses "
                f"(set proxy_targets['{namespace}/{name}'])"
            )
        target = quote(rest, safe="/:@!$&'()*+,;=-._~")
        if raw_query:
            target += "?" + raw_query
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED_UP}
        conn = http.client.HTTPConnection(host, port, timeout=PROXY_CONNECT_TIMEOUT_S)
        try:
            try:
                conn.connect()
            except ConnectionRefusedError:
                raise _unavailable(
                    f"error trying to reach service: dial tcp {dial}: connect: connection refused"
                ) from None
            except TimeoutError:
                raise _unavailable(f"error trying to reach service: dial tcp {dial}: i/o timeout") from None
            except OSError as exc:
                raise _unavailable(f"error trying to reach service: dial tcp {dial}: {exc.strerror or exc}") from None
            assert conn.sock is not None
            upstream_sock: socket.socket = conn.sock
            upstream_sock.settimeout(PROXY_READ_TIMEOUT_S)
            with self.api._lock:
                self.api._upstreams.add(upstream_sock)
            try:
                try:
                    conn.request("GET", target, headers=headers)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    raise _unavailable(f"error trying to reach service: {exc}") from None
                self._relay(resp)
            finally:
                with self.api._lock:
                    self.api._upstreams.discard(upstream_sock)
        finally:
            conn.close()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _NOT_FORWARDED_DOWN:
                self.send_header(key, value)
        length = resp.getheader("Content-Length")
        chunked = length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", length or "0")
        self.end_headers()
        expected = int(length) if length is not None and length.isdigit() else None
        sent = 0
        try:
            while True:
                chunk = resp.read(PROXY_CHUNK_BYTES)
                if not chunk:
                    break
                sent += len(chunk)
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("proxy body copy failed after %d bytes: %s", sent, exc)
            # Framing can no longer be honoured; closing tells the client the body is truncated.
            self.close_connection = True
            return
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        elif expected is not None and sent != expected:
            self.close_connection = True


# -- CLI ------------------------------------------------------------------------------------------------


def _load_pods(path: Path) -> list[JSON]:
    """Pods from YAML: a list (or PodList, or multi-document stream) of full Pod dicts or make_pod kwargs."""
    pods: list[JSON] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        entries = doc.get("items", []) if isinstance(doc, dict) and doc.get("kind") == "PodList" else doc
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: each pod must be a mapping, got {entry!r}")
            if "metadata" in entry:
                pods.append(entry)
                continue
            # Shorthand for manual trials: make_pod's keyword arguments.
            kwargs = dict(entry)
            if "containers" in kwargs:
                kwargs["containers"] = [(c[0], list(c[1])) for c in kwargs["containers"]]
            if "owner" in kwargs:
                kwargs["owner"] = tuple(kwargs["owner"])
            pods.append(make_pod(**kwargs))
    return pods


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kprofefe_sandbox.kubeapi",
        description="Serve a YAML list of pods over the Kubernetes core/v1 API until Ctrl-C.",
    )
    parser.add_argument("--pods", type=Path, help="YAML: Pod dicts, a PodList, or make_pod() keyword mappings")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for this server here")
    parser.add_argument("--namespace", default="default", help="namespace of the kubeconfig's context")
    parser.add_argument(
        "--proxy-target",
        action="append",
        default=[],
        metavar="NS/POD=HOST[:PORT]",
        help="where pods/proxy requests for a pod go (repeatable)",
    )
    args = parser.parse_args(argv)

    targets: dict[str, str] = {}
    for item in args.proxy_target:
        key, sep, value = item.partition("=")
        if not sep or "/" not in key:
            parser.error(f"--proxy-target wants NS/POD=HOST[:PORT], got {item!r}")
        targets[key] = value
    pods = _load_pods(args.pods) if args.pods else []
    server = KubeAPIServer(pods, token=args.token, host=args.host, port=args.port, proxy_targets=targets)
    with server:
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
        print(f"serving {len(pods)} pods on {server.url}", flush=True)
        if args.kubeconfig:
            print(f"kubeconfig: {args.kubeconfig}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
