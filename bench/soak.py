"""``python -m bench soak``: rounds fired by the real ``celery beat`` for minutes, and what each one leaves behind.

The other scenarios trigger one round and measure it. This one starts the production processes (one discovery
worker, capture workers, **one ``celery -A kprofefe_tasks beat``** with the schedule in ``KPROFEFE_SCHEDULE``), lets
beat fire ``--rounds`` rounds on a compressed schedule, and after each round prints one line:

- profiles stored at the profefe double for that round / expected (one per pod and type), and how many twice;
- Redis ``used_memory`` (server-wide), and the bytes of this database's keys by family (``MEMORY USAGE`` over a
  ``SCAN``): the product's own keys (ledger, locks, buckets, round records) in total and per pod, the broker's
  (Celery/kombu) separately, with the capture and discovery queues' length and bytes;
- each worker's RSS; the spool's entries and bytes.

Then a verdict: product bytes per pod at the end, the slope over the last half of the rounds (least squares, with
its standard error), the same for worker RSS and the spool, and the goals (MET/MISSED). Exit status 1 when a
profile was lost or stored twice, or the product's keys take more than 2 KiB per pod (at any round, or growing
over the last half, which a longer run would turn into a miss). Results: ``bench/results/soak-latest.json``.

Redis: database 14 by default (``--redis-db``; databases 5, 11, 12 and 13 belong to other people's tests and
demos on this machine and are refused). It is flushed before and after the run, like every scenario's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from bench import harness
from bench.report import machine

KIB = 1024
MIB = 1024 * 1024

DEFAULT_DB = 14
RESERVED_DBS = frozenset({5, 11, 12, 13})
"""Other people's databases on this machine's Redis: the demo (5), the integration tests (11), and others (12, 13)."""

TYPES = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate")
GOAL_BYTES_PER_POD = 2 * KIB
"""The product's own Redis keys, all families together, per pod captured: the issue's goal, at any run length."""

# -- timing: the shortest settings the README documents as valid -------------------------------------------------

README_UPLOAD_RETRIES_S = 120.0
"""KPROFEFE_VISIBILITY_TIMEOUT "must exceed the longest capture plus its upload retries (30 s window + 10 s margin +
about 2 min of retries)": the README's own figure for the retries."""
READ_MARGIN_S = 10.0  # KPROFEFE_READ_MARGIN's default
READ_TIMEOUT_S = 30.0  # KPROFEFE_READ_TIMEOUT's default: a snapshot profile's whole transfer


def shortest_visibility_timeout(cpu_seconds: int) -> int:
    """The README's lower bound: the longest fetch (a CPU window plus the read margin, or a snapshot's read
    timeout, whichever is longer) plus about two minutes of upload retries. Below it, live tasks run twice."""
    return int(max(cpu_seconds + READ_MARGIN_S, READ_TIMEOUT_S) + README_UPLOAD_RETRIES_S)


# -- key families ---------------------------------------------------------------------------------------------

PRODUCT_PREFIX = "kprofefe:"
PRODUCT_FAMILIES = {
    "starts": "ledger: starts per capture and attempt",
    "done": "ledger: where each capture was delivered",
    "round": "rounds: summaries, and the per-capture ledger (:c) while a round runs",
    "lock": "per-pod CPU locks",
    "sem": "capture semaphore",
    "bucket": "upload token bucket",
}
"""``kprofefe:<name>:...`` → family ``kprofefe:<name>``. Any other ``kprofefe:`` name (a future ``kprofefe:lease:``)
counts as ``kprofefe:other`` and is listed under its own name, so a new family is neither missed nor hidden."""
OTHER_FAMILY = "kprofefe:other"
BROKER_FAMILY = "broker"
BENCH_FAMILY = "bench"  # the sentinel key: neither the product's nor the broker's

QUEUES = ("capture", "discovery")
"""Celery queues of kprofefe_tasks.worker.app (named here: importing it would build the Celery app)."""
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: priority lists are "<queue>\x06\x16<priority>"
BROKER_EXACT = ("unacked", "unacked_index", "unacked_mutex")
BROKER_PREFIXES = (("_kombu.", "_kombu.*"), ("celery-task-meta-", "celery-task-meta-*"))

FULL_CENSUS_MAX_KEYS = 50_000
"""Up to this many keys in the database, every key's MEMORY USAGE is read. Above it, each group of keys (a product
family, a ``kprofefe:other`` name, a broker kind) with more than SAMPLE_PER_GROUP keys is estimated as its exact
key count (from the SCAN) times the mean MEMORY USAGE of SAMPLE_PER_GROUP keys drawn at random from it."""
SAMPLE_PER_GROUP = 5_000
SCAN_COUNT = 5_000
MEMORY_BATCH = 1_000


def classify(key: str) -> tuple[str, str]:
    """(family, group) of a key. The group is what a family is broken down by in the report."""
    if key == harness.SENTINEL_KEY:
        return BENCH_FAMILY, key
    if key.startswith(PRODUCT_PREFIX):
        name = PRODUCT_PREFIX + key[len(PRODUCT_PREFIX) :].split(":", 1)[0]
        if name[len(PRODUCT_PREFIX) :] in PRODUCT_FAMILIES:
            return name, name
        return OTHER_FAMILY, name
    return BROKER_FAMILY, broker_kind(key)


def broker_kind(key: str) -> str:
    for queue in QUEUES:
        if key == queue or key.startswith(queue + PRIORITY_SEP):
            return f"queue:{queue}"
    if key in BROKER_EXACT:
        return key
    for prefix, kind in BROKER_PREFIXES:
        if key.startswith(prefix):
            return kind
    return "broker:other"


