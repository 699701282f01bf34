"""Every setting in one place, each with its unit and the reason for its default.

Environment variables (prefix ``KPROFEFE_``) are read only here, and only by :func:`from_env` — the rest of the
package receives a :class:`Settings` value. The README's configuration table is generated from the field metadata
(``python -m kprofefe_tasks.config.settings``), so it cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kprofefe_tasks.domain.errors import ConfigError

HARD_DEADLINE_GRACE_S = 2.0  # s past a capture's deadline (plus connect): only a never-ending answer reaches it
ENV_PREFIX = "KPROFEFE_"

#: profefe's type names, in the order a round takes them. ``cpu`` is Go's ``/profile?seconds=N``.
PROFILE_TYPES = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate")

MIB = 1024 * 1024


def _doc(text: str, unit: str = "") -> dict[str, str]:
    return {"doc": text, "unit": unit}


@dataclass(frozen=True)
class Settings:
    broker_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_doc(
            "Celery broker. Redis by default; `amqp://` (RabbitMQ) works too, with Redis kept for "
            "locks and limits (`KPROFEFE_REDIS_URL`)."
        ),
    )
    redis_url: str = field(
        default="",
        metadata=_doc(
            "Redis for the cluster-wide rate limit, per-pod CPU locks and delivery ledger. Empty: the "
            "broker URL when that is Redis, else `redis://127.0.0.1:6379/0`."
        ),
    )
    result_backend: str = field(
        default="",
        metadata=_doc("Where task results go so a shell or Flower can see outcomes. Empty: `KPROFEFE_REDIS_URL`."),
    )
    result_expires: int = field(
        default=3600,
        metadata=_doc("How long a task's result is kept; a round is long over by then.", "s"),
    )
    profefe_url: str = field(
        default="",
        metadata=_doc(
            "profefe base URL, e.g. `http://profefe:10100`. Empty: write files to `KPROFEFE_OUTPUT_DIR` instead."
        ),
    )
    output_dir: Path = field(
        default=Path("/tmp/kprofefe/profiles"),
        metadata=_doc(
            "Directory sink when no profefe URL is set: `<dir>/<namespace>/profile-<type>-<pod>-"
            "<unix seconds>.pb.gz` (kube-profefe's names, one folder per namespace)."
        ),
    )
    spool_dir: Path = field(
        default=Path("/tmp/kprofefe/spool"),
        metadata=_doc(
            "Profiles that profefe did not accept within the retry budget wait here and are re-sent "
            "when it answers again. Put it on a volume so it survives a restart."
        ),
    )
    spool_max_bytes: int = field(
        default=1024 * MIB,
        metadata=_doc("Spool size cap; past it the oldest spooled profiles are dropped (logged, counted).", "bytes"),
    )
    spool_drain_interval: float = field(
        default=15.0,
        metadata=_doc("How often a worker tries to re-send its spool.", "s"),
    )
    types: tuple[str, ...] = field(
        default=PROFILE_TYPES,
        metadata=_doc(
            "Profile types captured when a schedule entry or pod does not say otherwise "
            "(comma-separated profefe names)."
        ),
    )
    cpu_seconds: int = field(
        default=30,
        metadata=_doc("CPU profile window (Go's `?seconds=`); Go's own default.", "s"),
    )
    connect_timeout: float = field(
        default=3.0,
        metadata=_doc("TCP connect timeout to a pod or profefe; a pod that needs longer is not healthy.", "s"),
    )
    read_timeout: float = field(
        default=30.0,
        metadata=_doc("Read timeout for snapshot profiles, and the overall deadline of their transfer.", "s"),
    )
    read_margin: float = field(
        default=10.0,
        metadata=_doc(
            "Added to the CPU window for the CPU request's deadline: Go answers only after the window, "
            "then needs time to encode and send.",
            "s",
        ),
    )
    max_profile_bytes: int = field(
        default=64 * MIB,
        metadata=_doc("Largest accepted response body; big services' heaps are a few MB, so this is ample.", "bytes"),
    )
    max_decompressed_bytes: int = field(
        default=512 * MIB,
        metadata=_doc("Largest accepted profile after gunzip (a gzip bomb stops here).", "bytes"),
    )
    memory_budget_bytes: int = field(
        default=0,
        metadata=_doc(
            "Bytes all of one worker process's captures may hold at once (bodies being read, their decompressed "
            "copies while inspected, bodies waiting for upload). A capture that would need more than three quarters "
            "of it fails (`memory-budget`); one that finds no room waits. 0: 40% of the container's memory limit "
            "(cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), 512 MiB when there is no limit.",
            "bytes",
        ),
    )
    memory_budget_wait: float = field(
        default=10.0,
        metadata=_doc(
            "Longest a capture waits for room in the memory budget before it is retried later (`retried` / "
            "`memory-budget`, then `failed`). Small profiles keep flowing while big ones wait.",
            "s",
        ),
    )
    offload: bool = field(
        default=True,
        metadata=_doc(
            "Keep the gevent hub free: the spool's and the directory sink's file system work runs in a pool of two "
            "threads, gunzip and profile "
            "inspection yield to the hub every few ms. `false` only to measure the difference (`python -m bench "
            "hublag`)."
        ),
    )
    hub_lag_warn: float = field(
        default=0.1,
        metadata=_doc(
            "gevent workers measure how late their event loop wakes up (`kprofefe_hub_lag_seconds`) and log a "
            "warning when it is later than this; 0 turns the probe off.",
            "s",
        ),
    )
    upload_rate: float = field(
        default=200.0,
        metadata=_doc(
            "Cluster-wide uploads per second to profefe, shared by all workers through Redis "
            "(Celery's `rate_limit` is per worker). 0 disables.",
            "1/s",
        ),
    )
    upload_burst: int = field(
        default=400,
        metadata=_doc("Token bucket size for the upload rate: a round's snapshot profiles arrive together.", "uploads"),
    )
    upload_wait_max: float = field(
        default=60.0,
        metadata=_doc(
            "Longest an upload waits for the cluster-wide rate limit; past it the profile goes to the spool "
            "(`spooled` / `rate-limited`) and is re-sent later, so a round larger than the rate allows never holds "
            "captures without bound.",
            "s",
        ),
    )
    upload_timeout: float = field(
        default=30.0,
        metadata=_doc("Read timeout of one upload to profefe.", "s"),
    )
    upload_attempts: int = field(
        default=5,
        metadata=_doc("Upload attempts (with backoff) before a profile goes to the spool.", "attempts"),
    )
    backoff_base: float = field(
        default=0.5,
        metadata=_doc("First retry delay; doubles each attempt, full jitter.", "s"),
    )
    backoff_max: float = field(
        default=30.0,
        metadata=_doc("Cap on one retry delay (a `Retry-After` is honoured up to this).", "s"),
    )
    capture_retries: int = field(
        default=2,
        metadata=_doc(
            "Re-tries of a capture whose target failed temporarily (refused, timeout, 5xx, CPU busy).", "retries"
        ),
    )
    max_deliveries: int = field(
        default=3,
        metadata=_doc(
            "A capture redelivered after worker deaths more than this many times is dropped as "
            "poison (counted) instead of killing workers forever.",
            "deliveries",
        ),
    )
    max_inflight_captures: int = field(
        default=0,
        metadata=_doc(
            "Cluster-wide bound on captures in flight (a Redis semaphore), to protect the API server in "
            "proxy mode or the network. 0: only each worker's pool size bounds it.",
            "captures",
        ),
    )
    max_targets: int = field(
        default=0,
        metadata=_doc(
            "Most pods one round captures; the rest are counted skips (`over-limit`). A stable subset "
            "(by a hash of namespace/pod) is kept, so the same pods are profiled every round when an "
            "autoscaler multiplies replicas. 0: no limit.",
            "pods",
        ),
    )
    broker_max_connections: int = field(
        default=1100,
        metadata=_doc(
            "Redis broker connections one worker process may open; at least its `-c` (captures in flight "
            "acknowledge together at the end of a CPU window).",
            "connections",
        ),
    )
    visibility_timeout: int = field(
        default=40,
        metadata=_doc(
            "Redis broker: the lease on a message a worker holds. Each worker renews the leases of everything it "
            "holds every quarter of this, so a running capture is never handed out again however long it takes; "
            "a dead worker's captures are handed back this long after its last renewal, plus one sweep (a quarter "
            "of it): 50 s with the default. With `KPROFEFE_LEASES=off` nothing is renewed and this must exceed the "
            "longest capture (the start-up check says by how much).",
            "s",
        ),
    )
    leases: str = field(
        default="auto",
        metadata=_doc(
            "`auto`: Redis broker workers renew the leases on the messages they hold (needs the kombu minor version "
            "`kprofefe_tasks/worker/compat.py` names; otherwise off with a warning). `off`: no renewal; a message "
            "is redelivered once `KPROFEFE_VISIBILITY_TIMEOUT` passes, running or not."
        ),
    )
    amqp_consumer_timeout: int = field(
        default=1800,
        metadata=_doc(
            "AMQP broker: RabbitMQ's `consumer_timeout` (its default: 30 min). RabbitMQ closes the channel of a "
            "consumer holding a message unacknowledged this long and redelivers everything on it, so the longest "
            "capture must end well before it (checked at start-up). Set it to what the broker is configured with.",
            "s",
        ),
    )
    capture_expires: int = field(
        default=600,
        metadata=_doc(
            "A capture triggered by hand that waited this long in the queue is dropped (counted). "
            "Scheduled captures expire after their entry's interval instead.",
            "s",
        ),
    )
    capture_via: str = field(
        default="direct",
        metadata=_doc(
            "`direct`: GET the pod IP (workers in the cluster). `proxy`: through the API server's "
            "pods/proxy subresource (needs `get pods/proxy`)."
        ),
    )
    allow_link_local: bool = field(
        default=False,
        metadata=_doc(
            "Capture pods whose IP is link-local (169.254.0.0/16, fe80::/10) or AWS's IPv6 metadata address "
            "(fd00:ec2::254). Off, such a pod is a counted skip (`link-local-ip`) and a capture message naming "
            "one is refused (`invalid-target`): that is where clouds serve instance credentials, and a message "
            "forged into Redis must not send a worker there."
        ),
    )
    hostnetwork_any_port: bool = field(
        default=False,
        metadata=_doc(
            "Capture a `hostNetwork` pod on a port none of its containers declares. Off, such a pod is a counted "
            "skip (`host-network-port`): its IP is the node's, so an undeclared port belongs to some other "
            "process on the node."
        ),
    )
    kube_page_size: int = field(
        default=500,
        metadata=_doc("Pods per page when listing (`limit`/`continue`), bounding memory and API server load.", "pods"),
    )
    schedule_file: str = field(
        default="",
        metadata=_doc("YAML or JSON file with the beat schedule entries (see `beat_schedule.py`)."),
    )
    schedule: str = field(
        default="",
        metadata=_doc(
            "The schedule inline (YAML/JSON); wins over the file. Empty and no file: every namespace every 10 minutes."
        ),
    )
    spread: bool = field(
        default=True,
        metadata=_doc(
            "Spread a scheduled round's captures over its interval by a hash of the target, instead of all at once."
        ),
    )
    task_sent_events: bool = field(
        default=False,
        metadata=_doc(
            "Publish a `task-sent` event per queued capture, so Flower lists captures while they still wait in the "
            "queue. Off, Flower shows a capture once a worker receives it and the queue length shows the backlog. "
            "On, discovery queues through `apply_async` instead of the bulk writer: about 13 times the CPU "
            "per queued capture (bench/RESULTS.md)."
        ),
    )
    fast_paths: str = field(
        default="auto",
        metadata=_doc(
            "Our three shortcuts through Celery/kombu internals (the bulk fan-out writer, one Redis client per "
            "broker pool, task events in batches). `auto`: on only with the Celery and kombu minor versions they "
            "were written and tested for (`kprofefe_tasks/worker/compat.py`), stock Celery otherwise. `off`: stock "
            "Celery always."
        ),
    )
    worker_events: bool = field(
        default=True,
        metadata=_doc(
            "Workers publish task events (received, started, succeeded, failed): what Flower and `celery events` "
            "show. gevent and threads workers send them in batches every 0.5 s; off saved nothing measurable "
            "in bench/ since. `false` leaves Flower without a task view; the round counters and `/metrics` remain."
        ),
    )
    metrics_port: int = field(
        default=9808,
        metadata=_doc("Port of the Prometheus `/metrics` and `/healthz` endpoint in each worker; 0 disables."),
    )
    metrics_host: str = field(
        default="0.0.0.0",
        metadata=_doc(
            "Address that endpoint listens on: every interface by default, so Prometheus and the kubelet's probes "
            "reach it at the pod IP; `127.0.0.1` keeps it on the machine."
        ),
    )
    log_format: str = field(default="text", metadata=_doc("`text` or `json` (one object per line)."))
    log_level: str = field(default="INFO", metadata=_doc("Python logging level."))

    @property
    def locks_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://", "unix://")):
            return self.broker_url
        return "redis://127.0.0.1:6379/0"

    @property
    def results_url(self) -> str:
        return self.result_backend or self.locks_redis_url

    def cpu_deadline(self, seconds: int) -> float:
        return seconds + self.read_margin

    def upload_bound(self) -> float:
        """The longest one profile's upload may take with its retries and rate-limit waits, before it is spooled."""
        one = self.upload_wait_max + self.connect_timeout + self.upload_timeout + self.backoff_max
        return self.upload_attempts * one + self.upload_timeout  # + the wait before looking for a timed-out upload

    def capture_bound(self, cpu_seconds: int) -> float:
        """The longest a capture may run once started: the CPU window with its margin and the fetch's hard
        deadline (a gevent timer; memory-budget waits and inspection run inside it), then the upload."""
        return self.cpu_deadline(cpu_seconds) + self.connect_timeout + HARD_DEADLINE_GRACE_S + self.upload_bound()

    def redelivery_bound(self) -> float:
        """The longest a dead worker's capture waits before it is handed to another (Redis: the lease, i.e. the
        visibility timeout, from its worker's last renewal, plus one sweep of the unacked-task sweeper; AMQP: at once,
        when the broker sees the connection drop)."""
        return self.visibility_timeout + self.sweep_interval()

    def sweep_interval(self) -> float:
        """How often each worker hands back captures whose lease ended, and renews its own."""
        return max(1.0, self.visibility_timeout / 4)

    def hand_round_ttl(self) -> int:
        """Lifetime of the ledger of a capture queued by hand (no round): it may wait, come back and run."""
        return int(self.capture_expires + self.redelivery_bound() + self.capture_bound(self.cpu_seconds))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    name = ENV_PREFIX + f.name.upper()
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    raw = raw.strip()
    try:
        if kind == "int":
            value: Any = int(raw)
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if kind == "float":
            value = float(raw)
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if kind == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == "Path":
            return Path(raw)
        if kind == "tuple[str, ...]":
            items = tuple(t for t in (p.strip() for p in raw.replace(" ", ",").split(",")) if t)
            unknown = [t for t in items if t not in PROFILE_TYPES]
            if unknown or not items:
                raise ValueError(f"unknown types {unknown}; choose from {', '.join(PROFILE_TYPES)}")
            return items
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from exc


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``KPROFEFE_*`` variables; an invalid value raises :class:`ConfigError` naming it."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw.strip() != "":
            values[f.name] = _parse(f, raw)
    settings = Settings(**values)
    if settings.capture_via not in ("direct", "proxy"):
        raise ConfigError(f"KPROFEFE_CAPTURE_VIA={settings.capture_via!r}: expected direct or proxy")
    if settings.fast_paths not in ("auto", "off"):
        raise ConfigError(f"KPROFEFE_FAST_PATHS={settings.fast_paths!r}: expected auto or off")
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"KPROFEFE_LOG_FORMAT={settings.log_format!r}: expected text or json")
    if settings.cpu_seconds < 1:
        raise ConfigError("KPROFEFE_CPU_SECONDS must be at least 1")
    return settings


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return from_env()


def markdown_table() -> str:
    """The README's configuration table, from the field metadata."""
    rows = ["| variable | default | unit | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(
            f"| `{ENV_PREFIX}{f.name.upper()}` | {shown} | {f.metadata.get('unit', '')} | {f.metadata['doc']} |"
        )
    return "\n".join(rows)


def update_readme(path: Path) -> bool:
    """Rewrite the table between the README's settings-table markers; True when it changed."""
    text = path.read_text()
    start = text.index("-->", text.index("<!-- settings-table")) + 3
    end = text.index("<!-- /settings-table -->")
    updated = text[:start] + "\n" + markdown_table() + "\n" + text[end:]
    path.write_text(updated)
    return updated != text


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        print("updated" if update_readme(Path(sys.argv[2])) else "unchanged")
    else:
        print(markdown_table())
