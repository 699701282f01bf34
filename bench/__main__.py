"""``python -m bench all|round|throughput|discovery|memory|spread``: run scenarios, print figures and a table,
write ``bench/results/latest.json``. Exit status 1 when a goal is missed or a count does not add up.

``python -m bench hublag`` (event-loop lag with 10 MB profiles, ``KPROFEFE_OFFLOAD`` on and off) and
``python -m bench hostile`` (peak RSS with 50 hostile pods, with and without the memory budget) run only by name.

``python -m bench soak [--quick] ...``: many rounds fired by the real celery beat, one line per round and a
verdict on what grows (``bench/soak.py``, its own options: ``python -m bench soak --help``).

``python -m bench leases``: the CPU the lease renewal, the sweep and the delayed-set mover cost a worker
(``bench/leases.py``)."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

# harness first: it points this process at the benchmark's Redis database before the Celery app is built
from bench import harness
from bench.report import Result, machine, print_result, table, write_json
from bench.scenarios import SCENARIOS, Config

ORDER = ("round", "throughput", "discovery", "memory", "spread")
BY_NAME = ("hublag", "hostile")  # A/B pairs of several minutes each: not part of "all"


def _setting(item: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.startswith("KPROFEFE_"):
        parser.error(f"--env wants KPROFEFE_NAME=VALUE, not {item!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["soak"]:
        from bench import soak

        return soak.main(args_in[1:])
    if args_in[:1] == ["leases"]:
        from bench import leases

        return leases.main(args_in[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["all"], choices=["all", *ORDER, *BY_NAME], metavar="SCENARIO")
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (default: %(default)s)")
    parser.add_argument("--capture-processes", type=int, default=Config.capture_processes)
    parser.add_argument("--concurrency", type=int, default=Config.capture_concurrency, help="-c of capture workers")
    parser.add_argument("--upload-rate", type=float, default=Config.upload_rate, help="KPROFEFE_UPLOAD_RATE")
    parser.add_argument("--upload-burst", type=int, default=Config.upload_burst, help="KPROFEFE_UPLOAD_BURST")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KPROFEFE_X=VALUE",
        help="a worker setting on top of the production ones (repeatable), e.g. KPROFEFE_WORKER_EVENTS=false",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply pod counts (smoke runs)")
    parser.add_argument("--profile", action="store_true", help="sample the workers with py-spy (needs py-spy)")
    parser.add_argument("--keep-logs", action="store_true", help="copy worker logs to bench/results/logs/")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results directory")
    args = parser.parse_args(args_in)

    names = list(ORDER) if "all" in args.scenarios else [s for s in (*ORDER, *BY_NAME) if s in args.scenarios]
    cfg = Config(
        capture_processes=args.capture_processes,
        capture_concurrency=args.concurrency,
        upload_rate=args.upload_rate,
        upload_burst=args.upload_burst,
        profile=args.profile,
        out_dir=args.out,
        keep_logs=args.keep_logs,
        scale=args.scale,
        worker_env=dict(_setting(item, parser) for item in args.env),
    )
    if cfg.profile and harness.py_spy() is None:
        parser.error("--profile needs py-spy on PATH or KPROFEFE_PYSPY=/path/to/py-spy")
    client = harness.redis_client()
    try:
        info = machine(harness.redis_version(client))
    except Exception as exc:
        print(f"Redis on {harness.BROKER} is not reachable: {exc}", file=sys.stderr)
        return 2
    print(
        f"kprofefe-tasks benchmarks on {info['nproc']} cores, {info['ram_gib']} GiB, Python {info['python']}, "
        f"Redis {info['redis']} (db {harness.REDIS_DB}); load average {' '.join(info['loadavg_at_start'])}"
    )
    print(f"config: {cfg.as_dict()}")
    if cfg.scale != 1.0:
        print("note: --scale is not 1, so pod counts are not the goals' sizes: judge nothing by the goal column")
    results: list[Result] = []
    crashed = []
    started = time.monotonic()
    for name in names:
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            try:
                result = SCENARIOS[name](cfg, run)
            except Exception:
                crashed.append(f"{name} run {run}")
                print(f"\n== {name} (run {run}) CRASHED ==", file=sys.stderr)
                traceback.print_exc()
                continue
            result.figures["scenario_total_s"] = round(time.monotonic() - t0, 1)
            results.append(result)
            print_result(result)
    print(f"\nall done in {time.monotonic() - started:.0f}s\n")
    print(table(results))
    out = cfg.out_dir / "latest.json"
    write_json(out, info, {**cfg.as_dict(), "argv": sys.argv[1:]}, results)
    print(f"\nwrote {out}")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
    return 0 if results and not crashed and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
