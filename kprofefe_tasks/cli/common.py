"""What every subcommand shares: kubectl's global flags, value parsers for flags, and the connections they open.

The global flags are declared on one parent parser whose defaults are ``SUPPRESS``, added to the top-level parser
and to every subcommand: so ``kubectl profefe -n web capture`` and ``kubectl profefe capture -n web`` both work,
and a flag after the subcommand wins over the same flag before it. :func:`finish_globals` fills the defaults.
Environment variables are read here and in :mod:`kprofefe_tasks.cli` only.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.io.kube import Kube, KubeOptions
from kprofefe_tasks.io.profefe import ProfefeClient

PROFEFE_URL_ENV = "KPROFEFE_PROFEFE_URL"
DEFAULT_PROFEFE_URL = "http://localhost:10100"  # kube-profefe's default for --profefe-hostport
DEFAULT_WINDOW = timedelta(hours=1)  # `get profiles` / `merge` without --from: the last hour
PROFEFE_CONNECT_TIMEOUT = 3.0  # s: profefe on a reachable network answers a connect at once
PROFEFE_READ_TIMEOUT = 60.0  # s: a merge over a long range is the slowest thing profefe does

#: global flags that take a value, for the scan that finds the subcommand before argparse runs
VALUE_FLAGS = frozenset(
    {
        "--kubeconfig",
        "--context",
        "--cluster",
        "--user",
        "--token",
        "--server",
        "-s",
        "-n",
        "--namespace",
        "-l",
        "--selector",
        "--request-timeout",
        "--profefe-hostport",
    }
)


class UsageError(Exception):
    """A flag value that parses but makes no sense with the others; reported like argparse's errors (exit 2)."""


# -- value parsers -------------------------------------------------------------------------------------------

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Go's duration syntax (``1h30m``, ``90s``, ``1.5h``) plus ``d`` and ``w``; seconds. A leading ``-`` is
    dropped (kube-profefe wrote "30 minutes ago" as ``-30m``). Raises ValueError."""
    raw = text.strip()
    body = raw[1:] if raw[:1] in ("-", "+") else raw
    if not body:
        raise ValueError(f"{text!r} is not a duration")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration (like 30s, 15m, 2h, 1d, 1h30m)")
        total += float(match[1]) * _UNIT_SECONDS[match[2]]
        pos = match.end()
    return total


def request_timeout(text: str) -> float | None:
    """kubectl's ``--request-timeout``: ``0`` means none, a bare number is seconds, else a duration."""
    raw = text.strip()
    try:
        seconds = float(raw) if re.fullmatch(r"\d+(\.\d*)?", raw) else parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid timeout {text!r}: use 0 (none), seconds, or a duration like 10s, 2m"
        ) from exc
    if raw.startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must not be negative")
    return seconds or None


@dataclass(frozen=True)
class TimeArg:
    """A ``--from``/``--to`` value: an instant, or a duration before "now" (resolved once per command)."""

    text: str
    ago: float | None = None
    at: datetime | None = None

    def resolve(self, now: datetime) -> datetime:
        if self.at is not None:
            return self.at
        return now - timedelta(seconds=self.ago or 0.0)


def time_arg(text: str) -> TimeArg:
    """``30m``/``-30m``/``2h``/``1d`` (that long ago), ``now``, RFC3339 (``2024-05-01T10:00:00Z``), or profefe's
    own ``2006-01-02T15:04:05`` and a plain date, both read as UTC."""
    raw = text.strip()
    if raw.lower() == "now":
        return TimeArg(raw, ago=0.0)
    try:
        return TimeArg(raw, ago=parse_duration(raw))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use a duration ago (30m, 2h, 1d), RFC3339 (2024-05-01T10:00:00Z) "
            "or 2024-05-01T10:00:00 (UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # profefe's format has no zone and means UTC
    return TimeArg(raw, at=moment.astimezone(UTC))


def time_range(since: TimeArg | None, until: TimeArg | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(from, to)``: both default to the hour before ``to`` (``to`` defaults to now)."""
    now = now or datetime.now(UTC)
    end = until.resolve(now) if until is not None else now
    start = since.resolve(now) if since is not None else end - DEFAULT_WINDOW
    if start > end:
        raise UsageError(
            f"--from ({start:%Y-%m-%dT%H:%M:%SZ}) is after --to ({end:%Y-%m-%dT%H:%M:%SZ}); "
            "durations mean 'that long ago', so --from 2h --to 1h is the hour before last"
        )
    return start, end


def label_arg(text: str) -> tuple[str, str]:
    """``key=value``; the value may contain ``=`` and ``,`` (they are escaped for profefe)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"invalid label {text!r}: expected key=value")
    return key.strip(), value


_TYPE_HINTS = {
    "allocs": "Go's allocs profile is stored as 'heap'",
    "profile": "the CPU profile is called 'cpu'",
    "goroutines": "did you mean 'goroutine'?",
}


