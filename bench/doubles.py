"""The sandbox doubles (Kubernetes API, pprof farm, profefe), each in a process of its own, driven over a pipe.

In one process the three servers and the benchmark driver would share one GIL, and a busy farm would slow the
profefe double down: the figures would measure the doubles, not the workers. A process each also lets the
benchmark charge their CPU time to them (see :mod:`bench.harness`) instead of to the system under test.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 120.0
"""Binding 5,000 farm sockets or building 10,000 pods takes a few seconds on a loaded 2-core machine."""
CALL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

ENABLE = {"profefe.com/enable": "true"}

Handler = Callable[[dict[str, Any]], Any]


def _farm(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Handler], Callable[[], None]]:
    from kprofefe_sandbox.farm import Behavior, PprofFarm

    farm = PprofFarm.many(int(spec["count"]), port=int(spec["port"]), first=str(spec["first"]))
    # ``modes``: [behavior, size] for the first targets (the hostile ones of ``bench hostile``); the rest are GO
    for target, (behavior, size) in zip(farm.targets, spec.get("modes") or (), strict=False):
        target.behavior = Behavior(behavior)
        if size:
            target.size = int(size)
    farm.start()

    def stats(_: dict[str, Any]) -> dict[str, Any]:
        return {
            "requests": farm.total_requests(),
            "peak_concurrent": farm.peak_concurrent_requests(),
            "peak_concurrent_cpu": farm.peak_concurrent_cpu_requests(),
            "in_flight": farm.in_flight(),
            "cpu_refused": sum(t.cpu_refused for t in farm.targets),
            "cpu_concurrent_max_per_target": max((t.cpu_concurrent_max for t in farm.targets), default=0),
        }

    def reset(_: dict[str, Any]) -> None:
        farm.reset_counters()

    return {"addresses": [t.host for t in farm.targets]}, {"stats": stats, "reset": reset}, farm.stop


def _profefe(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Handler], Callable[[], None]]:
    from kprofefe_sandbox.profefe import ProfefeServer

    server = ProfefeServer().start()

    def stats(_: dict[str, Any]) -> dict[str, Any]:
        profiles = server.profiles
        return {
            "stored": len(profiles),
            "upload_attempts": server.upload_attempts,
            "by_type": dict(Counter(p.type for p in profiles)),
            # one capture stored twice would be a duplicate upload: the ledger is meant to prevent it
            "distinct_captures": len({p.labels.get("capture_id", p.id) for p in profiles}),
        }

    def clear(_: dict[str, Any]) -> None:
        server.clear()

    def count(_: dict[str, Any]) -> int:
        return server.count()

    def since(args: dict[str, Any]) -> dict[str, Any]:
        """What was stored after the first ``index`` profiles: (capture_id, namespace, pod, type) of each, for the
        soak's per-round count. ``profiles`` would copy every stored body of a long run at each call; the store
        itself stays as it is, so a redelivered capture still finds its profile by label."""
        start = int(args.get("index", 0))
        with server._lock:  # the server's own lock: no upload lands between the slice and the count
            new = server._profiles[start:]
            total = len(server._profiles)
            attempts = server._upload_attempts  # (the property would take the lock again)
        return {
            "index": total,
            "upload_attempts": attempts,
            "profiles": [
                (p.labels.get("capture_id", ""), p.labels.get("namespace", ""), p.labels.get("pod", ""), p.type)
                for p in new
            ],
        }

    def down(_: dict[str, Any]) -> None:
        server.down()

    def up(_: dict[str, Any]) -> None:
        server.up()

    handlers = {"stats": stats, "clear": clear, "count": count, "since": since, "down": down, "up": up}
    return {"url": server.url}, handlers, server.stop


def _kube(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Handler], Callable[[], None]]:
    from kprofefe_sandbox.kubeapi import KubeAPIServer, make_pod

    addresses: list[str] = list(spec["addresses"])
    namespaces = int(spec["namespaces"])
    port = int(spec["port"])
    pods = []
    for i in range(int(spec["pods"])):
        namespace = f"ns-{i % namespaces:02d}"
        deployment = f"svc{i % 50:02d}-6d5f7c9b8"
        pods.append(
            make_pod(
                f"{deployment}-{i:05d}",
                namespace,
                annotations=ENABLE,
                labels={"app": deployment.split("-")[0]},
                ip=addresses[i % len(addresses)],
                containers=[("app", [port])],
                owner=("ReplicaSet", deployment),
                node=f"node-{i % 40:02d}",
            )
        )
    server = KubeAPIServer(pods).start()
    kubeconfig = server.write_kubeconfig(Path(spec["kubeconfig"]))

    def stats(_: dict[str, Any]) -> dict[str, Any]:
        lists = [query for _method, path, query in server.requests if path.endswith("/pods")]
        return {"list_requests": len(lists), "page_sizes": sorted({q.get("limit", "") for q in lists})}

    return {"url": server.url, "kubeconfig": str(kubeconfig)}, {"stats": stats}, server.stop


_KINDS = {"farm": _farm, "profefe": _profefe, "kube": _kube}


def _serve(kind: str, spec: dict[str, Any], conn: multiprocessing.connection.Connection) -> None:
    """Child process: start the double, report its address, then answer commands until ``stop``."""
    try:
        info, handlers, stop = _KINDS[kind](spec)
    except BaseException as exc:  # the parent must hear why, not just see a dead pipe
        conn.send(("error", f"{exc.__class__.__name__}: {exc}"))
        raise
    conn.send(("ok", info))
    try:
        while True:
            command, args = conn.recv()
            if command == "stop":
                break
            try:
                conn.send(("ok", handlers[command](args)))
            except Exception as exc:
                conn.send(("error", f"{command}: {exc.__class__.__name__}: {exc}"))
    except EOFError:
        pass  # the parent went away: stop serving
    finally:
        stop()
        conn.close()


class Double:
    """One sandbox double in a child process. ``info`` holds what it reported on start (url, addresses, ...)."""

    def __init__(self, kind: str, **spec: Any) -> None:
        if kind not in _KINDS:
            raise ValueError(f"unknown double {kind!r}")
        self.kind = kind
        self.spec = spec
        self.info: dict[str, Any] = {}
        # spawn: the parent may already hold Redis connections and threads that a fork would copy half-alive
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(kind, spec, child), name=f"bench-{kind}", daemon=True)
        self._child_end = child

    def start(self) -> Double:
        self._proc.start()
        self._child_end.close()
        self.info = self._reply(START_TIMEOUT_S, "start")
        return self

    @property
    def pid(self) -> int:
        pid = self._proc.pid
        if pid is None:
            raise RuntimeError(f"{self.kind} double not started")
        return pid

    def _reply(self, timeout: float, what: str) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.kind} double: no answer to {what} in {timeout:.0f}s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.kind} double: {value}")
        return value

    def call(self, command: str, **args: Any) -> Any:
        self._conn.send((command, args))
        return self._reply(CALL_TIMEOUT_S, command)

    def stop(self) -> None:
        if self._proc.pid is None:
            return
        if self._proc.is_alive():
            try:
                self._conn.send(("stop", {}))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(STOP_TIMEOUT_S)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(STOP_TIMEOUT_S)
        self._conn.close()

    def __enter__(self) -> Double:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
