"""Which pods a command works on, and ``kubectl profefe targets``: the dry run of ``capture``.

Pods are chosen kubectl's way (names, or ``-n``/``-A`` with ``-l``) and turned into capture targets by the
collector's own discovery (:func:`kprofefe_tasks.pipeline.discovery.find`), with ``requested=True``: a pod named on
the command line is captured even without ``profefe.com/enable: "true"`` and even when it fails its readiness probe;
its other annotations (port, path, service, types) still apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kprofefe_tasks.cli import common, output
from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.domain.targets import Skip, Target
from kprofefe_tasks.io.kube import Kube
from kprofefe_tasks.pipeline import discovery
from kprofefe_tasks.pipeline.discovery import Scope

PAGE_SIZE = 500  # pods per list call, as the collector's default


@dataclass
class Resolved:
    """Targets to capture, pods in scope that will not be, and named pods that do not exist (sorted by pod)."""

    targets: list[Target] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def skip_counts(self) -> str:
        counts = Counter(s.reason for s in self.skips)
        return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """Pod names as separate arguments or kube-profefe's comma list (``capture a,b``), without repeats."""
    return tuple(dict.fromkeys(n for v in values for n in (p.strip() for p in v.split(",")) if n))


def resolve(
    kube: Kube,
    scope: Scope,
    *,
    types: Sequence[str] | None = None,
    port: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Resolved:
    """The collector's discovery, as a person asked for it. ``types`` given explicitly replaces the pods' own
    ``profefe.com/types``; ``port`` replaces their port."""
    found = discovery.find(
        kube, scope, types=tuple(types) if types else PROFILE_TYPES, page_size=page_size, requested=True
    )
    resolved = Resolved(missing=found.missing)
    for target in sorted(found.targets, key=lambda t: t.key):
        if types:
            target = dataclasses.replace(target, types=tuple(types))
        if port is not None:
            target = dataclasses.replace(target, port=port)
        resolved.targets.append(target)
    resolved.skips = sorted(found.skips, key=lambda s: s.key)
    return resolved


def pods_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The pod names given; checked before anything connects, so a usage mistake costs no round trip."""
    pods = split_names(getattr(args, "pods", ()) or ())
    if pods and args.selector:
        # kubectl refuses this too: a name already picks the pod, a selector on top is a mistake
        raise common.UsageError("pod names and a selector (-l) cannot be used together")
    return pods


def scope_from_args(args: argparse.Namespace, kube: Kube) -> Scope:
    namespace = common.scope_namespace(args, kube)
    return Scope(
        namespaces=None if namespace is None else (namespace,), selector=args.selector, pods=pods_from_args(args)
    )


# -- `targets` -----------------------------------------------------------------------------------------------


def target_json(target: Target) -> dict[str, Any]:
    """One target for ``-o json|yaml``: :meth:`Target.to_dict` with ``labels`` as an object."""
    data = target.to_dict()
    data["labels"] = dict(target.labels)
    return data


def skip_json(skip: Skip) -> dict[str, str]:
    return skip.to_dict()


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
