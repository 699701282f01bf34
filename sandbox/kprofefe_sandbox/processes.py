"""Real Celery processes (worker, beat, Flower) started with the production command lines, for tests, benchmarks
and the local demo. Each runs in its own process group so a stop takes its children with it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

READY_MARKERS = {
    "worker": "ready.",
    "beat": "beat: Starting",
    "flower": "Visit me at",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def celery_command() -> list[str]:
    """``celery -A kprofefe_tasks`` from this interpreter's environment, whatever PATH says."""
    return [sys.executable, "-m", "celery", "-A", "kprofefe_tasks"]


def worker_args(
    queues: str = "discovery,capture", pool: str = "gevent", concurrency: int = 100, name: str | None = None
) -> list[str]:
    """The README's worker command line (tests and benchmarks run exactly this)."""
    return [
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--without-mingle",
        "--without-gossip",
        "-n",
        name or f"w{uuid.uuid4().hex[:6]}@%h",
    ]


class CeleryProcess:
    """One ``celery -A kprofefe_tasks <kind> ...`` process with its output captured to a log file."""

    def __init__(
        self,
        kind: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.kind = kind
        self.args = list(args)
        self.env = {**os.environ, **env}
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 60.0) -> CeleryProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process's life)
        self.proc = subprocess.Popen(
            [*celery_command(), *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        marker = READY_MARKERS[self.kind]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if marker in self.output():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"celery {self.kind} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"celery {self.kind} not ready after {timeout}s:\n{self.output()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or a node loss would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # children of a prefork/gevent worker share the group; make sure none outlives us
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> CeleryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tail_forever(path: Path, stop: threading.Event, prefix: str = "") -> threading.Thread:
    """Echo a log file's new lines to stdout until ``stop`` is set (the demo's live view)."""

    def run() -> None:
        position = 0
        while not stop.is_set():
            try:
                with open(path, errors="replace") as fh:
                    fh.seek(position)
                    for line in fh:
                        sys.stdout.write(prefix + line)
                    position = fh.tell()
            except FileNotFoundError:
                pass
            stop.wait(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
