"""Shared fixtures: the real-data folder, a CLI runner, markers."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels are tested under the interpreter. Triton reads this when a
    # function is decorated, its own standard library (tl.zeros, ...) included, so it must be set
    # before anything imports triton; open_clip and torchvision do, and test modules of every
    # folder are collected before tests/kernels. CPU tensors still default to the reference path.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vvk.testing import CliResult, shared_data_reason, shared_data_root  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$VVK_TEST_DATA``); skips the test when it is absent."""
    root = shared_data_root()
    if root is None:
        pytest.skip(shared_data_reason())
    return root


@pytest.fixture(scope="session")
def full_scale() -> bool:
    """True when VVK_TEST_FULL=1: `slow` tests then run their full-size form."""
    return os.environ.get("VVK_TEST_FULL") == "1"


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``vvk`` in-process: ``cli("weights", "list", stdin="...")`` -> CliResult."""
    from vvk.cli import main

    def run(*args: str, stdin: str | None = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def small_detection_example() -> Path:
    """The folder of a small built-in detection example: 10 train and 4 val images of 96²."""
    from vvk.examples.digits_on_photos import DetectionExampleSpec, detection_example_dir

    return detection_example_dir(
        DetectionExampleSpec(train_images=10, val_images=4, size=96, min_scale=12, max_scale=40)
    )


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests write caches (decoded frames, indexes) under a temporary folder, never the user's;
    a test that needs its own sets ``VVK_CACHE`` itself."""
    previous = os.environ.get("VVK_CACHE")
    os.environ["VVK_CACHE"] = str(tmp_path_factory.mktemp("vvk-cache"))
    yield
    if previous is None:
        os.environ.pop("VVK_CACHE", None)
    else:
        os.environ["VVK_CACHE"] = previous
