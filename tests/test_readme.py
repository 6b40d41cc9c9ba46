"""The README's examples work as written: those that need no data of the user's and no network
run here (on ``../shared/data`` where they name it), the others must name a real command and
only options that command has."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest

from vvk.cli import _command

README = Path(__file__).parents[1] / "README.md"
SHARED = "../shared/data"
# Examples that run here, with what their output must show. Long or networked ones (the demo,
# downloads) and those on the user's own data are checked for their options only.
RUNNABLE = {
    "vvk info --json": "kernel_backends",
    "vvk models list 'r3d-*'": "r3d-rs-50",
    "vvk models list 'spinenet-*' --flops": "spinenet-49",
    "vvk weights list --model 'open_clip:*'": "clip-vit-b-32.openai",
    "vvk weights verify": "",
    "vvk data check ../shared/data/video --frames 16 --stride 2": "test.wav",
    "vvk augment copy-paste ../shared/data/coco/tiny_coco /tmp/tiny_cp --copies 2 --json": "images",
    (
        "vvk track ../shared/data/tracking/vot/bag/bag.avi --box 312,143,110,102 --weights random:tiny "
        "--draw bag.mp4"
    ): "drawn: bag.mp4",
}


def _examples() -> list[str]:
    """Every vvk command line of the README's bash blocks: the part before a pipe or comment,
    after ``&&``, and torchrun's ``-m vvk`` as ``vvk``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.split("#")[0].split("|")[0].strip()
                part = re.sub(r"^torchrun .*?-m vvk ", "vvk ", part)
                if part.startswith("vvk "):
                    commands.append(part)
    return commands


def test_the_readme_has_the_examples_this_test_runs():
    assert set(RUNNABLE) <= set(_examples())


def _children(command: click.Command) -> dict[str, click.Command]:
    return {**getattr(command, "commands", {}), **getattr(command, "subcommands", {})}


@pytest.mark.parametrize("example", _examples())
def test_every_example_names_a_command_and_its_options(example):
    command: click.Command = _command()
    words = shlex.split(example)[1:]
    while words and words[0] in _children(command):  # groups' commands, `vvk detect`'s subcommands
        command, words = _children(command)[words[0]], words[1:]
    assert not isinstance(command, click.Group), f"{example}: not a command"
    options = {name for param in command.params for name in param.opts + param.secondary_opts}
    used = {word.split("=")[0] for word in words if word.startswith("-") and word != "-"}
    assert used <= options, f"{example}: no such option {sorted(used - options)}"


@pytest.mark.parametrize("example", sorted(RUNNABLE))
def test_examples_without_user_data_run(example, cli, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VVK_OFFLINE", "1")
    words = [
        word.replace(SHARED, str(shared_data)).replace("/tmp/tiny_cp", str(tmp_path / "tiny_cp"))
        for word in shlex.split(example)[1:]
    ]
    result = cli(*words)
    if words[:2] == ["data", "check"]:  # exits 1 because the folder holds an audio-only file
        assert result.code == 1 and "no_video" in result.stdout + result.stderr, result.stderr
    else:
        assert result.code == 0, result.stderr
    assert RUNNABLE[example] in result.stdout + result.stderr
    if "--json" in words:
        for line in result.stdout.splitlines():
            json.loads(line)


def test_the_python_example_runs_up_to_the_weights_it_would_download(tmp_path, monkeypatch):
    from vvk.errors import VvkError

    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VVK_OFFLINE", "1")
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    scope: dict = {}
    with pytest.raises(VvkError, match="resnet50.tv_in1k") as failure:
        exec(compile(block, str(README), "exec"), scope)
    assert "vvk weights pull" in str(failure.value) + (failure.value.hint or "")
    assert (tmp_path / "runs" / "x" / "backbone.safetensors").is_file() and "same" in scope