def types_arg(text: str) -> tuple[str, ...]:
    """One ``-t`` value: a type or a comma list of them."""
    names = tuple(t for t in (p.strip() for p in text.split(",")) if t)
    if not names:
        raise argparse.ArgumentTypeError("empty profile type")
    for name in names:
        if name not in PROFILE_TYPES:
            hint = f" ({_TYPE_HINTS[name]})" if name in _TYPE_HINTS else ""
            raise argparse.ArgumentTypeError(
                f"unknown profile type {name!r}{hint}; choose from {', '.join(PROFILE_TYPES)}"
            )
    return names


def flatten_types(values: Sequence[tuple[str, ...]] | None) -> tuple[str, ...] | None:
    """Repeated ``-t`` values as one ordered tuple without repeats; None when no ``-t`` was given."""
    if not values:
        return None
    return tuple(dict.fromkeys(t for group in values for t in group))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def port_arg(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port {value} must be between 1 and 65535")
    return value


# -- global flags --------------------------------------------------------------------------------------------


def global_flags() -> argparse.ArgumentParser:
    """The parent parser holding kubectl's connection and scope flags, ``--profefe-hostport`` and ``-v``."""
    parent = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    kube = parent.add_argument_group("kubectl flags")
    kube.add_argument("--kubeconfig", default=S, metavar="PATH", help="path to the kubeconfig file")
    kube.add_argument("--context", default=S, help="the kubeconfig context to use")
    kube.add_argument("--cluster", default=S, help="the kubeconfig cluster to use")
    kube.add_argument("--user", default=S, help="the kubeconfig user to use")
    kube.add_argument("--token", default=S, help="bearer token for the API server")
    kube.add_argument("-s", "--server", default=S, help="address and port of the Kubernetes API server")
    kube.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        default=S,
        help="do not check the API server's certificate (insecure)",
    )
    kube.add_argument("-n", "--namespace", default=S, help="namespace scope (default: the kube context's namespace)")
    kube.add_argument("-A", "--all-namespaces", action="store_true", default=S, help="every namespace; wins over -n")
    kube.add_argument("-l", "--selector", default=S, help="label selector, e.g. -l app=api,tier!=db")
    kube.add_argument(
        "--request-timeout",
        type=request_timeout,
        default=S,
        metavar="DURATION",
        help="give up on one API server or profefe request after this long (1s, 2m; 0 = never, the default)",
    )
    parent.add_argument(
        "--profefe-hostport",
        default=S,
        metavar="URL",
        help=f"profefe's URL (env {PROFEFE_URL_ENV}; default {DEFAULT_PROFEFE_URL})",
    )
    parent.add_argument(
        "-v", "--verbose", action="store_true", default=S, help="log requests and show tracebacks of bugs"
    )
    return parent


GLOBAL_DEFAULTS: dict[str, object] = {
    "kubeconfig": None,
    "context": None,
    "cluster": None,
    "user": None,
    "token": None,
    "server": None,
    "insecure_skip_tls_verify": False,
    "namespace": None,
    "all_namespaces": False,
    "selector": "",
    "request_timeout": None,
    "verbose": False,
}


def finish_globals(args: argparse.Namespace, environ: dict[str, str] | None = None) -> None:
    """Fill unset global flags; records whether ``--profefe-hostport`` was given on the command line."""
    env = os.environ if environ is None else environ
    args.profefe_explicit = hasattr(args, "profefe_hostport")
    if not args.profefe_explicit:
        args.profefe_hostport = env.get(PROFEFE_URL_ENV, "").strip() or DEFAULT_PROFEFE_URL
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)


# -- connections ---------------------------------------------------------------------------------------------


def profefe_url(raw: str) -> str:
    """The flag is called host:port; accept ``profefe:10100`` as well as a URL."""
    value = raw.strip()
    return value if "://" in value else f"http://{value}"


def profefe_client(args: argparse.Namespace) -> ProfefeClient:
    return ProfefeClient(
        profefe_url(args.profefe_hostport),
        connect_timeout=PROFEFE_CONNECT_TIMEOUT,
        read_timeout=args.request_timeout or PROFEFE_READ_TIMEOUT,
    )


def kube_options(args: argparse.Namespace) -> KubeOptions:
    return KubeOptions(
        kubeconfig=args.kubeconfig,
        context=args.context,
        cluster=args.cluster,
        user=args.user,
        server=args.server,
        token=args.token,
        insecure_skip_tls_verify=bool(args.insecure_skip_tls_verify),
        request_timeout=args.request_timeout,
    )


def connect_kube(args: argparse.Namespace) -> Kube:
    return Kube.connect(kube_options(args))


def scope_namespace(args: argparse.Namespace, kube: Kube) -> str | None:
    """The namespace in scope: None for ``-A``, else ``-n``, else the kube context's namespace."""
    if args.all_namespaces:
        return None
    return str(args.namespace or kube.namespace)
