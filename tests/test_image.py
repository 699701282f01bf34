"""The Docker image, built and run (not only linted): scripts/build-image builds it on a Debian 12 base made from
Debian's own packages (no registry is reachable), then these tests run it as the manifests in deploy/base run it.

- it ships the product, the exact versions of requirements.lock, and no test doubles, tests or installer;
- it runs as the numeric uid the pods use;
- the capture worker, discovery worker and beat, with the command lines, securityContext (read-only root, no
  capabilities, no privilege escalation, uid/gid) and volumes of deploy/base/{capture,discovery,beat}.yaml and the
  production settings of the kustomization's ConfigMap, complete a scheduled round against the sandbox doubles
  (Kubernetes API, profefe, pprof targets) running in this process; containers share the host's network
  namespace and talk to loopback only. What counts is what the profefe double stored.

Needs root (to install and start Docker). Outside CI a machine that cannot have Docker skips these tests; in CI
(CI=true) that is a failure, so the image can never silently stop being tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from kprofefe_sandbox.kubeapi import make_pod

from kprofefe_tasks import tasks
from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.coordination import Rounds
from kprofefe_tasks.domain.delivery import capture_id_for, digest_of
from tests.conftest import TEST_BROKER, Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-image"
DEPLOY_BASE = ROOT / "deploy" / "base"
IMAGE = os.environ.get("KPROFEFE_IMAGE", "kprofefe-tasks:dev")
IMAGE_UID = 10001

#: s. A cold build here: apt-get install ~10 s, base ~55 s, image ~40 s; warm (cached base and layers) ~5 s.
BUILD_TIMEOUT_S = 1800.0
#: scripts/build-image's exit code for "no Docker and none can be installed here" (not root, no apt-get).
CANNOT_HAVE_DOCKER = 3
DOCKER_TIMEOUT_S = 120.0  # one docker CLI call (run --rm of a short command, inspect, rm)
READY_TIMEOUT_S = 90.0  # a container's /healthz answers; the manifests' startupProbe allows 300 s
ROUND_TIMEOUT_S = 90.0  # beat's first round appears and completes: interval + CPU window + uploads, with slack
POLL_S = 0.2  # between two looks at a condition that has a deadline

#: The beat schedule the test mounts where the ConfigMap would be: short, so beat fires soon; not spread, so the
#: round's captures start at once.
SCHEDULE_ENTRY = "image-test"
SCHEDULE_INTERVAL_S = 6
CPU_SECONDS = 1

pytestmark = [
    pytest.mark.integration,
    pytest.mark.image,
    # The first test here may build the base and the image (setup counts against the per-test timeout).
    pytest.mark.timeout(BUILD_TIMEOUT_S + 600),
]


# --- building and running ------------------------------------------------------------------------------------


def _no_docker(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must build and run the image, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built (or found up to date: Docker's layer cache) by scripts/build-image."""
    if os.geteuid() != 0 and shutil.which("docker") is None:
        _no_docker("not root, and no docker client: scripts/build-image cannot install Docker")
    log = tmp_path_factory.mktemp("image") / "build-image.log"
    with open(log, "wb") as out:
        proc = subprocess.run(
            [str(BUILD_SCRIPT)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "KPROFEFE_IMAGE": IMAGE},
            timeout=BUILD_TIMEOUT_S,
        )
    output = log.read_text(errors="replace")
    if proc.returncode == CANNOT_HAVE_DOCKER:
        _no_docker(output.strip().splitlines()[-1])
    if proc.returncode != 0:
        # pytest.fail, not assert: an AssertionError here would count as the expected failure of the xfail test.
        pytest.fail(f"scripts/build-image failed ({proc.returncode}):\n{output[-6000:]}")
    return IMAGE


