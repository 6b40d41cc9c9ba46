"""The CLI contract every command inherits: help without torch, one-line errors, JSON lines, stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import typer

import vvk
from vvk.cli import EXIT_INTERNAL, app
from vvk.errors import VvkError
from vvk.testing import run_vvk


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command path, e.g. ('weights', 'pull'), walked from the Typer app."""
    paths = []

    def walk(cmd: click.Command, prefix: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*prefix, name))
        else:
            paths.append(prefix)

    walk(typer.main.get_command(app), ())
    return paths


# Bad input for every command: (argv, text the one-line error must contain). A test below fails
# when a command is added without an entry here.
BAD_INPUT: dict[tuple[str, ...], list[tuple[list[str], str]]] = {
    ("info",): [(["info", "--jsn"], "No such option")],
    ("models", "list"): [
        (["models", "list", "--task"], "requires an argument"),
        (["models", "list", "--flops=yes"], "does not take a value"),
    ],
    ("weights", "list"): [(["weights", "list", "--task", "nope"], "Invalid value for '--task'")],
    ("weights", "info"): [(["weights", "info", "clip-vit-b-32.opena"], "did you mean clip-vit-b-32.openai")],
    ("weights", "pull"): [(["weights", "pull"], "Missing argument")],
    ("weights", "verify"): [
        (["weights", "verify", "/no/such/file.safetensors"], "neither a registry name nor a file")
    ],
    ("augment", "copy-paste"): [
        (["augment", "copy-paste", "/no/such/coco", "/no/such/out"], "/no/such/coco: no such file or folder"),
        (["augment", "copy-paste", "in", "out", "--scale-jitter", "big"], "--scale-jitter: expected MIN,MAX"),
        (["augment", "copy-paste", "in", "out", "--copies", "0"], "Invalid value for '--copies'"),
    ],
    ("data", "check"): [
        (["data", "check", "/no/such/videos"], "no such folder or file"),
        (["data", "check", ".", "--decoder", "ffmpeg"], "Invalid value for '--decoder'"),
    ],
    ("data", "index"): [
        (["data", "index", "/no/such/list.csv"], "no such folder or file"),
        (["data", "index", ".", "--out", "./index.json"], "never writes into its input"),
    ],
    ("eval", "retrieval"): [
        (["eval", "retrieval", "--data", "/no/such", "--backbone", "r3d-tiny"], "/no/such: no such folder"),
        (["eval", "retrieval", "--data", ".", "--backbone", "r3d-tny"], "did you mean r3d-tiny"),
        (["eval", "retrieval", "--data", ".", "--repeats", "0"], "Invalid value for '--repeats'"),
        (
            ["eval", "retrieval", "--data", ".", "--backbone", "r3d-tiny", "--compare-random"],
            "needs --weights",
        ),
    ],
    ("pretrain", "cvrl"): [
        (["pretrain", "cvrl", "--data", "/no/such"], "--data /no/such: no such file or folder"),
        (["pretrain", "cvrl", "--shared-backbone"], "only vatt has a modality-agnostic variant"),
    ],
    ("pretrain", "constcl"): [
        (["pretrain", "constcl", "--set", "nope=1"], "--set nope: no such preset field")
    ],
    ("pretrain", "teg"): [(["pretrain", "teg", "--preset", "huge"], "not a preset of teg")],
    ("pretrain", "vatt"): [
        (["pretrain", "vatt", "--set", "train.lr=x"], "--set train.lr=x: expected a number")
    ],
    ("eval", "linear-probe"): [
        (["eval", "linear-probe", "--data", ".", "--weights", "/no/such.safetensors"], "file not found"),
        (["eval", "linear-probe", "--data", "."], "give --weights"),
    ],
}


def test_every_command_has_bad_input_cases():
    assert set(leaf_commands()) == set(BAD_INPUT)


@pytest.mark.parametrize(
    "argv,expected", [case for cases in BAD_INPUT.values() for case in cases], ids=lambda v: str(v)
)
def test_bad_input_is_one_line_error(cli, argv, expected):
    result = cli(*argv)
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vvk: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_help_never_imports_torch():
    """`vvk --help` and `vvk <cmd> --help` for every command stay free of torch (one process)."""
    helps = [[]] + [list(path) for path in leaf_commands()]
    groups = {path[:1] for path in leaf_commands() if len(path) > 1}
    helps += [list(g) for g in groups]
    script = (
        "import sys\nfrom vvk.cli import main\n"
        f"for args in {helps!r}:\n"
        "    assert main(args + ['--help']) == 0, args\n"
        "    assert 'torch' not in sys.modules, ('torch imported by', args)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_version(cli):
    result = cli("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"vvk {vvk.__version__}"


def test_no_arguments_prints_help(cli):
    result = cli()
    assert result.code == 0
    assert "weights" in result.stdout


def test_vvk_error_is_one_line_and_debug_raises(cli, monkeypatch):
    def boom(*_a, **_k):
        raise VvkError("some/file.json: field 'x' is wrong", hint="fix it")

    monkeypatch.setattr("vvk.weights.load_registry", boom)
    result = cli("weights", "list")
    assert result.code == 1
    assert result.stderr == "vvk: error: some/file.json: field 'x' is wrong (fix it)\n"
    from vvk.cli import main

    with pytest.raises(VvkError):  # --debug lets the exception (and its traceback) through
        main(["--debug", "weights", "list"])


def test_internal_error_is_reported_as_bug(cli, monkeypatch):
    monkeypatch.setattr("vvk.weights.load_registry", lambda *a, **k: 1 / 0)
    result = cli("weights", "list")
    assert result.code == EXIT_INTERNAL
    assert "internal error: ZeroDivisionError" in result.stderr
    assert "--debug" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_json_mode_puts_only_json_on_stdout(cli):
    result = cli("weights", "list", "--json")
    assert result.code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) >= 1 and all("name" in r for r in records)


def test_dash_reads_names_from_stdin(cli, monkeypatch):
    pulled = []
    monkeypatch.setattr("vvk.weights.pull", lambda name, **k: pulled.append(name) or f"/cache/{name}")
    result = cli("weights", "pull", "-", "--json", stdin="a\n\n# comment\nb\n")
    assert result.code == 0, result.stderr
    assert pulled == ["a", "b"]
    assert [json.loads(line)["name"] for line in result.stdout.splitlines()] == ["a", "b"]


def test_console_script_runs_in_a_fresh_process():
    result = run_vvk("--version")
    assert result.code == 0 and result.stdout.startswith("vvk ")
