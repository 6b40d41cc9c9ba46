"""Temporally consistent video augmentation on whole batches, on any device.

Every frame of a clip gets the same crop, flip, colour jitter, grayscale, blur and solarize;
clips in a batch get independent draws, each with its own random order of the colour
operations. The float work runs where the batch is (``augment(batch["video"].cuda(),
batch["frame_size"])``): decoding stays uint8 and small on the CPU. Random parameters are
drawn on the CPU from torch's default generator (so ``torch.manual_seed`` repeats a run on
any device) and never read back from the device.

The operations and their defaults are the reference's per-clip pretraining augmentation
(``tensorflow/models: official/projects/video_ssl/dataloaders/video_ssl_input.py::
_process_image`` with ``ops/video_ssl_preprocess_ops.py`` and ``official/vision/ops/
preprocess_ops_3d.py``; reference/video_ssl.md §5.4):

- ``random_crop_resize``: a crop of the *whole decoded frame* drawn as
  ``tf.image.sample_distorted_bounding_box`` draws it (area fraction (0.3, 1) of the frame,
  aspect (0.5, 2), 100 attempts, the whole frame if none fits), bilinearly resized without
  antialiasing (``tf.image.resize``), then a horizontal flip with p = 0.5;
- ``random_color_jitter_3d``: with p = 0.8 SimCLR's jitter at strength 1 (brightness x U(0.2,
  1.8), contrast about each channel's mean over the clip, saturation, hue 0.2), in a random
  order per clip with clipping to [0, 1] after each; then grayscale with p = 0.2;
- ``random_blur``: a Gaussian of a tenth of the crop side (radius ``side // 10 // 2``),
  sigma ~ U(0.1, 2), zero padding ('SAME');
- ``random_solarization``: ``x < 0.5 ? x : 1 - x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# tf.image.rgb_to_grayscale's weights.
_GREY = (0.2989, 0.5870, 0.1140)
# sample_distorted_bounding_box as random_crop_resize calls it.
_CROP_ATTEMPTS = 100
_MIN_OBJECT_COVERED = 0.1
_ROUNDING_EPS = 1e-7  # GenerateRandomCrop's kEps


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def sample_crop_boxes(
    frame_size: Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random crops of whole frames, drawn as TensorFlow's ``sample_distorted_bounding_box``
    draws them (``random_crop_resize``'s call: 100 attempts, ``min_object_covered`` 0.1, the
    whole frame when no attempt fits; see ``crop_attempts``).

    Args:
        frame_size: (B, 2) int (height, width) of each clip's decoded frames.

    Returns:
        (B, 4) int64 ``[x1, y1, x2, y2]`` in pixels, end exclusive.
    """
    draws = torch.rand(4, frame_size.shape[0], _CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    aspect = (draws[0] * (ratio[1] - ratio[0]) + ratio[0]).float()
    boxes, fits = crop_attempts(frame_size, scale=scale, aspect=aspect, uniforms=draws[1:])  # (B, K, 4)
    first = fits.float().argmax(dim=1)  # the first attempt that fits (0 when none does)
    chosen = boxes[torch.arange(len(boxes)), first]  # (B, K, 4) -> (B, 4)
    zero = torch.zeros_like(frame_size[:, 0])
    whole = torch.stack([zero, zero, frame_size[:, 1], frame_size[:, 0]], dim=-1).long()
    return torch.where(fits.any(dim=1, keepdim=True), chosen, whole)


def crop_attempts(
    frame_size: Tensor, *, scale: tuple[float, float], aspect: Tensor, uniforms: Tensor
) -> tuple[Tensor, Tensor]:
    """Vectorised ``sample_distorted_bounding_box_op.cc::GenerateRandomCrop`` (float32 as there).

    Per attempt with aspect ratio a (w / h): the height is uniform over the integers between
    ``round(sqrt(min_area / a))`` and ``round(sqrt(max_area / a))`` (lowered until the rounded
    width fits), the width ``round(h · a)``, one row added or removed when rounding left the
    area outside ``scale``; the offset is uniform over ``[0, H - h)`` and ``[0, W - w)`` (as
    Philox's ``Uniform(n)``, the last position is never drawn).

    Args:
        frame_size: (B, 2) int (height, width).
        aspect: (B, K) float32 aspect ratio of each attempt.
        uniforms: (3, B, K) U[0, 1) draws for the height, the y and the x offset.

    Returns:
        (boxes (B, K, 4) int64 ``[x1, y1, x2, y2]``, fits (B, K) bool: the attempt satisfies
        the area, size and ``min_object_covered`` constraints).
    """
    height = frame_size[:, 0, None].float().expand_as(aspect)  # (B,) -> (B, K)
    width = frame_size[:, 1, None].float().expand_as(aspect)
    min_area, max_area = scale[0] * width * height, scale[1] * width * height
    h = torch.sqrt(min_area / aspect).round()  # torch.round and lrintf both round half to even
    h_max = torch.sqrt(max_area / aspect).round()
    fitted = torch.floor((width + 0.5 - _ROUNDING_EPS) / aspect)
    fitted = torch.where((fitted * aspect).round() > width, fitted - 1, fitted)
    h_max = torch.where((h_max * aspect).round() > width, fitted, h_max)
    h_max = torch.minimum(h_max, height)
    h = torch.minimum(h, h_max)
    h = h + torch.where(h < h_max, _below(h_max - h + 1, uniforms[0]), 0.0)
    w = (h * aspect).round()
    grow = w * h < min_area
    h = torch.where(grow, h + 1, h)
    w = torch.where(grow, (h * aspect).round(), w)
    shrink = w * h > max_area
    h = torch.where(shrink, h - 1, h)
    w = torch.where(shrink, (h * aspect).round(), w)
    area = w * h
    fits = (area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
    fits &= area >= _MIN_OBJECT_COVERED * width * height  # SatisfiesOverlapConstraints, whole-frame box
    y = torch.where(h < height, _below(height - h, uniforms[1]), 0.0)
    x = torch.where(w < width, _below(width - w, uniforms[2]), 0.0)
    return torch.stack([x, y, x + w, y + h], dim=-1).long(), fits


def _below(bound: Tensor, u: Tensor) -> Tensor:
    """floor(u · bound): an integer in [0, bound) from a U[0, 1) draw (float64 for large bounds)."""
    return (u * bound.double().clamp(min=0)).floor().to(bound.dtype)


def crop_resize(video: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Cut each clip's box, resize it to ``size``² as ``tf.image.resize`` does (bilinear, half-
    pixel centres, no antialiasing) and mirror the flipped ones.

    Args:
        video: (B, C, T, H, W) uint8 or float.
        boxes: (B, 4) int ``[x1, y1, x2, y2]`` (CPU), end exclusive.
        flip: (B,) bool (CPU).

    Returns:
        (B, C, T, size, size) float in the input's range.
    """
    views = []
    for clip, (x1, y1, x2, y2), mirror in zip(video, boxes.tolist(), flip.tolist(), strict=True):
        cut = clip[:, :, y1:y2, x1:x2].float()  # (C, T, h, w)
        view = F.interpolate(cut, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        views.append(view.flip(-1) if mirror else view)
    return torch.stack(views)


def _channel_grey(x: Tensor) -> Tensor:
    """(N, 3, ...) RGB -> (N, 1, ...) luma with TensorFlow's weights."""
    weights = x.new_tensor(_GREY).view(1, 3, *([1] * (x.dim() - 2)))
    return (x * weights).sum(dim=1, keepdim=True)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return x * factor.view(-1, 1, 1, 1, 1)  # SimCLR v2's multiplicative brightness


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    # tf.image.adjust_contrast on the clip as one tall image: each channel's mean over all frames.
    mean = x.mean(dim=(2, 3, 4), keepdim=True)  # (N, C, 1, 1, 1)
    return (x - mean) * factor.view(-1, 1, 1, 1, 1) + mean


def _in_hsv(x: Tensor, change) -> Tensor:
    """Apply ``change(h, s, v)`` in HSV space to (N, 3, T, H, W) RGB in [0, 1]."""
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    n, _, t, hgt, wid = x.shape
    frames = x.transpose(1, 2).reshape(n * t, 3, hgt, wid)  # (N, 3, T, H, W) -> (N*T, 3, H, W)
    h, s, v = rgb_to_hsv(frames).unbind(dim=1)
    out = hsv_to_rgb(torch.stack(change(h, s, v), dim=1))
    return out.view(n, t, 3, hgt, wid).transpose(1, 2)  # (N*T, 3, H, W) -> (N, 3, T, H, W)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    per_frame = factor.repeat_interleave(x.shape[2]).view(-1, 1, 1)  # (N,) -> (N*T, 1, 1)
    return _in_hsv(x, lambda h, s, v: (h, (s * per_frame).clamp(0, 1), v))


def _hue(x: Tensor, delta: Tensor) -> Tensor:
    # kornia's hue is in radians [0, 2π); TensorFlow's delta is a fraction of the hue circle.
    per_frame = delta.repeat_interleave(x.shape[2]).view(-1, 1, 1) * (2 * math.pi)
    return _in_hsv(x, lambda h, s, v: (torch.remainder(h + per_frame, 2 * math.pi), s, v))


_COLOUR_OPS = (_brightness, _contrast, _saturation, _hue)


def _selected(p: float, n: int, generator: torch.Generator | None) -> Tensor:
    """Indices (CPU, int64) of the clips an operation with probability ``p`` applies to."""
    return torch.nonzero(torch.rand(n, generator=generator) < p).flatten()


def color_jitter(
    x: Tensor, *, strength: float, p: float = 0.8, generator: torch.Generator | None = None
) -> Tensor:
    """SimCLR's colour jitter on (B, C, T, H, W) clips in [0, 1], per clip: with probability
    ``p``, brightness, contrast, saturation and hue in an order drawn for that clip, each
    clipped to [0, 1] (``video_ssl_preprocess_ops.color_jitter_rand``)."""
    chosen = _selected(p, x.shape[0], generator)
    n = len(chosen)
    if n == 0:
        return x
    b, c, s = 0.8 * strength, 0.8 * strength, 0.8 * strength
    factors = (
        _uniform(n, max(0.0, 1 - b), 1 + b, generator),
        _uniform(n, 1 - c, 1 + c, generator),
        _uniform(n, 1 - s, 1 + s, generator),
        _uniform(n, -0.2 * strength, 0.2 * strength, generator),
    )
    order = torch.rand(n, len(_COLOUR_OPS), generator=generator).argsort(dim=1)  # (n, 4): a shuffle each
    x = x.clone()
    for step in range(len(_COLOUR_OPS)):
        for op_index, op in enumerate(_COLOUR_OPS):
            rows = torch.nonzero(order[:, step] == op_index).flatten()  # among the chosen clips
            if len(rows):
                clips = chosen[rows].to(x.device)
                x[clips] = op(x[clips], factors[op_index][rows].to(x.device)).clamp_(0.0, 1.0)
    return x


def grayscale(x: Tensor, *, p: float, generator: torch.Generator | None = None) -> Tensor:
    """With probability ``p`` per clip, luma in all three channels."""
    clips = _selected(p, x.shape[0], generator).to(x.device)
    if len(clips) == 0:
        return x
    x = x.clone()
    x[clips] = _channel_grey(x[clips]).expand(-1, 3, -1, -1, -1)
    return x


def gaussian_blur(
    x: Tensor, *, p: float, sigma: tuple[float, float] = (0.1, 2.0), generator: torch.Generator | None = None
) -> Tensor:
    """With probability ``p`` per clip, a separable Gaussian of radius ``side // 10 // 2`` and
    sigma ~ U(``sigma``), zero padding at the borders (``video_ssl_preprocess_ops.random_blur``)."""
    clips = _selected(p, x.shape[0], generator)
    radius = x.shape[-2] // 10 // 2
    if len(clips) == 0 or radius == 0:
        return x
    sigmas = _uniform(len(clips), *sigma, generator).to(x.device)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigmas[:, None] ** 2))  # (n, 2r + 1)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    picked = x[clips.to(x.device)]  # (n, C, T, H, W)
    n, c, t, h, w = picked.shape
    # One group per (clip, channel, frame) plane, each with its clip's kernel.
    planes = picked.reshape(1, n * c * t, h, w)
    weights = kernel.repeat_interleave(c * t, dim=0)  # (n, K) -> (n*C*T, K)
    planes = F.conv2d(planes, weights[:, None, None, :], padding=(0, radius), groups=n * c * t)
    planes = F.conv2d(planes, weights[:, None, :, None], padding=(radius, 0), groups=n * c * t)
    x = x.clone()
    x[clips.to(x.device)] = planes.view(n, c, t, h, w)
    return x


