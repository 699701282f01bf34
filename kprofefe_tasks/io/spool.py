"""A durable, bounded directory of profiles that profefe did not take within the retry budget.

Each entry is two files, each written to a temporary name and renamed into place: ``<name>.pb.gz`` then
``<name>.json`` (the metadata, renamed last, marks the entry complete). A write that fails (disk full, read-only,
I/O error, permission) removes its temporary file and, if the body was already renamed, the body too: nothing
partial is left behind, and :class:`~kprofefe_tasks.domain.errors.SpoolError` says why (``spool-full`` or
``spool-error``). The spool is not marked broken by a failed write: the next write tries again, so a spool whose
disk was full accepts profiles as soon as space is freed.

Names start with the capture time in nanoseconds (made strictly increasing in this process), so sorting them is
oldest first. Past ``max_bytes`` the oldest entries are dropped before a new one is written, because an unbounded
spool during a long profefe outage would fill the node's disk and take the worker with it.

**The index.** Count, bytes and the oldest entry are kept in memory: built by one scan of the directory when the
spool is first used, updated by every put and remove under one lock, so :meth:`Spool.stats` and the size cap cost
no directory listing per write. Each drain lists the directory anyway (it sends what is there) and reconciles the
index with that listing, so entries written or removed by another process sharing the volume are picked up there.

**Drops**, each logged (one line with the entry, the reason and, when readable, namespace, pod and type) and
passed to ``on_drop(delivery or None, reason)`` (the worker counts ``kprofefe_spool_dropped_total{reason}``),
counted once per entry actually removed or profile refused:

- ``over-size``: removed, oldest first, to stay under ``max_bytes`` (rejected entries go before waiting ones);
  also a profile larger than ``max_bytes`` on its own, which is refused;
- ``corrupt``: an entry whose metadata cannot be read (truncated, garbage, missing fields), whose body is missing
  or has another size than the metadata says, or that an earlier version moved aside as ``.bad``;
- ``orphan``: a body without metadata older than ``orphan_age`` (a crash between the two renames; the capture's
  task was redelivered and took its profile again);
- ``full`` / ``error``: a profile this spool was asked to keep and could not write (the ``SpoolError`` above).

Profiles that profefe rejected for good (a 4xx other than "no samples") go to ``rejected/`` in the same format,
kept for a human to look at and never re-sent.

While an entry is being sent, a ``<name>.sending`` marker exists. A drain that died mid-send (or whose send timed
out) leaves it behind: profefe may have stored that profile already, so the next drain asks ``already_sent`` before
sending it again, because profefe has no idempotent upload. A drain that cannot write the marker (a read-only
disk) stops without sending: it could not remove the entry afterwards either, and would send it again every time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.errors import KprofefeError, PermanentError, SkipError, SpoolError, TemporaryError
from kprofefe_tasks.domain.outcomes import Reason

log = logging.getLogger(__name__)

ORPHAN_AGE = 3600.0  # s: a payload without metadata this old is a crash leftover; its task was redelivered

DROP_OVER_SIZE = "over-size"
DROP_CORRUPT = "corrupt"
DROP_ORPHAN = "orphan"
DROP_FULL = "full"
DROP_ERROR = "error"
#: every ``reason`` label of ``kprofefe_spool_dropped_total``
DROP_REASONS = (DROP_OVER_SIZE, DROP_CORRUPT, DROP_ORPHAN, DROP_FULL, DROP_ERROR)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_REQUIRED_META = ("capture_id", "service", "type")
BODY = ".pb.gz"
META = ".json"
MARKER = ".sending"
BAD = ".bad"  # what earlier versions renamed unreadable metadata to
TMP = ".tmp"


@dataclass(frozen=True)
class Entry:
    name: str
    meta_path: Path
    body_path: Path
    size: int


@dataclass(frozen=True)
class SpoolStats:
    """What the index holds: waiting entries, their bytes, the oldest one's capture time; rejected ones."""

    profiles: int
    bytes: int
    oldest: float | None  # unix seconds of the oldest waiting entry, None when empty
    rejected: int
    rejected_bytes: int


@dataclass
class DrainResult:
    sent: int = 0
    found: int = 0  # entries an interrupted drain had delivered already: removed, not sent again
    empty: int = 0
    rejected: int = 0
    dropped: int = 0  # corrupt entries removed, and refused profiles rejected/ could not keep
    left: int = 0
    error: str = ""


