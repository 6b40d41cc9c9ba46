"""Bad files: each kind is recognised, skipped with one warning line, counted, reported; training goes on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vvk.data.datasets import BadFiles, ClipDataset
from vvk.data.decoders import get_decoder
from vvk.data.index import build_index, probe_file
from vvk.data.media import PROBLEMS
from vvk.data.samplers import RandomClip
from vvk.data.sources import scan_folder
from vvk.data.synth import write_audio, write_video

CLIP = RandomClip(frames=8, stride=2)  # needs 15 frames

EXPECTED = {
    "empty.mp4": "empty",
    "moov_at_start_truncated.mp4": "truncated",
    "moov_at_end_truncated.mp4": "truncated",
    "notes.mp4": "not_media",
    "speech.m4a": "no_video",
    "wav_renamed.mp4": "no_video",
}


@pytest.fixture
def messy_folder(tmp_path, shared_data):
    """Two good videos and one file of every bad kind, made here."""
    folder = tmp_path / "videos"
    folder.mkdir()
    video = shared_data / "video"
    write_video(folder / "good_a.mp4", num_frames=40)
    write_video(folder / "good_b.mp4", num_frames=50)
    (folder / "empty.mp4").write_bytes(b"")
    head_index = (video / "activitynet" / "v_GGSY1Qvo990.mp4").read_bytes()  # index (moov) first
    (folder / "moov_at_start_truncated.mp4").write_bytes(head_index[: len(head_index) // 2])
    tail_index = (video / "kinetics" / "arm_wrestling.mp4").read_bytes()  # index last: lost
    (folder / "moov_at_end_truncated.mp4").write_bytes(tail_index[: len(tail_index) // 2])
    (folder / "notes.mp4").write_text("these are my notes, not a video\n")
    write_audio(folder / "speech.m4a", np.sin(np.linspace(0, 2000, 16000)) * 0.5)
    shutil.copy(video / "misc" / "test.wav", folder / "wav_renamed.mp4")
    write_video(folder / "short.mp4", num_frames=10)
    return folder


def test_probe_names_each_problem(messy_folder):
    decoder = get_decoder("pyav")
    for name, kind in EXPECTED.items():
        assert probe_file(messy_folder / name, decoder).problem == kind, name
    assert probe_file(messy_folder / "good_a.mp4", decoder).ok
    short = probe_file(messy_folder / "short.mp4", decoder)  # a fine video, shorter than the clip
    assert short.ok and short.meta.num_frames == 10


def test_dataset_skips_each_bad_file_once_with_one_line(messy_folder):
    lines: list[str] = []
    source = scan_folder(messy_folder)
    index = build_index([i.path for i in source.items], decoder="pyav")
    data = ClipDataset(
        source.items, index, sampler=CLIP, decoder="pyav", size=16, bad_files=BadFiles(warn=lines.append)
    )
    assert len(data) == 3  # the two good videos and the short one, which is looped
    assert len(lines) == len(EXPECTED)
    for name, kind in EXPECTED.items():
        (line,) = [x for x in lines if f"/{name}:" in x]
        assert PROBLEMS[kind] in line and line.endswith("; skipped") and "\n" not in line
    assert data.bad_files.summary()["by_problem"] == {
        "empty": 1,
        "truncated": 2,
        "not_media": 1,
        "no_video": 2,
    }
    for i in range(len(data)):
        sample = data[i]
        assert sample["video"].shape == (3, 8, 16, 24) and sample["skipped"] == []


def test_a_file_that_breaks_after_indexing_is_replaced_and_reported(messy_folder):
    source = scan_folder(messy_folder)
    index = build_index([i.path for i in source.items], decoder="pyav")
    lines: list[str] = []
    data = ClipDataset(
        source.items, index, sampler=CLIP, decoder="pyav", size=16, bad_files=BadFiles(warn=lines.append)
    )
    broken = data.clips[0][0].path
    warned = len(lines)
    (messy_folder / "good_a.mp4").write_bytes(b"\x00" * 100)  # damaged after indexing
    sample = data[0]
    assert sample["path"] != broken and sample["video"].shape == (3, 8, 16, 24)
    assert sample["skipped"] and {r["path"] for r in sample["skipped"]} == {broken}
    assert sample["skipped"][0]["problem"] == "not_media"
    assert len(lines) == warned  # a worker only reports it; the training loop warns (next test)


def test_training_goes_on_and_the_summary_counts_the_bad_files(messy_folder, tmp_path):
    from vvk.engine import TrainConfig, train

    source = scan_folder(messy_folder)
    index = build_index([i.path for i in source.items], decoder="pyav")
    lines: list[str] = []
    data = ClipDataset(
        source.items, index, sampler=CLIP, decoder="pyav", size=16, bad_files=BadFiles(warn=lines.append)
    )
    (messy_folder / "good_b.mp4").write_text("broken after indexing")
    model = nn.Sequential(nn.Conv3d(3, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 1))

    def step_fn(net, batch):
        return {"loss": net(batch["video"].float() / 255).pow(2).mean()}

    config = TrainConfig(steps=3, batch_size=2, num_workers=0, progress=False, lr=0.01)
    result = train(
        model=model, step_fn=step_fn, data=data, config=config, run_dir=tmp_path / "run", method="test"
    )
    assert result.status == "finished" and result.step == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_files"]["count"] == len(EXPECTED) + 1
    by_problem = summary["bad_files"]["by_problem"]
    assert by_problem["truncated"] == 2 and by_problem["empty"] == 1
    assert str(messy_folder / "good_b.mp4") in {f["path"] for f in summary["bad_files"]["files"]}
    # Met in (almost) every batch, warned about once.
    assert len([line for line in lines if "good_b.mp4" in line]) == 1
    assert torch.isfinite(torch.tensor(result.losses["loss"]))


def test_data_check_lists_every_file_with_its_problem(messy_folder, cli):
    result = cli(
        "data", "check", str(messy_folder), "--frames", "8", "--stride", "2", "--json", "--decoder", "pyav"
    )
    assert result.code == 1, result.stderr  # bad files found: a script stops here
    rows = {r["path"].rsplit("/", 1)[1]: r for r in map(json.loads, result.stdout.splitlines())}
    assert {name: rows[name]["status"] for name in EXPECTED} == EXPECTED
    assert rows["good_a.mp4"]["status"] == "ok" and rows["good_a.mp4"]["frames"] == 40
    assert rows["short.mp4"]["status"] == "short" and "looped" in rows["short.mp4"]["detail"]
    assert "9 file(s): 3 ok (1 short, looped), 6 bad" in result.stderr
    human = cli("data", "check", str(messy_folder), "--decoder", "pyav")
    assert human.code == 1 and "truncated" in human.stdout and "not_media" in human.stdout


def test_a_video_shorter_than_the_clip_is_looped(messy_folder):
    """The reference tiles a short frame sequence until the clip fits
    (preprocess_ops_3d._sample_or_pad_sequence_indices): grid position p reads frame p mod n."""
    short = str(messy_folder / "short.mp4")
    index = build_index([short], decoder="pyav")
    (item,) = [i for i in scan_folder(messy_folder).items if i.path.endswith("short.mp4")]
    data = ClipDataset([item], index, sampler=CLIP, decoder="pyav", size=16)
    meta = index[str(Path(short).resolve())].meta
    every = get_decoder("pyav").frames(short, (np.arange(10) + 0.5) / meta.fps, meta=meta, size=16)
    for draw in range(5):
        sample = data[(0, draw)]
        video = sample["video"].permute(1, 2, 3, 0).numpy()  # (C, T, H, W) -> (T, H, W, C)
        # Each frame is one of the ten, in looped order: frame k + 1 follows frame k two steps on.
        found = [int(np.argmin([np.abs(f.astype(int) - e).sum() for e in every])) for f in video]
        assert all(b == (a + 2) % 10 for a, b in zip(found, found[1:], strict=False)), found
