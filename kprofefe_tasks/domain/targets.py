"""A pod (core/v1 JSON, as the API server sends it) → one capture target, or the reason it is skipped.

Pure: no network, no clock. Discovery, the CLI's dry run (`kubectl profefe targets`) and the tests all use this.

Service name, first that applies (kube-profefe used the pod name, which churns on every rollout):
1. the ``profefe.com/service`` annotation;
2. the ``app.kubernetes.io/name`` label;
3. the owning workload: a Deployment's name through its ReplicaSet (the ``pod-template-hash`` suffix removed),
   else the StatefulSet, DaemonSet, Job or other controller's name;
4. the pod name.

Every target, from discovery or off the queue, is built by :meth:`Target.from_dict`, which applies the same rules
(a capture message sits in Redis, where anyone with access to it can write one, so the worker trusts none of it):
the address is an IP literal (never a host name or URL) and not link-local or a cloud metadata address unless
``KPROFEFE_ALLOW_LINK_LOCAL``, the port is 1..65535, the path a plain absolute path (the ``profefe.com/path``
rule), namespace and pod valid Kubernetes names, the types known. A ``hostNetwork`` pod's IP is its node's: it is
scraped only on a port one of its containers declares, unless ``KPROFEFE_HOSTNETWORK_ANY_PORT``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.domain import annotations as ann
from kprofefe_tasks.domain.errors import InvalidTargetError
from kprofefe_tasks.domain.outcomes import CaptureResult, Outcome

SOURCE_LABEL = "kprofefe-tasks"  # the `from` label, as kube-profefe set from=kube-profefe

# Kubernetes' own name rules (apimachinery's IsDNS1123Label / IsDNS1123Subdomain): namespaces and container names are
# labels, pod and node names subdomains. fullmatch, so a trailing newline never passes as "$" would let it.
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_UID_CHARS = 128  # a pod uid is a 36-character UUID
MAX_LABELS = 32  # a target carries six labels; a message with hundreds is not ours
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 253
MAX_TYPES = 32  # entries in a message's type list, repeats included (six are known)

#: never dialled unless KPROFEFE_ALLOW_LINK_LOCAL: link-local ranges, where every cloud serves its instance metadata
#: (credentials) at 169.254.169.254, and AWS's IPv6 metadata address, which sits outside fe80::/10
LINK_LOCAL_NETWORKS = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
METADATA_ADDRESSES = (ipaddress.ip_address("fd00:ec2::254"),)
#: IPv6 forms that reach an IPv4 address: IPv4-mapped (a dual-stack socket dials the IPv4 address itself) and the
#: NAT64 well-known prefix (a NAT64 gateway does)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BROADCAST = ipaddress.ip_address("255.255.255.255")


@dataclass(frozen=True)
class TargetRules:
    """The two settings that relax the target rules (both off by default)."""

    allow_link_local: bool = False  # KPROFEFE_ALLOW_LINK_LOCAL
    hostnetwork_any_port: bool = False  # KPROFEFE_HOSTNETWORK_ANY_PORT


DEFAULT_RULES = TargetRules()


def _shown(value: Any) -> str:
    """A value from a message, for an error: the start of a string, or only the type of anything else."""
    return repr(value[:60]) if isinstance(value, str) else f"({type(value).__name__})"


def _invalid(problem: str, message: str) -> InvalidTargetError:
    return InvalidTargetError(message, problem=problem)


def check_ip(value: Any, *, allow_link_local: bool = False) -> str:
    """An IP literal (v4 or v6), in its canonical form; never a host name, URL, ``host:port`` or scoped address."""
    if not isinstance(value, str) or "%" in value:  # a zone id names an interface of the worker's own host
        raise _invalid("bad-ip", f"ip {_shown(value)}: must be an IP address")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise _invalid(
            "bad-ip", f"ip {_shown(value)}: not an IP address (a host name, URL or host:port is never dialled)"
        ) from None
    reached = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            reached.append(address.ipv4_mapped)
        elif address in _NAT64:
            reached.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for a in reached:
        if a.is_unspecified or a.is_multicast or a == _BROADCAST:
            raise _invalid("bad-ip", f"ip {value!r}: not a pod's unicast address")
        if not allow_link_local and (any(a in n for n in LINK_LOCAL_NETWORKS) or a in METADATA_ADDRESSES):
            raise _invalid(
                "link-local-ip",
                f"ip {value!r} is link-local or a cloud metadata address (169.254.0.0/16, fe80::/10, "
                "fd00:ec2::254): never dialled unless KPROFEFE_ALLOW_LINK_LOCAL=true",
            )
    return str(address)


def check_type(ptype: Any) -> str:
    """A profile type the collector knows (it becomes part of the request path)."""
    if not isinstance(ptype, str) or ptype not in PROFILE_TYPES:
        raise _invalid("bad-types", f"profile type {_shown(ptype)}: not one of {', '.join(PROFILE_TYPES)}")
    return ptype


def check_name(value: Any, what: str, *, subdomain: bool) -> str:
    """A Kubernetes object name: a DNS-1123 subdomain (pods, nodes) or label (namespaces, containers)."""
    if not isinstance(value, str):
        raise _invalid("bad-name", f"{what} {_shown(value)}: must be a string")
    pattern, limit = (_DNS_SUBDOMAIN_RE, DNS_SUBDOMAIN_MAX) if subdomain else (_DNS_LABEL_RE, DNS_LABEL_MAX)
    if len(value) > limit or not pattern.fullmatch(value):
        kind = "DNS-1123 subdomain" if subdomain else "DNS-1123 label"
        raise _invalid("bad-name", f"{what} {_shown(value)}: not a valid Kubernetes name (a {kind})")
    return value


def _name(data: Mapping[str, Any], key: str, *, subdomain: bool, required: bool) -> str:
    value = data.get(key, "")
    if value == "" and not required:
        return ""
    return check_name(value, key, subdomain=subdomain)


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise _invalid("bad-field", f"{what} {_shown(value)}: must be printable text of at most {limit} characters")
    return value


def check_port(value: Any) -> int:
    """A TCP port number, 1..65535, as an int."""
    # bool is an int in Python; "80", 80.0 and "80x" are not what our own messages carry
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _invalid("bad-port", f"port {_shown(value) if not isinstance(value, int) else value}: must be 1..65535")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("bad-path", f"path {_shown(value)}: must be a string")
    checked = ann.check_path(value, what="path")
    if isinstance(checked, ann.Invalid):
        raise _invalid(checked.reason, checked.detail)
    return checked


def _service(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("bad-service", f"service {_shown(value)}: must be a string")
    checked = ann.check_service(value, what="service")
    if isinstance(checked, ann.Invalid):
        raise _invalid(checked.reason, checked.detail)
    return checked


def _types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or len(value) > MAX_TYPES:
        raise _invalid("bad-types", f"types {_shown(value)}: must be a list of profile types")
    return tuple(dict.fromkeys(check_type(t) for t in value))


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_LABELS:
        raise _invalid("bad-field", f"labels {_shown(value)}: must be a list of at most {MAX_LABELS} pairs")
    pairs = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _invalid("bad-field", f"label {_shown(pair)}: must be a [key, value] pair")
        pairs.append((_text(pair[0], "label key", MAX_LABEL_KEY_CHARS), _text(pair[1], "label", MAX_LABEL_VALUE_CHARS)))
    return tuple(pairs)


def loggable(value: Any, empty: str = "?") -> str:
    """A field of a refused message, for a log line or a round key: name characters only, at most 63 of them."""
    text = re.sub(r"[^A-Za-z0-9._-]", "", value if isinstance(value, str) else "")[:DNS_LABEL_MAX]
    return text or empty


def refused(exc: InvalidTargetError, target: Any, ptype: Any, round_id: Any, task_id: str) -> CaptureResult:
    """The result of a capture message refused by the checks: ``failed`` / ``invalid-target``, a final outcome (its
    round still completes), with the message's names reduced to :func:`loggable` text and the type label to a
    known type or ``invalid`` (a metric label never carries the message's own text)."""
    data = target if isinstance(target, Mapping) else {}
    namespace, pod, service = (loggable(data.get(k)) for k in ("namespace", "pod", "service"))
    kind = ptype if isinstance(ptype, str) and ptype in PROFILE_TYPES else "invalid"
    return CaptureResult(
        namespace,
        pod,
        service,
        kind,
        Outcome.FAILED,
        exc.reason,  # invalid-target
        f"{exc.problem}: {exc.message}",
        round=loggable(round_id, ""),
        task_id=task_id,
    )


@dataclass(frozen=True)
class Target:
    """One pod's pprof endpoint and how its profiles are stored."""

    namespace: str
    pod: str
    uid: str
    ip: str
    port: int
    path: str
    service: str
    container: str
    node: str
    types: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a task argument); field by field, as ``asdict`` took a tenth of a 10,000-pod fan-out."""
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "uid": self.uid,
            "ip": self.ip,
            "port": self.port,
            "path": self.path,
            "service": self.service,
            "container": self.container,
            "node": self.node,
            "types": list(self.types),
            "labels": [list(kv) for kv in self.labels],
        }

    @classmethod
    def from_dict(cls, data: Any, *, allow_link_local: bool = False) -> Target:
        """The one way to build a checked target, for discovery and for a message read off the queue.

        Raises :class:`~kprofefe_tasks.domain.errors.InvalidTargetError` (``problem`` says which rule) for anything
        discovery would not have produced; a valid message is rebuilt exactly (``from_dict(t.to_dict()) == t``).
        """
        if not isinstance(data, Mapping):
            raise _invalid("bad-field", f"target {_shown(data)}: must be an object")
        for key in ("namespace", "pod", "ip", "port", "service"):
            if key not in data:
                raise _invalid("bad-field", f"target has no {key}")
        return cls(
            namespace=_name(data, "namespace", subdomain=False, required=True),
            pod=_name(data, "pod", subdomain=True, required=True),
            uid=_text(data.get("uid", ""), "uid", MAX_UID_CHARS),
            ip=check_ip(data["ip"], allow_link_local=allow_link_local),
            port=check_port(data["port"]),
            path=_path(data.get("path", ann.DEFAULT_PATH)),
            service=_service(data["service"]),
            container=_name(data, "container", subdomain=False, required=False),
            node=_name(data, "node", subdomain=True, required=False),
            types=_types(data.get("types", PROFILE_TYPES)),
            labels=_labels(data.get("labels", ())),
        )


@dataclass(frozen=True)
class Skip:
    """A pod in scope that will not be captured. ``reason`` is a short metric label, ``detail`` a sentence."""

    namespace: str
    pod: str
    reason: str
    detail: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "pod": self.pod, "reason": self.reason, "detail": self.detail}


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def _controller(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    for ref in metadata.get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("kind", "")), str(ref.get("name", ""))
    return None


def workload_name(metadata: Mapping[str, Any]) -> str | None:
    """The name of the workload that owns the pod, without asking the API server for the ReplicaSet."""
    owner = _controller(metadata)
    if owner is None:
        return None
    kind, name = owner
    if kind == "ReplicaSet":
        suffix = (metadata.get("labels") or {}).get("pod-template-hash")
        if suffix and name.endswith("-" + suffix):
            return name[: -len(suffix) - 1]
    return name or None


def _choose_container(
    containers: Sequence[Mapping[str, Any]], wanted: str | None, port: int | None
) -> Mapping[str, Any] | str:
    """The container whose port is scraped: the annotated one, else the one declaring the port, else the first."""
    if wanted is not None:
        for c in containers:
            if c.get("name") == wanted:
                return c
        names = ", ".join(str(c.get("name")) for c in containers)
        return f"{ann.CONTAINER}={wanted!r}: the pod has no such container (it has {names})"
    if port is not None:
        for c in containers:
            if any(p.get("containerPort") == port for p in c.get("ports") or ()):
                return c
    return containers[0] if containers else "the pod has no containers"


def _declared_ports(spec: Mapping[str, Any]) -> set[int]:
    """Every port the pod's containers (sidecar init containers too) declare, as containerPort or hostPort."""
    return {
        int(p[key])
        for c in [*(spec.get("containers") or ()), *(spec.get("initContainers") or ())]
        for p in c.get("ports") or ()
        for key in ("containerPort", "hostPort")
        if isinstance(p.get(key), int)
    }