def spool_reason(exc: OSError) -> str:
    """``spool-full`` for a full filesystem or quota, ``spool-error`` for anything else the disk says."""
    return Reason.SPOOL_FULL if exc.errno in _FULL_ERRNOS else Reason.SPOOL_ERROR


def _drop_reason(spool_error_reason: str) -> str:
    return DROP_FULL if spool_error_reason == Reason.SPOOL_FULL else DROP_ERROR


@dataclass
class _Index:
    """One directory's complete entries (name → body bytes), oldest first; names still being written apart."""

    sizes: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # reserved by a put in progress, not complete yet
    bytes: int = 0  # of complete entries
    pending_bytes: int = 0

    def add(self, name: str, size: int) -> None:
        self.bytes += size - self.sizes.get(name, 0)
        self.sizes[name] = size

    def reserve(self, name: str, size: int) -> None:
        self.pending[name] = size
        self.pending_bytes += size

    def release(self, name: str) -> None:
        self.pending_bytes -= self.pending.pop(name, 0)

    def discard(self, name: str) -> int | None:
        size = self.sizes.pop(name, None)
        if size is not None:
            self.bytes -= size
        return size


def _taken_at(name: str) -> float | None:
    head = name.split("-", 1)[0]
    return int(head) / 1e9 if head.isdigit() else None


