"""Video augmentation: the reference's per-clip operations, the same on every frame of a clip,
independent across clips, crops from the whole frame; each op against a plain re-statement of
the TensorFlow semantics it follows."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from vvk.data import video_transforms as vt
from vvk.data.video_transforms import VideoAugment, crop_attempts, crop_resize, cvrl_view_augments

OFF = {"jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "solarize": 0.0, "zero_center": False}
F32 = np.float32


def _clip(batch=2, frames=4, height=40, width=48) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, frames, height, width), generator=g, dtype=torch.uint8)


# ---- the crop: sample_distorted_bounding_box, then tf.image.resize ------------------------------


def _generate_random_crop(width, height, scale, aspect, u_height, u_y, u_x):
    """GenerateRandomCrop (sample_distorted_bounding_box_op.cc) line by line, in float32 with
    lrintf's round-half-to-even; the three U[0, 1) draws stand for Philox's Uniform(n)."""
    uniform = lambda u, n: int(math.floor(u * n))  # noqa: E731
    min_area = F32(scale[0]) * F32(width) * F32(height)
    max_area = F32(scale[1]) * F32(width) * F32(height)
    h = int(np.rint(np.sqrt(F32(min_area / aspect), dtype=F32)))
    max_h = int(np.rint(np.sqrt(F32(max_area / aspect), dtype=F32)))
    if np.rint(F32(max_h * aspect)) > width:
        max_h = int(F32((width + F32(0.5) - F32(1e-7)) / aspect))
        if np.rint(F32(max_h * aspect)) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += uniform(u_height, max_h - h + 1)
    w = int(np.rint(F32(h * aspect)))
    if F32(w * h) < min_area:
        h += 1
        w = int(np.rint(F32(h * aspect)))
    if F32(w * h) > max_area:
        h -= 1
        w = int(np.rint(F32(h * aspect)))
    area = F32(w * h)
    fits = min_area <= area <= max_area and 0 < w <= width and 0 < h <= height
    fits = fits and area >= F32(0.1) * F32(width) * F32(height)  # min_object_covered, whole frame
    y = uniform(u_y, height - h) if h < height else 0
    x = uniform(u_x, width - w) if w < width else 0
    return [x, y, x + w, y + h], fits


def test_crop_attempts_follow_tensorflows_generate_random_crop():
    g = torch.Generator().manual_seed(1)
    sizes = torch.tensor([[256, 455], [256, 341], [455, 256], [7, 9], [1, 1], [2, 1000], [224, 224]])
    for scale, ratio in [((0.3, 1.0), (0.5, 2.0)), ((0.08, 1.0), (0.75, 1.33)), ((1.0, 1.0), (1.0, 1.0))]:
        aspect = (torch.rand(len(sizes), 300, generator=g) * (ratio[1] - ratio[0]) + ratio[0]).float()
        uniforms = torch.rand(3, len(sizes), 300, generator=g, dtype=torch.float64)
        boxes, fits = crop_attempts(sizes, scale=scale, aspect=aspect, uniforms=uniforms)
        for i, (height, width) in enumerate(sizes.tolist()):
            for k in range(300):
                want, ok = _generate_random_crop(
                    width, height, scale, F32(aspect[i, k]), *(float(u) for u in uniforms[:, i, k])
                )
                assert bool(fits[i, k]) == ok, (height, width, k)
                if ok:
                    assert boxes[i, k].tolist() == want, (height, width, k)


def test_crops_cover_the_whole_wide_frame_not_its_centre_square():
    """The reference crops from the whole decoded frame: on 16:9 frames crops reach both sides,
    and their area is a fraction of the whole frame."""
    frame = torch.tensor([[144, 256]]).expand(4000, 2)
    draw = torch.Generator().manual_seed(0)
    boxes = vt.sample_crop_boxes(frame, scale=(0.3, 1.0), ratio=(0.5, 2.0), generator=draw)
    w, h = (boxes[:, 2] - boxes[:, 0]).float(), (boxes[:, 3] - boxes[:, 1]).float()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 144).all()
    assert boxes[:, 0].min() == 0 and boxes[:, 2].max() > 250  # the left and right thirds are seen
    area = w * h / (144 * 256)
    assert area.min() >= 0.3 - 1e-6 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() > 0.5 - 1 / h.min() and aspect.max() < 2.0 + 1 / h.min()


def test_an_impossible_crop_falls_back_to_the_whole_frame():
    frame = torch.tensor([[90, 160], [50, 50]])  # no square holds all of a 16:9 frame's area
    boxes = vt.sample_crop_boxes(frame, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert boxes.tolist() == [[0, 0, 160, 90], [0, 0, 50, 50]]


def _half_pixel_resize(image: np.ndarray, size: int) -> np.ndarray:
    """tf.image.resize(bilinear, antialias=False) of (h, w) to (size, size), written out."""
    h, w = image.shape
    out = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            y = min(max((i + 0.5) * h / size - 0.5, 0.0), h - 1)
            x = min(max((j + 0.5) * w / size - 0.5, 0.0), w - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_crop_resize_cuts_the_box_then_resizes_like_tensorflow_and_flips():
    video = _clip(batch=3, frames=2, height=30, width=50)
    boxes = torch.tensor([[3, 4, 13, 9], [0, 0, 50, 30], [20, 2, 47, 29]])  # up, down, up/down sampled
    flip = torch.tensor([False, True, False])
    out = crop_resize(video, boxes, flip, 12)
    assert out.shape == (3, 3, 2, 12, 12)
    for b, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        for c, t in [(0, 0), (2, 1)]:
            want = _half_pixel_resize(video[b, c, t, y1:y2, x1:x2].double().numpy(), 12)
            want = want[:, ::-1] if flip[b] else want
            np.testing.assert_allclose(out[b, c, t].numpy(), want, atol=1e-3)


def test_crops_stay_inside_each_clips_frame_on_a_padded_canvas():
    video = torch.full((6, 3, 2, 40, 80), 255, dtype=torch.uint8)  # the padding: white
    sizes = torch.tensor([[40, 71], [24, 40], [40, 30], [12, 80], [40, 80], [33, 33]])
    for i, (h, w) in enumerate(sizes.tolist()):
        video[i, :, :, :h, :w] = 0  # the frame itself: black
    augment = VideoAugment(size=16, **OFF)
    for _ in range(20):
        assert augment(video, sizes).max() == 0  # no padding pixel reaches a view
        crop = augment.last_crop
        assert (crop[:, 2] <= sizes[:, 1]).all() and (crop[:, 3] <= sizes[:, 0]).all()


# ---- colour, grayscale, blur, solarize -------------------------------------------------------


def test_colour_operations_do_what_tensorflow_does():
    x = torch.rand(2, 3, 4, 6, 5)
    factor = torch.tensor([0.5, 1.7])
    torch.testing.assert_close(vt._brightness(x, factor), x * factor.view(2, 1, 1, 1, 1))
    mean = x.mean(dim=(2, 3, 4), keepdim=True)  # each channel's mean over the whole clip
    torch.testing.assert_close(vt._contrast(x, factor), (x - mean) * factor.view(2, 1, 1, 1, 1) + mean)
    grey = vt._saturation(x, torch.zeros(2))
    torch.testing.assert_close(grey, x.amax(dim=1, keepdim=True).expand_as(x), atol=1e-5, rtol=0)
    red = torch.zeros(1, 3, 1, 2, 2)
    red[:, 0] = 1.0
    green = vt._hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green, red.roll(1, dims=1), atol=1e-5, rtol=0)


def _write_digit(x, factor, *, digit):
    return x / 10 + digit / 10


def test_colour_jitter_draws_its_order_per_clip(monkeypatch):
    """Op k shifts the value one decimal place down and writes k + 1 in front, staying inside
    [0, 1] (so the clipping after each op keeps it): the digits spell each clip's order."""
    ops = tuple(functools.partial(_write_digit, digit=k + 1) for k in range(4))
    monkeypatch.setattr(vt, "_COLOUR_OPS", ops)
    x = torch.zeros(400, 3, 1, 1, 1, dtype=torch.float64)
    out = vt.color_jitter(x, strength=1.0, p=1.0, generator=torch.Generator().manual_seed(0))
    orders = {round(v * 10_000) for v in out[:, 0].flatten().tolist()}  # last op first
    assert all(sorted(str(o)) == ["1", "2", "3", "4"] for o in orders) and len(orders) == 24


