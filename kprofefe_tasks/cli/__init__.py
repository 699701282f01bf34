"""``kubectl profefe`` (also ``kprofefe``): capture profiles from pods and browse what profefe stores.

Installed as ``kubectl-profefe`` on ``$PATH``, so ``kubectl profefe ...`` works like any kubectl plugin, with
kubectl's connection and scope flags before or after the subcommand. Subcommands: ``capture``, ``targets``,
``get profiles|services|profile-types|profile``, ``merge``, ``load``, ``demo``, ``version``. See ``USAGE.md``.

Invoked as ``kprofefe`` with arguments but no subcommand it behaves like kube-profefe's collector binary of that
name (``kprofefe -A --profefe-hostport URL`` = ``capture -A --push``), so old CronJob arguments keep working.

Failures are one line on stderr and a non-zero exit: 1 for runtime failures, 2 for bad flags, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from kprofefe_tasks import __version__
from kprofefe_tasks.cli import capture as capture_cmd
from kprofefe_tasks.cli import common, get, load, output
from kprofefe_tasks.cli import targets as targets_cmd
from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.domain.errors import ConfigError, KprofefeError
from kprofefe_tasks.io.profefe import PROFEFE_TYPES

COMMANDS = ("capture", "targets", "get", "merge", "load", "demo", "version")
TABLE_FORMATS = ("table", "wide", "json", "yaml")
LIST_FORMATS = ("table", "wide", "json", "yaml", "name")

Handler = Callable[[argparse.Namespace], int]


def _prog(argv0: str) -> str:
    name = os.path.basename(argv0)
    return "kprofefe" if name == "kprofefe" else "kubectl profefe"


def _output_flag(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    parser.add_argument("-o", "--output", choices=formats, default="table", help="output format (default: table)")


def _time_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="since",
        type=common.time_arg,
        metavar="TIME",
        help="start: a duration ago (30m, 2h, 1d), RFC3339, or 2006-01-02T15:04:05 (UTC); default: 1h before --to",
    )
    parser.add_argument(
        "--to", dest="until", type=common.time_arg, metavar="TIME", help="end (same forms); default: now"
    )
    parser.add_argument(
        "--label",
        dest="labels",
        type=common.label_arg,
        action="append",
        metavar="KEY=VALUE",
        help="only profiles with this label (repeatable)",
    )


def _types_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t",
        "--type",
        dest="types",
        type=common.types_arg,
        action="append",
        metavar="TYPE[,TYPE]",
        help=f"profile types, repeatable or comma-separated (default: the pod's profefe.com/types, else all: "
        f"{','.join(PROFILE_TYPES)})",
    )


def build_parser(prog: str = "kubectl profefe") -> argparse.ArgumentParser:
    parent = common.global_flags()
    parser = argparse.ArgumentParser(
        prog=prog,
        parents=[parent],
        description="Capture pprof profiles from Go pods on Kubernetes and browse them in profefe.",
        epilog=f"Use '{prog} COMMAND -h' for a command's flags. kubectl's global flags work before or after COMMAND.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[parent], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    cap = command("capture", capture_cmd.run, "capture profiles from pods now, into files or profefe")
    cap.add_argument(
        "pods", nargs="*", metavar="POD", help="pod names (or a,b,c); default: every annotated pod in scope"
    )
    _types_flag(cap)
    cap.add_argument(
        "--seconds", type=common.positive_int, default=30, help="CPU profile window in seconds (default: 30)"
    )
    cap.add_argument(
        "--output-dir",
        default=capture_cmd.DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help="write <DIR>/<namespace>/profile-<type>-<pod>-<unix seconds>.pb.gz (default: /tmp)",
    )
    cap.add_argument(
        "--push", action="store_true", help="upload to profefe instead of writing files (implied by --profefe-hostport)"
    )
    cap.add_argument(
        "--direct",
        action="store_true",
        help="dial the pod IP instead of going through the API server's pods/proxy (from inside the cluster)",
    )
    cap.add_argument(
        "--parallel",
        type=common.positive_int,
        default=capture_cmd.DEFAULT_PARALLEL,
        help=f"captures in flight at once (default: {capture_cmd.DEFAULT_PARALLEL})",
    )
    cap.add_argument("--port", type=common.port_arg, help="pprof port, overriding profefe.com/port (default 6060)")
    cap.add_argument(
        "--via-queue",
        action="store_true",
        help="hand the round to the Celery workers (KPROFEFE_BROKER_URL) and follow its progress",
    )
    _output_flag(cap, TABLE_FORMATS)

    tgt = command("targets", targets_cmd.run, "dry run: which pods capture would take, how, or why not")
    tgt.add_argument("pods", nargs="*", metavar="POD", help="pod names (or a,b,c)")
    _types_flag(tgt)
    tgt.add_argument("--port", type=common.port_arg, help="pprof port, overriding profefe.com/port")
    _output_flag(tgt, TABLE_FORMATS)

    get_p = sub.add_parser("get", parents=[parent], help="list profiles, services or types; download a profile")
    get_sub = get_p.add_subparsers(dest="resource", metavar="RESOURCE", required=True)

    def resource(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = get_sub.add_parser(name, parents=[parent], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    profiles = resource("profiles", get.run_profiles, "list stored profiles of a service")
    profiles.add_argument("--service", required=True, help="the service (profefe requires it)")
    profiles.add_argument(
        "--type", "--profile-type", dest="type", choices=PROFEFE_TYPES, help="only this type (default: all)"
    )
    _time_flags(profiles)
    profiles.add_argument("--limit", type=common.positive_int, help="at most this many (the newest)")
    _output_flag(profiles, LIST_FORMATS)
    services = resource("services", get.run_services, "list the services profefe knows")
    _output_flag(services, LIST_FORMATS)
    ptypes = resource("profile-types", get.run_profile_types, "list profefe's profile types")
    _output_flag(ptypes, LIST_FORMATS)
    one = resource("profile", get.run_profile, "download one stored profile (id1+id2 merges them)")
    one.add_argument("id", metavar="ID", help="profile id, or profile/ID as printed by -o name")
    one.add_argument(
        "-O", "--output-file", metavar="FILE", help="where to write it (default: <id>.pb.gz; '-' = stdout)"
    )

    merge = command("merge", get.run_merge, "download the merge of a service's profiles of one type")
    merge.add_argument("--service", required=True)
    merge.add_argument("--type", "--profile-type", dest="type", required=True, choices=PROFILE_TYPES)
    _time_flags(merge)
    merge.add_argument(
        "-O", "--output-file", metavar="FILE", help="where to write it (default: <service>-<type>-merged.pb.gz)"
    )

    ld = command("load", load.run, "upload local pprof files to profefe")
    ld.add_argument("files", nargs="+", metavar="FILE")
    ld.add_argument("--service", required=True)
    ld.add_argument(
        "--type", "--profile-type", dest="type", choices=PROFILE_TYPES, help="default: read from the profile itself"
    )
    ld.add_argument("--label", dest="labels", type=common.label_arg, action="append", metavar="KEY=VALUE")
    _output_flag(ld, LIST_FORMATS)

    # The real parsing of `demo` happens in kprofefe_sandbox.demo; this entry is for --help and the command list.
    sub.add_parser("demo", help="run the whole pipeline on a local sandbox cluster (demo --help for its flags)")

    ver = command("version", run_version, "print the client and profefe versions")
    ver.add_argument("--client", action="store_true", help="the client version only; do not ask profefe")
    ver.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    return parser


def run_version(args: argparse.Namespace) -> int:
    """``-o json|yaml`` shape: ``{"clientVersion": str, "profefe": {"url": str, "version": {...}}}``
    (``profefe`` absent with ``--client``)."""
    data: dict[str, object] = {"clientVersion": __version__}
    if args.output == "table":
        print(f"Client Version: {__version__}", flush=True)
    if not args.client:
        client = common.profefe_client(args)
        info = client.version()  # unreachable: the client line is out already, as with kubectl version
        data["profefe"] = {"url": client.base_url, "version": info}
        if args.output == "table":
            described = ", ".join(f"{k}={v}" for k, v in info.items() if v) or "unknown"
            print(f"Profefe: {client.base_url} ({described})")
    if args.output != "table":
        sys.stdout.write(output.dump(data, args.output))
    return 0


# -- argv handling before argparse ---------------------------------------------------------------------------


def command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is: the first word that is neither a global flag nor a global flag's value."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("-") and token != "-":
            i += 2 if token in common.VALUE_FLAGS else 1
            continue
        return i
    return None


def _join_negative_times(argv: list[str]) -> list[str]:
    """``--from -30m`` (kube-profefe's form) as ``--from=-30m``: argparse would take ``-30m`` for a flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("--from", "--to") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            try:
                common.parse_duration(argv[i + 1])
            except ValueError:
                pass
            else:
                out.append(f"{token}={argv[i + 1]}")
                i += 2
                continue
        out.append(token)
        i += 1
    return out


def _run_demo(rest: list[str]) -> int:
    # The demo and its doubles are a separate distribution that the production image does not install.
    try:
        from kprofefe_sandbox import demo
    except ImportError:
        print(
            "kprofefe demo needs the sandbox distribution, which production installs leave out: "
            "pip install ./sandbox (from a clone of kprofefe-tasks), or run `make demo`",
            file=sys.stderr,
        )
        return 2
    return int(demo.main(rest) or 0)


# -- errors --------------------------------------------------------------------------------------------------


def describe_error(exc: KprofefeError, args: argparse.Namespace | None) -> str:
    """One line a person can act on."""
    reason = exc.reason
    if reason in ("profefe-unreachable", "profefe-timeout"):
        url = common.profefe_url(args.profefe_hostport) if args is not None else "?"
        return f"cannot reach profefe at {url} ({exc.message}); set --profefe-hostport or ${common.PROFEFE_URL_ENV}"
    if reason == "kube-forbidden":
        return f"Error from server (Forbidden): {exc.message}"
    if reason == "kube-unauthorized":
        return f"Error from server (Unauthorized): {exc.message}; check the kubeconfig's credentials or --token"
    if reason == "kube-unreachable":
        return f"cannot reach the Kubernetes API server: {exc.message}"
    return exc.message


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if verbose:
        if not any(getattr(h, "_kprofefe_cli", False) for h in root.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler._kprofefe_cli = True  # type: ignore[attr-defined]
            root.addHandler(handler)
        root.setLevel(logging.DEBUG)
    elif not root.handlers:
        # Without a handler, Python prints library warnings (urllib3 retries, pool sizes) on stderr through its
        # last-resort handler; the CLI reports outcomes itself, one line each.
        root.addHandler(logging.NullHandler())


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the CLI; returns the exit status (never raises SystemExit, never prints a traceback unless -v)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    prog = prog or _prog(sys.argv[0] if sys.argv else "kubectl-profefe")
    at = command_index(args_list)
    demo_args = args_list[at + 1 :] if at is not None and args_list[at] == "demo" else None
    if (
        prog == "kprofefe"
        and args_list
        and (at is None or args_list[at] not in COMMANDS)
        and not {"-h", "--help"} & set(args_list)
    ):
        # kube-profefe's collector: its flags and pod names are all capture's (globals work after it too)
        args_list = ["capture", "--push", *args_list]
    args_list = _join_negative_times(args_list)
    parser = build_parser(prog)
    args: argparse.Namespace | None = None
    try:
        if demo_args is not None:
            # everything after `demo` is the demo's own (argparse.REMAINDER cannot take leading flags)
            return _run_demo(demo_args)
        args = parser.parse_args(args_list)
        common.finish_globals(args)
        _setup_logging(args.verbose)
        handler: Handler = args.handler
        return handler(args)
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except common.UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KprofefeError as exc:
        print(f"error: {describe_error(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `... | head`: the reader left; stop writing, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args is not None and args.verbose:
            traceback.print_exc()
        print(
            f"error: unexpected {exc.__class__.__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


__all__ = ["build_parser", "main"]
