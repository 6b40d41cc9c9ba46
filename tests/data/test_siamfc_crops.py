"""SiamFC's crops (vvk.data.siamfc_crops), shared by the tracker and the training pairs: the
box centre on the crop centre (half-pixel convention), RoIAlign as defined, mean padding at the
border, the context geometry, and stretch and translation where the returned box says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vvk.data.siamfc_crops import box_center, context_size, crop_and_resize, siamfc_crop


def ramp_image(h: int = 200, w: int = 300) -> torch.Tensor:
    """Channel 0 holds each pixel's x, channel 1 its y, channel 2 a constant: bilinear sampling
    of it returns the sampled coordinates exactly."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([xs, ys, torch.full_like(xs, 7.0)])


def reference_crop(image: torch.Tensor, center, side: float, out: int, fill: torch.Tensor) -> torch.Tensor:
    """RoIAlign's definition with grid_sample: k² bilinear samples per output pixel, averaged,
    k = ceil(side / out); edge values up to a pixel beyond the border, ``fill`` past that."""
    k = max(1, math.ceil(side / out))
    h, w = image.shape[-2:]
    steps = (torch.arange(out * k, dtype=torch.float64) + 0.5) * side / (out * k) - side / 2
    xs, ys = center[0] + steps, center[1] + steps  # 0-based pixel centres
    gy, gx = torch.meshgrid((2 * ys + 1) / h - 1, (2 * xs + 1) / w - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None].float()
    fill = fill.view(-1, 1, 1)
    samples = F.grid_sample(
        (image - fill)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    outside = (ys < -1) | (ys > h)
    samples[..., outside, :] = 0
    samples[..., (xs < -1) | (xs > w)] = 0
    return samples[0].reshape(-1, out, k, out, k).mean(dim=(2, 4)) + fill


def test_crop_maps_the_target_centre_to_the_crop_centre():
    image = ramp_image()
    centers = torch.tensor([[100.3, 80.7], [150.0, 99.5]], dtype=torch.float64)
    sizes = torch.tensor([61.2, 300.0], dtype=torch.float64)
    for out_size in (127, 255):
        crops = crop_and_resize(image, centers, sizes, out_size, image.mean(dim=(1, 2)))
        assert crops.shape == (2, 3, out_size, out_size)
        mid = (out_size - 1) // 2
        for i in range(2):
            # the centre pixel samples the centre; the first pixel sits half an output pixel in
            assert crops[i, 0, mid, mid] == pytest.approx(float(centers[i, 0]), abs=1e-3)
            assert crops[i, 1, mid, mid] == pytest.approx(float(centers[i, 1]), abs=1e-3)
            first = centers[i, 0] - sizes[i] / 2 + sizes[i] / out_size / 2
            if first > 0:
                assert crops[i, 0, mid, 0] == pytest.approx(float(first), abs=1e-3)


def test_crops_are_roi_align_as_defined_at_any_scale_and_border():
    image = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(0))
    fill = image.mean(dim=(1, 2))
    cases = (((10.3, 20.7), 31.0, 127), ((50.0, 2.0), 90.5, 33), ((-3.0, 30.0), 20.0, 15))
    for center, side, out in cases:
        ours = crop_and_resize(image, torch.tensor([center]), torch.tensor([side]), out, fill)[0]
        torch.testing.assert_close(ours, reference_crop(image, center, side, out, fill), atol=1e-5, rtol=0)
    # several scales in one call (the tracker's search) crop as one at a time
    centers = torch.tensor([c for c, _, _ in cases])
    together = crop_and_resize(image, centers, torch.tensor([31.0, 40.0, 50.0]), 33, fill)
    for i, side in enumerate((31.0, 40.0, 50.0)):
        alone = crop_and_resize(image, centers[i : i + 1], torch.tensor([side]), 33, fill)[0]
        torch.testing.assert_close(together[i], alone)


