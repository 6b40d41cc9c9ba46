"""Video augmentation: same transform on every frame of a clip, independent across clips, any device."""

from __future__ import annotations

import pytest
import torch

from vvk.data.video_transforms import VideoAugment, cvrl_view_augments

OFF = {"jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "solarize": 0.0, "zero_center": False}


def _clip(batch=2, frames=4, size=40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, frames, size, size + 8), generator=g, dtype=torch.uint8)


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
    video = torch.cat([base * (t + 1) / 4 for t in range(4)], dim=1)[None].repeat(
        8, 1, 1, 1, 1
    )  # (8, 3, 4, H, W)
    out = VideoAugment(size=24, **OFF)(video)
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


def test_solarize_inverts_bright_pixels_and_the_cvrl_views_differ():
    video = torch.full((1, 3, 2, 16, 16), 0.75)
    video[..., :8] = 0.25
    out = VideoAugment(size=16, crop_scale=(1, 1), crop_ratio=(1, 1), flip=0, **{**OFF, "solarize": 1.0})(
        video
    )
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    first, second = cvrl_view_augments(size=16)
    probabilities = [[t.p for t in aug.pipeline.children()] for aug in (first, second)]
    assert probabilities[0][-2:] == [1.0, 0.0] and probabilities[1][-2:] == [0.1, 0.2]  # blur, solarize


@pytest.mark.gpu
def test_runs_on_the_gpu_on_whole_batches():
    out = VideoAugment(size=112)(_clip(batch=8, frames=16, size=128).cuda())
    assert out.is_cuda and out.shape == (8, 3, 16, 112, 112)
