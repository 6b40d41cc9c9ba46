"""RoIAlign-3D and tube RoIAlign: torchvision parity, a loop-based definition, every backend."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from op_tester import (
    OpTester,
    assert_low_precision_close,
    cpu_and_cuda,
    device_backends,
    gpu_backends,
    grads,
    relative_error,
)

from vvk.kernels import RoIAlign3d, roi_align_3d, roi_align_tube

# torchvision's test_ops.py forward case, plus a box partly outside, one wholly outside and one
# smaller than a pixel (which the legacy aligned=False rule stretches to one pixel).
TV_ROIS = [
    [0, 0, 0, 9, 9],
    [0, 0, 5, 4, 9],
    [0, 5, 5, 9, 9],
    [1, 0, 0, 9, 9],
    [0, -3, -2, 4, 5],
    [1, 3, 3, 3.5, 3.2],
    [1, 20, 20, 30, 30],
]
# torchvision's backward case.
TV_GRAD_ROIS = [[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]]


def _interp_1d(coord: float, size: int) -> list[tuple[int, float]]:
    """torchvision's per-axis rule, written as in its CPU kernel (pre_calc_for_bilinear_interpolate)."""
    if not (-1.0 <= coord <= size):
        return []
    coord = max(coord, 0.0)
    low = int(coord)
    if low >= size - 1:
        return [(size - 1, 1.0)]
    return [(low, 1.0 - (coord - low)), (low + 1, coord - low)]


def _axis(a1: float, a2: float, scale: float, pooled: int, sampling_ratio: int, aligned: bool):
    offset = 0.5 if aligned else 0.0
    start, end = a1 * scale - offset, a2 * scale - offset
    length = end - start if aligned else max(end - start, 1.0)
    bin_size = length / pooled
    grid = sampling_ratio if sampling_ratio > 0 else math.ceil(length / pooled)
    return start, bin_size, grid


def expected_roi_align_3d(x, rois, output_size, spatial_scale, temporal_scale, sampling_ratio, aligned):
    """Sample-by-sample loops over rois, bins and grid points (vectorised over channels only)."""
    _, channels, frames, height, width = x.shape
    pt, ph, pw = output_size
    out = torch.zeros(rois.shape[0], channels, pt, ph, pw, dtype=torch.float64)
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        axes = [
            (_axis(roi[1], roi[4], temporal_scale, pt, sampling_ratio, aligned), frames),
            (_axis(roi[3], roi[6], spatial_scale, ph, sampling_ratio, aligned), height),
            (_axis(roi[2], roi[5], spatial_scale, pw, sampling_ratio, aligned), width),
        ]
        (st, bt, gt), (sy, by, gy), (sx, bx, gx) = (a for a, _ in axes)
        count = max(gt * gy * gx, 1)
        for i in range(pt):
            for j in range(ph):
                for k in range(pw):
                    total = torch.zeros(channels, dtype=torch.float64)
                    for it in range(gt):
                        taps_t = _interp_1d(st + i * bt + (it + 0.5) * bt / gt, frames)
                        for iy in range(gy):
                            taps_y = _interp_1d(sy + j * by + (iy + 0.5) * by / gy, height)
                            for ix in range(gx):
                                taps_x = _interp_1d(sx + k * bx + (ix + 0.5) * bx / gx, width)
                                for t, wt in taps_t:
                                    for y, wy in taps_y:
                                        for xx, wx in taps_x:
                                            total += wt * wy * wx * x[b, :, t, y, xx].double()
                    out[r, :, i, j, k] = total / count
    return out


def rois_3d(boxes_2d, t1=0.0, t2=1.0) -> torch.Tensor:
    """``(K, 5) [b, x1, y1, x2, y2]`` -> ``(K, 7) [b, t1, x1, y1, t2, x2, y2]``."""
    boxes = torch.as_tensor(boxes_2d, dtype=torch.float64)
    k = boxes.shape[0]
    return torch.cat(
        [boxes[:, :1], torch.full((k, 1), t1), boxes[:, 1:3], torch.full((k, 1), t2), boxes[:, 3:]], 1
    )


