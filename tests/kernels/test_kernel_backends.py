"""Which backend an op call runs, and the CUDA build's error without nvcc."""

from __future__ import annotations

import pytest
import torch

from vvk.kernels.backends import (
    DISABLE_CUDA_VAR,
    ENV_VAR,
    available_backends,
    load_cuda_extension,
    resolve_backend,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_automatic_choice(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend(None, CPU) == "reference"
    assert resolve_backend(None, CUDA) == "triton"
    torch.use_deterministic_algorithms(True)
    try:
        assert resolve_backend(None, CUDA) == "reference"  # the Triton/CUDA backwards use atomics
    finally:
        torch.use_deterministic_algorithms(False)


def test_argument_beats_environment_beats_automatic(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    monkeypatch.delenv(DISABLE_CUDA_VAR, raising=False)
    monkeypatch.setattr("vvk.kernels.backends.nvcc_path", lambda: "/usr/bin/true")
    assert resolve_backend(None, CUDA) == "cuda"
    assert resolve_backend("reference", CUDA) == "reference"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend(None, CPU)


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", CPU) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", CPU)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'tritton' is not one of reference, triton, cuda"):
        resolve_backend("tritton", CPU)


def test_cuda_build_without_nvcc_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    with pytest.raises(RuntimeError, match="nvcc not found"):
        load_cuda_extension.__wrapped__("vvk_test_missing", tmp_path)


def test_cuda_extensions_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(DISABLE_CUDA_VAR, "1")
    assert available_backends()["cuda"] == {"usable": False, "detail": f"disabled by {DISABLE_CUDA_VAR}=1"}
    with pytest.raises(ValueError, match="cannot run: disabled"):
        resolve_backend("cuda", CUDA)