def test_colour_jitter_applies_to_the_chosen_fraction_of_clips():
    x = torch.rand(1, 3, 2, 8, 8).expand(2000, -1, -1, -1, -1).contiguous()
    out = vt.color_jitter(x, strength=1.0, p=0.8, generator=torch.Generator().manual_seed(0))
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-6
    assert 0.77 < changed.float().mean() < 0.83


def test_grayscale_uses_tensorflows_luma_weights():
    x = torch.rand(3, 3, 2, 4, 4)
    out = vt.grayscale(x, p=1.0)
    luma = 0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(out[:, c], luma)


def test_blur_is_a_zero_padded_separable_gaussian_of_a_tenth_of_the_side():
    x = torch.rand(2, 3, 2, 40, 40, dtype=torch.float64)
    out = vt.gaussian_blur(x, p=1.0, sigma=(1.5, 1.5))
    radius = 40 // 10 // 2
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * 1.5**2))
    taps /= taps.sum()
    padded = np.pad(x.numpy(), [(0, 0)] * 3 + [(radius, radius)] * 2)  # 'SAME' with zeros
    want = np.zeros_like(x.numpy())
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            want += taps[dy] * taps[dx] * padded[..., dy : dy + 40, dx : dx + 40]
    np.testing.assert_allclose(out.numpy(), want, atol=1e-12)