def product_families() -> list[str]:
    return [PRODUCT_PREFIX + name for name in PRODUCT_FAMILIES] + [OTHER_FAMILY]


@dataclass
class Census:
    """One pass over the database: keys and bytes per family and per group; how they were measured."""

    keys: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    group_keys: Counter[str] = field(default_factory=Counter)
    group_bytes: Counter[str] = field(default_factory=Counter)
    group_family: dict[str, str] = field(default_factory=dict)
    measured: int = 0  # keys whose MEMORY USAGE was read
    total_keys: int = 0
    sampled: bool = False
    seconds: float = 0.0
    other_names: list[str] = field(default_factory=list)  # a few broker:other keys, to say what they are

    @property
    def product_bytes(self) -> int:
        return sum(self.bytes[f] for f in product_families())

    @property
    def product_keys(self) -> int:
        return sum(self.keys[f] for f in product_families())

    def as_dict(self) -> dict[str, Any]:
        return {
            "families": {f: {"keys": self.keys[f], "bytes": self.bytes[f]} for f in sorted(self.keys)},
            "groups": {
                g: {"family": self.group_family[g], "keys": self.group_keys[g], "bytes": self.group_bytes[g]}
                for g in sorted(self.group_keys)
            },
            "product_bytes": self.product_bytes,
            "product_keys": self.product_keys,
            "total_keys": self.total_keys,
            "measured_keys": self.measured,
            "sampled": self.sampled,
            "census_s": round(self.seconds, 2),
            "broker_other_examples": self.other_names,
        }


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _memory_usage(client: redis.Redis, keys: Sequence[bytes]) -> list[int | None]:
    out: list[int | None] = []
    for i in range(0, len(keys), MEMORY_BATCH):
        pipe = client.pipeline(transaction=False)
        for key in keys[i : i + MEMORY_BATCH]:
            pipe.memory_usage(key, samples=0)  # 0: every element of a hash or list, not a sample of five
        out.extend(None if v is None else int(v) for v in pipe.execute())
    return out


def census(client: redis.Redis, rng: random.Random) -> Census:
    started = time.monotonic()
    groups: dict[str, list[bytes]] = {}
    family_of: dict[str, str] = {}
    for raw in client.scan_iter(count=SCAN_COUNT):
        family, group = classify(_text(raw))
        groups.setdefault(group, []).append(raw)
        family_of[group] = family
    result = Census(total_keys=sum(len(v) for v in groups.values()))
    result.sampled = result.total_keys > FULL_CENSUS_MAX_KEYS
    for group, keys in sorted(groups.items()):
        family = family_of[group]
        chosen = keys if not result.sampled or len(keys) <= SAMPLE_PER_GROUP else rng.sample(keys, SAMPLE_PER_GROUP)
        sizes = [s for s in _memory_usage(client, chosen) if s is not None]  # None: expired since the SCAN
        result.measured += len(chosen)
        if chosen is keys:
            count, size = len(sizes), sum(sizes)
        else:
            count = len(keys)
            size = round(sum(sizes) / len(sizes) * count) if sizes else 0
        result.group_keys[group] += count
        result.group_bytes[group] += size
        result.group_family[group] = family
        result.keys[family] += count
        result.bytes[family] += size
        if group == "broker:other":
            result.other_names = [_text(k)[:80] for k in keys[:5]]
    for family in [*product_families(), BROKER_FAMILY]:
        result.keys[family] += 0
        result.bytes[family] += 0
    result.seconds = time.monotonic() - started
    return result


def queue_figures(client: redis.Redis) -> dict[str, Any]:
    """Length and bytes of each Celery queue (with its priority lists), and kombu's unacked bookkeeping."""
    out: dict[str, Any] = {}
    for queue in QUEUES:
        names = [queue.encode()] + [
            k for k in client.scan_iter(match=f"{queue}{PRIORITY_SEP}*", count=SCAN_COUNT) if k != queue.encode()
        ]
        length = sum(int(client.llen(k)) for k in names)
        size = sum(int(client.memory_usage(k, samples=0) or 0) for k in names)
        out[queue] = {"length": length, "bytes": size}
    out["unacked"] = int(client.hlen("unacked"))
    out["unacked_index"] = int(client.zcard("unacked_index"))
    return out


# -- the rest of the machine ----------------------------------------------------------------------------------


def spool_figures(directory: Path) -> dict[str, int]:
    """Entries waiting (complete ``.json`` + ``.pb.gz`` pairs), rejected ones, every file (markers and leftovers
    included: the directory is the spool's index), and their bytes."""
    entries = rejected = files = size = 0
    if directory.is_dir():
        for path in directory.rglob("*"):
            if not path.is_file():
                continue
            files += 1
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
            if path.suffix == ".json":
                if path.parent.name == "rejected":
                    rejected += 1
                else:
                    entries += 1
    return {"entries": entries, "rejected": rejected, "files": files, "bytes": size}


def rss_mib(pid: int) -> float | None:
    kib = harness.proc_status_kib(pid).get("VmRSS")
    return None if kib is None else round(kib / 1024, 1)


@dataclass(frozen=True)
class Fit:
    slope: float  # per round
    stderr: float
    mean: float
    points: int

    def flat(self, floor_fraction: float = 0.01) -> bool:
        """Flat within noise: not significantly rising (slope within two standard errors of zero, or falling), or
        rising by less than ``floor_fraction`` of the mean over the fitted span."""
        if self.points < 3:
            return True
        return self.slope <= 2 * self.stderr or self.slope * (self.points - 1) <= floor_fraction * abs(self.mean)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slope_per_round": round(self.slope, 3),
            "stderr": None if math.isinf(self.stderr) else round(self.stderr, 3),
            "mean": round(self.mean, 3),
            "points": self.points,
            "flat": self.flat(),
        }


