"""Repository conventions that CI relies on."""

from __future__ import annotations

import ast
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


LOWER_LAYERS = ("models", "data", "kernels", "engine", "eval")
# Imports of vvk.methods from a lower layer that stay, each deferred to the call that needs it:
LAYERING_EXCEPTIONS = {
    "vvk/models/detectors/qmd.py": {"vvk.methods.vild.teacher"},  # the text teacher, on first use
}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_dependencies_point_one_way():
    """DESIGN: commands -> methods -> models, data, kernels, engine, eval; the library never
    imports vvk.commands (the CLI's entry point aside). Function-level imports count too."""
    methods, commands = {}, {}
    for path in sorted((ROOT / "vvk").rglob("*.py")):
        name, layer = path.relative_to(ROOT).as_posix(), path.relative_to(ROOT / "vvk").parts[0]
        imported = _imported_modules(path)
        up = {m for m in imported if m.startswith("vvk.methods")}
        if layer in LOWER_LAYERS and up:
            methods[name] = up
        cli = {m for m in imported if m.startswith("vvk.commands")}
        if layer not in ("commands", "cli.py") and cli:
            commands[name] = cli
    assert methods == LAYERING_EXCEPTIONS
    assert commands == {}
