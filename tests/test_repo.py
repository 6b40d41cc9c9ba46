"""Repository conventions that CI relies on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(
        r"## Set up\n.*?```bash\n(.*?)\n```.*?```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S
    )
    assert blocks, "README's Set up section must hold the two commands as bash blocks"
    return list(blocks[0])


def test_readme_has_exactly_two_setup_commands():
    main_job, tests = readme_commands()
    assert main_job.startswith("pip install -e . && vvk ")
    assert tests.startswith("pip install -e '.[test]' && pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_top_level_layout():
    for path in (
        "pyproject.toml",
        "vvk",
        "vvk/commands",
        "vvk/kernels",
        "weights.toml",
        "tests",
        "CHANGELOG.md",
        "README.md",
        ".ci/run",
        "benchmarks",
        "docs",
    ):
        assert (ROOT / path).exists(), path


def test_changelog_keeps_a_changelog_format():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text and "keepachangelog.com" in text