def fit(xs: Sequence[float], ys: Sequence[float]) -> Fit:
    """Least-squares line through (x, y): its slope and the slope's standard error."""
    n = len(xs)
    if n == 0:
        return Fit(0.0, math.inf, 0.0, 0)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return Fit(0.0, math.inf, my, n)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if n < 3:
        return Fit(slope, math.inf, my, n)
    residual = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, ys, strict=True))
    return Fit(slope, math.sqrt(residual / (n - 2) / sxx), my, n)


# -- configuration --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    pods: int = 200
    rounds: int = 40
    interval: float = 15.0
    cpu_seconds: int = 2
    spread: bool = True
    capture_processes: int = 2
    concurrency: int = 500
    upload_rate: float = 1000.0
    upload_burst: int = 1000
    redis_db: int = DEFAULT_DB
    worker_env: dict[str, str] = field(default_factory=dict)
    out_dir: Path = Path(__file__).parent / "results"
    keep_logs: bool = False
    quick: bool = False

    @property
    def visibility_timeout(self) -> int:
        return shortest_visibility_timeout(self.cpu_seconds)

    def schedule(self) -> str:
        """The schedule as an operator writes it in KPROFEFE_SCHEDULE (JSON is YAML too)."""
        entry = {
            "name": "soak",
            "namespaces": "all",
            "interval": self.interval,
            "types": list(TYPES),
            "cpu_seconds": self.cpu_seconds,
            "spread": self.spread,
        }
        return json.dumps([entry])

    def timing_env(self) -> dict[str, str]:
        """The compressed timing: the schedule, and the shortest visibility timeout and result lifetime that the
        README calls valid for it. ``--env`` wins over any of these."""
        return {
            "KPROFEFE_SCHEDULE": self.schedule(),
            "KPROFEFE_SCHEDULE_FILE": "",
            "KPROFEFE_CPU_SECONDS": str(self.cpu_seconds),
            "KPROFEFE_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            # "a round is long over by then": every capture of it has run, or was handed back once and ran
            "KPROFEFE_RESULT_EXPIRES": str(2 * self.visibility_timeout),
            "KPROFEFE_SPOOL_DRAIN_INTERVAL": f"{self.interval:g}",
            # as in the other scenarios: the shipped 200/s would not cap these rounds, 50/s (deploy/) would
            "KPROFEFE_UPLOAD_RATE": f"{self.upload_rate:g}",
            "KPROFEFE_UPLOAD_BURST": str(self.upload_burst),
        }

    def env(self) -> dict[str, str]:
        return {**self.timing_env(), **self.worker_env}

    def as_dict(self) -> dict[str, Any]:
        return {
            "pods": self.pods,
            "rounds": self.rounds,
            "interval_s": self.interval,
            "cpu_seconds": self.cpu_seconds,
            "spread": self.spread,
            "types": list(TYPES),
            "capture_processes": self.capture_processes,
            "capture_concurrency": self.concurrency,
            "redis_db": self.redis_db,
            "quick": self.quick,
            "env": self.env(),
            "census": {
                "full_up_to_keys": FULL_CENSUS_MAX_KEYS,
                "sample_per_group": SAMPLE_PER_GROUP,
            },
        }


# -- rounds ---------------------------------------------------------------------------------------------------

ROUND_POLL_S = 0.25  # a known round's counters (one HGETALL)
NEW_ROUND_POLL_S = 1.0  # a SCAN for new round records: O(keys in the db), so not faster than this
FIRST_ROUND_GRACE_S = 60.0  # beat fires one interval after it starts; a loaded machine adds seconds to that
MISSED_TICKS = 3  # this many intervals without a new round: beat or discovery is broken, stop
SETTLE_INTERVALS = 2  # after the last round: wait this long for queues and unacked to empty


@dataclass
class Round:
    index: int
    id: str
    started: float  # unix seconds, from the round record
    expected_keys: set[str]  # digests of (round, namespace, pod, type): the capture_id labels profefe must hold
    record: dict[str, Any] = field(default_factory=dict)
    done_s: float | None = None
    line: dict[str, Any] = field(default_factory=dict)


class Accounting:
    """What the profefe double stored, per capture_id label; mapped to rounds through the expected labels."""

    def __init__(self, targets: list[tuple[str, str, tuple[str, ...]]]) -> None:
        self.targets = targets
        self.counts: Counter[str] = Counter()
        self.owner: dict[str, int] = {}  # capture_id label -> round index
        self.index = 0
        self.upload_attempts = 0
        self.mismatched_labels = 0  # a label whose namespace/pod/type disagree with the capture it names

        from kprofefe_tasks.domain.delivery import capture_id_for, digest_of

        self._capture_id_for = capture_id_for
        self._digest_of = digest_of
        self.label_of: dict[str, tuple[str, str, str]] = {}

    def expect(self, round_index: int, round_id: str) -> set[str]:
        keys = set()
        for namespace, pod, types in self.targets:
            for ptype in types:
                label = self._digest_of(self._capture_id_for(round_id, namespace, pod, ptype))
                keys.add(label)
                self.owner[label] = round_index
                self.label_of[label] = (namespace, pod, ptype)
        return keys

    def pull(self, profefe: Any) -> None:
        new = profefe.call("since", index=self.index)
        self.index = int(new["index"])
        self.upload_attempts = int(new["upload_attempts"])
        for label, namespace, pod, ptype in new["profiles"]:
            self.counts[label] += 1
            known = self.label_of.get(label)
            if known is not None and known != (namespace, pod, ptype):
                self.mismatched_labels += 1

    def of_round(self, rnd: Round) -> dict[str, int]:
        stored = sum(1 for k in rnd.expected_keys if self.counts[k] > 0)
        doubled = sum(self.counts[k] - 1 for k in rnd.expected_keys if self.counts[k] > 1)
        return {"expected": len(rnd.expected_keys), "stored": stored, "doubled": doubled}

    def unowned(self) -> int:
        """Profiles whose label belongs to no round seen (a round the driver missed, or a label changed form)."""
        return sum(n for k, n in self.counts.items() if k not in self.owner)


