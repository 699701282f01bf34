"""Discovery: the pods in a scope → capture targets and skips. One implementation for the workers and the CLI.

The Kubernetes door is handed in (``kube``); deciding a pod is the pure :func:`~kprofefe_tasks.domain.targets.
pod_to_target`. The CLI differs in one thing, on purpose, asked for with ``requested=True``: a pod named on the
command line is captured even without ``profefe.com/enable: "true"`` (a person asked for it) and even when it fails
its readiness probe (that is often why someone is looking); its other annotations still apply, and so do the target
rules (:class:`~kprofefe_tasks.domain.targets.TargetRules`: no link-local address, a hostNetwork pod only on a
declared port), which naming a pod does not relax.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kprofefe_tasks.domain import annotations as ann
from kprofefe_tasks.domain.errors import KprofefeError
from kprofefe_tasks.domain.targets import DEFAULT_RULES, Skip, Target, TargetRules, pod_to_target

RUNNING = "status.phase=Running"  # filtered by the API server: Pending/Succeeded pods never reach us


class PodSource(Protocol):
    """What discovery needs of the Kubernetes API (:class:`kprofefe_tasks.io.kube.Kube` is one)."""

    def list_pods(
        self, namespace: str | None, *, label_selector: str = "", field_selector: str = RUNNING, page_size: int = 500
    ) -> Iterator[dict[str, Any]]: ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Scope:
    """Where to look: namespaces (None: all), a label selector, and pod names (empty: every pod)."""

    namespaces: tuple[str, ...] | None = None
    selector: str = ""
    pods: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.namespaces is None:
            where = "in all namespaces"
        elif len(self.namespaces) == 1:
            where = f'in namespace "{self.namespaces[0]}"'
        else:
            where = "in namespaces " + ", ".join(f'"{n}"' for n in self.namespaces)
        if self.pods:
            where = f"named {', '.join(self.pods)} {where}"
        if self.selector:
            where += f' with selector "{self.selector}"'
        return where


@dataclass
class Found:
    """Targets, pods in scope that will not be captured, named pods that do not exist, namespaces not listed."""

    targets: list[Target] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


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


def decide(
    pod: Mapping[str, Any],
    default_types: Sequence[str],
    *,
    requested: bool = False,
    rules: TargetRules = DEFAULT_RULES,
) -> Target | Skip:
    """A target or a skip for one pod; ``requested``: a person named it (see the module's docstring)."""
    if not requested:
        return pod_to_target(pod, default_types, rules)
    wanted = _as_requested(pod)
    result = pod_to_target(wanted, default_types, rules)
    if isinstance(result, Skip) and result.reason == "not-ready":
        result = pod_to_target(_as_ready(wanted), default_types, rules)
    return result


def find(
    kube: PodSource,
    scope: Scope,
    *,
    types: Sequence[str],
    page_size: int,
    requested: bool = False,
    rules: TargetRules = DEFAULT_RULES,
) -> Found:
    """List the pods in ``scope`` and decide each, once per pod even if listed twice; listing order is kept.

    A namespace that cannot be listed (no rights, API error) is reported in ``errors`` and the others are still
    captured; only when every namespace fails does the error propagate. With ``requested`` and one namespace, named
    pods are read one by one, so a pod that is not Running is reported rather than silently absent.
    """
    found = Found()
    seen: dict[str, Target | Skip] = {}
    wanted = set(scope.pods)
    if requested and scope.pods and scope.namespaces is not None and len(scope.namespaces) == 1:
        namespace = scope.namespaces[0]
        for name in scope.pods:
            pod = kube.get_pod(namespace, name)
            if pod is None:
                found.missing.append(f'pods "{name}" not found in namespace "{namespace}"')
                continue
            result = decide(pod, types, requested=True, rules=rules)
            seen[result.key] = result
    else:
        field_selector = RUNNING
        if len(scope.pods) == 1:
            field_selector += f",metadata.name={scope.pods[0]}"
        names: set[str] = set()
        scopes: list[str | None] = list(dict.fromkeys(scope.namespaces)) if scope.namespaces is not None else [None]
        last_error: KprofefeError | None = None
        for listed in scopes:
            try:
                for pod in kube.list_pods(
                    listed, label_selector=scope.selector, field_selector=field_selector, page_size=page_size
                ):
                    name = str((pod.get("metadata") or {}).get("name", ""))
                    if wanted and name not in wanted:
                        continue
                    names.add(name)
                    result = decide(pod, types, requested=requested and bool(wanted), rules=rules)
                    seen[result.key] = result
            except KprofefeError as exc:
                found.errors[listed or "*"] = str(exc)
                last_error = exc
        if last_error is not None and len(found.errors) == len(scopes):
            raise last_error
        where = "in any namespace" if scope.namespaces is None else scope.describe().removeprefix("in ")
        found.missing.extend(f'no running pod named "{name}" {where}' for name in scope.pods if name not in names)
    for result in seen.values():
        if isinstance(result, Target):
            found.targets.append(result)
        else:
            found.skips.append(result)
    return found


def limit_targets(targets: Sequence[Target], limit: int) -> tuple[list[Target], list[Skip]]:
    """Keep at most ``limit`` targets, the same ones every round (lowest hash of their key), skipping the rest."""
    if limit <= 0 or len(targets) <= limit:
        return list(targets), []
    ranked = sorted(targets, key=lambda t: hashlib.sha1(t.key.encode()).digest())
    over = [
        Skip(t.namespace, t.pod, "over-limit", f"KPROFEFE_MAX_TARGETS={limit} reached; {len(targets)} pods in scope")
        for t in ranked[limit:]
    ]
    return ranked[:limit], over


def spread_offset(key: str, window: float) -> float:
    """A stable offset in ``[0, window)`` for a target: its captures land at the same point of every interval."""
    if window <= 0:
        return 0.0
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * window


@dataclass(frozen=True)
class RoundPlan:
    """What a round queues: the targets kept, every skip, and the timing of its captures."""

    targets: list[Target]
    skips: list[Skip]
    expires_in: float  # s after its offset a capture is dropped unrun (an interval: the next round takes over)
    spread_window: float  # s over which captures are spread (0: all at once)

    @property
    def expected(self) -> int:
        return sum(len(t.types) for t in self.targets)


def plan_round(
    found: Found,
    *,
    max_targets: int,
    interval: float | None,
    cpu_seconds: int,
    spread: bool,
    read_margin: float,
    capture_expires: float,
) -> RoundPlan:
    """Cap the targets, and time the captures: with an interval they expire with it, and may spread over it."""
    targets, over = limit_targets(found.targets, max_targets)
    if interval:
        expires_in = float(interval)
        # Spread over the part of the interval where a CPU window still ends before the next round. The whole of
        # it: waiting captures are in Redis's delayed set, or ETA tasks under a lease (worker/delayed.py, leases.py).
        window = max(0.0, float(interval) - cpu_seconds - read_margin)
    else:
        expires_in, window = float(capture_expires), 0.0
    return RoundPlan(targets, [*found.skips, *over], expires_in, window if spread else 0.0)
