"""Prometheus metrics, and the small HTTP endpoint that serves them with ``/healthz``.

Workers run the gevent or threads pool (one process), so the default registry is correct; prefork would need
prometheus-client's multiprocess mode and is not supported for metrics.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from kprofefe_tasks.io.spool import DROP_REASONS

log = logging.getLogger(__name__)

CAPTURES = Counter(
    "kprofefe_captures_total",
    "Capture outcomes: ok, empty, spooled, rejected, skipped, duplicate, retried, failed, expired, poison.",
    ["type", "outcome", "reason"],
)
CAPTURE_SECONDS = Histogram(
    "kprofefe_capture_duration_seconds",
    "Time to take a profile from a pod, CPU window included.",
    ["type"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45, 60, 120),
)
UPLOAD_SECONDS = Histogram(
    "kprofefe_upload_duration_seconds",
    "Time to store a profile, retries and rate-limit waits included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PROFILE_BYTES = Counter("kprofefe_profile_bytes_total", "Bytes of profiles taken.", ["type"])
UPLOAD_RETRIES = Counter("kprofefe_upload_retries_total", "Upload attempts that failed and were retried.", ["reason"])
RATE_LIMIT_WAIT = Counter("kprofefe_rate_limit_wait_seconds_total", "Seconds spent waiting for the upload rate.")
TARGETS = Counter("kprofefe_targets_discovered_total", "Pods found ready for capture by discovery.")
SKIPPED = Counter("kprofefe_targets_skipped_total", "Pods in scope that discovery skipped.", ["reason"])
ROUNDS = Counter("kprofefe_rounds_total", "Discovery rounds, by outcome.", ["outcome"])
SPOOL_PROFILES = Gauge("kprofefe_spool_profiles", "Profiles waiting in this worker's spool.")
SPOOL_BYTES = Gauge("kprofefe_spool_bytes", "Bytes waiting in this worker's spool.")
REDIS_REFUSALS = Counter(
    "kprofefe_redis_refusals_total",
    "Redis commands that failed: kind oom (maxmemory reached, writes refused) or unavailable; op says what for.",
    ["kind", "op"],
)
LEASE_RENEWALS = Counter(
    "kprofefe_lease_renewals_total", "Renewals of the leases on the messages this worker holds, by result.", ["result"]
)
LEASES_HELD = Gauge("kprofefe_leases_held", "Messages this worker held unacknowledged at its last lease renewal.")
REDELIVERED = Counter(
    "kprofefe_redelivered_total", "Messages whose lease ended (their worker died) handed back to the queue here."
)
DELAYED_PROMOTED = Counter(
    "kprofefe_delayed_promoted_total", "Spread captures moved from the delayed set to the queue at their offset."
)
DELAYED = Gauge("kprofefe_delayed_captures", "Spread captures waiting in Redis for their offset (the delayed set).")
SPOOL_DROPPED = Counter(
    "kprofefe_spool_dropped_total",
    "Profiles the spool dropped or could not keep, by reason: over-size (the cap), corrupt (unreadable metadata, "
    "payload missing or truncated), orphan (a payload without metadata), full and error (a write refused).",
    ["reason"],
)
for _reason in DROP_REASONS:  # every series exists from the start, at 0, so rate() and alerts see the first drop
    SPOOL_DROPPED.labels(_reason)
HUB_LAG = Histogram(
    "kprofefe_hub_lag_seconds",
    "How late a gevent worker's event loop woke a 50 ms timer: the longest any greenlet held the loop.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HUB_LAG_MAX = Gauge("kprofefe_hub_lag_max_seconds", "Largest event-loop lag measured since the worker started.")
MEMORY_BUDGET_BYTES = Gauge("kprofefe_memory_budget_bytes", "This worker's memory budget for profiles in flight.")
MEMORY_RESERVED_BYTES = Gauge(
    "kprofefe_memory_reserved_bytes", "Bytes reserved by this worker's captures in flight (bodies, decompressed)."
)
MEMORY_REFUSALS = Counter(
    "kprofefe_memory_budget_refusals_total",
    "Reservations the memory budget refused: kind timeout (no room within the wait), too-large (never fits).",
    ["kind"],
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/metrics":
            body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
        elif self.path.split("?")[0] == "/healthz":
            # liveness of this process only: probing the broker from every replica would hammer it
            body, ctype, code = b"ok\n", "text/plain", 200
        else:
            body, ctype, code = b"not found\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every 15 s is not news


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve ``/metrics`` and ``/healthz`` on ``port`` in a daemon thread; None when the port is taken."""
    try:
        server = ThreadingHTTPServer((host, port), _Handler)
    except OSError as exc:
        log.warning("metrics endpoint not started on port %d: %s", port, exc)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kprofefe-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
