"""``kubectl profefe load FILE...``: upload local pprof files to profefe.

The type comes from ``--type`` or from the profile itself (:func:`kprofefe_tasks.io.pprof.detect_type`: sample
types, and for block vs mutex the leaf frames), which kube-profefe got wrong for heap, block and mutex files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kprofefe_tasks.cli import common, output
from kprofefe_tasks.domain.errors import KprofefeError, SkipError, TemporaryError
from kprofefe_tasks.io import pprof


@dataclass(frozen=True)
class Loaded:
    """One file's fate: stored (``id``), ``empty`` (no samples, profefe stores nothing) or ``failed``."""

    file: str
    type: str
    size: int
    outcome: str
    id: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "type": self.type,
            "bytes": self.size,
            "outcome": self.outcome,
            "id": self.id,
            "detail": self.detail,
        }


def render(items: Sequence[Loaded], fmt: str) -> str:
    """``load`` output.

    ``-o json`` / ``-o yaml`` shape: ``{"items": [{"file", "type", "bytes", "outcome", "id", "detail"}]}``
    with ``outcome`` one of ``stored``, ``empty``, ``failed``. ``-o name``: ``profile/<id>`` per stored file.
    Table: ``FILE TYPE SIZE ID`` (the error instead of the id for a file that was not stored).
    """
    if fmt in ("json", "yaml"):
        return output.dump({"items": [i.to_json() for i in items]}, fmt)
    if fmt == "name":
        return "".join(f"profile/{i.id}\n" for i in items if i.id)
    rows = [[i.file, i.type or "-", output.human_size(i.size), i.id or f"<{i.outcome}: {i.detail}>"] for i in items]
    return output.table(["FILE", "TYPE", "SIZE", "ID"], rows)


def load_one(path: str, args: argparse.Namespace, upload: Any) -> Loaded:
    try:
        body = Path(path).read_bytes()
    except OSError as exc:
        return Loaded(path, args.type or "", 0, "failed", detail=exc.strerror or str(exc))
    try:
        info = pprof.inspect(body)
    except pprof.PprofError as exc:
        return Loaded(path, args.type or "", len(body), "failed", detail=f"not a pprof profile ({exc.reason})")
    ptype = args.type
    candidates = pprof.candidate_types(info)
    if ptype is None:
        ptype = pprof.detect_type(info)
        if ptype is None:
            detail = "cannot tell the profile type from the file; pass --type"
            if candidates:
                detail = f"cannot tell {' from '.join(sorted(candidates))} (no samples); pass --type"
            return Loaded(path, "", len(body), "failed", detail=detail)
    elif candidates and ptype not in candidates:
        print(
            f"warning: {path} looks like a {'/'.join(sorted(candidates))} profile, stored as {ptype} as asked",
            file=sys.stderr,
        )
    try:
        stored = upload(body, ptype)
    except SkipError as exc:
        return Loaded(path, ptype, len(body), "empty", detail=exc.message)
    except TemporaryError:
        raise  # profefe down: the same for every file, reported once by main
    except KprofefeError as exc:
        return Loaded(path, ptype, len(body), "failed", detail=exc.message)
    return Loaded(path, ptype, len(body), "stored", id=stored.id)


def run(args: argparse.Namespace) -> int:
    client = common.profefe_client(args)
    labels = dict(args.labels or ())

    def upload(body: bytes, ptype: str) -> Any:
        return client.upload(body, service=args.service, ptype=ptype, labels=labels)

    items = [load_one(path, args, upload) for path in args.files]
    sys.stdout.write(render(items, args.output))
    for item in items:
        if item.outcome == "empty":
            print(f"note: {item.file} has no samples; profefe stores nothing for it", file=sys.stderr)
    return 1 if any(i.outcome == "failed" for i in items) else 0