def _record(client: redis.Redis, round_id: str) -> dict[str, Any]:
    from kprofefe_tasks.coordination.rounds import Rounds

    raw = client.hgetall(Rounds.key(round_id))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        value = _text(v)
        out[_text(k)] = int(value) if value.lstrip("-").isdigit() else value
    return out


def round_ids(client: redis.Redis) -> set[str]:
    """Round ids from their summaries (the product's own scan)."""
    from kprofefe_tasks.coordination.rounds import Rounds

    return set(Rounds(client, fallback_ttl=1).ids(count=SCAN_COUNT))


def wait_new_round(client: redis.Redis, known: set[str], deadline: float) -> tuple[str, dict[str, Any]] | None:
    """The oldest round record not seen yet, once it holds its expected count; None at the deadline."""
    while True:
        fresh = []
        for rid in round_ids(client) - known:
            record = _record(client, rid)
            if "expected" in record:
                fresh.append((float(record.get("started", 0.0)), rid, record))
        if fresh:
            _started, rid, record = min(fresh)
            return rid, record
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(NEW_ROUND_POLL_S, max(0.0, deadline - time.monotonic())))


def wait_round_done(client: redis.Redis, rnd: Round, deadline_unix: float) -> None:
    """Poll the round's counters until every capture has a final outcome, or the deadline (unix seconds)."""
    while True:
        rnd.record = _record(client, rnd.id)
        done, expected = int(rnd.record.get("done", 0)), int(rnd.record.get("expected", -1))
        if expected >= 0 and done >= expected:
            rnd.done_s = time.time() - rnd.started
            return
        if time.time() >= deadline_unix:
            return
        time.sleep(ROUND_POLL_S)


# -- output ---------------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    if abs(n) >= MIB:
        return f"{n / MIB:.1f}M"
    if abs(n) >= KIB:
        return f"{n / KIB:.1f}K"
    return f"{n:.0f}"


SHORT = {"kprofefe:starts": "starts", "kprofefe:done": "done", "kprofefe:round": "round", "kprofefe:lock": "lock"}


def format_line(total_rounds: int, line: dict[str, Any]) -> str:
    fam = line["census"]["families"]
    product = " ".join(
        f"{SHORT.get(f, f.split(':', 1)[1])} {_size(fam.get(f, {}).get('bytes', 0))}" for f in product_families()
    )
    others = {g: v for g, v in line["census"]["groups"].items() if v["family"] == OTHER_FAMILY}
    if others:
        product += " [" + ", ".join(f"{g} {v['keys']} keys {_size(v['bytes'])}" for g, v in others.items()) + "]"
    q = line["queues"]
    rss = " ".join(f"{name} {mib:.0f}" for name, mib in line["rss_mib"].items() if mib is not None)
    spool = line["spool"]
    status = f"in {line['done_s']:.1f}s" if line["done_s"] is not None else "OPEN"
    sampled = "~" if line["census"]["sampled"] else ""
    return (
        f"round {line['round']:>2}/{total_rounds} {line['id']} +{line['t_s']:>4.0f}s "
        f"stored {line['stored']}/{line['expected']} doubled {line['doubled']} {status} | "
        f"used_memory {line['used_memory'] / MIB:.1f}M | "
        f"product {sampled}{_size(line['census']['product_bytes'])} = {sampled}{line['product_per_pod']:.0f} B/pod "
        f"({product}) | "
        f"broker {line['census']['families'].get(BROKER_FAMILY, {}).get('keys', 0)} keys "
        f"{_size(line['census']['families'].get(BROKER_FAMILY, {}).get('bytes', 0))}: "
        f"capture {q['capture']['length']} ({_size(q['capture']['bytes'])}) "
        f"discovery {q['discovery']['length']} ({_size(q['discovery']['bytes'])}) "
        f"unacked {q['unacked']}/{q['unacked_index']} | "
        f"RSS MiB {rss} | spool {spool['entries']} ({_size(spool['bytes'])})"
    )


@dataclass
class Goal:
    name: str
    met: bool
    detail: str
    decides_exit: bool

    def text(self) -> str:
        return f"{'MET' if self.met else 'MISSED':<6} {self.name}: {self.detail}"


# -- the run --------------------------------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM: end like Ctrl-C, through every ``finally``."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop()


def point_at_db(db: int) -> None:
    """Send the harness, this process's (future) Celery app and every worker to ``db``. Must run before anything
    builds the app: it reads the broker URL once."""
    if "kprofefe_tasks.app" in sys.modules:
        raise RuntimeError("the Celery app was built before the soak chose its Redis database")
    harness.REDIS_DB = db
    harness.BROKER = f"redis://{harness.REDIS_HOST}:{harness.REDIS_PORT}/{db}"
    os.environ["KPROFEFE_BROKER_URL"] = harness.BROKER
    os.environ["KPROFEFE_REDIS_URL"] = harness.BROKER