def solarize(x: Tensor, *, p: float, generator: torch.Generator | None = None) -> Tensor:
    """With probability ``p`` per clip, ``x < 0.5 ? x : 1 - x``."""
    clips = _selected(p, x.shape[0], generator).to(x.device)
    if len(clips) == 0:
        return x
    x = x.clone()
    picked = x[clips]
    x[clips] = torch.where(picked < 0.5, picked, 1.0 - picked)
    return x


class VideoAugment(nn.Module):
    """(B, C, T, H, W) uint8 (or float in [0, 1]) clips -> (B, C, T, size, size) float views.

    Args:
        size: output side.
        crop_scale, crop_ratio: area fraction (of the whole frame) and aspect (w/h) range of the
            random crop.
        flip, jitter, grayscale, blur, solarize: probabilities of each transform, per clip.
        strength: colour-jitter strength (SimCLR's s).
        zero_center: map [0, 1] to [-1, 1], as CVRL and ConST-CL feed their backbones.

    After each call, ``last_crop`` (B, 4) holds the crops drawn (``[x1, y1, x2, y2]`` pixels of
    the decoded frame, end exclusive) and ``last_flip`` (B,) which views were mirrored, so that
    boxes given in frame coordinates can follow the pixels into the views.
    """

    def __init__(
        self,
        *,
        size: int = 224,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (0.5, 2.0),
        flip: float = 0.5,
        jitter: float = 0.8,
        strength: float = 1.0,
        grayscale: float = 0.2,
        blur: float = 0.5,
        solarize: float = 0.0,
        zero_center: bool = True,
    ):
        super().__init__()
        self.size, self.crop_scale, self.crop_ratio = size, tuple(crop_scale), tuple(crop_ratio)
        self.flip, self.jitter, self.strength = flip, jitter, strength
        self.grayscale, self.blur, self.solarize = grayscale, blur, solarize
        self.zero_center = zero_center
        self.last_crop: Tensor | None = None
        self.last_flip: Tensor | None = None

    def extra_repr(self) -> str:
        settings = ("size", "crop_scale", "crop_ratio", "flip", "jitter", "strength", "grayscale", "blur",
                    "solarize", "zero_center")  # fmt: skip
        return ", ".join(f"{name}={getattr(self, name)}" for name in settings)

    def forward(self, video: Tensor, frame_size: Tensor | None = None) -> Tensor:
        """Augment a batch; ``frame_size`` (B, 2) gives each clip's decoded (height, width) when
        the clips are padded to a common canvas (``ClipDataset``'s ``"frame_size"``); crops never
        reach the padding. None: every clip fills the tensor."""
        if video.ndim != 5:
            raise ValueError(f"expected (B, C, T, H, W), got shape {tuple(video.shape)}")
        b = video.shape[0]
        if frame_size is None:
            frame_size = torch.tensor([video.shape[-2:]] * b)
        frame_size = frame_size.detach().to("cpu", torch.int64)
        boxes = sample_crop_boxes(frame_size, scale=self.crop_scale, ratio=self.crop_ratio)
        mirrored = torch.rand(b) < self.flip
        self.last_crop, self.last_flip = boxes, mirrored
        x = crop_resize(video, boxes, mirrored, self.size)
        x = x / 255.0 if video.dtype == torch.uint8 else x
        x = color_jitter(x, strength=self.strength, p=self.jitter)
        x = grayscale(x, p=self.grayscale)
        x = gaussian_blur(x, p=self.blur)
        x = solarize(x, p=self.solarize).clamp_(0.0, 1.0)
        return x.mul_(2.0).sub_(1.0) if self.zero_center else x


def cvrl_view_augments(size: int = 224) -> tuple[VideoAugment, VideoAugment]:
    """The two views of CVRL / ConST-CL: blur always on the first, with p = 0.1 on the second,
    which alone is solarized (p = 0.2)."""
    return VideoAugment(size=size, blur=1.0, solarize=0.0), VideoAugment(size=size, blur=0.1, solarize=0.2)
