"""Which pods a command works on, and ``kubectl profefe targets``: the dry run of ``capture``.

Pods are chosen kubectl's way (names, or ``-n``/``-A`` with ``-l``) and turned into capture targets by the same
pure :func:`kprofefe_tasks.domain.targets.pod_to_target` the collector uses. One difference, on purpose: a pod named on
the command line is captured even without ``profefe.com/enable: "true"`` (a person asked for it) and even when it
fails its readiness probe (that is often why someone is looking); its other annotations (port, path, service,
types) still apply.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kprofefe_tasks.cli import common, output
from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.domain import annotations as ann
from kprofefe_tasks.domain.targets import Skip, Target, pod_to_target
from kprofefe_tasks.io.kube import RUNNING, Kube

PAGE_SIZE = 500  # pods per list call, as the collector's default


@dataclass(frozen=True)
class Scope:
    """Where to look: one namespace (None: all), a label selector, and pod names (empty: every pod)."""

    namespace: str | None
    selector: str = ""
    pods: tuple[str, ...] = ()

    def describe(self) -> str:
        where = "in all namespaces" if self.namespace is None else f'in namespace "{self.namespace}"'
        if self.pods:
            where = f"named {', '.join(self.pods)} {where}"
        if self.selector:
            where += f' with selector "{self.selector}"'
        return where


@dataclass
class Resolved:
    """Targets to capture, pods in scope that will not be, and named pods that do not exist."""

    targets: list[Target] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def skip_counts(self) -> str:
        counts = Counter(s.reason for s in self.skips)
        return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """Pod names as separate arguments or kube-profefe's comma list (``capture a,b``), without repeats."""
    return tuple(dict.fromkeys(n for v in values for n in (p.strip() for p in v.split(",")) if n))


def _as_requested(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a pod named on the command line, enabled for profiling whatever its annotations say."""
    wanted = copy.deepcopy(dict(pod))
    metadata = wanted.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    annotations[ann.ENABLE] = "true"
    metadata["annotations"] = annotations
    return wanted


def _as_ready(pod: dict[str, Any]) -> dict[str, Any]:
    status = pod.setdefault("status", {})
    conditions = [c for c in status.get("conditions") or () if c.get("type") != "Ready"]
    status["conditions"] = [*conditions, {"type": "Ready", "status": "True"}]
    return pod


def _decide(pod: Mapping[str, Any], default_types: Sequence[str], named: bool) -> Target | Skip:
    if not named:
        return pod_to_target(pod, default_types)
    wanted = _as_requested(pod)
    result = pod_to_target(wanted, default_types)
    if isinstance(result, Skip) and result.reason == "not-ready":
        result = pod_to_target(_as_ready(wanted), default_types)
    return result


def resolve(
    kube: Kube,
    scope: Scope,
    *,
    types: Sequence[str] | None = None,
    port: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Resolved:
    """List the pods in ``scope`` and decide for each. ``types`` given explicitly replaces the pods' own
    ``profefe.com/types``; ``port`` replaces their port."""
    default_types = tuple(types) if types else PROFILE_TYPES
    results: dict[str, Target | Skip] = {}
    resolved = Resolved()
    if scope.pods and scope.namespace is not None:
        for name in scope.pods:
            pod = kube.get_pod(scope.namespace, name)
            if pod is None:
                resolved.missing.append(f'pods "{name}" not found in namespace "{scope.namespace}"')
                continue
            result = _decide(pod, default_types, named=True)
            results[result.key] = result
    else:
        wanted = set(scope.pods)
        found: set[str] = set()
        field_selector = RUNNING
        if len(scope.pods) == 1:
            field_selector += f",metadata.name={scope.pods[0]}"
        for pod in kube.list_pods(
            scope.namespace, label_selector=scope.selector, field_selector=field_selector, page_size=page_size
        ):
            name = str((pod.get("metadata") or {}).get("name", ""))
            if wanted and name not in wanted:
                continue
            found.add(name)
            result = _decide(pod, default_types, named=bool(wanted))
            results[result.key] = result
        resolved.missing.extend(
            f'no running pod named "{name}" in any namespace' for name in scope.pods if name not in found
        )
    for key in sorted(results):
        result = results[key]
        if isinstance(result, Target):
            if types:
                result = dataclasses.replace(result, types=tuple(types))
            if port is not None:
                result = dataclasses.replace(result, port=port)
            resolved.targets.append(result)
        else:
            resolved.skips.append(result)
    return resolved


def pods_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The pod names given; checked before anything connects, so a usage mistake costs no round trip."""
    pods = split_names(getattr(args, "pods", ()) or ())
    if pods and args.selector:
        # kubectl refuses this too: a name already picks the pod, a selector on top is a mistake
        raise common.UsageError("pod names and a selector (-l) cannot be used together")
    return pods


def scope_from_args(args: argparse.Namespace, kube: Kube) -> Scope:
    return Scope(namespace=common.scope_namespace(args, kube), selector=args.selector, pods=pods_from_args(args))


# -- `targets` -----------------------------------------------------------------------------------------------


def target_json(target: Target) -> dict[str, Any]:
    """One target for ``-o json|yaml``: :meth:`Target.to_dict` with ``labels`` as an object."""
    data = target.to_dict()
    data["labels"] = dict(target.labels)
    return data


def skip_json(skip: Skip) -> dict[str, str]:
    return {"namespace": skip.namespace, "pod": skip.pod, "reason": skip.reason, "detail": skip.detail}


def render(resolved: Resolved, fmt: str) -> str:
    """The ``targets`` output.

    ``-o json`` / ``-o yaml`` shape::

        {"targets": [{"namespace", "pod", "uid", "ip", "port", "path", "service", "container", "node",
                      "types": [str], "labels": {str: str}}],
         "skipped": [{"namespace", "pod", "reason", "detail"}]}

    Table: ``NAMESPACE POD SERVICE ADDRESS TYPES`` (wide adds ``PATH CONTAINER NODE``), then the skipped pods
    as ``NAMESPACE POD SKIP DETAIL``.
    """
    if fmt in ("json", "yaml"):
        data = {
            "targets": [target_json(t) for t in resolved.targets],
            "skipped": [skip_json(s) for s in resolved.skips],
        }
        return output.dump(data, fmt)
    wide = fmt == "wide"
    parts: list[str] = []
    if resolved.targets:
        headers = ["NAMESPACE", "POD", "SERVICE", "ADDRESS", "TYPES"] + (["PATH", "CONTAINER", "NODE"] if wide else [])
        rows = []
        for t in resolved.targets:
            row: list[object] = [t.namespace, t.pod, t.service, t.address, ",".join(t.types)]
            if wide:
                row += [t.path, t.container or "<none>", t.node or "<none>"]
            rows.append(row)
        parts.append(output.table(headers, rows))
    if resolved.skips:
        rows = [[s.namespace, s.pod, s.reason, s.detail] for s in resolved.skips]
        parts.append(output.table(["NAMESPACE", "POD", "SKIP", "DETAIL"], rows))
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    pods_from_args(args)
    kube = common.connect_kube(args)
    scope = scope_from_args(args, kube)
    resolved = resolve(kube, scope, types=common.flatten_types(args.types), port=args.port)
    for message in resolved.missing:
        print(f"Error from server (NotFound): {message}", file=sys.stderr)
    if not resolved.targets and not resolved.skips and args.output not in ("json", "yaml"):
        if not resolved.missing:
            print(f"No pods found {scope.describe()}.", file=sys.stderr)
    else:
        sys.stdout.write(render(resolved, args.output))
    return 1 if resolved.missing else 0
