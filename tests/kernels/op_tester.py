"""One parametrised tester for every kernel, in the spirit of torchvision's ``RoIOpTester``.

A test class per op fills in the hooks (``make_inputs``, ``fn``, ``definition``,
``differentiable``, ``make_module``, ``opcheck_cases``); the shared tests then check, on every
device and backend this machine can run:

- the reference backend against the op's independent definition (loops / plain formula), for
  float32 and float64, contiguous and not;
- every fast path (Triton, CUDA) against the reference backend, values and gradients;
- ``gradcheck`` in float64 of the registered op (reference backend);
- ``torch.library.opcheck`` (schema, fake tensors, autograd registration, AOT dispatch);
- tracing with ``torch.compile(fullgraph=True)``;
- the module's ``repr``.

Low-precision results on a GPU are held to "at most twice the error of PyTorch's own
low-precision computation against a float64 reference" (flash-attention's rule), which adapts
to dtype and shape without magic constants.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import pytest
import torch
from torch import Tensor, nn

from vvk.kernels.backends import available_backends


def cpu_and_cuda() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def device_backends() -> list[tuple[str, str]]:
    """``(device, backend)`` pairs of fast paths runnable here (the interpreter counts on the CPU)."""
    pairs = []
    if os.environ.get("TRITON_INTERPRET") == "1":
        pairs.append(("cpu", "triton"))
    if torch.cuda.is_available():
        pairs.append(("cuda", "triton"))
        if available_backends()["cuda"]["usable"]:
            pairs.append(("cuda", "cuda"))
    return pairs


def gpu_backends() -> list:
    """The CUDA fast paths as parameters, each skipped with its reason where it cannot run (so a
    CPU run says why instead of "got empty parameter set")."""
    runnable = {backend for device, backend in device_backends() if device == "cuda"}
    reason = "needs CUDA" if not torch.cuda.is_available() else "the CUDA extension is not usable here"
    return [
        pytest.param(backend, marks=pytest.mark.skipif(backend not in runnable, reason=reason))
        for backend in ("triton", "cuda")
    ]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` (absolute error when ``expected`` is all zero)."""
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_low_precision_close(actual: Tensor, expected64: Tensor, torch_low: Tensor, slack: float = 1e-6):
    """``err(actual) <= 2 * err(PyTorch in the same low precision)`` against a float64 result."""
    ours, theirs = relative_error(actual, expected64), relative_error(torch_low, expected64)
    assert ours <= 2 * theirs + slack, f"relative error {ours:.3g} > 2 × PyTorch's {theirs:.3g}"


def grads(output: Tensor, inputs: list[Tensor], seed: int = 0) -> list[Tensor]:
    """Gradients of ``<output, fixed random cotangent>`` for ``inputs``."""
    gen = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(output.shape, generator=gen, dtype=torch.float64).to(output)
    return list(torch.autograd.grad(output, inputs, cotangent, allow_unused=True))


class OpTester(ABC):
    """Shared tests; subclasses fill in the hooks below."""

    #: relative tolerance of a float32 fast path against the float64 reference
    fast_path_rtol = 1e-5

    @abstractmethod
    def make_inputs(self, *, device: str, dtype: torch.dtype, contiguous: bool = True, seed: int = 0) -> dict:
        """Small inputs (tensors and arguments) for one call; ``contiguous=False`` gives strided tensors."""

    @abstractmethod
    def fn(self, inputs: dict, backend: str | None) -> Tensor:
        """Call the public op."""

    @abstractmethod
    def definition(self, inputs: dict) -> Tensor:
        """The op computed independently of the implementation (slow loops or the plain formula)."""

    @abstractmethod
    def differentiable(self, inputs: dict) -> list[str]:
        """Names of the inputs that receive gradients."""

    @abstractmethod
    def make_module(self) -> tuple[nn.Module, list[str]]:
        """The op's module and strings its ``repr`` must contain."""

    @abstractmethod
    def opcheck_cases(self) -> list[tuple[object, tuple]]:
        """``(registered op, args)`` pairs for ``torch.library.opcheck``."""

    def _with_grad(self, inputs: dict) -> tuple[dict, list[Tensor]]:
        inputs = dict(inputs)
        leaves = []
        for name in self.differentiable(inputs):
            inputs[name] = inputs[name].detach().requires_grad_(True)
            leaves.append(inputs[name])
        return inputs, leaves

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("contiguous", (True, False))
    @pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
    def test_reference_matches_definition(self, device, contiguous, dtype):
        inputs = self.make_inputs(device=device, dtype=dtype, contiguous=contiguous)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(self.fn(inputs, "reference"), self.definition(inputs), rtol=tol, atol=tol)

    @pytest.mark.parametrize(("device", "backend"), device_backends())
    @pytest.mark.parametrize("contiguous", (True, False))
    def test_fast_path_matches_reference(self, device, backend, contiguous):
        inputs, leaves = self._with_grad(
            self.make_inputs(device=device, dtype=torch.float32, contiguous=contiguous)
        )
        out = self.fn(inputs, backend)
        ref_inputs, ref_leaves = self._with_grad({k: _double(v) for k, v in inputs.items()})
        ref = self.fn(ref_inputs, "reference")
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert relative_error(out, ref) <= self.fast_path_rtol
        for name, got, want in zip(
            self.differentiable(inputs), grads(out, leaves), grads(ref, ref_leaves), strict=True
        ):
            assert relative_error(got, want) <= self.fast_path_rtol, f"gradient of {name}"

    @pytest.mark.parametrize("seed", range(3))
    def test_gradcheck(self, seed):
        inputs, leaves = self._with_grad(self.make_inputs(device="cpu", dtype=torch.float64, seed=seed))
        names = self.differentiable(inputs)

        def call(*tensors):
            return self.fn({**inputs, **dict(zip(names, tensors, strict=True))}, "reference")

        assert torch.autograd.gradcheck(call, tuple(leaves), atol=1e-6)

    def test_opcheck(self):
        for op, args in self.opcheck_cases():
            torch.library.opcheck(op, args)

    def compile_inputs(self) -> dict:
        """Inputs for the ``torch.compile(fullgraph=True)`` test (data-dependent options left out)."""
        return self.make_inputs(device="cpu", dtype=torch.float32)

    def test_compiles_without_graph_breaks(self):
        inputs = self.compile_inputs()
        compiled = torch.compile(lambda inp: self.fn(inp, "reference"), backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(inputs), self.fn(inputs, "reference"))

    def test_module_repr(self):
        module, expected = self.make_module()
        text = repr(module)
        for fragment in expected:
            assert fragment in text


def _double(value):
    return value.detach().double() if isinstance(value, Tensor) and value.is_floating_point() else value