def docker(*args: str, timeout: float = DOCKER_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if check and proc.returncode != 0:
        # Not an AssertionError: a broken docker call must not pass for the xfail test's expected failure.
        raise RuntimeError(f"docker {' '.join(args)} -> {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def run_in_image(image: str, *command: str) -> str:
    """stdout of a one-off container: no network (nothing in the image may need it), read-only root, as the pods."""
    return docker("run", "--rm", "--network", "none", "--read-only", image, *command).stdout


# --- what the image holds ------------------------------------------------------------------------------------

_FIND = """
import importlib.util, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        found[name] = False
print(json.dumps(found))
"""


def importable(image: str, *modules: str) -> dict[str, bool]:
    found: dict[str, bool] = json.loads(run_in_image(image, "python", "-c", _FIND, *modules))
    return found


def test_image_holds_the_product_and_no_tests_benchmarks_or_installer(image: str) -> None:
    found = importable(image, "kprofefe_tasks", "kprofefe_tasks.tasks", "beat_schedule", "tests", "bench", "pip")
    assert found == {
        "kprofefe_tasks": True,
        "kprofefe_tasks.tasks": True,
        "beat_schedule": True,
        "tests": False,
        "bench": False,
        # No installer at run time: nothing in a pod can fetch or change packages.
        "pip": False,
    }
    assert "usage: kprofefe" in run_in_image(image, "kprofefe", "--help")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    """name -> version of every requirement in requirements.lock (some only apply on other platforms)."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", (ROOT / "requirements.lock").read_text(), re.M)
    return {_normalized(name): version for name, version in pins}


def test_image_installs_exactly_the_runtime_lock(image: str) -> None:
    listing = run_in_image(
        image,
        "python",
        "-c",
        "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))",
    )
    installed = {_normalized(name): version for name, version in json.loads(listing).items()}
    assert installed.pop("kprofefe-tasks") == "0.1.0"
    locked = locked_versions()
    differ = {name: (version, locked.get(name)) for name, version in installed.items() if locked.get(name) != version}
    assert differ == {}, "installed version, locked version"
    # Entries the image does not need are only the ones for other platforms (win32, PyPy, ...).
    lock_text = (ROOT / "requirements.lock").read_text()
    unconditional = {
        _normalized(name) for name in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==[^\s;]+ \\$", lock_text, re.M)
    }
    assert unconditional - set(installed) == set()


def test_image_runs_as_the_pods_uid(image: str) -> None:
    assert run_in_image(image, "id", "-u").strip() == str(IMAGE_UID)
    assert run_in_image(image, "id", "-g").strip() == str(IMAGE_UID)


# The doubles and the demo are the separate kprofefe_sandbox distribution (sandbox/), which the image never installs.
def test_image_holds_no_test_doubles(image: str) -> None:
    doubles = ("kprofefe_sandbox", "kprofefe_sandbox", "kprofefe_sandbox.demo")
    assert importable(image, *doubles) == dict.fromkeys(doubles, False)


# --- the deploy/ processes, in the image, against the sandbox -------------------------------------------------

Obj = dict[str, Any]


def deployment(file: str) -> Obj:
    docs: list[Obj] = [d for d in yaml.safe_load_all((DEPLOY_BASE / file).read_text()) if d]
    (found,) = [d for d in docs if d["kind"] == "Deployment"]
    return found


def configmap_literals(name: str) -> dict[str, str]:
    """The env a configMapGenerator of deploy/base/kustomization.yaml gives every pod (literals only)."""
    kustomization: Obj = yaml.safe_load((DEPLOY_BASE / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == name]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def _tmpfs_size(size_limit: str) -> str:
    """An emptyDir sizeLimit (64Mi) as a tmpfs size option (64m)."""
    match = re.fullmatch(r"(\d+)([KMG])i", size_limit)
    assert match, f"unexpected sizeLimit {size_limit!r}"
    return match.group(1) + match.group(2).lower()


@dataclass
class Container:
    """One Deployment of deploy/base, as `docker run` arguments: its command line, its securityContext, its
    volumes (emptyDir -> tmpfs, the ConfigMap -> a read-only bind mount), its production env, then the sandbox."""

    component: str
    manifest: Obj
    name: str = field(init=False)
    metrics_port: int = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"kprofefe-image-test-{self.component}-{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()

    @property
    def pod(self) -> Obj:
        spec: Obj = self.manifest["spec"]["template"]["spec"]
        return spec

    @property
    def spec(self) -> Obj:
        (container,) = self.pod["containers"]
        result: Obj = container
        return result

    @property
    def command(self) -> list[str]:
        return [str(a) for a in (*self.spec.get("command", []), *self.spec.get("args", []))]

    @property
    def grace_period(self) -> int:
        return int(self.pod.get("terminationGracePeriodSeconds", 30))

    def env(self, sandbox: dict[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in self.spec.get("envFrom", []):
            env.update(configmap_literals(source["configMapRef"]["name"]))
        for var in self.spec.get("env", []):
            # valueFrom (the Redis password Secret) and $(VAR) URLs name the cluster's services: the sandbox
            # replaces those below.
            if "value" in var and "$(" not in var["value"]:
                env[var["name"]] = var["value"]
        env.update(sandbox)
        for key, value in env.items():
            assert "kprofefe-redis" not in value and "//profefe:" not in value, f"{key}={value} names a cluster host"
        return env

    def run_args(self, image: str, sandbox_env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
        pod_security = self.pod.get("securityContext", {})
        security = self.spec.get("securityContext", {})
        uid, gid = pod_security["runAsUser"], pod_security["runAsGroup"]
        fs_group = pod_security.get("fsGroup", gid)
        args = ["run", "--detach", "--name", self.name, "--network", "host", "--user", f"{uid}:{gid}"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for capability in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.spec.get("volumeMounts", []):
            volume, path = volumes[mount["name"]], mount["mountPath"]
            if "emptyDir" in volume:
                # An emptyDir is writable by the pod's user. Docker gives a tmpfs the mode of the image's directory
                # underneath (a mode= option loses to that), so ownership is what makes it writable here.
                size = _tmpfs_size(volume["emptyDir"].get("sizeLimit", "64Mi"))
                args += ["--tmpfs", f"{path}:rw,nosuid,nodev,size={size},uid={uid},gid={fs_group}"]
            else:
                assert "configMap" in volume, f"{self.component}: no stand-in for volume {volume}"
                args += ["--mount", f"type=bind,src={mounts['configMap']},dst={path},readonly"]
        if self.pod.get("automountServiceAccountToken", True):
            # Where the service-account token would be: the kube API double's kubeconfig.
            args += ["--mount", f"type=bind,src={mounts['kube']},dst=/var/run/kprofefe-sandbox,readonly"]
            sandbox_env = {**sandbox_env, "KUBECONFIG": "/var/run/kprofefe-sandbox/kubeconfig"}
        sandbox_env = {**sandbox_env, "KPROFEFE_METRICS_PORT": str(self.metrics_port)}
        for key, value in sorted(self.env(sandbox_env).items()):
            args += ["--env", f"{key}={value}"]
        return [*args, image, *self.command]

    def state(self) -> Obj:
        out = docker("inspect", "--format", "{{json .State}}", self.name).stdout
        result: Obj = json.loads(out)
        return result

    def logs(self) -> str:
        proc = docker("logs", "--tail", "60", self.name, check=False)
        return f"--- {self.component} ({self.name})\n{proc.stdout}{proc.stderr}"

    def wait_healthy(self, deadline: float) -> None:
        """Until the endpoint of the manifest's startupProbe answers 200, as the kubelet would see it."""
        probe = self.spec["startupProbe"]["httpGet"]
        url = f"http://127.0.0.1:{self.metrics_port}{probe['path']}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP_PROXY
        while True:
            with contextlib.suppress(OSError), opener.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
            state = self.state()
            assert state["Running"], f"{self.component} exited ({state['ExitCode']}):\n{self.logs()}"
            assert time.monotonic() < deadline, f"{self.component}: {url} not answering:\n{self.logs()}"
            time.sleep(POLL_S)


@dataclass(frozen=True)
class SandboxPod:
    namespace: str
    name: str
    types: tuple[str, ...] = PROFILE_TYPES
    annotated: bool = True
    ready: bool = True
    path: str = "/debug/pprof"

    @property
    def expected(self) -> bool:
        return self.annotated and self.ready


PODS = (
    SandboxPod("shop", "cart-7c9d8f6b5-4kq2x"),
    SandboxPod("shop", "checkout-0", path="/internal/pprof"),
    SandboxPod("shop", "frontend-6b8f9d7c5-2lp4s", annotated=False),
    SandboxPod("payments", "ledger-5f7b9c8d6-q8r2t", types=("cpu", "heap", "goroutine")),
    SandboxPod("payments", "ledger-5f7b9c8d6-w3v9n", types=("cpu", "heap", "goroutine"), ready=False),
)
"""A Deployment pod, a StatefulSet pod on another path, per-pod types; an unannotated and an unready pod that must
yield nothing. 6 + 6 + 3 = 15 profiles per round."""


def populate(stack: Stack) -> dict[str, Any]:
    """Farm targets on free ports of distinct loopback addresses, and their pods in the kube API double."""
    targets = {}
    for index, p in enumerate(PODS, start=1):
        # Port 0: the farm binds a free port, so another suite on this machine cannot collide with these targets.
        target = stack.farm.add(f"127.47.0.{index}", 0, path=p.path)
        annotations = {"profefe.com/port": str(target.port), "profefe.com/path": p.path}
        if p.annotated:
            annotations["profefe.com/enable"] = "true"
        if p.types != PROFILE_TYPES:
            annotations["profefe.com/types"] = ",".join(p.types)
        stack.kube.add_pod(
            make_pod(
                p.name,
                p.namespace,
                annotations=annotations,
                ip=target.host,
                ready=p.ready,
                containers=[("app", [target.port])],
            )
        )
        targets[p.name] = target
    return targets


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def rounds_of_the_schedule(client: redis.Redis) -> list[str]:
    """Ids of the rounds beat's schedule entry started, oldest first (discovery writes their counters to Redis)."""
    rounds = []
    for round_id in Rounds(client, fallback_ttl=1).ids():
        fields = {_text(k): _text(v) for k, v in client.hgetall(Rounds.key(round_id)).items()}
        if fields.get("entry") == SCHEDULE_ENTRY:
            rounds.append((float(fields.get("started", 0)), round_id))
    return [round_id for _, round_id in sorted(rounds)]


def test_deploy_processes_complete_a_round_in_the_image(image: str, stack: Stack, redis_client: redis.Redis) -> None:
    targets = populate(stack)
    # The ConfigMap stand-ins: the schedule (short, not spread) where kprofefe-schedule is mounted, and the kube
    # API double's kubeconfig where a token would be. World-readable: the containers run as uid 10001.
    schedule_dir, kube_dir = stack.tmp / "configmap", stack.tmp / "kube"
    for directory in (schedule_dir, kube_dir):
        directory.mkdir()
        directory.chmod(0o755)
    entry = {
        "name": SCHEDULE_ENTRY,
        "namespaces": sorted({p.namespace for p in PODS}),
        "interval": SCHEDULE_INTERVAL_S,
        "cpu_seconds": CPU_SECONDS,
        "spread": False,
    }
    (schedule_dir / "schedule.yaml").write_text(yaml.safe_dump([entry]))
    kubeconfig = stack.kube.write_kubeconfig(kube_dir / "kubeconfig")
    for path in (schedule_dir / "schedule.yaml", kubeconfig):
        path.chmod(0o644)
    sandbox_env = {
        "KPROFEFE_BROKER_URL": TEST_BROKER,
        "KPROFEFE_REDIS_URL": TEST_BROKER,
        "KPROFEFE_PROFEFE_URL": stack.profefe.url,
        "KPROFEFE_CPU_SECONDS": str(CPU_SECONDS),
    }
    mounts = {"configMap": schedule_dir, "kube": kube_dir}

    # Workers first, beat last: the round it fires must find both queues consumed.
    containers = [Container(c, deployment(f"{c}.yaml")) for c in ("capture", "discovery", "beat")]
    try:
        for c in containers:
            docker(*c.run_args(image, sandbox_env, mounts))
            c.wait_healthy(time.monotonic() + READY_TIMEOUT_S)

        def all_logs() -> str:
            return "\n".join(c.logs() for c in containers)

        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while not (rounds := rounds_of_the_schedule(redis_client)):
            assert time.monotonic() < deadline, f"beat fired no round in {ROUND_TIMEOUT_S}s:\n{all_logs()}"
            time.sleep(POLL_S)
        round_id = rounds[0]
        report = tasks.wait_round(round_id, timeout=max(1.0, deadline - time.monotonic()))
        expected = {(p.namespace, p.name, t) for p in PODS if p.expected for t in p.types}
        assert not report.get("timed_out"), f"{report}\n{all_logs()}"
        assert report["expected"] == len(expected) == 15, report
        assert report.get("ok") == len(expected), f"{report}\n{all_logs()}"

        # What profefe stored for that round: exactly one profile per expected pod and type.
        digests = {digest_of(capture_id_for(round_id, *key)): key for key in expected}
        labels = [p.labels.get("capture_id", "") for p in stack.profefe.profiles]
        stored = Counter(digests[label] for label in labels if label in digests)
        assert stored == Counter(expected), all_logs()
        skipped = {p.name for p in PODS if not p.expected}
        assert not [p for p in stack.profefe.profiles if p.labels.get("pod") in skipped]
        assert all(sum(targets[name].requests.values()) == 0 for name in skipped)

        # SIGTERM as the kubelet sends it: each process stops by itself within its grace period (no SIGKILL).
        for c in reversed(containers):
            started = time.monotonic()
            docker("stop", "--time", str(c.grace_period), c.name, timeout=c.grace_period + DOCKER_TIMEOUT_S)
            took = time.monotonic() - started
            state = c.state()
            assert state["ExitCode"] == 0 and not state["OOMKilled"], f"{state}\n{c.logs()}"
            assert took < c.grace_period, f"{c.component} needed {took:.1f}s of its {c.grace_period}s"
    finally:
        for c in containers:
            docker("rm", "--force", c.name, check=False)
