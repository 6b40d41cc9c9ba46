"""Every kernel path under autocast, as a method's bf16 training step calls it: float32 or bfloat16
features meet autocast's bfloat16 matmuls. On the CPU the Triton interpreter computes bfloat16
wrongly, so its path must cast to float32 and match the reference on the same rounded inputs."""

from __future__ import annotations

import pytest
import torch
from op_tester import device_backends

from vvk.kernels import contrastive_loss, roi_align_3d, roi_align_tube

PATHS = [("cpu", "reference"), *device_backends()]
ROIS = torch.tensor([[0, 0, 1, 1, 3, 6, 6], [1, 1, 0.5, 0, 4, 7, 7.5], [1, 0, 2, 2, 2, 5, 7]])
TUBES = torch.tensor([[[0.5, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6], [0, 0, 7, 7]]])


def _roi_outputs(x, backend):
    return roi_align_3d(x, ROIS.to(x.device), (2, 2, 2), backend=backend), roi_align_tube(
        x, TUBES.to(x.device), torch.tensor([1], device=x.device), 3, backend=backend
    )


@pytest.mark.parametrize(("device", "backend"), PATHS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_roi_align_under_bf16_autocast(device, backend, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 8, 8, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        outputs = _roi_outputs(x, backend)
    # The definition on the same (already rounded) values in float32, without autocast.
    exact = x.detach().float().requires_grad_()
    expected = _roi_outputs(exact, "reference")
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # bfloat16 output: 8 bits of mantissa
    for out, ref in zip(outputs, expected, strict=True):
        assert out.dtype == dtype  # the op keeps its input's dtype, as torchvision's roi_align
        torch.testing.assert_close(out.float(), ref, rtol=tolerance, atol=tolerance)
    sum(o.float().sum() for o in outputs).backward()
    sum(r.sum() for r in expected).backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), exact.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(("device", "backend"), PATHS)
@pytest.mark.parametrize("keys", ("float32", "bfloat16"))
def test_contrastive_loss_under_bf16_autocast(device, backend, keys):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(8, 16, generator=gen).to(device).requires_grad_()
    head = torch.randn(16, 16, generator=gen).to(device)
    k = torch.randn(8, 16, generator=gen).to(device).requires_grad_()

    def loss_of(backend):
        with torch.autocast(device, dtype=torch.bfloat16):
            q = features @ head  # a projection head's output: bfloat16 under autocast
            loss = contrastive_loss(q, k.to(getattr(torch, keys)), 0.1, backend=backend, symmetric=True)
        return q, loss

    q, loss = loss_of(backend)
    assert q.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # Every path computes what the reference computes under autocast (Triton on the CPU: in float32) ...
    torch.testing.assert_close(loss, loss_of("reference")[1], rtol=1e-5, atol=1e-5)
    # ... which is the float32 loss of the same rounded queries and keys, to bfloat16's precision
    # (autocast normalises bfloat16 rows in bfloat16).
    rounded = [t.detach().float() for t in (q, k.to(getattr(torch, keys)))]
    expected = contrastive_loss(*rounded, 0.1, backend="reference", symmetric=True)
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)
    loss.backward()
    assert features.grad.dtype == torch.float32 and torch.isfinite(features.grad).all()
    assert k.grad.dtype == torch.float32 and torch.isfinite(k.grad).all() and k.grad.abs().sum() > 0
