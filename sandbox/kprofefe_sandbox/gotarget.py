"""Build and run the sandbox's real Go profiling target (``gotarget/main.go``).

Tests, benchmarks and the local demo need a genuine ``net/http/pprof`` server, not a replay of recorded bytes:
only a real Go runtime refuses a second concurrent CPU profile, blocks for the CPU window, and answers unknown
profile names the way Go does. The program is stdlib-only, so it builds offline; the binary is cached under a
directory keyed by the source and toolchain, so only the first build of a given source pays the compile time.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import IO

SOURCE_DIR = Path(__file__).with_name("gotarget")
"""Where ``main.go`` and ``go.mod`` live (shipped as package data)."""

DEFAULT_PPROF_PATH = "/debug/pprof"
"""Base path of the pprof handlers, as in a Go program that imports ``net/http/pprof``."""

DEFAULT_ADDR = "127.0.0.1:0"
"""Port 0: the program binds first and prints the real address, so there is no pick-then-bind race."""

GO_BUILD_TIMEOUT_S = 300.0
"""A cold build compiles the needed stdlib packages too: ~5 s idle, much longer on a loaded 2-core machine."""

START_TIMEOUT_S = 30.0
"""How long to wait for the ``listening on`` line; generous because test machines are loaded."""

STOP_TIMEOUT_S = 5.0
"""Grace period after SIGTERM before SIGKILL."""

# Offline by construction: GOPROXY=off and a stdlib-only module, so a missing dependency fails loudly instead
# of reaching for the network. CGO_ENABLED=0 avoids needing a C compiler for the net package.
_BUILD_ENV = {
    "GOFLAGS": "-mod=mod",
    "GOPROXY": "off",
    "GO111MODULE": "on",
    "GOWORK": "off",
    "GOTOOLCHAIN": "local",
    "CGO_ENABLED": "0",
}

_LISTENING_PREFIX = "listening on "
_OUTPUT_LINES_KEPT = 200


class GoTargetError(RuntimeError):
    """The Go target could not be built or started."""


class GoUnavailableError(GoTargetError):
    """No ``go`` toolchain on PATH."""


class GoBuildError(GoTargetError):
    """``go build`` failed; the message carries the compiler output."""


def go_available() -> bool:
    """Whether a working ``go`` command is on PATH."""
    go = shutil.which("go")
    if go is None:
        return False
    try:
        done = subprocess.run([go, "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def default_cache_dir() -> Path:
    """``~/.cache/kprofefe-tasks/gotarget``: survives between test runs so the build is paid once."""
    return Path.home() / ".cache" / "kprofefe-tasks" / "gotarget"


def _source_files() -> list[Path]:
    files = sorted([*SOURCE_DIR.glob("*.go"), SOURCE_DIR / "go.mod"])
    missing = [f for f in files if not f.is_file()]
    if missing or not any(f.suffix == ".go" for f in files):
        raise GoTargetError(f"Go target sources missing in {SOURCE_DIR}")
    return files


def _go_version(go: str) -> str:
    done = subprocess.run([go, "version"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip()


def source_key(go: str | None = None) -> str:
    """Cache key: the sources, the build settings and the toolchain version, since each changes the binary."""
    go = go or shutil.which("go")
    digest = hashlib.sha256(repr(sorted(_BUILD_ENV.items())).encode())
    for f in _source_files():
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    if go is not None:
        digest.update(_go_version(go).encode())
    return digest.hexdigest()[:16]


def build(cache_dir: Path | None = None) -> Path:
    """Build the Go target (or reuse the cached binary) and return the binary's path.

    Runs offline (``GOPROXY=off``); ``GoUnavailableError`` without a toolchain, ``GoBuildError`` with the
    compiler output when the build fails.
    """
    go = shutil.which("go")
    if go is None:
        raise GoUnavailableError(
            "the Go toolchain ('go') is not on PATH; install Go >= 1.19 (Debian: apt-get install golang-go)"
        )
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    binary = cache_dir / source_key(go) / "gotarget"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **_BUILD_ENV,
        "GOCACHE": str(cache_dir / "gocache"),
        "GOPATH": str(cache_dir / "gopath"),
    }
    # Build in a private copy and rename into place: parallel test processes may build at the same time,
    # and the package directory may be read-only once installed.
    with tempfile.TemporaryDirectory(prefix="build-", dir=binary.parent) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in _source_files():
            shutil.copy2(f, src / f.name)
        out = Path(tmp) / "gotarget"
        try:
            done = subprocess.run(
                [go, "build", "-o", str(out), "."],
                cwd=src,
                env=env,
                capture_output=True,
                text=True,
                timeout=GO_BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GoBuildError(f"go build did not finish within {GO_BUILD_TIMEOUT_S:.0f} s") from exc
        if done.returncode != 0:
            output = (done.stderr + done.stdout).strip()[-4000:]
            raise GoBuildError(f"go build failed with exit code {done.returncode}:\n{output}")
        os.replace(out, binary)
    return binary


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be host:port, got {addr!r}")
    return host.strip("[]"), int(port)


class GoTarget:
    """A running copy of the Go target; a context manager.

    ``addr`` defaults to a free loopback port chosen by the program itself. ``path`` is the pprof base path.
    ``cpu`` is the fraction of one core its burner goroutines keep busy (the program's default is 0.2).
    """

    def __init__(
        self,
        addr: str | None = None,
        path: str = DEFAULT_PPROF_PATH,
        *,
        binary: Path | None = None,
        cache_dir: Path | None = None,
        cpu: float | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self._requested_addr = addr or DEFAULT_ADDR
        _split_addr(self._requested_addr)
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self._binary = binary
        self._cache_dir = cache_dir
        self._cpu = cpu
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=_OUTPUT_LINES_KEPT)
        self._settled = threading.Event()
        self._bound_addr: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> GoTarget:
        if self._proc is not None:
            raise GoTargetError("GoTarget already started")
        binary = self._binary if self._binary is not None else build(self._cache_dir)
        args = [str(binary), "-addr", self._requested_addr, "-path", self.path or "/"]
        if self._cpu is not None:
            args += ["-cpu", repr(self._cpu)]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read_output, args=(self._proc.stdout,), name="gotarget-output", daemon=True
        )
        self._reader.start()
        self._settled.wait(self._start_timeout)
        if self._bound_addr is None:
            rc = self._proc.poll()
            self.stop()
            why = f"exited with code {rc}" if rc is not None else f"did not listen within {self._start_timeout} s"
            raise GoTargetError(f"gotarget {why}; output:\n{self.output}")
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> GoTarget:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _read_output(self, stream: IO[bytes]) -> None:
        # Keeps draining after the ready line so a chatty program never blocks on a full pipe.
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._output.append(line)
            if self._bound_addr is None and line.startswith(_LISTENING_PREFIX):
                self._bound_addr = line[len(_LISTENING_PREFIX) :].strip()
                self._settled.set()
        self._settled.set()

    # -- where it is -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise GoTargetError("GoTarget not started")
        return self._proc.pid

    @property
    def addr(self) -> str:
        """``host:port`` the program is bound to (the real port when started on port 0)."""
        if self._bound_addr is None:
            raise GoTargetError("GoTarget not started")
        return self._bound_addr

    @property
    def host(self) -> str:
        return _split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        return _split_addr(self.addr)[1]

    @property
    def url(self) -> str:
        """``http://host:port`` with no path."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The pprof base, e.g. ``http://127.0.0.1:41234/debug/pprof``; append ``/heap`` etc."""
        return self.url + self.path

    @property
    def output(self) -> str:
        """The program's recent stdout and stderr, for error messages."""
        return "\n".join(self._output)
