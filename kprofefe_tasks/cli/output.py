"""How the CLI prints: kubectl-style tables, ``-o json|yaml``, ages and sizes, and a progress display.

Results go to stdout, everything about the run (progress, notes, errors) to stderr, so ``-o json`` output can be
piped straight into ``jq``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

COLUMN_GAP = "   "  # kubectl's tabwriter pads columns with three spaces
PROGRESS_REDRAW_S = 0.2  # s: often enough to look alive, rarely enough to cost nothing
BAR_WIDTH = 24  # characters of the bar itself; the counters follow it


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns like ``kubectl get``; no trailing blanks. Ends with a newline."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [COLUMN_GAP.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def dump(data: Any, fmt: str) -> str:
    """``json`` (4-space indent, like kubectl) or ``yaml`` (block style, keys in the given order)."""
    if fmt == "json":
        return json.dumps(data, indent=4, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))
    raise ValueError(f"unknown format {fmt!r}")


def human_age(seconds: float) -> str:
    """kubectl's AGE column (apimachinery's ``HumanDuration``): ``45s``, ``5m30s``, ``3h``, ``2d4h``, ``3y``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age_of(timestamp: str, now: datetime | None = None) -> str:
    """AGE for an RFC3339 timestamp; ``<unknown>`` when it does not parse."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return human_age(((now or datetime.now(UTC)) - moment).total_seconds())


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}B"  # pragma: no cover - the loop always returns


class Progress:
    """Captures done out of a total, on stderr.

    On a terminal: one bar redrawn in place with ``\\r`` (and failures printed above it as they happen). Piped
    or redirected: one plain line per finished capture, which is what a log wants.
    """

    def __init__(self, total: int, stream: TextIO, *, label: str = "capturing", tty: bool | None = None) -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.tty = stream.isatty() if tty is None else tty
        self.done = 0
        self.failed = 0
        self.running = 0
        self.started = time.monotonic()
        self._drawn = 0  # characters of the bar on screen, to blank what a shorter redraw leaves behind
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def _bar(self) -> str:
        filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
        elapsed = time.monotonic() - self.started
        parts = [
            f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total}",
            f"running {self.running}",
        ]
        if self.failed:
            parts.append(f"failed {self.failed}")
        parts.append(f"{elapsed:.0f}s")
        return "  ".join(parts)[: self._width()]

    def _draw(self) -> None:
        text = self._bar()
        self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)))
        self.stream.flush()
        self._drawn = len(text)
        self._last_draw = time.monotonic()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def update(self, *, running: int | None = None, force: bool = False) -> None:
        """Redraw (terminal only) when something changed or the clock ticked far enough."""
        with self._lock:
            if running is not None:
                self.running = running
            if self.tty and (force or time.monotonic() - self._last_draw >= PROGRESS_REDRAW_S):
                self._draw()

    def finished(self, line: str, *, failed: bool = False, running: int | None = None) -> None:
        """One capture ended: a line in plain mode (failures only on a terminal), then the bar again."""
        with self._lock:
            self.done += 1
            self.failed += int(failed)
            if running is not None:
                self.running = running
            if self.tty:
                if failed:
                    self._clear()
                    self.stream.write(line + "\n")
                self._draw()
            else:
                self.stream.write(f"[{self.done}/{self.total}] {line}\n")
                self.stream.flush()

    def set_done(self, done: int, failed: int = 0) -> None:
        """For progress counted elsewhere (a Celery round): set the counters and redraw."""
        with self._lock:
            changed = (done, failed) != (self.done, self.failed)
            self.done, self.failed = done, failed
            if self.tty:
                self._draw()
            elif changed:
                self.stream.write(f"[{self.done}/{self.total}] {self.label}\n")
                self.stream.flush()

    def close(self) -> None:
        """Leave the final bar on its own line, so the summary starts on a clean one."""
        with self._lock:
            if self.tty:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
