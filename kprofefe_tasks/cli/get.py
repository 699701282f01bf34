"""``kubectl profefe get ...`` and ``merge``: read what profefe stores, kubectl-style, and download profiles.

Every call goes through :class:`kprofefe_tasks.io.profefe.ProfefeClient`; "nothing found" is an empty list there,
printed here as kubectl prints an empty ``get`` (a note on stderr, exit 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kprofefe_tasks.cli import common, output
from kprofefe_tasks.domain.errors import SkipError
from kprofefe_tasks.io.profefe import PROFEFE_TYPES, StoredProfile
from kprofefe_tasks.io.sinks import safe_filename_part

#: labels shown first in the short LABELS column: the ones a person filters on
SHORT_LABEL_KEYS = ("namespace", "pod", "container", "version")
SHORT_LABEL_COUNT = 2  # more would push the table past a terminal's width


def short_labels(labels: dict[str, str]) -> str:
    """``namespace=web,pod=api-1,+4``: the most useful two labels and how many more there are."""
    if not labels:
        return "<none>"
    keys = [k for k in SHORT_LABEL_KEYS if k in labels] + sorted(k for k in labels if k not in SHORT_LABEL_KEYS)
    shown = [f"{k}={labels[k]}" for k in keys[:SHORT_LABEL_COUNT]]
    rest = len(keys) - len(shown)
    return ",".join(shown) + (f",+{rest}" if rest else "")


def all_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def render_profiles(profiles: Sequence[StoredProfile], fmt: str, now: datetime | None = None) -> str:
    """``get profiles`` output.

    ``-o json`` / ``-o yaml`` shape (profefe's order, oldest first)::

        {"items": [{"id": str, "service": str, "type": str, "created_at": RFC3339 str,
                    "labels": {str: str}}]}

    ``-o name``: ``profile/<id>`` per line (``get profile`` accepts that form). Table: ``ID SERVICE TYPE CREATED
    AGE LABELS`` with the labels shortened; ``wide`` shows every label.
    """
    if fmt in ("json", "yaml"):
        return output.dump({"items": [p.to_dict() for p in profiles]}, fmt)
    if fmt == "name":
        return "".join(f"profile/{p.id}\n" for p in profiles)
    now = now or datetime.now(UTC)
    labels = all_labels if fmt == "wide" else short_labels
    rows = [
        [p.id, p.service, p.type, p.created_at, output.age_of(p.created_at, now), labels(p.labels)] for p in profiles
    ]
    return output.table(["ID", "SERVICE", "TYPE", "CREATED", "AGE", "LABELS"], rows)


def render_names(kind: str, names: Sequence[str], fmt: str) -> str:
    """``get services`` / ``get profile-types``: ``{"items": [str]}`` in json/yaml, ``<kind>/<name>`` for -o name,
    else a one-column table."""
    if fmt in ("json", "yaml"):
        return output.dump({"items": list(names)}, fmt)
    if fmt == "name":
        return "".join(f"{kind}/{n}\n" for n in names)
    return output.table([kind.upper()], [[n] for n in names])


def run_profiles(args: argparse.Namespace) -> int:
    since, until = common.time_range(args.since, args.until)
    client = common.profefe_client(args)
    profiles = client.find(
        service=args.service,
        since=since,
        until=until,
        ptype=args.type,
        labels=dict(args.labels or ()),
        limit=args.limit,
    )
    if not profiles and args.output not in ("json", "yaml"):
        print(
            f"No profiles found for service {args.service!r} between {since:%Y-%m-%dT%H:%M:%SZ} and "
            f"{until:%Y-%m-%dT%H:%M:%SZ}.",
            file=sys.stderr,
        )
        return 0
    sys.stdout.write(render_profiles(profiles, args.output))
    return 0


def run_services(args: argparse.Namespace) -> int:
    services = common.profefe_client(args).services()
    if not services and args.output not in ("json", "yaml"):
        print("No services found.", file=sys.stderr)
        return 0
    sys.stdout.write(render_names("service", services, args.output))
    return 0


def run_profile_types(args: argparse.Namespace) -> int:
    # profefe has no endpoint for this: its type list is fixed (kube-profefe printed it the same way)
    sys.stdout.write(render_names("type", PROFEFE_TYPES, args.output))
    return 0


def write_output(data: bytes, target: str) -> str:
    """Write ``data`` to ``target`` (``-`` = stdout); returns where it went, for the note on stderr."""
    if target == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return "stdout"
    path = Path(target)
    path.write_bytes(data)
    return str(path)


def _output_path(given: str | None, default_name: str) -> str:
    if given is None:
        return default_name
    if given != "-" and Path(given).is_dir():
        return str(Path(given) / default_name)
    return given


def run_profile(args: argparse.Namespace) -> int:
    profile_id = args.id.removeprefix("profile/")
    client = common.profefe_client(args)
    try:
        data = client.get(profile_id)
    except SkipError:
        print(f'error: profile "{profile_id}" not found', file=sys.stderr)
        return 1
    where = write_output(data, _output_path(args.output_file, f"{safe_filename_part(profile_id)}.pb.gz"))
    print(f"wrote {len(data)} bytes to {where}; open it with: go tool pprof {where}", file=sys.stderr)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    since, until = common.time_range(args.since, args.until)
    client = common.profefe_client(args)
    try:
        data = client.merge(
            service=args.service, ptype=args.type, since=since, until=until, labels=dict(args.labels or ())
        )
    except SkipError:
        print(
            f"error: no {args.type} profiles of service {args.service!r} between {since:%Y-%m-%dT%H:%M:%SZ} and "
            f"{until:%Y-%m-%dT%H:%M:%SZ} to merge",
            file=sys.stderr,
        )
        return 1
    default = f"{safe_filename_part(args.service)}-{args.type}-merged.pb.gz"
    where = write_output(data, _output_path(args.output_file, default))
    print(f"wrote {len(data)} bytes to {where}; open it with: go tool pprof {where}", file=sys.stderr)
    return 0
