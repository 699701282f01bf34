"""Off-hub work under real gevent: file I/O in the thread pool, CPU work in steps that let the loop run.

gevent must patch a process before anything else is imported, so each case runs a small script in a fresh
interpreter and reads its figures from stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from kprofefe_tasks.io import offload

_SCRIPT = r"""
from gevent import monkey; monkey.patch_all()
import json, sys, threading, time
import gevent
from kprofefe_sandbox.farm import large_profile
from kprofefe_tasks.io import offload, pprof

body = large_profile(4 * 1024 * 1024)
lags = []
def probe():
    while True:
        started = time.perf_counter(); gevent.sleep(0.02); lags.append(time.perf_counter() - started - 0.02)
gevent.spawn(probe)
while not lags:  # the probe is running
    gevent.sleep(0.01)
out = {}
for mode in ("off", "on"):
    del lags[:]
    started = time.perf_counter()
    info = pprof.inspect(body, pause=offload.cooperative(mode == "on"))
    out[mode] = {"max_lag": max(lags or [time.perf_counter() - started]), "samples": info.sample_count,
                 "seconds": time.perf_counter() - started}
    gevent.sleep(0.05)
main = threading.get_native_id()
out["pool_thread_differs"] = offload.run_blocking(threading.get_native_id) != main
try:  # an error in the pool comes back raised, and gevent does not print it
    offload.run_blocking(open, "/nonexistent/kprofefe")
    out["raised"] = False
except FileNotFoundError:
    out["raised"] = True
print(json.dumps(out))
"""


def test_cooperative_inspection_keeps_the_loop_running_and_file_io_leaves_the_hub() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["on"]["samples"] == figures["off"]["samples"] > 0
    # off: the loop stands still for the whole inspection (hundreds of ms); on: a few ms at a time. The bound
    # leaves room for a busy 2-core machine; print the figures for the record.
    print(figures)
    assert figures["off"]["max_lag"] > 0.1
    # relative, not an absolute figure: a loaded CI machine delays both modes' timers alike
    assert figures["on"]["max_lag"] < figures["off"]["max_lag"] / 3
    assert figures["pool_thread_differs"] is True
    assert figures["raised"] is True and "Traceback" not in done.stderr, done.stderr


def test_outside_gevent_everything_is_a_plain_call() -> None:
    assert not offload.gevent_patched()
    assert offload.run_blocking(threading.get_native_id) == threading.get_native_id()
    assert offload.cooperative() is None
