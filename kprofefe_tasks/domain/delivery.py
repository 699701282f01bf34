"""A captured profile on its way to storage: the record every sink and the spool understand."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


def capture_id_for(round_id: str, namespace: str, pod: str, ptype: str) -> str:
    """Unique per round, pod and type: the delivery ledger's key and the source of profefe's capture_id label."""
    return f"{round_id}/{namespace}/{pod}/{ptype}"


def digest_of(capture_id: str) -> str:
    """A short stable name for a capture, for file names and profefe's idempotency label."""
    return hashlib.sha1(capture_id.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Delivery:
    """One profile and where it belongs. ``capture_id`` is unique per round, pod and type."""

    capture_id: str
    service: str
    ptype: str
    namespace: str
    pod: str
    labels: tuple[tuple[str, str], ...]
    taken_at: float  # unix seconds
    body: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.capture_id)

    def meta(self) -> dict[str, Any]:
        return {
            "capture_id": self.capture_id,
            "service": self.service,
            "type": self.ptype,
            "namespace": self.namespace,
            "pod": self.pod,
            "labels": [list(kv) for kv in self.labels],
            "taken_at": self.taken_at,
            "bytes": len(self.body),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], body: bytes) -> Delivery:
        return cls(
            capture_id=str(meta["capture_id"]),
            service=str(meta["service"]),
            ptype=str(meta["type"]),
            namespace=str(meta.get("namespace", "")),
            pod=str(meta.get("pod", "")),
            labels=tuple((str(k), str(v)) for k, v in meta.get("labels", ())),
            taken_at=float(meta.get("taken_at", 0.0)),
            body=body,
        )
