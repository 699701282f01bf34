"""The README's promises that code can check: the settings table is generated, the commands exist."""

from __future__ import annotations

from pathlib import Path

from kprofefe_tasks.config.settings import markdown_table

ROOT = Path(__file__).parent.parent


def test_readme_configuration_table_is_the_generated_one() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    first_screen = readme[: readme.index("## How it works")]
    assert "make demo" in first_screen and "make test" in first_screen
    assert "make test" in ci
