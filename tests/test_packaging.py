"""The production wheel carries the product and nothing else: no test doubles, no demo, no tests.

The doubles and the demo are the separate ``kprofefe-sandbox`` distribution (``sandbox/``), installed by the
Makefile for tests, benchmarks and ``make demo``, never by the image (tests/test_image.py checks the image itself).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration  # builds a wheel: seconds, not milliseconds


def _wheel(source: Path, out: Path) -> list[str]:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
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
