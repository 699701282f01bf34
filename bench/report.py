"""Benchmark results: goals, one result per scenario run, the closing table and the JSON file."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    """A target figure: met when ``value`` is at or under ``limit`` (or at or over it, for rates)."""

    name: str
    value: float
    limit: float
    unit: str
    higher_is_better: bool = False

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def text(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return (
            f"{self.name} {self.value:g}{self.unit} ({op} {self.limit:g}{self.unit}: {'met' if self.met else 'MISSED'})"
        )


@dataclass
class Result:
    scenario: str
    run: int
    headline: str
    goals: list[Goal]
    failures: int
    expected: int  # captures the round should store (or queue, for discovery)
    counted: int  # what actually reached profefe (or the queue)
    count_what: str  # "stored at profefe" or "queued"
    wall_s: float
    redis_peak_mib: float  # sampled used_memory peak, server-wide
    redis_delta_mib: float  # that peak minus used_memory before the trigger
    peak_rss_mib: dict[str, float]
    cpu_s: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    void: bool = False  # another process flushed the benchmark's Redis database mid-run

    @property
    def ok(self) -> bool:
        return not self.void and self.failures == 0 and self.counted == self.expected and all(g.met for g in self.goals)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["goals"] = [{**dataclasses.asdict(g), "met": g.met} for g in self.goals]
        data["ok"] = self.ok
        return data


def print_result(result: Result) -> None:
    print(f"\n== {result.scenario} (run {result.run}) ==")
    print(f"  {result.headline}")
    for goal in result.goals:
        print(f"  goal: {goal.text()}")
    print(f"  failures: {result.failures}   {result.count_what}: {result.counted}/{result.expected}")
    print(
        f"  redis used_memory peak: {result.redis_peak_mib:.1f} MiB (+{result.redis_delta_mib:.1f} MiB over baseline)"
    )
    print("  peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in result.peak_rss_mib.items()))
    print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu_s.items()))
    for key, value in result.figures.items():
        print(f"  {key}: {value}")
    for note in result.notes:
        print(f"  note: {note}")


def table(results: list[Result]) -> str:
    """The compact closing table (Markdown, so it can be pasted into RESULTS.md as is)."""
    rows = [
        "| scenario | run | headline | goal | failures | count | redis peak MiB (+delta) | peak RSS MiB | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        goals = "; ".join(g.text() for g in r.goals) or "-"
        rss = ", ".join(f"{k} {v:.0f}" for k, v in r.peak_rss_mib.items())
        rows.append(
            f"| {r.scenario} | {r.run} | {r.headline} | {goals} | {r.failures} | {r.counted}/{r.expected} "
            f"| {r.redis_peak_mib:.0f} (+{r.redis_delta_mib:.0f}) | {rss} | {'yes' if r.ok else 'NO'} |"
        )
    return "\n".join(rows)


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def machine(redis_version: str) -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    cpu_model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "redis": redis_version,
        "kernel": platform.release(),
        "loadavg_at_start": load,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": _first_line(["git", "rev-parse", "--short", "HEAD"]),
    }


def write_json(path: Path, info: dict[str, Any], config: dict[str, Any], results: list[Result]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": info, "config": config, "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
