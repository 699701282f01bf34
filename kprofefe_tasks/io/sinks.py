"""Where profiles are stored: profefe (with retries and the cluster-wide rate limit) or a local directory."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from kprofefe_tasks.coordination import TokenBucket
from kprofefe_tasks.domain.backoff import backoff
from kprofefe_tasks.domain.delivery import Delivery, digest_of
from kprofefe_tasks.domain.errors import KprofefeError, TemporaryError
from kprofefe_tasks.io.profefe import ProfefeClient

log = logging.getLogger(__name__)

CAPTURE_LABEL = "capture_id"
SEARCH_SINCE = datetime(
    2000, 1, 1, tzinfo=UTC
)  # before any profile's own timestamp  # lets a redelivered task ask profefe whether its profile already landed


class Sink(Protocol):
    name: str

    def store(self, delivery: Delivery) -> str:
        """Store the profile; returns where it went (a profefe id, a path). Raises classified errors."""
        ...


def safe_filename_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:200]


class DirectorySink:
    """kube-profefe's file layout: ``<dir>/<namespace>/profile-<type>-<pod>-<unix seconds>.pb.gz``."""

    name = "directory"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_for(self, delivery: Delivery) -> Path:
        folder = self.directory / safe_filename_part(delivery.namespace or "_")
        stem = f"profile-{delivery.ptype}-{safe_filename_part(delivery.pod)}-{int(delivery.taken_at)}"
        return folder / f"{stem}.pb.gz"

    def store(self, delivery: Delivery) -> str:
        path = self.path_for(delivery)
        path.parent.mkdir(parents=True, exist_ok=True)
        counter = 1
        while True:
            try:
                # O_EXCL: two captures of one pod and type in the same second must not overwrite each other
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                counter += 1
                path = path.with_name(f"{self.path_for(delivery).name[:-6]}-{counter}.pb.gz")
        with os.fdopen(fd, "wb") as fh:
            fh.write(delivery.body)
        return str(path)


class ProfefeSink:
    """Upload with bounded retries; waits on the shared token bucket before every attempt."""

    name = "profefe"

    def __init__(
        self,
        client: ProfefeClient,
        *,
        bucket: TokenBucket | None,
        attempts: int,
        backoff_base: float,
        backoff_max: float,
        on_retry: Callable[[str], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wait_max: float = 60.0,
    ) -> None:
        self.wait_max = wait_max
        self.client = client
        self.bucket = bucket
        self.attempts = max(1, attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_retry = on_retry
        self.on_wait = on_wait
        self.sleep = sleep

    def _take_token(self) -> None:
        """Wait for the shared rate limit, at most ``wait_max`` seconds; past it the caller spools the profile."""
        if self.bucket is None:
            return
        waited = 0.0
        try:
            while True:
                delay = self.bucket.wait_time()
                if delay <= 0:
                    return
                if waited + delay > self.wait_max:
                    raise TemporaryError(
                        f"no upload slot within {self.wait_max:g}s (rate limit {self.bucket.rate:g}/s)",
                        reason="rate-limited",
                    )
                self.sleep(delay)
                waited += delay
        finally:
            if waited and self.on_wait is not None:
                self.on_wait(waited)

    def store(self, delivery: Delivery) -> str:
        labels = (*delivery.labels, (CAPTURE_LABEL, delivery.digest))
        created = datetime.fromtimestamp(delivery.taken_at, UTC) if delivery.taken_at else None
        last: TemporaryError | None = None
        for attempt in range(self.attempts):
            self._take_token()
            try:
                stored = self.client.upload(
                    delivery.body, service=delivery.service, ptype=delivery.ptype, labels=labels, created_at=created
                )
                return stored.id
            except TemporaryError as exc:
                last = exc
                if exc.reason == "profefe-timeout":
                    # profefe may still store the request we stopped waiting for: give it one more read timeout,
                    # then look for this capture's label before sending it again (profefe has no idempotent upload)
                    self.sleep(self.client.timeout[1])
                    try:
                        stored_id = self.already_stored(delivery.service, delivery.ptype, delivery.capture_id)
                    except KprofefeError:
                        stored_id = None
                    if stored_id:
                        return stored_id
                if attempt + 1 >= self.attempts:
                    break
                delay = (
                    0.0
                    if exc.reason == "profefe-timeout"
                    else backoff(attempt, self.backoff_base, self.backoff_max, exc.delay)
                )
                log.warning(
                    "upload of %s/%s %s failed (attempt %d/%d), retrying in %.1fs: %s",
                    delivery.namespace,
                    delivery.pod,
                    delivery.ptype,
                    attempt + 1,
                    self.attempts,
                    delay,
                    exc,
                )
                if self.on_retry is not None:
                    self.on_retry(exc.reason)
                self.sleep(delay)
        assert last is not None
        raise last

    def already_stored(self, service: str, ptype: str, capture_id: str) -> str | None:
        """The id of this capture's profile if an earlier send already stored it (a worker died after the upload,
        or an upload timed out on our side but profefe finished it), else None.

        profefe dates a profile by its own ``time_nanos``, which is the target's clock, not ours; the window is
        therefore wide, and the ``capture_id`` label makes the match exact. It is asked only on redelivery and after
        an upload timeout, never on the normal path.
        """
        found = self.client.find(
            service=service,
            ptype=ptype,
            since=SEARCH_SINCE,
            until=datetime.fromtimestamp(time.time() + 86400, UTC),
            labels={CAPTURE_LABEL: digest_of(capture_id)},
            limit=1,
        )
        return found[0].id if found else None