def db_free(client: redis.Redis) -> str | None:
    """Why the database must not be flushed, or None: empty, or left by a soak or scenario whose process is gone."""
    if client.dbsize() == 0:
        return None
    owner = client.get(harness.SENTINEL_KEY)
    if owner is None:
        return f"db {harness.REDIS_DB} holds {client.dbsize()} keys of someone else (no {harness.SENTINEL_KEY} key)"
    pid = int(_text(owner)) if _text(owner).isdigit() else 0
    if pid and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a benchmark that died without cleaning up
        except PermissionError:
            pass
        return f"db {harness.REDIS_DB} is in use by benchmark process {pid}"
    return None


def list_targets(sb: harness.Sandbox) -> list[tuple[str, str, tuple[str, ...]]]:
    """The pods a round should capture, listed by the product's own discovery code from the Kubernetes double."""
    from kprofefe_tasks.io.kube import Kube, KubeOptions
    from kprofefe_tasks.pipeline import discovery

    kube = Kube.connect(KubeOptions(kubeconfig=str(sb.kube.info["kubeconfig"])))
    targets = discovery.find(kube, discovery.Scope(), types=TYPES, page_size=500).targets
    return [(t.namespace, t.pod, tuple(t.types)) for t in targets]


@contextlib.contextmanager
def beat_process(sb: harness.Sandbox, cfg: SoakConfig) -> Iterator[Any]:
    from kprofefe_sandbox.processes import CeleryProcess

    (sb.tmp / "beat").mkdir(exist_ok=True)
    beat = CeleryProcess(
        "beat",
        ["beat", "-s", str(sb.tmp / "beat" / "schedule"), "--loglevel", "INFO"],
        sb.env(),
        sb.tmp / "beat.log",
        harness.REPO,
    )
    try:
        yield beat.start(wait=True, timeout=harness.WORKER_READY_TIMEOUT_S)
    finally:
        beat.stop(timeout=harness.WORKER_STOP_TIMEOUT_S)


def snapshot(
    sb: harness.Sandbox,
    rnd: Round,
    acc: Accounting,
    t0: float,
    rng: random.Random,
    beat_pid: int | None,
) -> dict[str, Any]:
    acc.pull(sb.profefe)
    counts = acc.of_round(rnd)
    c = census(sb.redis, rng)
    rss: dict[str, float | None] = {}
    index: Counter[str] = Counter()
    for spec, proc in sb.workers:
        rss[f"{spec.role}{index[spec.role]}"] = rss_mib(proc.pid)
        index[spec.role] += 1
    if beat_pid is not None:
        rss["beat"] = rss_mib(beat_pid)
    pods = max(1, len(acc.targets))
    return {
        "round": rnd.index,
        "id": rnd.id,
        "t_s": round(rnd.started - t0, 1),
        "done_s": None if rnd.done_s is None else round(rnd.done_s, 2),
        **counts,
        "record": {k: v for k, v in rnd.record.items() if k != "entry"},
        "used_memory": int(sb.redis.info("memory")["used_memory"]),
        "census": c.as_dict(),
        "product_per_pod": c.product_bytes / pods,
        "queues": queue_figures(sb.redis),
        "rss_mib": rss,
        "doubles_rss_mib": {d.kind: rss_mib(d.pid) for d in (sb.farm, sb.kube, sb.profefe) if d is not None},
        "spool": spool_figures(sb.tmp / "spool"),
        "at": round(time.time() - t0, 1),
    }


