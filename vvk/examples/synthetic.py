"""A built-in video example set that needs no download: videos synthesised from the sample
photographs that ship inside scikit-image.

Each video is a camera moving over a photograph (the class: pan left, pan right, zoom in, zoom
out) with two or three sprites cut from other photographs moving on their own bouncing paths,
so that appearance, camera motion and object motion all vary between videos. The set is written
once as real H.264 mp4 files (``class/video.mp4``, the Kinetics/UCF101 layout) into the user
cache, and read back through vvk's normal video pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vvk.paths import cache_dir

CLASSES = ("pan-left", "pan-right", "zoom-in", "zoom-out")
# Colour photographs bundled with scikit-image (no pooch download needed).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
)


@dataclass(frozen=True)
class SyntheticSpec:
    videos_per_class: int = 8
    frames: int = 48
    size: int = 112
    fps: int = 12
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def example_dir(spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The example set for ``spec``, synthesised into the user cache on first use."""
    dest = cache_dir() / "examples" / f"synthetic-{spec.key()}"
    if not (dest / "manifest.json").is_file():
        synthesize(dest, spec)
    return dest


def synthesize(dest: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the example set to ``dest`` (built in a temporary folder, then renamed into place)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    photos = _load_photos()
    rng = np.random.default_rng(spec.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for motion in CLASSES:
            (tmp / motion).mkdir()
            for i in range(spec.videos_per_class):
                video = render_video(photos, motion, spec, rng)  # (T, H, W, 3) uint8
                write_mp4(tmp / motion / f"{motion}_{i:03d}.mp4", video, fps=spec.fps)
        manifest = {"spec": asdict(spec), "classes": list(CLASSES), "photos": list(PHOTOS)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _load_photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        photos.append(np.ascontiguousarray(img[..., :3]))
    return photos


def render_video(
    photos: list[np.ndarray], motion: str, spec: SyntheticSpec, rng: np.random.Generator
) -> np.ndarray:
    """One video: camera ``motion`` over one photo, sprites from others; (T, H, W, 3) uint8."""
    background_idx = int(rng.integers(len(photos)))
    frames = _camera_frames(photos[background_idx], motion, spec, rng)  # (T, 3, H, W) float in [0, 1]
    others = [p for i, p in enumerate(photos) if i != background_idx]
    for _ in range(int(rng.integers(2, 4))):
        _add_sprite(frames, others[int(rng.integers(len(others)))], rng)
    # (T, 3, H, W) -> (T, H, W, 3)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _camera_frames(
    photo: np.ndarray, motion: str, spec: SyntheticSpec, rng: np.random.Generator
) -> torch.Tensor:
    """Sample the camera window over the photo with an affine grid per frame."""
    image = torch.from_numpy(photo).permute(2, 0, 1).float().div(255)[None]  # (1, 3, Hp, Wp)
    t = torch.linspace(0, 1, spec.frames)
    start = torch.tensor(rng.uniform(-0.25, 0.25, size=2), dtype=torch.float32)  # window centre (x, y)
    speed = float(rng.uniform(0.3, 0.5))
    scale = torch.full_like(t, float(rng.uniform(0.45, 0.6)))  # window size relative to the photo
    centre = start.expand(spec.frames, 2).clone()  # (T, 2)
    if motion == "pan-left":
        centre[:, 0] += speed * (0.5 - t)
    elif motion == "pan-right":
        centre[:, 0] += speed * (t - 0.5)
    elif motion == "zoom-in":
        scale = scale * (1.0 - 0.45 * t)
    elif motion == "zoom-out":
        scale = scale * (0.55 + 0.45 * t)
    else:
        raise ValueError(f"unknown camera motion {motion!r}")
    theta = torch.zeros(spec.frames, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, [spec.frames, 3, spec.size, spec.size], align_corners=False)
    return F.grid_sample(
        image.expand(spec.frames, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="reflection",
        align_corners=False,
    )


def _add_sprite(frames: torch.Tensor, photo: np.ndarray, rng: np.random.Generator) -> None:
    """Paste a round patch of ``photo`` moving on a bouncing straight path, in place."""
    steps, _, size, _ = frames.shape
    radius = int(rng.integers(size // 9, size // 5))
    d = 2 * radius
    y0 = int(rng.integers(0, photo.shape[0] - d))
    x0 = int(rng.integers(0, photo.shape[1] - d))
    patch = torch.from_numpy(photo[y0 : y0 + d, x0 : x0 + d]).permute(2, 0, 1).float().div(255)  # (3, d, d)
    yy, xx = torch.meshgrid(torch.arange(d) - radius + 0.5, torch.arange(d) - radius + 0.5, indexing="ij")
    mask = ((yy**2 + xx**2) <= radius**2).float()  # (d, d)
    pos = rng.uniform(0, size - d, size=2)
    vel = rng.uniform(1.0, 3.0, size=2) * rng.choice([-1, 1], size=2)
    for t in range(steps):
        y, x = int(pos[0]), int(pos[1])
        region = frames[t, :, y : y + d, x : x + d]
        region.mul_(1 - mask).add_(patch * mask)
        pos += vel
        for axis in range(2):  # bounce off the frame edges
            if not 0 <= pos[axis] <= size - d:
                vel[axis] = -vel[axis]
                pos[axis] = min(max(pos[axis], 0), size - d)


def write_mp4(path: str | os.PathLike, video: np.ndarray, *, fps: int) -> None:
    """Encode (T, H, W, 3) uint8 frames as H.264 in an mp4 container."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "g": str(fps)}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