class Spool:
    def __init__(
        self,
        directory: Path | str,
        max_bytes: int,
        on_drop: Callable[[Delivery | None, str], None] | None = None,
        *,
        orphan_age: float = ORPHAN_AGE,
        blocking: Callable[..., Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        # how the file system work runs (writes, listings, reads; never the lock, the index or a log line): a
        # gevent worker passes kprofefe_tasks.io.offload.run_blocking, so an fsync or a 5,000-entry listing
        # (~170 ms) does not hold its event loop, and no lock is ever shared between the hub and a thread
        self._blocking: Callable[..., Any] = blocking or (lambda fn, *args: fn(*args))
        self.rejected_dir = self.directory / "rejected"
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self.orphan_age = orphan_age
        #: drops by reason since this object was made (what ``on_drop`` was told)
        self.dropped: Counter[str] = Counter()
        # guards the index; re-entrant because a scan (which holds it) drops entries through the same code as a
        # drain or the cap (which take it only to update the index, never around a write or an unlink)
        self._lock = threading.RLock()
        self._waiting = _Index()
        self._rejected = _Index()
        self._busy: set[str] = set()  # entries a drain is sending: the cap does not remove them under its feet
        self._leaving: set[str] = set()  # entries the cap chose, being unlinked: no drain or rescan takes them back
        self._indexed = False
        self._last_ns = 0

    # -- the index ---------------------------------------------------------------------------------------------

    def _index_for(self, directory: Path) -> _Index:
        return self._rejected if directory == self.rejected_dir else self._waiting

    def _ensure(self) -> None:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)

    def _ready(self) -> None:
        """Build the index on first use (one scan); call with the lock held."""
        if self._indexed:
            return
        self._indexed = True
        try:
            self._rescan(validate=True)
        except OSError as exc:  # an unreadable directory: writes will say why; nothing is indexed meanwhile
            log.error("spool %s not readable: %s", self.directory, exc, extra={"reason": spool_reason(exc)})

    def _rescan(self, *, validate: bool) -> list[Entry]:
        """Rebuild both indexes from the directory (lock held), dropping what is corrupt or orphaned (counted);
        returns the waiting entries, oldest first. Entries a put still writes keep their reservation."""
        waiting: list[Entry] = []
        for directory in (self.rejected_dir, self.directory):
            index = self._index_for(directory)
            found = self._scan(directory, validate=validate)
            index.sizes = {}
            index.bytes = 0
            for entry in found:
                if entry.name not in index.pending and entry.name not in self._leaving:
                    index.add(entry.name, entry.size)
            if directory == self.directory:
                waiting = found
        return waiting

    def _scan(self, directory: Path, *, validate: bool) -> list[Entry]:
        """Complete entries of ``directory``, oldest first; corrupt entries and old orphans are dropped.

        The file system work (listing, stats, reading metadata to validate it) runs through ``blocking``, off a
        gevent worker's hub, and touches nothing shared; what it found is applied here: the drops (logged,
        counted) and the stale leftovers. The lock, held by the caller, keeps puts from reserving meanwhile, so
        the snapshot of the names being written or removed stays true."""
        pending = frozenset(self._index_for(directory).pending)
        found: list[tuple[str, str, Any]] = self._blocking(
            _survey, directory, validate, frozenset(self._leaving), pending, self.orphan_age
        )
        entries = []
        for action, name, detail in found:
            if action == "entry":
                entries.append(Entry(name, directory / f"{name}{META}", directory / f"{name}{BODY}", detail))
            elif action in (DROP_CORRUPT, DROP_ORPHAN):
                self._drop_files(directory, name, action, detail)
            elif action == "leftover":
                if detail:
                    log.info("spool: removed a write's leftover %s", directory / name)  # its task was redelivered
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
        return entries

    def _drop_files(self, directory: Path, name: str, reason: str, why: str, delivery: Delivery | None = None) -> bool:
        """Remove an entry's files and count one drop, if anything was there to remove."""
        removed = False
        for suffix in (META, BAD, BODY, MARKER):
            try:
                (directory / f"{name}{suffix}").unlink()
                removed = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("spool: cannot remove %s%s: %s", name, suffix, exc, extra={"reason": spool_reason(exc)})
        with self._lock:
            self._index_for(directory).discard(name)
        if removed:
            self._count_drop(name, reason, why, delivery)
        return removed

    def _count_drop(self, name: str, reason: str, why: str, delivery: Delivery | None) -> None:
        self.dropped[reason] += 1
        fields: dict[str, Any] = {"outcome": "dropped", "reason": reason, "where": f"spool:{name}"}
        if delivery is not None:
            fields.update(namespace=delivery.namespace, pod=delivery.pod, type=delivery.ptype)
        who = f" {delivery.namespace}/{delivery.pod} {delivery.ptype}" if delivery else ""
        log.error("spooled profile dropped (%s)%s %s: %s", reason, who, name, why, extra=fields)
        if self.on_drop is not None:
            try:
                self.on_drop(delivery, reason)
            except Exception:  # counting must never turn a handled drop into a lost capture
                log.exception("spool on_drop callback failed")

    def _new_name(self, delivery: Delivery) -> str:
        ns = max(time.time_ns(), self._last_ns + 1)  # strictly increasing: unique, and sorted oldest first
        self._last_ns = ns
        return f"{ns:020d}-{delivery.digest}"

    # -- writing -----------------------------------------------------------------------------------------------

    def _write_entry(self, body_path: Path, meta_path: Path, body: bytes, meta: bytes) -> None:
        """Both files of an entry, or neither (file system only: it runs in a thread in a gevent worker)."""
        try:
            self._ensure()
            self._write_atomic(body_path, body)
            self._write_atomic(meta_path, meta)
        except BaseException:
            with contextlib.suppress(OSError):
                body_path.unlink()  # the body without its metadata is not an entry
            raise

    def _write_atomic(self, path: Path, data: bytes) -> None:
        """``data`` at ``path`` or nothing: written to a temporary name, fsynced, renamed; the temp removed on error."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _choose_victims(self, excess: int) -> list[Entry]:
        """The oldest entries (rejected first) whose bytes cover ``excess``, taken out of the index and marked as
        leaving (lock held). Touches only what it takes, plus entries being sent: no scan of the index."""
        victims: list[Entry] = []
        for directory, index in ((self.rejected_dir, self._rejected), (self.directory, self._waiting)):
            for name, size in index.sizes.items():
                if excess <= 0:
                    break
                if name in self._busy:
                    continue
                victims.append(Entry(name, directory / f"{name}{META}", directory / f"{name}{BODY}", size))
                excess -= size
        for victim in victims:
            self._index_for(victim.meta_path.parent).discard(victim.name)
            self._leaving.add(victim.name)
        return victims

    def _total_bytes(self) -> int:
        w, r = self._waiting, self._rejected
        return w.bytes + w.pending_bytes + r.bytes + r.pending_bytes

    def _reserve(self, directory: Path, delivery: Delivery) -> tuple[str, list[Entry]]:
        """A name for the new entry and room for it under the cap: the entries to drop for it (lock held)."""
        size = len(delivery.body)
        name = self._new_name(delivery)
        victims = self._choose_victims(self._total_bytes() + size - self.max_bytes)
        self._index_for(directory).reserve(name, size)
        return name, victims

    def _put(self, directory: Path, delivery: Delivery, extra: dict[str, str] | None = None) -> Entry:
        size = len(delivery.body)
        if size > self.max_bytes:
            self._count_drop("-", DROP_OVER_SIZE, f"{size} bytes alone exceed the cap of {self.max_bytes}", delivery)
            raise SpoolError(f"profile of {size} bytes exceeds the spool cap of {self.max_bytes}", reason="spool-full")
        with self._lock:
            self._ready()
            name, victims = self._reserve(directory, delivery)
        index = self._index_for(directory)
        for victim in victims:
            self._drop_victim(victim.meta_path.parent, victim)
        body_path, meta_path = directory / f"{name}{BODY}", directory / f"{name}{META}"
        meta = json.dumps({**delivery.meta(), **(extra or {})}).encode()
        try:
            self._blocking(self._write_entry, body_path, meta_path, delivery.body, meta)
        except OSError as exc:
            with self._lock:
                index.release(name)
            reason = spool_reason(exc)
            self._count_drop(name, _drop_reason(reason), f"not written: {exc}", delivery)
            raise SpoolError(f"{directory}: {exc.strerror or exc}", reason=reason) from exc
        except BaseException:
            with self._lock:
                index.release(name)
            raise
        with self._lock:
            index.release(name)
            index.add(name, size)
        return Entry(name, meta_path, body_path, size)

    def _drop_victim(self, directory: Path, victim: Entry) -> None:
        delivery: Delivery | None
        try:  # the metadata only, for the log line: whose profile this was (the payload is not read)
            delivery = Delivery.from_meta(json.loads(victim.meta_path.read_bytes()), b"")
        except (OSError, ValueError, KeyError, TypeError):
            delivery = None
        try:
            why = f"over the cap of {self.max_bytes} bytes"
            self._drop_files(directory, victim.name, DROP_OVER_SIZE, why, delivery)
        finally:
            with self._lock:
                self._leaving.discard(victim.name)

    def put(self, delivery: Delivery) -> Entry:
        """Keep a profile for a later re-send. Raises :class:`SpoolError` (counted as a drop) if it cannot."""
        return self._put(self.directory, delivery)

    def reject(self, delivery: Delivery, error: str) -> Entry:
        """Keep a profile profefe refused for good, with the refusal, for a human to inspect. Raises
        :class:`SpoolError` (counted as a drop) if it cannot."""
        return self._put(self.rejected_dir, delivery, {"error": error})

    # -- reading -----------------------------------------------------------------------------------------------

    def _entries(self, directory: Path) -> list[Entry]:
        """A listing of the directory (no index, no side effects): what a test or a tool sees on disk."""
        try:
            names = sorted(p.name[: -len(META)] for p in directory.iterdir() if p.name.endswith(META))
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            body_path = directory / f"{name}{BODY}"
            try:
                size = body_path.stat().st_size
            except FileNotFoundError:
                continue
            entries.append(Entry(name, directory / f"{name}{META}", body_path, size))
        return entries

    def entries(self) -> list[Entry]:
        """Complete entries waiting to be re-sent, oldest first (a directory listing: not for hot paths)."""
        return self._entries(self.directory)

    def rejected(self) -> list[Entry]:
        return self._entries(self.rejected_dir)

    def load(self, entry: Entry) -> Delivery:
        meta = json.loads(entry.meta_path.read_bytes())
        return Delivery.from_meta(meta, entry.body_path.read_bytes())

    @staticmethod
    def _marker(entry: Entry) -> Path:
        return entry.meta_path.with_suffix(MARKER)

    def remove(self, entry: Entry) -> None:
        """Remove an entry that was delivered (not a drop). Raises the OSError if its metadata cannot go."""
        # metadata first: an entry without it is invisible, so a crash here never re-sends a half-removed entry
        try:
            entry.meta_path.unlink()
        except FileNotFoundError:
            pass
        for path in (entry.body_path, self._marker(entry)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with self._lock:
            self._index_for(entry.meta_path.parent).discard(entry.name)

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) waiting to be re-sent, from the index: no directory listing."""
        with self._lock:
            self._ready()
            return len(self._waiting.sizes), self._waiting.bytes

    def summary(self) -> SpoolStats:
        """The index: waiting entries and bytes, the oldest one's capture time, rejected entries and bytes."""
        with self._lock:
            self._ready()
            oldest = next(iter(self._waiting.sizes), None)
            return SpoolStats(
                profiles=len(self._waiting.sizes),
                bytes=self._waiting.bytes,
                oldest=_taken_at(oldest) if oldest else None,
                rejected=len(self._rejected.sizes),
                rejected_bytes=self._rejected.bytes,
            )

    def enforce_cap(self) -> int:
        """Drop the oldest entries (rejected ones first, then waiting) until under the cap; returns drops."""
        with self._lock:
            self._ready()
            victims = self._choose_victims(self._total_bytes() - self.max_bytes)
        for victim in victims:
            self._drop_victim(victim.meta_path.parent, victim)
        return len(victims)

    # -- draining ----------------------------------------------------------------------------------------------

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

    def refresh(self) -> list[Entry]:
        """Reconcile the index with the directory (what another process sharing it wrote or removed), dropping old
        orphans and entries without a payload (counted); returns the waiting entries, oldest first."""
        with self._lock:
            self._indexed = True
            return self._rescan(validate=False)

    def clean_orphans(self) -> None:
        """What it always did (drop old payloads without metadata), now with the rest of :meth:`refresh`."""
        self.refresh()

    def drain(
        self,
        send: Callable[[Delivery], str],
        on_sent: Callable[[Delivery, str], None] | None = None,
        already_sent: Callable[[Delivery], str | None] | None = None,
        on_rejected: Callable[[Delivery, str, str], None] | None = None,
    ) -> DrainResult:
        """Re-send entries oldest first; stop at the first temporary failure (profefe is still down).

        ``already_sent`` (where profefe has this delivery, or None) is asked only about entries whose last send
        ended without an answer; without it, or when it cannot tell, they are sent again (a duplicate, never a
        loss). ``on_rejected(delivery, reason, where)`` hears of each entry profefe refused for good: ``where`` is
        its place in ``rejected/``, or empty with ``reason`` ``spool-full``/``spool-error`` when it could not be kept
        there (then it is dropped, counted)."""
        result = DrainResult()
        try:
            with self._drain_lock() as locked:
                if not locked:
                    result.error = "another process is draining"
                    return result
                entries = self.refresh()
                for index, entry in enumerate(entries):
                    if self._drain_one(entry, send, on_sent, already_sent, on_rejected, result):
                        result.left = len(entries) - index
                        return result
        except OSError as exc:  # the directory itself cannot be locked or listed: nothing was sent or removed
            result.error = f"{spool_reason(exc)}: {exc}"
        return result

    def _drain_one(
        self,
        entry: Entry,
        send: Callable[[Delivery], str],
        on_sent: Callable[[Delivery, str], None] | None,
        already_sent: Callable[[Delivery], str | None] | None,
        on_rejected: Callable[[Delivery, str, str], None] | None,
        result: DrainResult,
    ) -> bool:
        """Send one entry; True when the drain must stop here (``result.error`` says why)."""
        with self._lock:
            if entry.name not in self._waiting.sizes:
                return False  # dropped under the cap since the listing
            self._busy.add(entry.name)
        try:
            try:
                delivery = self._blocking(self.load, entry)
            except FileNotFoundError:
                if entry.meta_path.exists():
                    result.dropped += self._drop_files(self.directory, entry.name, DROP_CORRUPT, "payload gone")
                return False
            except (OSError, ValueError, KeyError, TypeError) as exc:
                why = f"unreadable: {exc}"
                result.dropped += self._drop_files(self.directory, entry.name, DROP_CORRUPT, why)
                return False
            marker = self._marker(entry)
            if marker.exists() and already_sent is not None:
                try:
                    found = already_sent(delivery)
                except KprofefeError:
                    found = None
                if found:
                    self._remove_delivered(entry)
                    result.found += 1
                    if on_sent is not None:
                        on_sent(delivery, found)
                    return False
            try:
                marker.touch()
            except OSError as exc:
                # without a marker a send cut short could be sent twice; on a read-only disk it could not be
                # removed after sending either, and would be sent again every drain
                result.error = f"{spool_reason(exc)}: cannot mark {entry.name} as being sent: {exc}"
                return True
            try:
                where = send(delivery)
            except TemporaryError as exc:
                # the marker stays: a timed-out upload may still be stored, so the next drain asks first
                result.error = str(exc)
                return True
            except SkipError:
                result.empty += 1
                self._remove_delivered(entry)
                return False
            except (PermanentError, KprofefeError) as exc:
                self._reject_entry(entry, delivery, exc, on_rejected, result)
                return False
            self._remove_delivered(entry)
            result.sent += 1
            if on_sent is not None:
                on_sent(delivery, where)
            return False
        finally:
            with self._lock:
                self._busy.discard(entry.name)

    def _remove_delivered(self, entry: Entry) -> None:
        try:
            self.remove(entry)
        except OSError as exc:  # the marker stays with it: the next drain asks profefe before sending it again
            log.error("spool: delivered %s but cannot remove it: %s", entry.name, exc, extra={"reason": "spool-error"})

    def _reject_entry(
        self,
        entry: Entry,
        delivery: Delivery,
        exc: KprofefeError,
        on_rejected: Callable[[Delivery, str, str], None] | None,
        result: DrainResult,
    ) -> None:
        try:
            kept = self.reject(delivery, str(exc))
        except SpoolError as refused:  # counted as a drop by reject; re-sending it would only be refused again
            result.dropped += 1
            self._remove_delivered(entry)
            if on_rejected is not None:
                on_rejected(delivery, refused.reason, "")
            return
        result.rejected += 1
        self._remove_delivered(entry)
        if on_rejected is not None:
            on_rejected(delivery, exc.reason, f"rejected:{kept.name}")


def _survey(
    directory: Path, validate: bool, leaving: frozenset[str], pending: frozenset[str], orphan_age: float
) -> list[tuple[str, str, Any]]:
    """What ``directory`` holds, from the file system alone (no lock, no log, nothing shared: it may run in a
    thread), oldest first: ``("entry", name, size)``, ``(DROP_CORRUPT | DROP_ORPHAN, name, why)``, and
    ``("leftover", filename, log_it)`` for a stale marker or a write's temporary file."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    present = set(names)
    now = time.time()
    found: list[tuple[str, str, Any]] = []

    def older(path: Path) -> bool:
        try:
            return now - path.stat().st_mtime > orphan_age
        except FileNotFoundError:
            return False

    for filename in sorted(names):
        path = directory / filename
        if filename.split(".", 1)[0] in leaving:
            continue  # the cap is removing it right now, and counts it
        if filename.endswith(META):
            name = filename[: -len(META)]
            meta_path, body_path = directory / filename, directory / f"{name}{BODY}"
            try:
                size = body_path.stat().st_size
            except FileNotFoundError:
                if meta_path.exists():
                    found.append((DROP_CORRUPT, name, "metadata without payload"))
                continue  # else removed meanwhile
            problem = _meta_problem(meta_path, size) if validate else ""
            found.append((DROP_CORRUPT, name, problem) if problem else ("entry", name, size))
        elif filename.endswith(BAD):
            found.append((DROP_CORRUPT, filename[: -len(BAD)], "unreadable metadata set aside"))
        elif filename.endswith(BODY) and filename[: -len(BODY)] + META not in present:
            name = filename[: -len(BODY)]
            if name in pending or not older(path):
                continue  # a put between its two renames
            found.append((DROP_ORPHAN, name, "payload without metadata"))
        elif filename.endswith(MARKER) and filename[: -len(MARKER)] + META not in present:
            found.append(("leftover", filename, False))  # the entry it marked is gone: nothing to count
        elif filename.startswith(".") and filename.endswith(TMP) and older(path):
            found.append(("leftover", filename, True))  # never an entry
    return found


def _meta_problem(meta_path: Path, size: int) -> str:
    try:
        meta = json.loads(meta_path.read_bytes())
    except FileNotFoundError:
        return ""  # removed meanwhile: not ours to count
    except (OSError, ValueError) as exc:
        return f"unreadable metadata: {exc}"
    if not isinstance(meta, dict) or any(not meta.get(key) for key in _REQUIRED_META):
        return "metadata without capture_id, service or type"
    if "bytes" in meta and meta["bytes"] != size:
        return f"payload has {size} bytes, metadata says {meta['bytes']}"
    return ""
