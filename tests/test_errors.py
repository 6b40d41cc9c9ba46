"""VvkError: the library names its parameters, a command respells them as its flags."""

from __future__ import annotations

import pytest

from vvk.errors import VvkError


def _error() -> VvkError:
    return VvkError(
        "data=videos/: retrieval needs 2 videos; give either weights= or backbone=, not both",
        hint="lower crop= or raise size=; pass val=VIDEOS",
        params=("data", "weights", "backbone", "crop", "size", "val"),
    )


def test_the_library_spelling_is_that_of_a_python_call():
    assert str(_error()) == (
        "data=videos/: retrieval needs 2 videos; give either weights= or backbone=, not both "
        "(lower crop= or raise size=; pass val=VIDEOS)"
    )


def test_a_command_respells_parameters_as_its_flags():
    flags = {"data": "--data", "weights": "--weights", "backbone": "--backbone", "crop": "--crop",
             "size": "--size", "val": "--val"}  # fmt: skip
    assert _error().as_flags(flags).one_line() == (
        "--data videos/: retrieval needs 2 videos; give either --weights or --backbone, not both "
        "(lower --crop or raise --size; pass --val VIDEOS)"
    )


@pytest.mark.parametrize(
    "message,flags,expected",
    [
        # a positional argument: the value alone, or its metavar where there is no value
        ("data=a.mp4: no such folder or file", {"data": "DATA..."}, "a.mp4: no such folder or file"),
        ("give data=", {"data": "DATA..."}, "give DATA..."),
        # only the listed parameters, and only whole names: 'interval=' is not 'val='
        ("interval=3 and val=x", {"val": "--val"}, "interval=3 and --val x"),
        # a value may hold ':' (an hf-hub spec); ': ' ends it
        (
            "weights=hf-hub:o/r/f.bin: not cached",
            {"weights": "--weights"},
            "--weights hf-hub:o/r/f.bin: not cached",
        ),
        # a parameter the command does not map keeps the library spelling
        ("data=x: bad", {}, "data=x: bad"),
    ],
)
def test_respelling_cases(message, flags, expected):
    assert VvkError(message, params=("data", "val", "weights")).as_flags(flags).one_line() == expected


def test_as_flags_keeps_the_error_and_its_type():
    class Special(VvkError):
        pass

    error = Special("out=runs/x: not empty", params=("out",), exit_code=3)
    assert error.as_flags({"out": "--out"}) is error
    assert str(error) == "--out runs/x: not empty" and error.exit_code == 3
