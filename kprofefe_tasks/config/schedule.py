"""Schedule entries (data) → Celery beat's ``beat_schedule``; validated so a typo fails at start-up, not silently.

An entry::

    name: web            # unique; the beat entry is "discover-<name>"
    namespaces: [web, api]   # or "all" (default)
    selector: "tier=backend" # label selector, applied by the API server
    interval: 600        # seconds, or "10m", "1h"
    types: [cpu, heap]   # default: KPROFEFE_TYPES
    cpu_seconds: 30      # default: KPROFEFE_CPU_SECONDS
    spread: true         # spread captures over the interval (default: KPROFEFE_SPREAD)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kprofefe_tasks.config.settings import PROFILE_TYPES, Settings
from kprofefe_tasks.domain.errors import ConfigError

DEFAULT_INTERVAL = 600  # s: kube-profefe's CronJob ran every 10 minutes
MIN_INTERVAL = 5  # s: below this a round cannot finish before the next one starts
DISCOVER_TASK = "kprofefe.discover"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{what}={value!r}: expected seconds or a duration like 30s, 10m, 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Entry:
    name: str
    namespaces: tuple[str, ...] | None  # None: all namespaces
    selector: str
    interval: float
    types: tuple[str, ...]
    cpu_seconds: int
    spread: bool

    def discover_kwargs(self) -> dict[str, Any]:
        return {
            "namespaces": list(self.namespaces) if self.namespaces is not None else "all",
            "selector": self.selector,
            "types": list(self.types),
            "cpu_seconds": self.cpu_seconds,
            "interval": self.interval,
            "spread": self.spread,
            "entry": self.name,
        }


def parse_entry(raw: Mapping[str, Any], settings: Settings, index: int) -> Entry:
    where = f"schedule entry {index + 1}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {"name", "namespaces", "selector", "interval", "types", "cpu_seconds", "spread"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    name = str(raw.get("name") or f"entry-{index + 1}")
    where = f"schedule entry {name!r}"
    ns_raw = raw.get("namespaces", "all")
    namespaces: tuple[str, ...] | None
    if ns_raw in ("all", "*", None):
        namespaces = None
    elif isinstance(ns_raw, str):
        namespaces = tuple(n.strip() for n in ns_raw.split(",") if n.strip())
    elif isinstance(ns_raw, Sequence):
        namespaces = tuple(str(n) for n in ns_raw)
    else:
        raise ConfigError(f"{where}: namespaces must be 'all' or a list")
    if namespaces is not None and not namespaces:
        raise ConfigError(f"{where}: namespaces is empty")
    interval = parse_duration(raw.get("interval", DEFAULT_INTERVAL), f"{where}: interval")
    if interval < MIN_INTERVAL:
        raise ConfigError(f"{where}: interval {interval}s is below the minimum of {MIN_INTERVAL}s")
    types_raw = raw.get("types", list(settings.types))
    types = tuple(re.split(r"[\s,]+", types_raw.strip()) if isinstance(types_raw, str) else map(str, types_raw))
    bad = [t for t in types if t not in PROFILE_TYPES]
    if bad or not types:
        raise ConfigError(f"{where}: unknown types {bad}; choose from {', '.join(PROFILE_TYPES)}")
    cpu_seconds = int(parse_duration(raw.get("cpu_seconds", settings.cpu_seconds), f"{where}: cpu_seconds"))
    if "cpu" in types and not 1 <= cpu_seconds < interval:
        raise ConfigError(f"{where}: cpu_seconds must be at least 1 and shorter than the interval")
    return Entry(
        name=name,
        namespaces=namespaces,
        selector=str(raw.get("selector") or ""),
        interval=interval,
        types=types,
        cpu_seconds=cpu_seconds,
        spread=bool(raw.get("spread", settings.spread)),
    )


def parse(data: Any, settings: Settings) -> list[Entry]:
    if isinstance(data, Mapping) and "entries" in data:
        data = data["entries"]
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list):
        raise ConfigError("the schedule must be a list of entries")
    entries = [parse_entry(raw, settings, i) for i, raw in enumerate(data)]
    names = [e.name for e in entries]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"schedule entry names must be unique: {sorted(duplicates)}")
    return entries


def load_text(text: str, settings: Settings, source: str) -> list[Entry]:
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML/JSON: {exc}") from exc
    return parse(data, settings)


def beat_entries(entries: Sequence[Entry]) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: one discovery task per entry on the discovery queue.

    ``expires`` drops a discovery that waited longer than its interval (a backlog after an outage would otherwise
    fire several stale rounds at once).
    """
    return {
        f"discover-{e.name}": {
            "task": DISCOVER_TASK,
            "schedule": e.interval,
            "kwargs": e.discover_kwargs(),
            "options": {"queue": "discovery", "expires": e.interval},
        }
        for e in entries
    }


def dumps(entries: Sequence[Entry]) -> str:
    return json.dumps([e.discover_kwargs() | {"name": e.name} for e in entries], indent=2)


def read_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"KPROFEFE_SCHEDULE_FILE={path!r}: {exc.strerror}") from exc
