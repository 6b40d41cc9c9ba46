"""Sprites that act: the part of the synthetic example set (``vvk.examples.synthetic``) that
gives each sprite an action of its own, and what is written from it.

Each sprite is a disc showing a whole bundled photograph, drawn in frame coordinates (so its
motion is its own, whatever the camera does), with one action for the whole clip: ``left``,
``right``, ``up``, ``down`` (a straight path chosen to fit in the frame: no bounce can reverse
it), ``grow`` (the diameter grows, the centre stays) or ``still``. From the tracks come:

- AVA-style annotations: a row per sprite and key frame (``video_id,timestamp,x1,y1,x2,y2,
  action_id,person_id``, boxes normalised to [0, 1]), the label map in AVA's pbtxt form;
- a caption per video (camera motion, photographs, actions), in the table form that
  ``vvk.data.sources.read_captions`` reads;
- a sound track: per sprite a tone whose pitch follows the height of its centre and whose
  loudness follows its area, summed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ACTIONS = ("left", "right", "up", "down", "grow", "still")
# The tiny VATT preset's rate; other rates are resampled by the decoder.
AUDIO_RATE = 16000
# Pitch from the bottom of the frame (LOW_HZ) to the top (LOW_HZ · 2^OCTAVES).
LOW_HZ, OCTAVES = 220.0, 3.0
# Amplitude per unit of (diameter / frame size)²: a disc of a third of the frame sounds at 0.28.
LOUDNESS = 2.5
# What a caption calls each photograph (vvk.examples.synthetic.PHOTOS).
NOUNS = {
    "astronaut": "astronaut",
    "chelsea": "cat",
    "coffee": "coffee cup",
    "rocket": "rocket",
    "hubble_deep_field": "galaxy",
    "immunohistochemistry": "cell",
    "colorwheel": "colour wheel",
}
_CAMERA = {"pan-left": "pans left", "pan-right": "pans right", "zoom-in": "zooms in", "zoom-out": "zooms out"}
_VERBS = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
          "grow": "grows", "still": "stays still"}  # fmt: skip
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (x, y) direction


@dataclass(frozen=True)
class SpriteTrack:
    """One sprite: the photograph it shows, its action and its box in every frame, (T, 4) int
    ``x1, y1, x2, y2`` in pixels (``x2``, ``y2`` exclusive; square: the disc's bounding box)."""

    photo: str
    action: str
    boxes: np.ndarray


def draw_track(photo: str, *, frames: int, size: int, rng: np.random.Generator) -> SpriteTrack:
    """A random action and a path that performs it inside a ``size``² frame for ``frames`` frames."""
    action = ACTIONS[int(rng.integers(len(ACTIONS)))]
    diameter = 2 * int(rng.integers(size // 9, size // 5))
    t = np.linspace(0.0, 1.0, frames)  # (T,)
    if action == "grow":
        # At least 1.4x the diameter (twice the area) by the end, at most half the frame.
        end = max(min(round(diameter * rng.uniform(1.6, 2.0)), size // 2), round(1.4 * diameter))
        diameters = np.round(diameter + (end - diameter) * t).astype(np.int64)
        centre = rng.uniform(end / 2, size - end / 2, size=2)
        corner = np.round(centre[None] - diameters[:, None] / 2).astype(np.int64)  # (T, 2) x, y
        return SpriteTrack(photo, action, np.concatenate([corner, corner + diameters[:, None]], axis=1))
    room = size - diameter
    corner = rng.uniform(0, room, size=2)[None].repeat(frames, axis=0)  # (T, 2) x, y
    if action != "still":
        # The whole path is chosen inside the frame, so the motion never reverses.
        travel = rng.uniform(0.5, 0.9) * room
        step = np.array(_STEPS[action], dtype=np.float64)
        start = rng.uniform(0, room - travel)
        axis = int(np.flatnonzero(step)[0])
        corner[:, axis] = start + travel * t if step[axis] > 0 else room - start - travel * t
    corner = np.round(corner).astype(np.int64)
    return SpriteTrack(photo, action, np.concatenate([corner, corner + diameter], axis=1))


def paint(frames: torch.Tensor, photo: np.ndarray, track: SpriteTrack) -> None:
    """Draw ``track`` into ``frames`` (T, 3, H, W) float in [0, 1], in place: a disc showing the
    central square of ``photo`` (Hp, Wp, 3) uint8, resized to the box of each frame."""
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = torch.from_numpy(photo[top : top + side, left : left + side].copy())
    square = square.permute(2, 0, 1).float().div(255)[None]  # (1, 3, S, S)
    discs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for t, (x1, y1, x2, y2) in enumerate(track.boxes.tolist()):
        d = x2 - x1
        if d not in discs:
            patch = F.interpolate(square, size=(d, d), mode="bilinear", antialias=True)[0]
            r = d / 2
            yy, xx = torch.meshgrid(torch.arange(d) - r + 0.5, torch.arange(d) - r + 0.5, indexing="ij")
            discs[d] = (patch, ((yy**2 + xx**2) <= r**2).float())  # (3, d, d), (d, d)
        patch, mask = discs[d]
        frames[t, :, y1:y2, x1:x2].mul_(1 - mask).add_(patch * mask)


def pitch(height: np.ndarray) -> np.ndarray:
    """Tone frequency (Hz) of a sprite whose centre is at ``height`` (0 top, 1 bottom of the frame)."""
    return LOW_HZ * 2.0 ** (OCTAVES * (1.0 - height))


def sound(
    tracks: Sequence[SpriteTrack], *, frames: int, fps: float, size: int, rate: int = AUDIO_RATE
) -> np.ndarray:
    """The clip's waveform (S,) in [-1, 1] at ``rate``: per sprite a sine whose pitch follows
    its height and whose amplitude follows its area, both interpolated between frame centres."""
    samples = round(frames / fps * rate)
    times = (np.arange(samples) + 0.5) / rate  # (S,)
    frame_times = (np.arange(frames) + 0.5) / fps  # (T,)
    wave = np.zeros(samples)
    for track in tracks:
        boxes = track.boxes.astype(np.float64)  # (T, 4)
        height = (boxes[:, 1] + boxes[:, 3]) / (2 * size)
        amplitude = LOUDNESS * ((boxes[:, 2] - boxes[:, 0]) / size) ** 2
        frequency = np.interp(times, frame_times, pitch(height))  # (S,)
        # The phase integrates the frequency, so a moving pitch glides without clicks.
        wave += np.interp(times, frame_times, amplitude) * np.sin(2 * np.pi * np.cumsum(frequency) / rate)
    return wave / max(1.0, np.abs(wave).max() / 0.9)


def caption(camera: str, background: str, tracks: Sequence[SpriteTrack]) -> str:
    """What a video shows, e.g. "the camera pans left over a coffee cup; a rocket moves up, an
    astronaut grows and a cat stays still"."""
    parts = [f"{_article(NOUNS[t.photo])} {NOUNS[t.photo]} {_VERBS[t.action]}" for t in tracks]
    sprites = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"the camera {_CAMERA[camera]} over {_article(NOUNS[background])} {NOUNS[background]}; {sprites}"


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def key_frames(*, frames: int, fps: int) -> list[tuple[int, int]]:
    """(second, frame index) of the key frames: every whole second that has a frame, 0 included
    (frame ``s · fps`` is the one on screen at ``s`` seconds)."""
    return [(s, s * fps) for s in range((frames - 1) // fps + 1)]


def ava_rows(
    video_id: str, tracks: Sequence[SpriteTrack], *, frames: int, fps: int, size: int
) -> list[list[str]]:
    """AVA CSV rows ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` of one video:
    boxes normalised by the frame size, action ids from 1 (``ACTIONS`` order), the sprite's index
    as person id."""
    rows = []
    for second, frame in key_frames(frames=frames, fps=fps):
        for person, track in enumerate(tracks):
            box = [f"{v / size:.3f}" for v in track.boxes[frame].tolist()]
            rows.append([video_id, f"{second:04d}", *box, str(ACTIONS.index(track.action) + 1), str(person)])
    return rows


def write_csv(path: Path, rows: Sequence[Sequence[str]], *, delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\n").writerows(rows)


def write_label_map(path: str | os.PathLike) -> None:
    """``ACTIONS`` in AVA's label-map form (``item { name: "left" id: 1 }``)."""
    items = [f'item {{\n  name: "{name}"\n  id: {i}\n}}\n' for i, name in enumerate(ACTIONS, start=1)]
    Path(path).write_text("".join(items), encoding="utf-8")


def held_out(videos_per_class: int) -> int:
    """Videos of each class in the validation split: the last quarter, at least one when a class
    has two or more (so that both splits exist)."""
    return max(videos_per_class // 4, 1) if videos_per_class >= 2 else 0
