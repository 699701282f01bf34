"""A real, small tmpfs for tests of a full or read-only disk: mounted for the test, unmounted in its teardown.

Mounting needs root (or CAP_SYS_ADMIN). Where it is not permitted the test is skipped with the reason, except on
CI (``CI=true``), where a skipped disk-full test would hide the very failure it exists to catch.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size_bytes: int) -> Iterator[Path]:
    """``directory`` as a tmpfs of ``size_bytes`` (a multiple of the 4 KiB page) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(directory))
    if done.returncode != 0:
        why = f"mounting a tmpfs is not permitted here: {done.stderr.strip() or done.returncode}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield directory
    finally:
        _run("mount", "-o", "remount,rw", str(directory))
        left = _run("umount", str(directory))
        if left.returncode != 0:  # something still has a file open: lazy, so the test run is not left with a mount
            _run("umount", "-l", str(directory))


def remount(directory: Path, mode: str) -> None:
    """``ro`` or ``rw``: the same tmpfs, its files kept, made read-only or writable again."""
    done = _run("mount", "-o", f"remount,{mode}", str(directory))
    assert done.returncode == 0, done.stderr


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def fill(directory: Path, leave: int, name: str = "filler") -> Path:
    """Write a file that leaves exactly ``leave`` bytes (page multiples) free on the filesystem."""
    path = directory / name
    with open(path, "ab") as fh:
        fh.write(b"\0" * max(0, free_bytes(directory) - leave))
    assert free_bytes(directory) == leave, (free_bytes(directory), leave)
    return path
