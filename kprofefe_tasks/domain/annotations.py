"""Pod annotations → settings, or a reason not to profile the pod. Pure functions, no network.

Compatible with kube-profefe's keys, without its bugs: an invalid port is a reason to skip (never a silent 6060),
the path annotation is honoured, and two new keys choose the types and the container.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kprofefe_tasks.config.settings import PROFILE_TYPES

PREFIX = "profefe.com/"
ENABLE = PREFIX + "enable"
PORT = PREFIX + "port"
PATH = PREFIX + "path"
SERVICE = PREFIX + "service"
TYPES = PREFIX + "types"
CONTAINER = PREFIX + "container"

DEFAULT_PORT = 6060  # Go's conventional pprof port, kube-profefe's default
DEFAULT_PATH = "/debug/pprof"
MAX_PATH_CHARS = 256  # a longer base path is a mistake or an attack, not a pprof mount point
MAX_SERVICE_CHARS = 253  # a DNS name's length; profefe stores service names in keys

# Only characters a real mount point uses: no `..`, no `?`/`#`, no `%` escapes, no host.
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)*/?$")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")  # an IANA_SVC_NAME, as in containerPort.name


@dataclass(frozen=True)
class Invalid:
    """The pod asked to be profiled, but an annotation is unusable: ``reason`` is a metric label."""

    reason: str
    detail: str


def enabled(annotations: Mapping[str, str]) -> Invalid | bool:
    """True only for exactly ``"true"``, like kube-profefe; a near miss is reported, not silently ignored."""
    value = annotations.get(ENABLE)
    if value is None:
        return False
    if value == "true":
        return True
    if value.strip().lower() in ("true", "yes", "1", "on"):
        return Invalid("bad-enable", f'{ENABLE}={value!r}: only the exact value "true" enables profiling')
    return False


def port(annotations: Mapping[str, str], named_ports: Mapping[str, int]) -> Invalid | int:
    """The pprof port: a number 1..65535, or the name of a container port. Default 6060."""
    raw = annotations.get(PORT)
    if raw is None:
        return DEFAULT_PORT
    value = raw.strip()  # surrounding blanks are a YAML slip, not ambiguity
    if value.isdigit() and value.isascii():
        number = int(value)
        if 1 <= number <= 65535:
            return number
        return Invalid("bad-port", f"{PORT}={raw!r}: port must be between 1 and 65535")
    if _PORT_NAME_RE.match(value):
        if value in named_ports:
            return named_ports[value]
        return Invalid("bad-port", f"{PORT}={raw!r}: no container port is named {value!r}")
    return Invalid("bad-port", f"{PORT}={raw[:40]!r}: not a port number or a container port name")


def path(annotations: Mapping[str, str]) -> Invalid | str:
    """The pprof base path, e.g. ``/debug/pprof``; only a plain absolute path is accepted (never a URL)."""
    raw = annotations.get(PATH)
    if raw is None:
        return DEFAULT_PATH
    return check_path(raw.strip())


def check_path(value: str, what: str = PATH) -> Invalid | str:
    """The plain-absolute-path rule, for the annotation and for a target read off the queue (``what`` says which)."""
    if len(value) > MAX_PATH_CHARS:
        return Invalid("bad-path", f"{what} is {len(value)} characters long; the limit is {MAX_PATH_CHARS}")
    if not _PATH_RE.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/" or not value:
        return Invalid(
            "bad-path",
            f"{what}={value[:60]!r}: must be an absolute path like /debug/pprof (no host, scheme, query or '..')",
        )
    return value.rstrip("/") or "/"


def service(annotations: Mapping[str, str]) -> Invalid | str | None:
    """The service annotation, or None when absent. Any printable text is kept as is (profefe accepts it)."""
    raw = annotations.get(SERVICE)
    if raw is None:
        return None
    return check_service(raw.strip())


def check_service(value: str, what: str = SERVICE) -> Invalid | str:
    """The service-name rule, for the annotation and for a target read off the queue."""
    if not value:
        return Invalid("bad-service", f"{what} is empty")
    if len(value) > MAX_SERVICE_CHARS:
        return Invalid("bad-service", f"{what} is {len(value)} characters; the limit is {MAX_SERVICE_CHARS}")
    if not value.isprintable():
        return Invalid("bad-service", f"{what}={value[:40]!r}: contains control characters")
    return value


def types(annotations: Mapping[str, str], default: Sequence[str]) -> Invalid | tuple[str, ...]:
    """The pod's profile types (comma or space separated profefe names); the default when absent."""
    raw = annotations.get(TYPES)
    if raw is None:
        return tuple(default)
    names = [t for t in re.split(r"[\s,]+", raw.strip()) if t]
    unknown = [t for t in names if t not in PROFILE_TYPES]
    if unknown:
        hint = (
            " ('allocs' is stored as 'heap'; the CPU profile is 'cpu')" if {"allocs", "profile"} & set(unknown) else ""
        )
        return Invalid(
            "bad-types",
            f"{TYPES}: unknown {', '.join(repr(u[:20]) for u in unknown[:5])}; choose from "
            f"{', '.join(PROFILE_TYPES)}{hint}",
        )
    if not names:
        return Invalid("bad-types", f"{TYPES} is empty")
    return tuple(dict.fromkeys(names))  # keep order, drop repeats