def pod_to_target(
    pod: Mapping[str, Any], default_types: Sequence[str], rules: TargetRules = DEFAULT_RULES
) -> Target | Skip:
    """Decide whether and how to capture ``pod``. Every ``Skip`` has a reason a user can act on."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    namespace = str(metadata.get("namespace", ""))
    name = str(metadata.get("name", ""))
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}

    def skip(reason: str, detail: str) -> Skip:
        return Skip(namespace, name, reason, detail)

    on = ann.enabled(annotations)
    if isinstance(on, ann.Invalid):
        return skip(on.reason, on.detail)
    if not on:
        return skip("not-enabled", f'no {ann.ENABLE}: "true" annotation')
    if metadata.get("deletionTimestamp"):
        return skip("terminating", "the pod is being deleted")
    phase = status.get("phase")
    if phase != "Running":
        return skip("not-running", f"phase is {phase or 'unknown'}, not Running")
    if not _is_ready(status):
        return skip("not-ready", "the pod's Ready condition is not True")
    ip = status.get("podIP")
    if not ip:
        return skip("no-ip", "the pod has no IP yet")

    containers: list[Mapping[str, Any]] = list(spec.get("containers") or ())
    wanted_container = annotations.get(ann.CONTAINER)
    wanted_container = wanted_container.strip() if wanted_container is not None else None
    scoped = containers
    if wanted_container is not None:
        chosen_first = _choose_container(containers, wanted_container, None)
        if isinstance(chosen_first, str):
            return skip("bad-container", chosen_first)
        scoped = [chosen_first]
    named_ports = {
        str(p["name"]): int(p["containerPort"])
        for c in scoped
        for p in c.get("ports") or ()
        if p.get("name") and p.get("containerPort")
    }
    port = ann.port(annotations, named_ports)
    if isinstance(port, ann.Invalid):
        return skip(port.reason, port.detail)
    chosen = _choose_container(containers, wanted_container, port)
    if isinstance(chosen, str):
        return skip("bad-container", chosen)
    if spec.get("hostNetwork") is True and not rules.hostnetwork_any_port and port not in _declared_ports(spec):
        # the pod IP is the node's: an undeclared port is some other process on the node (kubelet, an agent)
        return skip(
            "host-network-port",
            f"hostNetwork pod: port {port} is not declared by any of its containers (containerPort/hostPort); "
            "KPROFEFE_HOSTNETWORK_ANY_PORT=true scrapes it anyway",
        )
    path = ann.path(annotations)
    if isinstance(path, ann.Invalid):
        return skip(path.reason, path.detail)
    types = ann.types(annotations, default_types)
    if isinstance(types, ann.Invalid):
        return skip(types.reason, types.detail)
    service = ann.service(annotations)
    if isinstance(service, ann.Invalid):
        return skip(service.reason, service.detail)
    if service is None:
        service = labels.get("app.kubernetes.io/name") or workload_name(metadata) or name

    container = str(chosen.get("name", ""))
    node = str(spec.get("nodeName", ""))
    profile_labels: dict[str, str] = {"namespace": namespace, "pod": name, "from": SOURCE_LABEL}
    if container:
        profile_labels["container"] = container
    if node:
        profile_labels["node"] = node
    version = labels.get("app.kubernetes.io/version")
    if version:
        profile_labels["version"] = version
    data = {
        "namespace": namespace,
        "pod": name,
        "uid": str(metadata.get("uid", "")),
        "ip": ip,
        "port": port,
        "path": path,
        "service": service,
        "container": container,
        "node": node,
        "types": types,
        "labels": sorted(profile_labels.items()),
    }
    try:
        return Target.from_dict(data, allow_link_local=rules.allow_link_local)
    except InvalidTargetError as exc:
        return skip(exc.problem, exc.message)
