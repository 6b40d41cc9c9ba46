"""The synthetic video example set: the old set unchanged, and its action form (sprite actions,
AVA boxes that hold their sprites, captions of what was drawn, a sound track that follows the
sprites)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vvk.data.decode import probe
from vvk.data.decoders import get_decoder
from vvk.data.sources import read_captions
from vvk.examples import sprite_actions as acts
from vvk.examples.synthetic import (
    CLASSES,
    PHOTOS,
    SyntheticSpec,
    _load_photos,
    action_example_dir,
    render_video,
    synthesize,
)

OLD = SyntheticSpec(videos_per_class=2, frames=16, size=64)
ACTION = SyntheticSpec(videos_per_class=2, frames=32, size=64, actions=True)
# sha256 of the frames the old generator rendered for OLD, class by class (recorded before the
# actions were added). The mp4 files themselves are not pinned: this build's x264 encodes the
# same frames to different bytes from one run to the next.
OLD_FRAMES = [
    "a28d0e4e29c267bfd35f34aa6e19598d102a694ae4e1295927a833f86a735591",
    "8b4e1ce9b96c837d74f92fcf15e360a22b8f68be014587fdb04800b2710360a5",
    "fc10ad711065ec8906549721957d886a4858fdda83b605d24d9b18d7bd18734b",
    "62adc589e4906818887c0246f3f878a82465eb258a833b1b3e2aaac0dcc7c800",
    "dc96d58af43fe54c4baf36b7fc532632746ba19419d00e27e9ff4ee49abccc6e",
    "ff4c38345d333d45cae19482c683890eb5d33b7f7d81c971f8b6cde8fc2d4578",
    "3cc3df167385ee047470253a7fe408e2d90c8018b3fbb9d0438bdf6a4a56398f",
    "b805857ce181d8db6604fa74572c4becf5ce4157413ba92df9810a72b713225b",
]
OLD_MANIFEST = "b571685da3801347c7aafb24addd1343c168750cdf733f99f8747d1ddd98c144"
VERBS = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
         "grow": "grows", "still": "stays still"}  # fmt: skip


def decoded_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (T, H, W, 3)


@pytest.fixture(scope="module")
def action_set(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("actions") / "set", ACTION)


@pytest.fixture(scope="module")
def tracks(action_set) -> dict[str, list[dict]]:
    return json.loads((action_set / "annotations" / "tracks.json").read_text())["videos"]


def read_ava(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_old_spec_draws_and_renders_the_same_videos(tmp_path):
    photos, rng = _load_photos(), np.random.default_rng(OLD.seed)
    rendered = [render_video(photos, motion, OLD, rng) for motion in CLASSES for _ in range(2)]
    assert [hashlib.sha256(v.tobytes()).hexdigest() for v in rendered] == OLD_FRAMES
    assert OLD.key() == "9c993ab88a" and SyntheticSpec().key() == "3a26788a1e"  # the cache folders
    root = synthesize(tmp_path / "old", OLD)
    assert hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest() == OLD_MANIFEST
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", *CLASSES]  # nothing new
    files = [root / m / f"{m}_{i:03d}.mp4" for m in CLASSES for i in range(2)]
    for i, path in enumerate(files):
        with av.open(str(path)) as container:
            assert not container.streams.audio
        error = [np.abs(decoded_frames(path).astype(int) - video).mean() for video in rendered]
        assert error[i] < 10 and error[i] < 0.3 * min(np.delete(error, i))  # its own frames, at crf 18


def test_action_set_is_another_set_with_a_recorded_split(action_set, monkeypatch, tmp_path):
    assert ACTION.key() != OLD.key()
    manifest = json.loads((action_set / "manifest.json").read_text())
    assert manifest["spec"]["actions"] is True and manifest["actions"] == list(acts.ACTIONS)
    assert manifest["split"]["val"] == [f"{m}/{m}_001" for m in CLASSES]  # the last of each class
    assert manifest["split"]["train"] == [f"{m}/{m}_000" for m in CLASSES]
    for part, ids in manifest["split"].items():
        rows = read_ava(action_set / f"{part}.csv")
        assert rows == [["path", "label"]] + [[f"{v}.mp4", v.split("/")[0]] for v in ids]
    monkeypatch.setenv("VVK_CACHE", str(tmp_path))
    made = action_example_dir(SyntheticSpec(videos_per_class=1, frames=8, size=48))  # actions forced on
    assert (
        made.name == f"synthetic-{SyntheticSpec(videos_per_class=1, frames=8, size=48, actions=True).key()}"
    )
    assert (made / "captions.tsv").is_file() and (made / "annotations" / "label_map.pbtxt").is_file()


def test_drawn_tracks_stay_in_the_frame_and_do_what_their_label_says():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        size, frames = int(rng.choice([48, 64, 112])), int(rng.choice([8, 16, 48]))
        track = acts.draw_track("rocket", frames=frames, size=size, rng=rng)
        seen.add(track.action)
        b = track.boxes.astype(float)  # (T, 4)
        assert b.shape == (frames, 4) and b.min() >= 0 and b.max() <= size
        assert np.all(b[:, 2] - b[:, 0] == b[:, 3] - b[:, 1])  # square boxes of the disc
        cx, cy, side = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0]
        moves = {"left": -np.diff(cx), "right": np.diff(cx), "up": -np.diff(cy), "down": np.diff(cy)}
        if track.action in moves:
            assert np.all(moves[track.action] >= 0)  # never reverses (no bounce)
            assert moves[track.action].sum() >= 0.2 * size - 1  # a clear displacement
            assert np.ptp(side) == 0
            other = cy if track.action in ("left", "right") else cx
            assert np.ptp(other) == 0
        elif track.action == "grow":
            assert np.all(np.diff(side) >= 0) and (side[-1] / side[0]) ** 2 >= 1.9
            assert np.ptp(cx) <= 1 and np.ptp(cy) <= 1  # the centre stays (to rounding)
        else:
            assert np.ptp(b, axis=0).max() == 0
    assert seen == set(acts.ACTIONS)


def test_ava_files_parse_and_agree_with_the_tracks(action_set, tracks):
    label_map = (action_set / "annotations" / "label_map.pbtxt").read_text()
    items = re.findall(r'item\s*\{\s*name:\s*"([^"]+)"\s*id:\s*(\d+)\s*\}', label_map)
    assert {int(i): name for name, i in items} == dict(enumerate(acts.ACTIONS, start=1))
    manifest = json.loads((action_set / "manifest.json").read_text())
    for part in ("train", "val"):
        rows = read_ava(action_set / "annotations" / f"{part}.csv")
        assert all(len(row) == 8 for row in rows)
        assert {row[0] for row in rows} == set(manifest["split"][part])
        # 32 frames at 12 fps: key frames at 0, 1 and 2 s; one row per sprite and key frame.
        assert len(rows) == 3 * sum(len(tracks[v]) for v in manifest["split"][part])
        for video_id, stamp, *box, action_id, person in rows:
            track = tracks[video_id][int(person)]
            assert acts.ACTIONS[int(action_id) - 1] == track["action"]
            frame = int(stamp) * ACTION.fps
            assert [round(float(v) * ACTION.size) for v in box] == track["boxes"][frame]


def _disc(d: int, inset: float) -> np.ndarray:
    r = d / 2
    yy, xx = np.meshgrid(np.arange(d) - r + 0.5, np.arange(d) - r + 0.5, indexing="ij")
    return yy**2 + xx**2 <= (r - inset) ** 2  # (d, d)


def _mismatch(frame: np.ndarray, expected: np.ndarray, box: list[int]) -> float:
    """Mean |decoded - drawn| inside the disc of ``box`` (an inset keeps the codec's edge blur out)."""
    x1, y1, x2, y2 = box
    inside = _disc(x2 - x1, 1.5)
    return float(np.abs(frame[y1:y2, x1:x2][inside].astype(float) - expected[inside]).mean())


def test_each_annotated_box_holds_its_sprite(action_set, tracks):
    photos = dict(zip(PHOTOS, _load_photos(), strict=True))
    right, shifted = [], []
    for video_id, sprites in tracks.items():
        decoded = decoded_frames(action_set / f"{video_id}.mp4")
        for k, sprite in enumerate(sprites):
            for t in (0, ACTION.frames // 2, ACTION.frames - 1):
                box = sprite["boxes"][t]
                later = [s["boxes"][t] for s in sprites[k + 1 :]]  # drawn on top of this one
                if any(_overlap(box, other) for other in later):
                    continue
                canvas = torch.zeros(1, 3, ACTION.size, ACTION.size)
                acts.paint(canvas, photos[sprite["photo"]], acts.SpriteTrack("", "", np.array([box])))
                drawn = (canvas[0].permute(1, 2, 0) * 255).numpy()  # (H, W, 3)
                x1, y1, x2, y2 = box
                right.append(_mismatch(decoded[t], drawn[y1:y2, x1:x2], box))
                move = 4 if x2 + 4 <= ACTION.size else -4
                shifted.append(_mismatch(decoded[t], drawn[y1:y2, x1:x2], [x1 + move, y1, x2 + move, y2]))
    assert len(right) >= 20
    # The decoded disc is the drawn one up to coding error (~7 levels at 64² and crf 18), and
    # clearly less like it 4 pixels away.
    assert np.mean(right) < 12 and max(right) < 25, right
    assert np.mean(shifted) > 3 * np.mean(right), (np.mean(shifted), np.mean(right))
    assert np.mean(np.array(right) < np.array(shifted)) > 0.9


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_captions_say_what_was_drawn(action_set, tracks):
    table = read_captions(action_set / "captions.tsv")
    assert sorted(table) == sorted(v.split("/")[1] for v in tracks)
    camera = {
        "pan-left": "pans left",
        "pan-right": "pans right",
        "zoom-in": "zooms in",
        "zoom-out": "zooms out",
    }
    for video_id, sprites in tracks.items():
        (cap,) = table[video_id.split("/")[1]]
        assert (cap.start, cap.end) == (0.0, pytest.approx(ACTION.frames / ACTION.fps, abs=1e-4))
        assert cap.text.startswith(f"the camera {camera[video_id.split('/')[0]]} over ")
        background, said = cap.text.split(";")
        assert not any(acts.NOUNS[s["photo"]] in background for s in sprites)  # other photos
        positions = [said.index(f"{acts.NOUNS[s['photo']]} {VERBS[s['action']]}") for s in sprites]
        assert positions == sorted(positions)  # every sprite, in drawing order


def _dominant(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=8 * len(wave)))
    return float(np.fft.rfftfreq(8 * len(wave), 1 / rate)[spectrum.argmax()])


def test_tone_pitch_follows_the_sprite_height():
    frames, fps, size = 24, 12, 64
    rising = np.array([[20, y, 36, y + 16] for y in np.linspace(48, 0, frames).round().astype(int)])
    wave = acts.sound([acts.SpriteTrack("rocket", "up", rising)], frames=frames, fps=fps, size=size)
    rate = acts.AUDIO_RATE
    assert wave.shape == (2 * rate,) and np.abs(wave).max() <= 0.9
    window = rate // 10
    for t in (2, 12, 21):  # frames near the start, middle and end
        centre = round((t + 0.5) / fps * rate)
        found = _dominant(wave[centre - window // 2 : centre + window // 2], rate)
        height = (rising[t, 1] + 8) / size
        assert found == pytest.approx(acts.LOW_HZ * 2 ** (3 * (1 - height)), rel=0.03)
    # A bigger sprite at the same place is louder.
    big = acts.sound([acts.SpriteTrack("rocket", "still", np.array([[8, 8, 40, 40]] * frames))],
                     frames=frames, fps=fps, size=size)  # fmt: skip
    small = acts.sound([acts.SpriteTrack("rocket", "still", np.array([[16, 16, 32, 32]] * frames))],
                       frames=frames, fps=fps, size=size)  # fmt: skip
    assert np.abs(big).max() == pytest.approx(4 * np.abs(small).max(), rel=0.01)


def test_sound_track_in_the_videos_follows_the_loudest_sprite(action_set, tracks):
    decoder, rate = get_decoder("pyav"), acts.AUDIO_RATE
    window = rate // 10
    checked = 0
    for video_id, sprites in tracks.items():
        path = action_set / f"{video_id}.mp4"
        meta = probe(path)
        assert meta.has_audio
        wave = decoder.audio(path, 0, ACTION.frames / ACTION.fps, meta=meta, sample_rate=rate)
        for t in (4, 16, 27):
            boxes = np.array([s["boxes"][t] for s in sprites], dtype=float)  # (S, 4)
            loudness = (boxes[:, 2] - boxes[:, 0]) ** 2
            order = np.argsort(loudness)[::-1]
            if loudness[order[0]] < 1.5 * loudness[order[1]]:
                continue  # no sprite clearly the loudest
            height = (boxes[order[0], 1] + boxes[order[0], 3]) / (2 * ACTION.size)
            centre = round((t + 0.5) / ACTION.fps * rate)
            found = _dominant(wave[centre - window // 2 : centre + window // 2], rate)
            assert found == pytest.approx(float(acts.pitch(height)), rel=0.06), (video_id, t)
            checked += 1
    assert checked >= 4