def test_solarize_inverts_bright_pixels():
    x = torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.75, 1.0]).view(1, 1, 1, 1, 6).expand(1, 3, 1, 1, 6)
    out = vt.solarize(x, p=1.0)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.25, 0.0]))


# ---- the whole augmentation --------------------------------------------------------------------


def test_shapes_range_and_dtype():
    out = VideoAugment(size=24)(_clip())
    assert out.shape == (2, 3, 4, 24, 24) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="expected"):
        VideoAugment(size=24)(torch.zeros(3, 4, 8, 8))


def test_crop_and_flip_are_the_same_on_every_frame():
    # Frames are one image scaled by (t + 1): crop, resize and flip are linear, so if every
    # frame got the same geometry the outputs stay exact multiples of the first.
    base = torch.rand(3, 1, 40, 48)
    video = torch.cat([base * (t + 1) / 4 for t in range(4)], dim=1)[None].repeat(8, 1, 1, 1, 1)
    out = VideoAugment(size=24, **OFF)(video)  # (8, 3, 4, H, W)
    for t in range(4):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0] * (t + 1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], out[1])  # clips of the batch draw their own crops


def test_colour_transforms_are_the_same_on_every_frame():
    frame = torch.rand(1, 3, 1, 32, 32)
    video = frame.repeat(6, 1, 5, 1, 1)  # every frame identical
    out = VideoAugment(size=32, jitter=1.0, grayscale=0.5, blur=0.5, solarize=0.5)(video)
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
    assert not torch.allclose(out[0], out[1])


def test_seeded_runs_repeat():
    aug = VideoAugment(size=24)
    torch.manual_seed(5)
    a = aug(_clip())
    torch.manual_seed(5)
    assert torch.equal(a, aug(_clip()))


def test_the_cvrl_views_differ_in_blur_and_solarize():
    first, second = cvrl_view_augments(size=16)
    assert (first.blur, first.solarize) == (1.0, 0.0) and (second.blur, second.solarize) == (0.1, 0.2)
    assert first.jitter == second.jitter == 0.8 and first.grayscale == second.grayscale == 0.2


@pytest.mark.gpu
def test_runs_on_the_gpu_on_whole_batches():
    video = _clip(batch=8, frames=16, height=128, width=171).cuda()
    out = VideoAugment(size=112)(video, torch.tensor([[128, 171]] * 8))
    assert out.is_cuda and out.shape == (8, 3, 16, 112, 112)