def test_border_crop_is_padded_with_the_image_mean():
    torch.manual_seed(0)
    image = torch.rand(3, 60, 80)
    mean = image.mean(dim=(1, 2))
    crop = crop_and_resize(image, torch.tensor([[2.0, 3.0]]), torch.tensor([100.0]), 127, mean)[0]
    # output pixel j samples x = 2 - 50 + (j + 0.5) · 100/127: beyond x = -1 for j <= 59 (y: j <= 57)
    left, top = crop[:, :, :55], crop[:, :55, :]
    assert torch.allclose(left, mean.view(3, 1, 1).expand_as(left), atol=1e-6)
    assert torch.allclose(top, mean.view(3, 1, 1).expand_as(top), atol=1e-6)
    inside = crop[:, 70:, 70:]  # pixels of the image itself, not the mean
    assert (inside - mean.view(3, 1, 1)).abs().max() > 0.3
    # siamfc_crop pads with the frame's own mean unless told another fill
    padded, _ = siamfc_crop(image, (1, 1, 20, 20), out_size=127)
    assert torch.allclose(padded[:, 0, 0], mean, atol=1e-6)
    grey = torch.full((3,), 0.25)
    assert torch.allclose(siamfc_crop(image, (1, 1, 20, 20), out_size=127, fill=grey)[0][:, 0, 0], grey)


def test_siamfc_crops_centre_the_box_with_the_context_geometry():
    image = ramp_image()
    box_z, box_x = (101.0, 61.0, 30.0, 20.0), (141.0, 71.0, 36.0, 24.0)
    assert box_center(box_z) == (114.5, 69.5)  # 1-based corner -> 0-based centre
    z, z_box = siamfc_crop(image, box_z, out_size=127)
    x, x_box = siamfc_crop(image, box_x, out_size=255)
    assert z.shape == (3, 127, 127) and x.shape == (3, 255, 255)
    assert (z[0, 63, 63].item(), z[1, 63, 63].item()) == pytest.approx((114.5, 69.5), abs=1e-3)
    assert (x[0, 127, 127].item(), x[1, 127, 127].item()) == pytest.approx((140 + 17.5, 70 + 11.5), abs=1e-3)
    # search side x_sz = z_sz · 255/127 with z_sz = sqrt((w + 0.5(w+h)) (h + 0.5(w+h)))
    x_sz = np.sqrt((36 + 30) * (24 + 30)) * 255 / 127
    assert context_size(36, 24) * 255 / 127 == pytest.approx(x_sz)
    assert (x[0, 127, 254] - x[0, 127, 0]).item() == pytest.approx(x_sz * 254 / 255, rel=1e-4)
    # the box in the crop: torchvision's XYWH centred on the output's centre, scaled by 255 / x_sz
    assert x_box.tolist() == pytest.approx([127.5 - 18 * 255 / x_sz, 127.5 - 12 * 255 / x_sz,
                                            36 * 255 / x_sz, 24 * 255 / x_sz], rel=1e-5)  # fmt: skip
    assert z_box[2].item() == pytest.approx(30 * 127 / context_size(30, 20), rel=1e-5)


@pytest.mark.parametrize(("stretch", "shift"), [(1.05, (4, -4)), (0.95, (-3, 2)), (1.0, (0, 1))])
def test_stretch_and_translation_move_the_target_where_the_box_says(stretch, shift):
    image = ramp_image()
    box = (141.0, 71.0, 36.0, 24.0)
    x_sz = context_size(36, 24) * 255 / 127
    moved, target = siamfc_crop(image, box, out_size=255, stretch=stretch, shift=shift)
    step = (moved[0, 127, 128] - moved[0, 127, 127]).item()  # image pixels per crop pixel
    assert step == pytest.approx(x_sz / 255 / stretch, rel=1e-4)
    # the crop moved by `shift` crop pixels, so the target sits `shift` pixels the other way
    assert (moved[0, 127, 127].item() - 157.5) / step == pytest.approx(shift[0], abs=1e-3)
    assert (moved[1, 127, 127].item() - 81.5) / step == pytest.approx(shift[1], abs=1e-3)
    cx, cy = target[0] + target[2] / 2, target[1] + target[3] / 2  # torchvision's centre
    assert (cx.item(), cy.item()) == pytest.approx((127.5 - shift[0], 127.5 - shift[1]), abs=1e-4)
    assert target[2].item() == pytest.approx(36 / step, rel=1e-4)
