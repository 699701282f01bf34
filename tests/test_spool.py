"""The spool on a real filesystem: every way a write can fail, exact drop counts, the in-memory index.

Full and read-only disks are real: a small tmpfs (``tests/tmpfs.py``), mounted for the test and unmounted after it.
The drain's tests send to the profefe double, a real HTTP server on 127.43.0.0/16.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kprofefe_sandbox.farm import payload
from kprofefe_sandbox.profefe import ProfefeServer

from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.errors import SpoolError
from kprofefe_tasks.io.profefe import ProfefeClient
from kprofefe_tasks.io.sinks import ProfefeSink
from kprofefe_tasks.io.spool import DROP_REASONS, ORPHAN_AGE, Spool
from tests.tmpfs import fill, mounted_tmpfs, remount

PAGE = 4096
PROFEFE_HOST = "127.43.0.1"


def delivery(i: int, size: int = 100, body: bytes | None = None) -> Delivery:
    pod = f"api-{i}"
    return Delivery(
        capture_id=f"r1/web/{pod}/heap",
        service="api",
        ptype="heap",
        namespace="web",
        pod=pod,
        labels=(("pod", pod),),
        taken_at=time.time(),
        body=body if body is not None else bytes([i % 251]) * size,
    )


class Drops:
    """What ``on_drop`` was told: the worker counts exactly this in ``kprofefe_spool_dropped_total``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Delivery | None, str]] = []
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery | None, reason: str) -> None:
        with self._lock:
            self.calls.append((delivery, reason))

    def by_reason(self) -> Counter[str]:
        return Counter(reason for _, reason in self.calls)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def leftovers(directory: Path) -> list[str]:
    """Anything that is not a complete entry: temp files, payloads without metadata, metadata without payload."""
    found = []
    for _, _, files in os.walk(directory):
        present = set(files)
        for name in files:
            body_alone = name.endswith(".pb.gz") and name[:-6] + ".json" not in present
            meta_alone = name.endswith(".json") and name[:-5] + ".pb.gz" not in present
            if name.endswith(".tmp") or body_alone or meta_alone:
                found.append(name)
    return found


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs."""
    with mounted_tmpfs(tmp_path / "disk", 64 * PAGE) as path:
        yield path


# -- writing ------------------------------------------------------------------------------------------------------


def test_put_and_reject_write_complete_entries_and_the_index_matches_the_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    first = spool.put(delivery(1, 300))
    spool.put(delivery(2, 200))
    spool.reject(delivery(3, 50), "profefe-error: 400")
    assert [e.name for e in spool.entries()] == [first.name, spool.entries()[1].name]
    assert spool.stats() == (2, 500)
    summary = spool.summary()
    assert (summary.profiles, summary.bytes, summary.rejected, summary.rejected_bytes) == (2, 500, 1, 50)
    assert summary.oldest is not None and abs(summary.oldest - time.time()) < 60
    assert json.loads(spool.rejected()[0].meta_path.read_text())["error"] == "profefe-error: 400"
    assert leftovers(spool.directory) == []
    # a fresh process builds the same index from the directory
    assert Spool(spool.directory, 1 << 20).stats() == (2, 500)


@pytest.mark.parametrize("short_of", ["payload", "metadata"])
def test_a_full_disk_refuses_the_profile_leaves_nothing_behind_and_accepts_again_once_space_frees(
    disk: Path, short_of: str, caplog: pytest.LogCaptureFixture
) -> None:
    drops = Drops()
    spool = Spool(disk / "spool", 1 << 30, on_drop=drops)
    kept = spool.put(delivery(1, 100))
    body = 2 * PAGE
    # "payload": one page free, the payload needs two; "metadata": the payload fits exactly, its metadata does not
    filler = fill(disk, PAGE if short_of == "payload" else body)

    with pytest.raises(SpoolError) as refused:
        spool.put(delivery(2, body))

    assert refused.value.reason == "spool-full"
    assert drops.by_reason() == {"full": 1}
    assert drops.calls[0][0] is not None and drops.calls[0][0].pod == "api-2"
    (line,) = [r for r in caplog.records if getattr(r, "outcome", "") == "dropped"]
    assert (line.reason, line.namespace, line.pod, line.type) == ("full", "web", "api-2", "heap")  # type: ignore[attr-defined]
    assert "No space left on device" in line.getMessage()
    assert leftovers(disk) == []
    assert [e.name for e in spool.entries()] == [kept.name]
    assert spool.stats() == (1, 100)

    filler.unlink()
    again = spool.put(delivery(3, body))
    assert [e.name for e in spool.entries()] == [kept.name, again.name]
    assert spool.stats() == (2, 100 + body)
    assert drops.by_reason() == {"full": 1}


def test_a_rejected_profile_the_disk_cannot_hold_is_refused_and_counted(disk: Path) -> None:
    drops = Drops()
    spool = Spool(disk / "spool", 1 << 30, on_drop=drops)
    spool.put(delivery(1, 100))
    fill(disk, 0)
    with pytest.raises(SpoolError) as refused:
        spool.reject(delivery(2, 100), "profefe-error: 400")
    assert refused.value.reason == "spool-full"
    assert drops.by_reason() == {"full": 1}
    assert spool.rejected() == [] and leftovers(disk) == []


def test_a_read_only_disk_refuses_with_spool_error_and_accepts_again_when_writable(disk: Path) -> None:
    drops = Drops()
    spool = Spool(disk / "spool", 1 << 30, on_drop=drops)
    spool.put(delivery(1, 100))
    remount(disk, "ro")
    with pytest.raises(SpoolError) as refused:
        spool.put(delivery(2, 100))
    assert refused.value.reason == "spool-error"
    assert "Read-only" in refused.value.message
    assert drops.by_reason() == {"error": 1}
    remount(disk, "rw")
    assert leftovers(disk) == []
    spool.put(delivery(3, 100))
    assert spool.stats() == (2, 200)


def test_a_spool_directory_that_cannot_be_created_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the spool's parent should be")
    drops = Drops()
    spool = Spool(tmp_path / "not-a-dir" / "spool", 1 << 30, on_drop=drops)
    assert spool.stats() == (0, 0)
    with pytest.raises(SpoolError) as refused:
        spool.put(delivery(1))
    assert refused.value.reason == "spool-error"
    assert drops.by_reason() == {"error": 1}


# -- the cap ------------------------------------------------------------------------------------------------------


def test_over_the_cap_the_oldest_are_dropped_rejected_first_each_counted_once(tmp_path: Path) -> None:
    drops = Drops()
    spool = Spool(tmp_path / "spool", 1000, on_drop=drops)
    rejected = spool.reject(delivery(0, 200), "profefe-error: 400")
    waiting = [spool.put(delivery(i, 200)) for i in range(1, 5)]  # 1000 bytes with the rejected one
    assert drops.calls == []

    newest = spool.put(delivery(5, 450))  # needs 450: the rejected entry and the two oldest waiting ones go

    assert drops.by_reason() == {"over-size": 3}
    assert [d.pod for d, _ in drops.calls if d] == ["api-0", "api-1", "api-2"]
    assert spool.rejected() == [] and not rejected.meta_path.exists()
    assert [e.name for e in spool.entries()] == [waiting[2].name, waiting[3].name, newest.name]
    assert spool.stats() == (3, 850)
    assert leftovers(spool.directory) == []


def test_a_profile_larger_than_the_cap_on_its_own_is_refused_and_nothing_else_dropped(tmp_path: Path) -> None:
    drops = Drops()
    spool = Spool(tmp_path / "spool", 1000, on_drop=drops)
    spool.put(delivery(1, 400))
    with pytest.raises(SpoolError) as refused:
        spool.put(delivery(2, 1001))
    assert refused.value.reason == "spool-full"
    assert drops.by_reason() == {"over-size": 1}
    assert spool.stats() == (1, 400)


# -- bad entries --------------------------------------------------------------------------------------------------


def plant(directory: Path, name: str, *, meta: bytes | None, body: bytes | None, age: float = 0.0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".pb.gz", body), (".json", meta)):
        if data is None:
            continue
        path = directory / f"{name}{suffix}"
        path.write_bytes(data)
        if age:
            then = time.time() - age
            os.utime(path, (then, then))


def good_meta(i: int, size: int) -> bytes:
    return json.dumps({**delivery(i, size).meta(), "bytes": size}).encode()


def test_bad_entries_are_dropped_at_start_and_counted_exactly_by_reason(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    good = [f"{1000 + i:020d}-good{i}" for i in range(3)]
    for i, name in enumerate(good):
        plant(directory, name, meta=good_meta(i, 10), body=b"x" * 10)
    planted = Counter[str]()
    for i in range(4):  # garbage metadata
        plant(directory, f"{2000 + i:020d}-garbage", meta=b"\x00\xffnot json", body=b"x" * 10)
        planted["corrupt"] += 1
    for i in range(2):  # truncated metadata
        plant(directory, f"{3000 + i:020d}-truncated", meta=good_meta(i, 10)[:25], body=b"x" * 10)
        planted["corrupt"] += 1
    for i in range(3):  # metadata without its payload
        plant(directory, f"{4000 + i:020d}-nobody", meta=good_meta(i, 10), body=None)
        planted["corrupt"] += 1
    plant(directory, f"{5000:020d}-short", meta=good_meta(1, 10), body=b"x" * 7)  # a truncated payload
    planted["corrupt"] += 1
    plant(directory, f"{5001:020d}-nofields", meta=b'{"service": "api"}', body=b"x")  # valid JSON, not an entry
    planted["corrupt"] += 1
    (directory / f"{5002:020d}-old.bad").write_bytes(b"{")  # set aside by an earlier version
    planted["corrupt"] += 1
    for i in range(5):  # payloads without metadata, older than the orphan age: crash leftovers
        plant(directory, f"{6000 + i:020d}-orphan", meta=None, body=b"x" * 10, age=ORPHAN_AGE + 60)
        planted["orphan"] += 1
    plant(directory, f"{7000:020d}-writing", meta=None, body=b"x" * 10)  # a fresh one: maybe a write in progress
    plant(directory / "rejected", f"{8000:020d}-rej-garbage", meta=b"[", body=b"x")
    planted["corrupt"] += 1
    plant(directory / "rejected", f"{8001:020d}-rej-good", meta=good_meta(9, 4), body=b"x" * 4)

    drops = Drops()
    spool = Spool(directory, 1 << 30, on_drop=drops)
    assert spool.stats() == (3, 30)

    assert drops.by_reason() == planted
    assert spool.dropped == planted
    assert len(drops.calls) == 18
    assert names(directory) == sorted(
        [*(f"{n}.json" for n in good), *(f"{n}.pb.gz" for n in good), f"{7000:020d}-writing.pb.gz", "rejected"]
    )
    assert names(directory / "rejected") == [f"{8001:020d}-rej-good.json", f"{8001:020d}-rej-good.pb.gz"]
    assert spool.summary().rejected == 1
    # counted once: a second look finds nothing more to drop
    again = Drops()
    assert Spool(directory, 1 << 30, on_drop=again).stats() == (3, 30) and again.calls == []


def test_an_entry_that_goes_bad_while_spooled_is_dropped_once_by_the_drain(tmp_path: Path) -> None:
    drops = Drops()
    spool = Spool(tmp_path / "spool", 1 << 30, on_drop=drops)
    entries = [spool.put(delivery(i, 10)) for i in range(4)]
    entries[1].meta_path.write_bytes(b'{"capture_id": "r1/web/ap')  # truncated after it was written
    entries[2].body_path.unlink()  # payload gone
    sent: list[str] = []

    def send(d: Delivery) -> str:
        sent.append(d.pod)
        return "id"

    result = spool.drain(send)
    assert (result.sent, result.dropped) == (2, 1)  # the missing payload is dropped by the drain's own listing
    assert drops.by_reason() == {"corrupt": 2}
    assert sent == ["api-0", "api-3"]
    assert spool.entries() == [] and spool.stats() == (0, 0)
    assert names(spool.directory) == [".drain.lock", "rejected"]


# -- the index ----------------------------------------------------------------------------------------------------


def test_stats_and_puts_use_the_index_and_never_list_the_directory(tmp_path: Path) -> None:
    drops = Drops()
    spool = Spool(tmp_path / "spool", 1 << 30, on_drop=drops)
    spool.put(delivery(1, 10))
    # written behind the spool's back (another process sharing the volume): not seen until a drain's listing
    plant(spool.directory, f"{1:020d}-foreign", meta=good_meta(2, 5), body=b"x" * 5)
    plant(spool.directory, f"{2:020d}-garbage", meta=b"?", body=b"x")
    for i in range(3):
        spool.put(delivery(10 + i, 10))
    assert spool.stats() == (4, 40)
    assert drops.calls == []  # no put looked at the garbage entry
    spool.refresh()
    assert spool.stats() == (6, 46)  # the drain's reconciliation (validates on load, not here)
    assert spool.summary().oldest == pytest.approx(1e-9)  # the foreign entry's name sorts first


def test_many_threads_writing_at_once_keep_the_index_exact(tmp_path: Path) -> None:
    drops = Drops()
    cap = 40 * 1000
    spool = Spool(tmp_path / "spool", cap, on_drop=drops)
    threads, per_thread, size = 8, 25, 1000
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                spool.put(delivery(t * 1000 + i, size))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    on_disk = spool.entries()
    assert spool.stats() == (len(on_disk), sum(e.size for e in on_disk))
    assert sum(e.size for e in on_disk) <= cap
    assert len(on_disk) == cap // size
    assert drops.by_reason() == {"over-size": threads * per_thread - len(on_disk)}
    assert leftovers(spool.directory) == []
    assert len({e.name for e in on_disk}) == len(on_disk)


# -- the drain ----------------------------------------------------------------------------------------------------


def real_profile(i: int) -> Delivery:
    """A pprof profile the profefe double accepts (it parses what it stores)."""
    return delivery(i, body=payload("heap"))


def sink_for(profefe: ProfefeServer) -> ProfefeSink:
    client = ProfefeClient(profefe.url, read_timeout=5.0)
    return ProfefeSink(client, bucket=None, attempts=1, backoff_base=0.01, backoff_max=0.01)


def test_a_profile_profefe_refuses_while_rejected_cannot_hold_it_is_dropped_counted_and_not_resent(
    disk: Path,
) -> None:
    drops = Drops()
    spool = Spool(disk / "spool", 1 << 30, on_drop=drops)
    for i in range(3):
        spool.put(real_profile(i))
    outcomes: list[tuple[str, str, str]] = []
    with ProfefeServer(host=PROFEFE_HOST) as profefe:
        sink = sink_for(profefe)
        profefe.fail_next(1, 400, '{"error": "bad profile"}')
        fill(disk, 0)
        result = spool.drain(sink.store, on_rejected=lambda d, reason, where: outcomes.append((d.pod, reason, where)))
        assert (result.sent, result.rejected, result.dropped, result.left) == (2, 0, 1, 0), result
        assert outcomes == [("api-0", "spool-full", "")]
        assert drops.by_reason() == {"full": 1}
        assert spool.entries() == [] and spool.rejected() == [] and spool.stats() == (0, 0)
        assert sorted(p.labels["pod"] for p in profefe.profiles) == ["api-1", "api-2"]
        assert leftovers(disk) == []


def test_a_drain_on_a_read_only_disk_sends_nothing_and_loses_nothing(disk: Path) -> None:
    drops = Drops()
    spool = Spool(disk / "spool", 1 << 30, on_drop=drops)
    for i in range(2):
        spool.put(real_profile(i))
    with ProfefeServer(host=PROFEFE_HOST) as profefe:
        remount(disk, "ro")
        result = spool.drain(sink_for(profefe).store)
        assert result.sent == 0 and result.error.startswith("spool-error"), result
        assert profefe.upload_attempts == 0  # it could not remove them afterwards: it would send them every drain
        remount(disk, "rw")
        assert len(spool.entries()) == 2 and drops.calls == []
        again = spool.drain(sink_for(profefe).store)
        assert again.sent == 2 and profefe.count(type="heap") == 2


def test_every_drop_reason_is_a_metric_label() -> None:
    from kprofefe_tasks import metrics

    exported = {s.labels["reason"] for m in metrics.SPOOL_DROPPED.collect() for s in m.samples}
    assert exported >= set(DROP_REASONS)