def run(cfg: SoakConfig) -> int:
    client = harness.redis_client()
    try:
        info = machine(harness.redis_version(client))
        busy = db_free(client)
    except redis.RedisError as exc:
        print(f"Redis on {harness.BROKER} is not reachable: {exc}", file=sys.stderr)
        return 2
    if busy:
        print(f"refusing to flush: {busy}; choose another with --redis-db", file=sys.stderr)
        return 2
    print(
        f"kprofefe-tasks soak on {info['nproc']} cores, {info['ram_gib']} GiB, Python {info['python']}, "
        f"Redis {info['redis']} (db {harness.REDIS_DB}); load average {' '.join(info['loadavg_at_start'])}; "
        f"git {info['git']}"
    )
    print(
        f"{cfg.pods} pods x {len(TYPES)} types, {cfg.rounds} rounds fired by celery beat every {cfg.interval:g}s, "
        f"{cfg.cpu_seconds}s CPU window, spread {'on' if cfg.spread else 'off'}; "
        f"{cfg.capture_processes} capture workers -c {cfg.concurrency}, 1 discovery worker"
    )
    print("timing: " + " ".join(f"{k}={v}" for k, v in cfg.env().items() if k != "KPROFEFE_SCHEDULE"))
    print(f"KPROFEFE_SCHEDULE={cfg.schedule()}")
    if cfg.quick:
        print("note: --quick: a smoke run, not the issue's sizes; judge nothing by its goals")

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    logs = cfg.out_dir / "logs" / "soak" if cfg.keep_logs else None
    rng = random.Random(20261126)
    rounds: list[Round] = []
    lines: list[dict[str, Any]] = []
    notes: list[str] = []
    baseline: dict[str, Any] = {}
    acc: Accounting | None = None
    interrupted = False
    started_wall = time.monotonic()
    final: dict[str, Any] = {}
    try:
        with harness.Sandbox(pods=cfg.pods, farm_targets=cfg.pods, env_overrides=cfg.env(), keep_logs=logs) as sb:
            specs = [harness.DISCOVERY_WORKER, *harness.capture_workers(cfg.capture_processes, cfg.concurrency)]
            sb.start_workers(specs)
            targets = list_targets(sb)
            acc = Accounting(targets)
            if len(targets) != cfg.pods:
                notes.append(f"the Kubernetes double lists {len(targets)} targets, not {cfg.pods}")
            base = census(sb.redis, rng)
            baseline = {"used_memory": int(sb.redis.info("memory")["used_memory"]), "census": base.as_dict()}
            print(
                f"baseline: used_memory {baseline['used_memory'] / MIB:.1f}M, {base.total_keys} keys "
                f"({_size(base.bytes[BROKER_FAMILY])} broker, {_size(base.product_bytes)} product)"
            )
            try:
                with beat_process(sb, cfg) as beat:
                    beat_pid: int | None = beat.pid
                    t0 = time.time()
                    print(f"beat started; first round due in {cfg.interval:g}s\n")
                    deadline = time.monotonic() + cfg.interval + FIRST_ROUND_GRACE_S
                    known: set[str] = set()
                    while len(rounds) < cfg.rounds:
                        found = wait_new_round(sb.redis, known, deadline)
                        if found is None:
                            notes.append(
                                f"no new round within {MISSED_TICKS} intervals after round {len(rounds)}: stopped"
                                if rounds
                                else "beat fired no round"
                            )
                            break
                        rid, record = found
                        known.add(rid)
                        index = len(rounds) + 1
                        started = float(record.get("started", time.time()))
                        rnd = Round(index, rid, started, acc.expect(index, rid), record=record)
                        rounds.append(rnd)
                        if int(record.get("expected", 0)) != len(rnd.expected_keys):
                            notes.append(
                                f"round {rnd.index}: the record expects {record.get('expected')} captures, "
                                f"the pods listed make {len(rnd.expected_keys)}"
                            )
                        if rnd.index == cfg.rounds:
                            beat.stop(timeout=harness.WORKER_STOP_TIMEOUT_S)  # no round past the last one
                            beat_pid = None
                        wait_round_done(sb.redis, rnd, rnd.started + cfg.interval)
                        line = snapshot(sb, rnd, acc, t0, rng, beat_pid)
                        rnd.line = line
                        lines.append(line)
                        print(format_line(cfg.rounds, line), flush=True)
                        deadline = time.monotonic() + MISSED_TICKS * cfg.interval
            except (KeyboardInterrupt, _Stop):
                interrupted = True
                notes.append(f"interrupted after {len(rounds)} rounds")
            # The last captures: let queues and unacked empty, then count what profefe holds once more.
            settle_end = time.monotonic() + SETTLE_INTERVALS * cfg.interval
            while not interrupted and time.monotonic() < settle_end:
                q = queue_figures(sb.redis)
                open_rounds = [r for r in rounds if r.done_s is None]
                for r in open_rounds:
                    wait_round_done(sb.redis, r, 0)
                if q["capture"]["length"] == 0 and q["unacked"] == 0 and all(r.done_s is not None for r in rounds):
                    break
                time.sleep(0.5)
            acc.pull(sb.profefe)
            final = {
                "queues": queue_figures(sb.redis),
                "census": census(sb.redis, rng).as_dict(),
                "spool": spool_figures(sb.tmp / "spool"),
                "profefe": sb.profefe.call("stats"),
                "worker_log_warnings": sb.worker_log_summary(),
                "worker_log_errors": sb.worker_log_errors(),
            }
            if not sb.db_intact():
                notes.append(f"Redis db {harness.REDIS_DB} was flushed by another process during the run: void")
                final["void"] = True
    except (KeyboardInterrupt, _Stop):
        interrupted = True
        notes.append("interrupted while starting or stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)

    if acc is None:
        print("no round ran", file=sys.stderr)
        return 1
    verdict, goals = judge(cfg, rounds, lines, acc, final, interrupted)
    print_verdict(cfg, verdict, goals, notes, final)
    out = cfg.out_dir / "soak-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": info,
        "config": {**cfg.as_dict(), "argv": sys.argv[1:]},
        "baseline": baseline,
        "rounds": lines,
        "final": final,
        "verdict": verdict,
        "goals": [g.__dict__ for g in goals],
        "notes": notes,
        "wall_s": round(time.monotonic() - started_wall, 1),
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {out}")
    ok = not interrupted and not final.get("void") and all(g.met for g in goals if g.decides_exit)
    return 0 if ok else 1


def _last_round(line: dict[str, Any], pods: int) -> dict[str, Any]:
    """Every group of keys at the last round, product families first, with bytes per key and per pod."""
    order = {f: i for i, f in enumerate([*product_families(), BROKER_FAMILY, BENCH_FAMILY])}
    groups = sorted(line["census"]["groups"].items(), key=lambda kv: (order.get(kv[1]["family"], 99), kv[0]))
    return {
        "round": line["round"],
        "sampled": line["census"]["sampled"],
        "groups": {
            g: {
                **v,
                "per_key": v["bytes"] / v["keys"] if v["keys"] else 0.0,
                "per_pod": v["bytes"] / pods,
            }
            for g, v in groups
        },
    }


def judge(
    cfg: SoakConfig,
    rounds: list[Round],
    lines: list[dict[str, Any]],
    acc: Accounting,
    final: dict[str, Any],
    interrupted: bool,
) -> tuple[dict[str, Any], list[Goal]]:
    pods = max(1, len(acc.targets))
    per_round = [acc.of_round(r) for r in rounds]  # after the final pull: late profiles counted
    expected = sum(p["expected"] for p in per_round)
    stored = sum(p["stored"] for p in per_round)
    doubled = sum(p["doubled"] for p in per_round)
    unowned = acc.unowned()
    xs = [float(line["round"]) for line in lines]
    half = [i for i, line in enumerate(lines) if line["round"] > len(lines) // 2]
    hx = [xs[i] for i in half]

    def series(get: Any) -> list[float]:
        return [float(get(line)) for line in lines]

    product = series(lambda line: line["census"]["product_bytes"])
    per_pod = series(lambda line: line["product_per_pod"])
    fits: dict[str, Fit] = {
        "product_bytes": fit(hx, [product[i] for i in half]),
        "product_bytes_per_pod": fit(hx, [per_pod[i] for i in half]),
    }
    for family in [*product_families(), BROKER_FAMILY]:
        ys = series(lambda line, f=family: line["census"]["families"].get(f, {}).get("bytes", 0))
        fits[f"{family} bytes"] = fit(hx, [ys[i] for i in half])
    workers = [name for name in (lines[0]["rss_mib"] if lines else {}) if name != "beat"]
    for name in workers:
        ys = series(lambda line, n=name: line["rss_mib"].get(n) or 0.0)
        fits[f"rss {name} MiB"] = fit(hx, [ys[i] for i in half])
    for what in ("files", "bytes"):
        ys = series(lambda line, w=what: line["spool"][w])
        fits[f"spool {what}"] = fit(hx, [ys[i] for i in half])

    def at(n: int) -> dict[str, Any] | None:
        return next((line for line in lines if line["round"] == n), None)

    checkpoints = sorted({1, 10, 20, 40, len(lines)} & {line["round"] for line in lines})
    verdict: dict[str, Any] = {
        "rounds_seen": len(rounds),
        "rounds_wanted": cfg.rounds,
        "pods": pods,
        "expected": expected,
        "stored": stored,
        "lost": expected - stored,
        "doubled": doubled,
        "unowned_profiles": unowned,
        "mismatched_labels": acc.mismatched_labels,
        "upload_attempts": acc.upload_attempts,
        "per_round_final": [{"round": r.index, "id": r.id, **p} for r, p in zip(rounds, per_round, strict=True)],
        "product_bytes_per_pod_end": per_pod[-1] if per_pod else None,
        "product_bytes_per_pod_max": max(per_pod) if per_pod else None,
        "checkpoints": {
            n: {
                "product_bytes_per_pod": round(line["product_per_pod"], 1),
                "product_bytes": line["census"]["product_bytes"],
                "product_keys": line["census"]["product_keys"],
                "used_memory": line["used_memory"],
            }
            for n in checkpoints
            if (line := at(n)) is not None
        },
        "fits_last_half": {k: v.as_dict() for k, v in fits.items()},
        "last_round": _last_round(lines[-1], pods) if lines else None,
        "used_memory_first": lines[0]["used_memory"] if lines else None,
        "used_memory_last": lines[-1]["used_memory"] if lines else None,
        "last_half_rounds": [int(x) for x in hx],
    }
    complete = bool(rounds) and len(rounds) == cfg.rounds and not interrupted
    goals = [
        Goal(
            "nothing lost, nothing doubled",
            complete and stored == expected and doubled == 0 and unowned == 0 and acc.mismatched_labels == 0,
            f"{stored}/{expected} stored over {len(rounds)} rounds, {doubled} stored twice, "
            f"{unowned} profiles of no round seen, {acc.mismatched_labels} under another pod or type"
            + ("" if complete else f" (only {len(rounds)} of {cfg.rounds})"),
            True,
        ),
    ]
    worst = max(per_pod) if per_pod else math.inf
    product_fit = fits["product_bytes_per_pod"]
    goals.append(
        Goal(
            f"product keys <= {GOAL_BYTES_PER_POD} B/pod at any run length",
            complete and worst <= GOAL_BYTES_PER_POD and product_fit.flat(),
            f"{per_pod[-1] if per_pod else 0:.0f} B/pod at the end, {worst:.0f} at most; last half "
            f"{product_fit.slope:+.1f} B/pod per round (se {product_fit.stderr:.1f}): "
            f"{'flat' if product_fit.flat() else 'GROWING'}",
            True,
        )
    )
    rss_flat = [fits[f"rss {n} MiB"] for n in workers]
    goals.append(
        Goal(
            "worker RSS flat",
            all(f.flat() for f in rss_flat),
            ", ".join(
                f"{n} {_span(lines, half, lambda line, n=n: line['rss_mib'].get(n) or 0.0)} MiB, "
                f"{f.slope:+.3f} MiB/round (se {f.stderr:.3f}) {'flat' if f.flat() else 'GROWING'}"
                for n, f in zip(workers, rss_flat, strict=True)
            ),
            False,
        )
    )
    spool = fits["spool files"]
    goals.append(
        Goal(
            "spool index flat",
            spool.flat(),
            f"{lines[-1]['spool']['files'] if lines else 0} files at the end, {spool.slope:+.2f} files/round",
            False,
        )
    )
    return verdict, goals


def _span(lines: list[dict[str, Any]], half: list[int], get: Any) -> str:
    """First and last value of the fitted half, e.g. ``115.1->116.7``."""
    if not half:
        return "-"
    return f"{float(get(lines[half[0]])):.1f}->{float(get(lines[half[-1]])):.1f}"


def print_verdict(
    cfg: SoakConfig, verdict: dict[str, Any], goals: list[Goal], notes: list[str], final: dict[str, Any]
) -> None:
    fits = verdict["fits_last_half"]
    span = verdict["last_half_rounds"]
    print(f"\n== soak verdict ({verdict['rounds_seen']} rounds, {verdict['pods']} pods) ==")
    if verdict["checkpoints"]:
        print(
            "  product keys per pod: "
            + ", ".join(
                f"round {n} {c['product_bytes_per_pod']:.0f} B ({c['product_keys']} keys)"
                for n, c in verdict["checkpoints"].items()
            )
        )
    last = verdict.get("last_round")
    if last:
        print(f"  at round {last['round']}, by family (keys, bytes, bytes per key, bytes per pod):")
        for group, v in last["groups"].items():
            print(
                f"    {group:<20} {v['keys']:>7} keys {_size(v['bytes']):>7}  {v['per_key']:>6.0f} B/key "
                f"{v['per_pod']:>8.1f} B/pod   ({v['family']})"
            )
        print(
            f"  Redis used_memory (server-wide): {_size(verdict['used_memory_first'])} after round 1, "
            f"{_size(verdict['used_memory_last'])} after round {last['round']}"
        )
    if span:
        p = fits["product_bytes_per_pod"]
        b = fits["product_bytes"]
        print(
            f"  slope over rounds {span[0]}-{span[-1]}: {p['slope_per_round']:+.1f} B/pod per round "
            f"(se {p['stderr']}), {b['slope_per_round'] / KIB:+.1f} KiB per round in all, "
            f"{b['slope_per_round'] / cfg.interval * 3600 / MIB:+.1f} MiB per hour of this schedule"
        )
        for family in [*product_families(), BROKER_FAMILY]:
            f = fits[f"{family} bytes"]
            print(f"    {family:<20} {f['slope_per_round'] / KIB:+10.2f} KiB/round   mean {_size(f['mean'])}")
        for key, f in fits.items():
            if key.startswith(("rss ", "spool ")):
                print(f"    {key:<20} {f['slope_per_round']:+10.3f}/round       mean {f['mean']:.1f}")
    if final:
        q = final["queues"]
        print(
            f"  at the end: capture queue {q['capture']['length']} ({_size(q['capture']['bytes'])}), discovery "
            f"{q['discovery']['length']}, unacked {q['unacked']}/{q['unacked_index']}; "
            f"{final['census']['total_keys']} keys; profefe double stored {final['profefe'].get('stored')}"
        )
        for warning, n in final.get("worker_log_warnings", {}).items():
            print(f"  worker log: {n} x {warning}")
        for error in final.get("worker_log_errors", [])[:5]:
            print(f"  worker log error: {error}")
    print(
        f"  stored {verdict['stored']}/{verdict['expected']}, lost {verdict['lost']}, doubled {verdict['doubled']}, "
        f"of no round {verdict['unowned_profiles']}; upload attempts {verdict['upload_attempts']}"
    )
    for goal in goals:
        print(f"  goal: {goal.text()}")
    for note in notes:
        print(f"  note: {note}")


# -- command line ---------------------------------------------------------------------------------------------

QUICK = {"pods": 20, "rounds": 5, "interval": 5.0}


def _setting(item: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.startswith("KPROFEFE_"):
        parser.error(f"--env wants KPROFEFE_NAME=VALUE, not {item!r}")
    return key, value


def default_db() -> int:
    """The harness's database unless it is someone else's (it defaults to 13, which is), else 14."""
    env = os.environ.get("KPROFEFE_BENCH_REDIS_DB")
    chosen = int(env) if env and env.isdigit() else harness.REDIS_DB
    return DEFAULT_DB if chosen in RESERVED_DBS else chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=None, help="annotated pods (default 200; --quick 20)")
    parser.add_argument("--rounds", type=int, default=None, help="beat rounds to watch (default 40; --quick 5)")
    parser.add_argument("--interval", type=float, default=None, help="schedule interval, s (default 15; --quick 5)")
    parser.add_argument("--cpu-seconds", type=int, default=SoakConfig.cpu_seconds, help="CPU window (default 2)")
    parser.add_argument("--no-spread", action="store_true", help="schedule entry with spread: false")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 pods, 5 rounds, 5 s interval")
    parser.add_argument("--capture-processes", type=int, default=SoakConfig.capture_processes)
    parser.add_argument("--concurrency", type=int, default=SoakConfig.concurrency, help="-c of capture workers")
    parser.add_argument("--upload-rate", type=float, default=SoakConfig.upload_rate, help="KPROFEFE_UPLOAD_RATE")
    parser.add_argument("--upload-burst", type=int, default=SoakConfig.upload_burst, help="KPROFEFE_UPLOAD_BURST")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KPROFEFE_X=VALUE",
        help="a setting for workers and beat on top of the soak's (repeatable; wins over the timing settings)",
    )
    parser.add_argument(
        "--redis-db", type=int, default=None, help=f"Redis database (default {DEFAULT_DB}; never 5, 11, 12, 13)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="copy worker and beat logs to bench/results/logs/")
    parser.add_argument("--out", type=Path, default=SoakConfig.out_dir, help="results directory")
    args = parser.parse_args(argv)

    sizes = {**(QUICK if args.quick else {}), **{k: v for k in QUICK if (v := getattr(args, k)) is not None}}
    db = args.redis_db if args.redis_db is not None else default_db()
    if db in RESERVED_DBS:
        parser.error(f"--redis-db {db} belongs to someone else on this machine ({sorted(RESERVED_DBS)} are refused)")
    cfg = SoakConfig(
        pods=int(sizes.get("pods", SoakConfig.pods)),
        rounds=int(sizes.get("rounds", SoakConfig.rounds)),
        interval=float(sizes.get("interval", SoakConfig.interval)),
        cpu_seconds=args.cpu_seconds,
        spread=not args.no_spread,
        capture_processes=args.capture_processes,
        concurrency=args.concurrency,
        upload_rate=args.upload_rate,
        upload_burst=args.upload_burst,
        redis_db=db,
        worker_env=dict(_setting(item, parser) for item in args.env),
        out_dir=args.out,
        keep_logs=args.keep_logs,
        quick=args.quick,
    )
    if not 1 <= cfg.cpu_seconds < cfg.interval:
        parser.error("--cpu-seconds must be at least 1 and shorter than --interval")
    if cfg.rounds < 1 or cfg.pods < 1:
        parser.error("--rounds and --pods must be at least 1")
    point_at_db(db)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