def _strided(x: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous storage (H and W swapped in memory)."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


class TestRoIAlign3d(OpTester):
    def make_inputs(self, *, device, dtype, contiguous=True, seed=0):
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(2, 2, 3, 5, 6, generator=gen, dtype=dtype)
        rois = torch.tensor(
            [
                [0, 0, 0, 0, 3, 6, 5],
                [1, 0.3, 1.2, 0.7, 2.9, 4.5, 4.1],  # fractional
                [0, -1.5, -2, -1, 2, 3, 2.5],  # partly outside in t, x and y
                [1, 2.2, 4.5, 3.5, 2.2, 4.5, 3.5],  # zero size
                [0, 1, 2, 3, 5, 9, 7],  # beyond the far borders
            ],
            dtype=dtype,
        )
        x = x if contiguous else _strided(x)
        return dict(
            x=x.to(device), rois=rois.to(device), output_size=(2, 3, 2), sampling_ratio=-1, aligned=True
        )

    def fn(self, inputs, backend):
        return roi_align_3d(
            inputs["x"],
            inputs["rois"],
            inputs["output_size"],
            0.9,
            1.1,
            inputs["sampling_ratio"],
            inputs["aligned"],
            backend=backend,
        )

    def definition(self, inputs):
        expected = expected_roi_align_3d(
            inputs["x"].cpu(),
            inputs["rois"].cpu(),
            inputs["output_size"],
            0.9,
            1.1,
            inputs["sampling_ratio"],
            inputs["aligned"],
        )
        return expected.to(inputs["x"])

    def differentiable(self, inputs):
        return ["x"]

    def make_module(self):
        module = RoIAlign3d(output_size=(2, 7, 7), spatial_scale=0.0625, sampling_ratio=2, aligned=False)
        return module, ["output_size=(2, 7, 7)", "spatial_scale=0.0625", "sampling_ratio=2", "aligned=False"]

    def opcheck_cases(self):
        inputs = self.make_inputs(device="cpu", dtype=torch.float64)
        from vvk.kernels.roi_align_3d import reference

        index, table = reference.roi_table(inputs["rois"], (2, 3, 2), 1.0, 1.0, -1, True, torch.float64)
        x = inputs["x"].requires_grad_()
        grad = torch.rand(index.shape[0], 2, 2, 3, 2, dtype=torch.float64)
        return [
            (torch.ops.vvk.roi_align_3d_pool.default, (x, index, table, 2, 3, 2, "reference")),
            (
                torch.ops.vvk.roi_align_3d_pool_backward.default,
                (grad, index, table, list(x.shape), "reference"),
            ),
        ]


def _torchvision_backends(device: str) -> list[str]:
    return ["reference"] + [b for d, b in device_backends() if d == device]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("aligned", (True, False))
@pytest.mark.parametrize("contiguous", (True, False))
@pytest.mark.parametrize("sampling_ratio", (-1, 2))
def test_single_frame_equals_torchvision(device, aligned, contiguous, sampling_ratio):
    x = torch.rand(2, 50, 10, 10, dtype=torch.float64, device=device)
    x = x if contiguous else x.permute(0, 1, 3, 2)  # torchvision's non-contiguous case
    rois2 = torch.tensor(TV_ROIS, dtype=torch.float64, device=device)
    expected = torchvision.ops.roi_align(x, rois2, 5, 1.0, sampling_ratio, aligned)
    # With aligned=True frame 0 spans t in [0, 1); the legacy rule samples t = 0.5, clamped to 0.
    for backend in _torchvision_backends(device):
        dtype = torch.float64 if backend == "reference" else torch.float32
        out = roi_align_3d(
            x[:, :, None].to(dtype),
            rois_3d(rois2.cpu()).to(x.device, dtype),
            (1, 5, 5),
            1.0,
            1.0,
            sampling_ratio,
            aligned,
            backend=backend,
        )
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(out[:, :, 0], expected.to(dtype), rtol=tol, atol=tol)
        tube = roi_align_tube(
            x[:, :, None].to(dtype),
            rois2[:, None, 1:].to(dtype),
            rois2[:, 0],
            5,
            1.0,
            sampling_ratio,
            aligned,
            backend=backend,
        )
        torch.testing.assert_close(tube[:, :, 0], expected.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", range(3))
def test_single_frame_gradient_equals_torchvision(seed):
    """torchvision's backward case: (1, 8, 5, 5) float64, pool 2, sampling_ratio 1."""
    x = torch.rand(1, 8, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rois2 = torch.tensor(TV_GRAD_ROIS, dtype=torch.float64)
    ours_x, tv_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_align_3d(ours_x[:, :, None], rois_3d(rois2), (1, 2, 2), sampling_ratio=1, aligned=False)
    theirs = torchvision.ops.roi_align(tv_x, rois2, 2, 1.0, 1, False)
    torch.testing.assert_close(grads(ours[:, :, 0], [ours_x]), grads(theirs, [tv_x]), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda z: roi_align_3d(z[:, :, None], rois_3d(rois2), (1, 2, 2), sampling_ratio=1, aligned=False),
        (ours_x,),
    )


@pytest.mark.parametrize("aligned", (True, False))
def test_tube_with_a_fixed_box_averages_to_the_3d_op(aligned):
    x = torch.rand(2, 4, 6, 9, 11, dtype=torch.float64)
    boxes2 = torch.tensor(
        [[0, 1.0, 2.0, 7.5, 8.0], [1, 0.0, 0.0, 10.0, 8.0], [1, 3.3, 1.1, 5.2, 6.9]], dtype=torch.float64
    )
    tube_boxes = boxes2[:, None, 1:].expand(3, 6, 4)
    tube = roi_align_tube(x, tube_boxes, boxes2[:, 0], (3, 4), aligned=aligned)
    # The whole clip in time, one bin: adaptive sampling then hits every frame centre once.
    t1, t2 = (0.0, 6.0) if aligned else (-0.5, 5.5)
    pooled = roi_align_3d(x, rois_3d(boxes2, t1, t2), (1, 3, 4), aligned=aligned)
    torch.testing.assert_close(tube.mean(dim=2), pooled[:, :, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        tube[:, :, 2],
        torchvision.ops.roi_align(x[:, :, 2], boxes2, (3, 4), aligned=aligned),
        rtol=1e-12,
        atol=1e-12,
    )


def test_moving_tube_equals_per_frame_torchvision():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 5, 4, 12, 12, generator=gen, dtype=torch.float64)
    boxes = torch.rand(3, 4, 2, generator=gen, dtype=torch.float64) * 6
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(3, 4, 2, generator=gen, dtype=torch.float64) * 5], dim=2)
    batch = torch.tensor([1, 0, 1])
    tube = roi_align_tube(x, boxes, batch, (2, 3), spatial_scale=0.8, sampling_ratio=2)
    for t in range(4):
        rois2 = torch.cat([batch[:, None].double(), boxes[:, t]], 1)
        expected = torchvision.ops.roi_align(x[:, :, t], rois2, (2, 3), 0.8, 2, True)
        torch.testing.assert_close(tube[:, :, t], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_channels_last_3d_and_strided_inputs(device):
    base = torch.rand(2, 6, 4, 9, 10, dtype=torch.float64, device=device)
    rois = rois_3d([[0, 1, 1, 8, 7], [1, 0, 2, 6, 9]], 0.5, 3.5).to(device)
    expected = roi_align_3d(base, rois, (2, 3, 3))
    layouts = {
        "channels_last_3d": lambda x: x.to(memory_format=torch.channels_last_3d),
        "sliced": lambda x: x.new_empty(2, 12, 4, 9, 10)[:, ::2].copy_(x),
    }
    for backend in _torchvision_backends(device):
        dtype = torch.float64 if backend == "reference" else torch.float32
        for name, layout in layouts.items():
            x = layout(base.to(dtype)).requires_grad_()
            assert not x.is_contiguous()
            out = roi_align_3d(x, rois.to(dtype), (2, 3, 3), backend=backend)
            assert relative_error(out, expected) < 1e-6, (backend, name)
            out.sum().backward()
            assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(("device", "backend"), [("cpu", "reference"), *device_backends()])
def test_no_rois(device, backend):
    x = torch.rand(2, 3, 4, 5, 5, device=device, requires_grad=True)
    out = roi_align_3d(x, torch.zeros(0, 7, device=device), (2, 2, 2), backend=backend)
    assert out.shape == (0, 3, 2, 2, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    tube = roi_align_tube(x, torch.zeros(0, 4, 4, device=device), torch.zeros(0), 3, backend=backend)
    assert tube.shape == (0, 3, 4, 3, 3)


def test_bad_arguments_name_the_argument():
    x = torch.rand(1, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="rois must be"):
        roi_align_3d(x, torch.zeros(2, 5), 2)
    with pytest.raises(ValueError, match="features must be"):
        roi_align_3d(x[0], torch.zeros(2, 7), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align_3d(x, torch.zeros(2, 7), (2, 2))
    with pytest.raises(ValueError, match=r"boxes must be \(K, 3, 4\)"):
        roi_align_tube(x, torch.zeros(2, 2, 4), torch.zeros(2), 2)
    with pytest.raises(ValueError, match="kernel backend 'tpu'"):
        roi_align_3d(x, torch.zeros(2, 7), 2, backend="tpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_low_precision_on_gpu(backend, dtype):
    gen = torch.Generator().manual_seed(0)
    x64 = torch.rand(2, 64, 8, 14, 14, generator=gen, dtype=torch.float64).cuda()
    xy = torch.rand(40, 2, generator=gen, dtype=torch.float64) * 9
    boxes = torch.cat([xy, xy + 1 + torch.rand(40, 2, generator=gen, dtype=torch.float64) * 5], 1)
    rois = rois_3d(torch.cat([torch.randint(0, 2, (40, 1), generator=gen).double(), boxes], 1), 0, 8).cuda()
    expected = roi_align_3d(x64, rois, (2, 7, 7), backend="reference")
    torch_low = (
        torch.stack(
            [
                torchvision.ops.roi_align(
                    x64[:, :, t].to(dtype), rois[:, [0, 2, 3, 5, 6]].to(dtype), 7, 1.0, -1, True
                )
                for t in range(8)
            ],
            2,
        )
        .unflatten(2, (2, 4))
        .mean(3)
    )
    ours = roi_align_3d(x64.to(dtype), rois.to(dtype), (2, 7, 7), backend=backend)
    assert_low_precision_close(ours, expected, torch_low)
