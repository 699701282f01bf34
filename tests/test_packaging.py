"""The production wheel carries the product and nothing else: no test doubles, no demo, no tests.

The doubles and the demo are the separate ``kprofefe-sandbox`` distribution (``sandbox/``), installed by the
Makefile for tests, benchmarks and ``make demo``, never by the image (tests/test_image.py checks the image itself).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration  # builds a wheel: seconds, not milliseconds


def _wheel(source: Path, out: Path) -> list[str]:
    # build from a copy of the tracked files: setuptools leaves build/ behind, and a stale build/lib from an earlier
    # layout would land in the wheel, or in this checkout
    tracked = (
        subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=source, check=True, capture_output=True, timeout=60)
        .stdout.decode()
        .split("\0")
    )
    copy = out / "src"
    for name in filter(None, tracked):
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    source = copy
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")  # only the one just built: the copy lives under out/src
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_production_wheel_holds_no_test_doubles(tmp_path: Path) -> None:
    names = _wheel(ROOT, tmp_path)
    modules = [n for n in names if n.endswith(".py")]
    assert "kprofefe_tasks/tasks.py" in modules
    assert "kprofefe_tasks/pipeline/capture.py" in modules
    assert "beat_schedule.py" in modules
    doubles = [n for n in names if "sandbox" in n or "demo" in n or n.startswith("tests/") or n.endswith(".go")]
    assert doubles == []
    assert not [n for n in names if n.endswith(".pb.gz")]  # recorded payloads belong to the doubles


def test_the_sandbox_distribution_holds_the_doubles_and_the_demo(tmp_path: Path) -> None:
    names = _wheel(ROOT / "sandbox", tmp_path)
    for module in ("kubeapi", "profefe", "farm", "gotarget", "processes", "demo"):
        assert f"kprofefe_sandbox/{module}.py" in names
    assert "kprofefe_sandbox/gotarget/main.go" in names or any(n.endswith(".go") for n in names)
    assert not [n for n in names if n.startswith("kprofefe_tasks/")]
