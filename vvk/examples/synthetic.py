"""A built-in video example set that needs no download: videos synthesised from the sample
photographs that ship inside scikit-image.

Each video is a camera moving over a photograph (the class: pan left, pan right, zoom in, zoom
out) with two or three sprites cut from other photographs moving on their own bouncing paths,
so that appearance, camera motion and object motion all vary between videos. The set is written
once as real H.264 mp4 files (``class/video.mp4``, the Kinetics/UCF101 layout) into the user
cache, and read back through vvk's normal video pipeline.

With ``SyntheticSpec(actions=True)`` (``action_example_dir``) the sprites show whole photographs
and each performs one action (``vvk.examples.sprite_actions``), and the set also holds what a
localisation and a video-text-audio method need::

    manifest.json              the spec, the classes, the actions, the train/val split
    train.csv, val.csv         the split as video lists (``path,label``), for ``data=``
    captions.tsv               a caption per video (video_id, start, end, caption, split)
    annotations/train.csv      AVA-style boxes and actions at key frames (and val.csv)
    annotations/label_map.pbtxt
    annotations/tracks.json    every sprite's box in every frame, in pixels
    CLASS/CLASS_NNN.mp4        with an AAC sound track: a tone per sprite (pitch: its height)

The last quarter of each class is the validation split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vvk.examples import sprite_actions as acts
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
    actions: bool = False  # sprites with actions, boxes, captions and sound (the module docstring)

    def record(self) -> dict[str, Any]:
        """The spec as the manifest records it. Without actions, the fields the set had before
        ``actions`` existed: its folder name and its manifest stay what they were."""
        fields = asdict(self)
        if not self.actions:
            del fields["actions"]
        return fields

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:10]


def example_dir(spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The example set for ``spec``, synthesised into the user cache on first use."""
    dest = cache_dir() / "examples" / f"synthetic-{spec.key()}"
    if not (dest / "manifest.json").is_file():
        synthesize(dest, spec)
    return dest


def action_example_dir(spec: SyntheticSpec = SyntheticSpec(actions=True)) -> Path:
    """The example set with sprite actions, boxes, captions and sound (``spec`` with
    ``actions=True``), synthesised into the user cache on first use."""
    return example_dir(replace(spec, actions=True))


def synthesize(dest: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the example set to ``dest`` (built in a temporary folder, then renamed into place)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    photos = _load_photos()
    rng = np.random.default_rng(spec.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        manifest: dict[str, Any] = {"spec": spec.record(), "classes": list(CLASSES), "photos": list(PHOTOS)}
        if spec.actions:
            manifest.update(_write_action_set(tmp, photos, spec, rng))
        else:
            for motion in CLASSES:
                (tmp / motion).mkdir()
                for i in range(spec.videos_per_class):
                    video = render_video(photos, motion, spec, rng)  # (T, H, W, 3) uint8
                    write_mp4(tmp / motion / f"{motion}_{i:03d}.mp4", video, fps=spec.fps)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_action_set(
    root: Path, photos: list[np.ndarray], spec: SyntheticSpec, rng: np.random.Generator
) -> dict[str, Any]:
    """Write the action set's videos and the files that describe them (the module docstring);
    returns what the manifest adds."""
    held = acts.held_out(spec.videos_per_class)
    split: dict[str, list[str]] = {"train": [], "val": []}
    ava: dict[str, list[list[str]]] = {"train": [], "val": []}
    captions = [["video_id", "start", "end", "caption", "split"]]
    tracks: dict[str, list[dict[str, Any]]] = {}
    geometry = {"frames": spec.frames, "fps": spec.fps, "size": spec.size}
    for motion in CLASSES:
        (root / motion).mkdir()
        for i in range(spec.videos_per_class):
            part = "val" if i >= spec.videos_per_class - held else "train"
            video_id = f"{motion}/{motion}_{i:03d}"  # AVA's id: the path without extension
            video = render_action_video(photos, motion, spec, rng)
            wave = acts.sound(video.tracks, **geometry)
            write_mp4(root / f"{video_id}.mp4", video.frames, fps=spec.fps, audio=wave)
            split[part].append(video_id)
            ava[part] += acts.ava_rows(video_id, video.tracks, **geometry)
            text = acts.caption(motion, video.background, video.tracks)
            # Caption tables name a video by its file stem (vvk.data.sources.VideoItem.video_id).
            captions.append([Path(video_id).name, "0", f"{spec.frames / spec.fps:g}", text, part])
            tracks[video_id] = [
                {"photo": t.photo, "action": t.action, "boxes": t.boxes.tolist()} for t in video.tracks
            ]
    for part, ids in split.items():
        listed = [[f"{video_id}.mp4", video_id.split("/")[0]] for video_id in ids]
        acts.write_csv(root / f"{part}.csv", [["path", "label"], *listed])
        acts.write_csv(root / "annotations" / f"{part}.csv", ava[part])
    acts.write_csv(root / "captions.tsv", captions, delimiter="\t")
    acts.write_label_map(root / "annotations" / "label_map.pbtxt")
    boxes = {"size": spec.size, "box_format": "x1,y1,x2,y2 pixels, x2 and y2 exclusive", "videos": tracks}
    (root / "annotations" / "tracks.json").write_text(json.dumps(boxes) + "\n")
    return {"actions": list(acts.ACTIONS), "audio_rate": acts.AUDIO_RATE, "split": split}


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
    return _to_uint8(frames)


class ActionVideo(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8
    background: str  # the photograph the camera moves over
    tracks: list[acts.SpriteTrack]


def render_action_video(
    photos: list[np.ndarray], motion: str, spec: SyntheticSpec, rng: np.random.Generator
) -> ActionVideo:
    """One video of the action set: camera ``motion`` over one photo, two or three sprites
    showing other photos (a different one each), each with its own action."""
    background = int(rng.integers(len(photos)))
    frames = _camera_frames(photos[background], motion, spec, rng)  # (T, 3, H, W) float in [0, 1]
    others = [i for i in range(len(photos)) if i != background]
    tracks = []
    for i in rng.choice(others, size=int(rng.integers(2, 4)), replace=False).tolist():
        track = acts.draw_track(PHOTOS[i], frames=spec.frames, size=spec.size, rng=rng)
        acts.paint(frames, photos[i], track)
        tracks.append(track)
    return ActionVideo(_to_uint8(frames), PHOTOS[background], tracks)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    # (T, 3, H, W) float in [0, 1] -> (T, H, W, 3) uint8
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


def write_mp4(
    path: str | os.PathLike,
    video: np.ndarray,
    *,
    fps: int,
    audio: np.ndarray | None = None,
    audio_rate: int = acts.AUDIO_RATE,
) -> None:
    """Encode (T, H, W, 3) uint8 frames as H.264 in an mp4 container, with ``audio`` (a mono
    float waveform in [-1, 1] from time 0) as AAC when given."""
    import av

    from vvk.data.synth import _write_audio

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # One thread and no macroblock tree: with either, libx264 (PyAV 16's) wrote different
        # bytes for the same frames from one call to the next, and the demo's retrieval figure
        # moved with them (issue 22); the set is now the same bytes wherever it is made.
        stream.options = {"crf": "18", "preset": "veryfast", "g": str(fps), "threads": "1",
                          "x264-params": "mbtree=0"}  # fmt: skip
        sound = None if audio is None else container.add_stream("aac", rate=audio_rate, layout="mono")
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            _write_audio(container, sound, audio, audio_rate)
