"""A durable, bounded directory of profiles that profefe did not take within the retry budget.

Each entry is two files written atomically (temp file + rename): ``<name>.pb.gz`` then ``<name>.json`` (the
metadata, written last, marks the entry complete). Names start with the capture time in nanoseconds, so sorting
them is oldest first. Past ``max_bytes`` the oldest entries are dropped — each drop logged and counted — because an
unbounded spool during a long profefe outage would fill the node's disk and take the worker with it.

Profiles that profefe rejected for good (a 4xx other than "no samples") go to ``rejected/`` in the same format,
kept for a human to look at and never re-sent.

While an entry is being sent, a ``<name>.sending`` marker exists. A drain that died mid-send (or whose send timed
out) leaves it behind: profefe may have stored that profile already, so the next drain asks ``already_sent`` before
sending it again, because profefe has no idempotent upload.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.errors import KprofefeError, PermanentError, SkipError, TemporaryError

log = logging.getLogger(__name__)

ORPHAN_AGE = 3600.0  # s: a payload without metadata this old is a crash leftover; its task was redelivered


@dataclass(frozen=True)
class Entry:
    name: str
    meta_path: Path
    body_path: Path
    size: int


@dataclass
class DrainResult:
    sent: int = 0
    found: int = 0  # entries an interrupted drain had delivered already: removed, not sent again
    empty: int = 0
    rejected: int = 0
    left: int = 0
    error: str = ""


class Spool:
    def __init__(
        self, directory: Path, max_bytes: int, on_drop: Callable[[Delivery | None, str], None] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.rejected_dir = self.directory / "rejected"
        self.max_bytes = max_bytes
        self.on_drop = on_drop

    def _ensure(self) -> None:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _put(self, directory: Path, delivery: Delivery, extra: dict[str, str] | None = None) -> Entry:
        self._ensure()
        name = f"{time.time_ns():020d}-{delivery.digest}"
        body_path = directory / f"{name}.pb.gz"
        meta_path = directory / f"{name}.json"
        self._write_atomic(body_path, delivery.body)
        self._write_atomic(meta_path, json.dumps({**delivery.meta(), **(extra or {})}).encode())
        entry = Entry(name, meta_path, body_path, len(delivery.body))
        self.enforce_cap()
        return entry

    def put(self, delivery: Delivery) -> Entry:
        """Keep a profile for a later re-send."""
        return self._put(self.directory, delivery)

    def reject(self, delivery: Delivery, error: str) -> Entry:
        """Keep a profile profefe refused for good, with the refusal, for a human to inspect."""
        return self._put(self.rejected_dir, delivery, {"error": error})

    def _entries(self, directory: Path) -> list[Entry]:
        try:
            names = sorted(p.name[:-5] for p in directory.iterdir() if p.name.endswith(".json"))
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            body_path = directory / f"{name}.pb.gz"
            try:
                size = body_path.stat().st_size
            except FileNotFoundError:
                continue
            entries.append(Entry(name, directory / f"{name}.json", body_path, size))
        return entries

    def entries(self) -> list[Entry]:
        """Complete entries waiting to be re-sent, oldest first."""
        return self._entries(self.directory)

    def rejected(self) -> list[Entry]:
        return self._entries(self.rejected_dir)

    def load(self, entry: Entry) -> Delivery:
        meta = json.loads(entry.meta_path.read_bytes())
        return Delivery.from_meta(meta, entry.body_path.read_bytes())

    @staticmethod
    def _marker(entry: Entry) -> Path:
        return entry.meta_path.with_suffix(".sending")

    @classmethod
    def remove(cls, entry: Entry) -> None:
        # metadata first: an entry without it is invisible, so a crash here never re-sends a half-removed entry
        for path in (entry.meta_path, entry.body_path, cls._marker(entry)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) waiting to be re-sent."""
        entries = self.entries()
        return len(entries), sum(e.size for e in entries)

    def enforce_cap(self) -> int:
        """Drop the oldest entries (rejected ones first, then waiting) until under the cap; returns drops."""
        waiting, rejected = self.entries(), self.rejected()
        total = sum(e.size for e in waiting) + sum(e.size for e in rejected)
        dropped = 0
        for entry in [*rejected, *waiting]:
            if total <= self.max_bytes:
                break
            delivery: Delivery | None
            try:
                delivery = self.load(entry)
            except (OSError, ValueError):
                delivery = None
            self.remove(entry)
            total -= entry.size
            dropped += 1
            log.warning("spool over %d bytes: dropped %s", self.max_bytes, entry.name)
            if self.on_drop is not None:
                self.on_drop(delivery, "spool-full")
        return dropped

    @contextlib.contextmanager
    def _drain_lock(self) -> Iterator[bool]:
        """Only one process drains a spool at a time (several workers may share one volume)."""
        self._ensure()
        with open(self.directory / ".drain.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def clean_orphans(self) -> None:
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.iterdir():
                if path.name.endswith(".pb.gz") and not path.with_name(path.name[:-6] + ".json").exists():
                    with contextlib.suppress(FileNotFoundError):
                        if now - path.stat().st_mtime > ORPHAN_AGE:
                            path.unlink()

    def drain(
        self,
        send: Callable[[Delivery], str],
        on_sent: Callable[[Delivery, str], None] | None = None,
        already_sent: Callable[[Delivery], str | None] | None = None,
    ) -> DrainResult:
        """Re-send entries oldest first; stop at the first temporary failure (profefe is still down).

        ``already_sent`` (where profefe has this delivery, or None) is asked only about entries whose last send
        ended without an answer; without it, or when it cannot tell, they are sent again (a duplicate, never a
        loss)."""
        result = DrainResult()
        with self._drain_lock() as locked:
            if not locked:
                result.error = "another process is draining"
                return result
            self.clean_orphans()
            entries = self.entries()
            for index, entry in enumerate(entries):
                try:
                    delivery = self.load(entry)
                except (OSError, ValueError) as exc:
                    log.error("spool entry %s unreadable, moved aside: %s", entry.name, exc)
                    with contextlib.suppress(OSError):
                        os.replace(entry.meta_path, entry.meta_path.with_suffix(".bad"))
                    continue
                marker = self._marker(entry)
                if marker.exists() and already_sent is not None:
                    try:
                        found = already_sent(delivery)
                    except KprofefeError:
                        found = None
                    if found:
                        self.remove(entry)
                        result.found += 1
                        if on_sent is not None:
                            on_sent(delivery, found)
                        continue
                marker.touch()
                try:
                    where = send(delivery)
                except TemporaryError as exc:
                    # the marker stays: a timed-out upload may still be stored, so the next drain asks first
                    result.left = len(entries) - index
                    result.error = str(exc)
                    return result
                except SkipError:
                    result.empty += 1
                    self.remove(entry)
                    continue
                except (PermanentError, KprofefeError) as exc:
                    result.rejected += 1
                    self.reject(delivery, str(exc))
                    self.remove(entry)
                    continue
                self.remove(entry)
                result.sent += 1
                if on_sent is not None:
                    on_sent(delivery, where)
        return result
