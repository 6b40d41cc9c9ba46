"""The CLI contract every command inherits: help without torch, one-line errors, JSON lines, stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
import typer

import vvk
from vvk.cli import EXIT_INTERNAL, app
from vvk.errors import VvkError
from vvk.testing import link_videos, run_vvk


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command path, e.g. ('weights', 'pull'), walked from the Typer app; a command
    with subcommands (``vvk track`` and ``vvk track run``) is one, and each of them."""
    paths = []

    def walk(cmd: click.Command, prefix: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*prefix, name))
        else:
            paths.append(prefix)
            for name, sub in getattr(cmd, "subcommands", {}).items():
                walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


_TRACK_RUN = ["track", "run", "--weights", "random:tiny", "--out", "o"]
_EMBED = ["detect", "embed-regions", "--teacher", "t", "--proposals", "p"]
_SERVE = ["federate", "server", "--address", "127.0.0.1:9091", "--insecure"]
_CLIENT = ["federate", "client", "--data", "usps", "--insecure"]
_LOCALIZE = ["eval", "action-localization", "--annotations", "a.csv"]
_TEXT = ["eval", "text-retrieval", "--data", "."]

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
    # Captions that name no video of --data, and another method's run: tests/eval/test_text_retrieval.py.
    ("eval", "text-retrieval"): [
        (
            [*_TEXT, "--captions", "/no/such.tsv", "--backbone", "vatt-video-tiny"],
            "--captions /no/such.tsv: no such file or folder",
        ),
        (
            [*_TEXT, "--captions", "c.tsv", "--weights", os.path.dirname(__file__)],
            "not a pretrain run folder; text retrieval needs a vvk pretrain vatt run folder",
        ),
        ([*_TEXT, "--captions", "c", "--weights", "/no/such"], "--weights /no/such: no such run folder"),
        (
            [*_TEXT, "--captions", "c.tsv", "--backbone", "r3d-tiny"],
            "--backbone r3d-tiny: not the video transformer of a VATT preset (one of",
        ),
        ([*_TEXT, "--captions", "c.tsv"], "give --weights"),
        (_TEXT, "Missing option '--captions'"),
        ([*_TEXT, "--captions", "c", "--num-clips", "0"], "Invalid value for '--num-clips'"),
    ],
    ("pretrain", "cvrl"): [
        (["pretrain", "cvrl", "--data", "/no/such"], "--data /no/such: no such folder or file"),
        (["pretrain", "cvrl", "--shared-backbone"], "No such option"),  # vatt's alone
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
    ("track",): [
        (
            ["track", "/no/such.mp4", "--box", "1,1,2,2", "--weights", "random:tiny"],
            "/no/such.mp4: no such video file or folder",
        ),
        (["track", "x.mp4", "--weights", "random:tiny"], "Missing option '--box'"),
        (
            ["track", "x.mp4", "--box", "1,2,3", "--weights", "random:tiny"],
            "--box 1,2,3: expected four numbers",
        ),
    ],
    ("track", "run"): [
        ([*_TRACK_RUN, "--data", "/no/such"], "--data /no/such: no such folder"),
        (_TRACK_RUN, "Missing option '--data'"),
        ([*_TRACK_RUN, "--data", ".", "--device", "tpu"], "Invalid value for '--device'"),
    ],
    ("track", "eval"): [
        (["track", "eval", "--data", "/no/such", "--results", "r"], "--data /no/such: no such folder"),
        (["track", "eval", "--data", "."], "Missing option '--results'"),
        (
            ["track", "eval", "--data", ".", "--results", "r", "--missing", "no"],
            "Invalid value for '--missing'",
        ),
    ],
    ("detect", "embed-regions"): [
        ([*_EMBED, "--data", "/no/such", "--out", "o"], "--data /no/such: no such folder or file"),
        ([*_EMBED, "--data", "x"], "Missing option '--out'"),
        ([*_EMBED, "--data", "x", "--out", "o", "--max-regions", "0"], "Invalid value for '--max-regions'"),
    ],
    ("detect",): [
        (["detect", "x.jpg"], "Missing option '--weights'"),
        (["detect", "x.jpg", "--weights", "retinanet-spinenet-49"], "architecture, not trained weights"),
        (["detect", "x.jpg", "--weights", "w", "--min-score", "2"], "Invalid value for '--min-score'"),
    ],
    ("train", "detector"): [
        (["train", "detector", "--data", "/no/such"], "--data /no/such: no such folder or file"),
        (["train", "detector", "--model", "r3d-tiny"], "--model r3d-tiny: not a detector"),
        (["train", "detector", "--preset", "huge"], "--preset huge: not a detection preset"),
        (["train", "detector", "--steps", "0"], "Invalid value for '--steps'"),
    ],
    ("train", "tracker"): [
        (["train", "tracker", "--data", "/no/such"], "--data /no/such: no such folder"),
        (["train", "tracker", "--data", ".", "--backbone", "r3d-tny"], "did you mean r3d-tiny"),
        (["train", "tracker", "--data", ".", "--preset", "huge"], "--preset huge: not a tracker preset"),
        (["train", "tracker", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    ],
    ("translate-texture",): [
        (["translate-texture", "/no/such.jpg", "--out", "o"], "/no/such.jpg: no such file or folder"),
        (
            ["translate-texture", "--texture", "/no/such.jpg", ".", "--out", "o"],
            "--texture /no/such.jpg: no such file",
        ),
        (["translate-texture", ".", "--out", "o"], "--texture: the texture image to learn is needed"),
        (
            ["translate-texture", "--weights", "/no/run", ".", "--out", "o"],
            "no texture model texture.safetensors",
        ),
        (["translate-texture", "--size", "10"], "Invalid value for '--size'"),
    ],
    ("augment", "texture"): [
        (["augment", "texture", "/no/such", "--textures", "t", "--out", "o"], "/no/such: no such folder"),
        (
            ["augment", "texture", ".", "--textures", "/no/t", "--out", "o"],
            "--textures /no/t: no such folder",
        ),
        (["augment", "texture", ".", "--textures", ".", "--out", "./x"], "may not be inside, or contain"),
        (
            ["augment", "texture", ".", "--textures", ".", "--per-class", "0"],
            "Invalid value for '--per-class'",
        ),
    ],
    ("federate",): [
        (["federate", "--targets", "usps"], "--source: the labelled source domain is needed"),
        (["federate", "--source", "/no/such", "--targets", "x"], "--source /no/such: not a domain"),
        (["federate", "--source", "sklearn-digits"], "--targets: give at least one target domain"),
        (
            ["federate", "--source", "sklearn-digits", "--targets", "/no/such"],
            "--targets /no/such: not a domain",
        ),
        (
            ["federate", "--source", "sklearn-digits", "sklearn-digits"],
            "a second domain named 'sklearn-digits'",
        ),
        (["federate", "--method", "nope"], "Invalid value for '--method'"),
        (["federate", "--rounds", "-1"], "Invalid value for '--rounds'"),
    ],
    # A data folder of one class, --val classes the training data lacks: tests/commands/test_finetune_cli.py.
    ("finetune",): [
        (["finetune"], "--data: give the labelled training videos"),
        (["finetune", "--data", "/no/such"], "--data /no/such: no such folder or file"),
        (["finetune", "--preset", "huge"], "Invalid value for '--preset'"),
        (["finetune", "--data", ".", "--weights", "/no/such"], "--weights /no/such: no such run folder"),
        (["finetune", "--data", ".", "--views", "4x3"], "--views 4x3: expected CLIPS,CROPS"),
        (["finetune", "--data", ".", "--views", "10,0"], "--views 10,0: expected CLIPS,CROPS"),
        (["finetune", "--data", ".", "--set", "eval_crop=999"], "--set eval_crop=999: must be <= eval_size"),
        (["finetune", "--steps", "0"], "Invalid value for '--steps'"),
        (["finetune", "--out", "/no/such/run", "--resume"], "/no/such/run holds no run"),
    ],
    ("federate", "server"): [
        (["federate", "server", "--source", "mnist"], "Missing option '--address'"),
        (["federate", "server", "--address", "127.0.0.1"], "--address 127.0.0.1: expected HOST:PORT"),
        (
            ["federate", "server", "--address", "127.0.0.1:x"],
            "--address 127.0.0.1:x: the port must be a number",
        ),
        (
            ["federate", "server", "--address", "no.such.invalid:1"],
            "--address no.such.invalid:1: unknown host",
        ),
        (["federate", "server", "--address", "127.0.0.1:9091"], "--certificates CA CERT KEY: TLS needs"),
        (
            ["federate", "server", "--address", "[::1]:1", "--certificates", "/no/ca", "c", "k"],
            "--certificates /no/ca: no such file",
        ),
        (["federate", "server", "--certificates", "ca.pem"], "'--certificates' requires 3 arguments"),
        ([*_SERVE, "--targets", "usps"], "--source: the labelled source domain is needed"),
        ([*_SERVE, "--source", "/no/such", "--targets", "x"], "--source /no/such: not a domain"),
        ([*_SERVE, "--source", "sklearn-digits"], "--targets: give at least one target domain"),
        (
            [*_SERVE, "--source", "sklearn-digits", "--targets", "/no/such"],
            "--targets /no/such: not a domain",
        ),
        (
            [*_SERVE, "--source", "sklearn-digits", "--targets", "my digits"],
            "--targets 'my digits': a domain with a space in its name cannot be deployed",
        ),
    ],
    ("federate", "client"): [
        (["federate", "client", "--server", "127.0.0.1:9091"], "Missing option '--data'"),
        (["federate", "client", "--data", "usps"], "Missing option '--server'"),
        ([*_CLIENT, "--server", "9091"], "--server 9091: expected HOST:PORT"),
        ([*_CLIENT, "--server", "[::1]:0"], "--server [::1]:0: the port must be a number"),
        (["federate", "client", "--data", "x", "--server", "[::1]:1"], "--root-certificates CA: TLS needs"),
        ([*_CLIENT, "--server", "[::1]:1", "--root-certificates", "ca"], "give one of them"),
        ([*_CLIENT, "--server", "[::1]:1", "--data", "/no/such"], "--data /no/such: not a domain"),
        ([*_CLIENT, "--server", "[::1]:1", "--part", "-1"], "Invalid value for '--part'"),
    ],
    ("eval", "detections"): [
        (["eval", "detections", "--gt", "/no/such.json", "--dt", "x.json"], "/no/such.json: cannot read"),
        (["eval", "detections", "--gt", "a.json"], "Missing option '--dt'"),
        (["eval", "detections", "--gt", "a", "--dt", "b", "--iou-type", "mask"], "Invalid value"),
    ],
    # Malformed and unmatched annotation files: tests/methods/test_localization.py.
    ("eval", "action-localization"): [
        ([*_LOCALIZE, "--data", "/no/such", "--backbone", "r3d-tiny"], "--data /no/such: no such folder"),
        (["eval", "action-localization", "--data", "."], "Missing option '--annotations'"),
        (_LOCALIZE, "--data: the videos the annotations name are needed"),
        ([*_LOCALIZE, "--data", ".", "--head", "mlp"], "Invalid value for '--head'"),
        ([*_LOCALIZE, "--data", ".", "--out", "./r.json"], "vvk never writes into its input"),
        ([*_LOCALIZE, "--data", ".", "--backbone", "r3d-tny"], "did you mean r3d-tiny"),
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


def test_an_interrupted_command_exits_130_with_one_line(cli, monkeypatch):
    # Typer, not standalone, turns a KeyboardInterrupt into a *returned* 130: dropping what it
    # returned made every interrupted command exit 0 (`vvk ... && next` carried on).
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("vvk.weights.load_registry", interrupted)
    result = cli("weights", "list")
    assert result.code == 130
    assert result.stderr == "vvk: error: interrupted\n"


def test_a_mistyped_command_is_suggested_once(cli):
    for argv, name in [(["pretrian"], "pretrain"), (["pretrain", "constclz"], "constcl")]:
        result = cli(*argv)
        assert result.code == 2
        assert result.stderr.count("Did you mean") == 1 and f"'{name}'" in result.stderr, result.stderr


def test_other_ranks_leave_the_error_to_rank_zero(cli, monkeypatch):
    monkeypatch.setattr("vvk.cli.RANK_GRACE_S", 0.0)  # torchrun would have stopped this rank by then
    monkeypatch.setenv("RANK", "1")
    result = cli("pretrain", "cvrl", "--no-such-option")
    assert result.code == 2  # every rank exits with vvk's code
    assert result.stderr.startswith("vvk: error: (rank 1) No such option")  # an error of its own
    monkeypatch.setattr("vvk.weights.load_registry", lambda *a, **k: _raise(KeyboardInterrupt()))
    result = cli("weights", "list")
    assert (result.code, result.stderr) == (130, "")  # every rank was interrupted: rank 0 says it
    monkeypatch.setenv("RANK", "0")
    result = cli("pretrain", "cvrl", "--no-such-option")
    assert result.code == 2 and result.stderr.startswith("vvk: error: No such option")


def _raise(error: BaseException):
    raise error


def test_torchrun_with_a_bad_option_prints_the_error_once(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
         "-m", "vvk", "pretrain", "cvrl", "--no-such-option"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count("vvk: error:") == 1, proc.stderr[-3000:]
    assert "vvk: error: No such option" in proc.stderr and "(rank" not in proc.stderr


def _rendered_helps(columns: int) -> dict[str, str]:
    """`vvk [GROUP [COMMAND]] --help` for the root, every group and every command, rendered in
    one fresh process for a terminal ``columns`` wide."""
    paths = [(), *{path[:1] for path in leaf_commands() if len(path) > 1}, *leaf_commands()]
    script = (
        "import contextlib, io, json, sys\nfrom vvk.cli import main\nout = {}\n"
        f"for args in {[list(p) for p in paths]!r}:\n"
        "    text = io.StringIO()\n"
        "    with contextlib.redirect_stdout(text):\n"
        "        assert main([*args, '--help']) == 0, args\n"
        "    out[' '.join(args)] = text.getvalue()\n"
        "json.dump(out, sys.stdout)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TERMINAL_WIDTH", "FORCE_COLOR")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={**env, "COLUMNS": str(columns), "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_help_fits_an_80_column_terminal():
    helps = _rendered_helps(80)
    assert len(helps) > len(leaf_commands())
    for command, text in helps.items():
        assert max(len(line) for line in text.splitlines()) <= 80, command
        # rich cuts what does not fit with an ellipsis: an option name (`--compare-rand…`), a
        # metavar, a default or a word of help.
        cut = [line for line in text.splitlines() if "…" in line]
        assert not cut, f"vvk {command} --help at 80 columns:\n" + "\n".join(cut)


def test_help_wraps_docstrings_at_the_terminal_not_at_the_source_lines():
    from vvk.cli import _reflow

    wide = _rendered_helps(1000)
    commands = {" ".join(path): command for path, command in _commands_by_path().items()}
    for name, command in commands.items():
        lines = {" ".join(line.split()) for line in wide[name].splitlines()}
        for paragraph in _reflow(command.help or "").split("\n\n"):
            for line in paragraph.splitlines():
                assert " ".join(line.split()) in lines, (name, line)


def _commands_by_path() -> dict[tuple[str, ...], click.Command]:
    found = {}

    def walk(cmd: click.Command, prefix: tuple[str, ...]) -> None:
        found[prefix] = cmd
        for name, sub in {**getattr(cmd, "commands", {}), **getattr(cmd, "subcommands", {})}.items():
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return found


def test_reflow_joins_paragraph_lines_and_keeps_indented_ones():
    from vvk.cli import _reflow

    doc = """First line
    goes on.

    A paragraph that
    the source wrapped.

    EXAMPLES: vvk a
              vvk b
    """
    assert _reflow(doc) == (
        "First line goes on.\n\nA paragraph that the source wrapped.\n\nEXAMPLES: vvk a\n          vvk b"
    )


def test_index_out_naming_a_folder_is_a_one_line_error(cli, shared_data, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    videos = link_videos(tmp_path / "videos", [shared_data / "video" / "kinetics" / "arm_wrestling.mp4"])
    result = cli("data", "index", str(videos), "--out", str(folder))
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [
        f"vvk: error: {folder}: a folder, not an index file (give a file path, e.g. {folder / 'index.json'})"
    ]
    assert list(folder.iterdir()) == []
