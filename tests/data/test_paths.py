"""Names in a dataset stay inside it: ``vvk.data.paths.inside``, and looping links."""

from __future__ import annotations

import os

import pytest

from vvk.data.paths import PathOutside, inside, real_path
from vvk.errors import VvkError


@pytest.fixture
def dataset(tmp_path):
    """<tmp>/data/{a.jpg, sub/b.jpg, in.jpg -> a.jpg, out.jpg -> ../secret.jpg, up -> ..}."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.jpg").write_bytes(b"b")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (root / "in.jpg").symlink_to("a.jpg")
    (root / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "up").symlink_to("..")
    return root


@pytest.mark.parametrize(
    "name,file",
    [("a.jpg", "a.jpg"), ("sub/b.jpg", "sub/b.jpg"), ("sub/../a.jpg", "a.jpg"), ("in.jpg", "a.jpg"),
     ("missing.jpg", "missing.jpg")],
)  # fmt: skip
def test_names_inside_are_resolved(dataset, name, file):
    assert inside(dataset, name) == dataset / file


@pytest.mark.parametrize(
    "name,reason",
    [
        ("../secret.jpg", "leads with '..' to"),
        ("sub/../../secret.jpg", "leads with '..' to"),
        ("out.jpg", "leads through a link to"),
        ("up/secret.jpg", "leads through a link to"),
        ("/etc/hostname", "an absolute path"),
    ],
)
def test_names_leading_outside_are_refused(dataset, name, reason):
    with pytest.raises(PathOutside) as info:
        inside(dataset, name)
    assert isinstance(info.value, VvkError)  # a command that does not skip it shows one line
    assert info.value.name == name and reason in info.value.reason
    assert str(info.value).startswith(f"{name}: {reason}") and str(info.value).endswith(f"outside {dataset}")


def test_file_links_judges_the_folder_a_name_is_in(dataset):
    """As a scan of the folder would find it: a link to a file is the folder's file, wherever it
    points; '..' or a linked folder still cannot lead out."""
    assert inside(dataset, "out.jpg", file_links=True) == dataset / "out.jpg"
    for name in ("up/secret.jpg", "../secret.jpg", "sub/../../secret.jpg"):
        with pytest.raises(PathOutside):
            inside(dataset, name, file_links=True)


def test_the_folder_itself_may_be_a_link(dataset, tmp_path):
    (tmp_path / "alias").symlink_to(dataset)
    assert inside(tmp_path / "alias", "sub/b.jpg") == dataset / "sub" / "b.jpg"
    with pytest.raises(PathOutside):
        inside(tmp_path / "alias", "../secret.jpg")


def test_a_link_loop_is_no_exception_until_it_is_opened(tmp_path):
    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    assert real_path(tmp_path / "loop.mp4") == str(tmp_path / "loop.mp4")
    with pytest.raises(OSError, match="symbolic links"):  # the OS's own error, for this file alone
        os.stat(real_path(tmp_path / "loop.mp4"))
