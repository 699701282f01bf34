"""A tiny core/v1 Pod builder for the pure tests (the sandbox API server has its own, richer one)."""

from __future__ import annotations

from typing import Any


def pod(
    name: str = "api-7d9f8c6b5-x2x2x",
    namespace: str = "web",
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    ready: bool = True,
    ip: str | None = "10.1.2.3",
    node: str = "node-a",
    containers: list[tuple[str, list[Any]]] | None = None,
    owner: tuple[str, str] | None = None,
    deleting: bool = False,
    enable: bool = True,
) -> dict[str, Any]:
    anns = {"profefe.com/enable": "true"} if enable else {}
    anns.update(annotations or {})
    ports_spec = containers if containers is not None else [("app", [6060])]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "annotations": anns,
        "labels": dict(labels or {}),
    }
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True, "uid": "owner-uid"}
        ]
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T00:00:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    containers_json = []
    for cname, ports in ports_spec:
        port_list = []
        for p in ports:
            if isinstance(p, tuple):
                port_list.append({"name": p[0], "containerPort": p[1], "protocol": "TCP"})
            else:
                port_list.append({"containerPort": p, "protocol": "TCP"})
        containers_json.append({"name": cname, "image": "x", "ports": port_list})
    return {"metadata": meta, "spec": {"nodeName": node, "containers": containers_json}, "status": status}
