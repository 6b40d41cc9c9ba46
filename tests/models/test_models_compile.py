"""torch.compile of the tiny variants: full graphs (no breaks), same outputs as eager.

On a GPU every tiny variant is compiled with inductor. On the CPU the default run captures three
tiny models (a 3D CNN, a ViT, the T5 text encoder) with ``aot_eager`` (graph capture + AOT
autograd, no C++ build); VVK_TEST_FULL=1 compiles them with inductor on the CPU (minutes).
"""

from __future__ import annotations

import pytest
import torch

from vvk.models import build, get_entry, list_models

TINY = [
    n for n in list_models("*tiny") if get_entry(n).builder.__module__.startswith("vvk.models.backbones.")
]


def _input(name: str, device: str) -> torch.Tensor:
    shape = (2, *get_entry(name).default_input)
    if get_entry(name).task == "text-backbone":
        return torch.randint(0, 49408, shape, device=device)
    return torch.randn(shape, device=device)


def _check_compiled(name: str, *, device: str, backend: str) -> None:
    torch.manual_seed(0)
    model = build(name).to(device).eval()
    x = _input(name, device)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    expected, got = model(x), compiled(x)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-3, atol=1e-3)
    model.train()
    sum(v.float().square().mean() for v in compiled(x).values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.gpu
@pytest.mark.parametrize("name", TINY)
def test_compile_tiny_variants_on_gpu(name):
    _check_compiled(name, device="cuda", backend="inductor")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r3d-tiny", "vatt-video-tiny", "vatt-text-tiny"])
def test_compile_on_cpu(name, full_scale):
    _check_compiled(name, device="cpu", backend="inductor" if full_scale else "aot_eager")
