"""Clip datasets and the loader: the frames match the plan, samples are deterministic, ranks differ."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from vvk.data.datasets import BadFiles, ClipDataset, ClipTable, collate, open_video_dataset
from vvk.data.index import build_index
from vvk.data.loader import ShardedSampler, make_loader
from vvk.data.media import VideoMeta
from vvk.data.samplers import AudioVisualClip, LongShortClips, RandomClip, TwoViews, UniformClips
from vvk.data.sources import VideoItem, read_list
from vvk.data.synth import read_frame_code, write_video


def _codes(video: torch.Tensor) -> list[int]:
    """(C, T, H, W) uint8 -> the frame number each frame shows."""
    return [read_frame_code(f.numpy()) for f in video.permute(1, 2, 3, 0)]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """Two 25 fps videos whose frames show their own numbers."""
    folder = tmp_path_factory.mktemp("coded")
    paths = [write_video(folder / f"v{i}.mp4", num_frames=n, size=(32, 48)) for i, n in enumerate((120, 90))]
    items = [VideoItem(str(p), label=i) for i, p in enumerate(paths)]
    return items, build_index([str(p) for p in paths], decoder="pyav")


def _dataset(coded, sampler, **kw):
    items, index = coded
    return ClipDataset(items, index, sampler=sampler, decoder="pyav", size=None, **kw)


def test_views_show_exactly_the_planned_frames(coded):
    data = _dataset(coded, TwoViews(frames=6, stride=3))
    for draw in range(6):
        sample = data[(draw % 2, draw)]
        plan = data.sampler(data.clips[draw % 2][2], np.random.default_rng([0, draw]))
        assert _codes(sample["video"]) == plan.views["video"].tolist()
        assert _codes(sample["video_b"]) == plan.views["video_b"].tolist()
        assert abs(_codes(sample["video"])[0] - _codes(sample["video_b"])[0]) == int(sample["gap"])


def test_long_short_index_map_points_at_the_same_frames(coded):
    data = _dataset(coded, LongShortClips(long_frames=8, long_stride=2, short_frames=4, short_stride=2))
    sample = data[(0, 7)]
    long_codes, short_codes = _codes(sample["video"]), _codes(sample["video_short"])
    assert [long_codes[int(j)] for j in sample["index_map"]] == short_codes


def test_uniform_clips_stack_several_clips(coded):
    sample = _dataset(coded, UniformClips(frames=4, stride=2, num_clips=3))[1]
    assert sample["video"].shape == (3, 3, 4, 32, 48)  # (N, C, T, H, W)
    assert [_codes(clip)[0] for clip in sample["video"]] == [0, 42, 83]  # 90 frames, span 7


def test_same_key_same_sample_new_draw_new_clip(coded):
    data = _dataset(coded, RandomClip(frames=4, stride=1))
    assert torch.equal(data[(0, 5)]["video"], data[(0, 5)]["video"])
    starts = {_codes(data[(0, draw)]["video"])[0] for draw in range(12)}
    assert len(starts) > 6
    seeded = _dataset(coded, RandomClip(frames=4, stride=1), seed=1)
    assert any(not torch.equal(seeded[(0, d)]["video"], data[(0, d)]["video"]) for d in range(4))


def test_segments_from_a_list_file_bound_the_clips(tmp_path, coded):
    items, index = coded
    (tmp_path / "list.csv").write_text(f"{items[0].path},0,2.0,3.0\n")
    source = read_list(tmp_path / "list.csv")
    data = ClipDataset(source.items, index, sampler=RandomClip(frames=5, stride=2), decoder="pyav", size=None)
    for draw in range(20):
        codes = _codes(data[(0, draw)]["video"])
        assert codes[0] >= 50 and codes[-1] < 75  # 2 s..3 s at 25 fps


def test_size_int_keeps_whole_frames_padded_to_one_canvas(shared_data):
    """The reference crops from the whole decoded frame: every aspect batches together as the
    full resized frame, zero-padded below and to the right, with its own size beside it."""
    options = dict(sampler=RandomClip(frames=4, stride=2), decoder="pyav", size=24, cache_dir=None,
                   bad_files=BadFiles(warn=lambda _: None))  # fmt: skip
    data = open_video_dataset(shared_data / "video" / "misc", **options)
    batch = collate([data[(i, 0)] for i in range(len(data))])
    # 320x240, 340x256, 640x272, 1280x720 at a short side of 24 (displayed sizes).
    sizes = sorted(map(tuple, batch["frame_size"].tolist()))
    assert sizes == [(24, 32), (24, 32), (24, 43), (24, 56)] and data.canvas == (24, 56)
    assert batch["video"].shape == (len(data), 3, 4, 24, 56) and batch["video"].dtype == torch.uint8
    for clip, (_, w) in zip(batch["video"], batch["frame_size"].tolist(), strict=True):
        assert clip[..., w:].count_nonzero() == 0 and clip[..., :w].float().std() > 0
    assert batch["label"].tolist() == [-1] * len(data) and len(batch["path"]) == len(data)

    square = open_video_dataset(shared_data / "video" / "misc", frame="square", **options)
    squares = collate([square[(i, 0)] for i in range(len(square))])
    assert squares["video"].shape == (len(data), 3, 4, 24, 24) and square.canvas == (24, 24)
    widths = batch["frame_size"][:, 1].tolist()
    for full, centre, w in zip(batch["video"], squares["video"], widths, strict=True):
        left = (w - 24) // 2  # the same draw: the square is the centre of the full frame
        assert torch.equal(full[..., left : left + 24], centre)


def test_vatt_clip_with_audio_and_captions(shared_data):
    video = shared_data / "video" / "activitynet"
    data = open_video_dataset(
        video, sampler=AudioVisualClip(frames=8, stride=1, fps=2.0), captions=video / "captions.tsv",
        decoder="pyav", size=32, audio_rate=16000,
    )  # fmt: skip
    keys = [(i % 2, i) for i in range(8)]
    batch = collate([data[key] for key in keys])
    assert batch["video"].shape == (8, 3, 8, 32, 43)  # 16:9 at a short side of 32
    assert batch["audio"].shape == (8, 64000) and batch["audio_mask"].all()  # 8 frames at 2 fps = 4 s
    assert batch["audio"].abs().mean() > 1e-3
    assert any(batch["text"])
    for (index, draw), text in zip(keys, batch["text"], strict=True):
        # The captions are exactly those overlapping the clip's time span, in time order.
        item, _, grid = data.clips[index]
        first, end = data.sampler(grid, np.random.default_rng([data.seed, draw])).window
        t0, t1 = first / 2.0, end / 2.0
        captions = sorted(data.captions[item.video_id], key=lambda c: c.start)
        assert text == [c.text for c in captions if c.start < t1 and c.end > t0]


def test_clip_table_round_trips_items_and_metadata():
    meta = VideoMeta(duration=2.5, fps=29.97, num_frames=75, width=640, height=360, rotation=270, start=0.04,
                     has_audio=True, audio_rate=44100, codec="h264", clock="dts")  # fmt: skip
    silent = dataclasses.replace(meta, has_audio=False, audio_rate=None, codec="mpeg4", clock="pts")
    rows = [(VideoItem("/videos/a.mp4", 3, 1.5, None), meta, 70), (VideoItem("/videos/b.mp4"), silent, 12)]
    table = ClipTable(rows)
    assert [table[i] for i in range(len(table))] == rows
    assert {name for name, _ in ClipTable.META} == {f.name for f in dataclasses.fields(VideoMeta)}


def test_sharded_sampler_gives_ranks_disjoint_data_and_resumes_exactly():
    world, size = 3, 10
    samplers = [ShardedSampler(size, rank=r, world_size=world, seed=7) for r in range(world)]
    per_rank = samplers[0].per_rank  # 4: the epoch is padded to 12 by wrapping
    for epoch in range(3):
        seen = [[samplers[r].key(epoch * per_rank + i)[0] for i in range(per_rank)] for r in range(world)]
        flat = sum(seen, [])
        assert set(flat) == set(range(size))  # every item, each rank a different share
        assert len(flat) - len(set(flat)) == world * per_rank - size  # only the padding repeats
    draws = [samplers[r].key(c)[1] for r in range(world) for c in range(20)]
    assert len(set(draws)) == len(draws)  # every sample its own random stream
    resumed = ShardedSampler(size, rank=1, world_size=world, seed=7, start=9)
    assert list(itertools.islice(resumed, 8)) == [samplers[1].key(c) for c in range(9, 17)]
    assert samplers[0].order(0).tolist() != samplers[0].order(1).tolist()  # reshuffled per epoch


def test_loader_with_workers_is_deterministic(coded):
    data = _dataset(coded, RandomClip(frames=4, stride=1))
    runs = []
    for _ in range(2):
        loader = make_loader(data, batch_size=2, num_workers=2, seed=3, start=4)
        batches = list(itertools.islice(loader, 3))
        runs.append(torch.cat([b["video"] for b in batches]))
        del loader
    assert torch.equal(runs[0], runs[1])
    expected = [data[key]["video"] for key in itertools.islice(ShardedSampler(2, seed=3, start=4), 6)]
    assert torch.equal(runs[0], torch.stack(expected))


def test_bad_file_warnings_go_to_the_vvk_data_logger_on_rank_0_only(caplog, capsys, monkeypatch):
    """Python users filter or capture them like any library's; the CLI prints them as one line."""
    import logging

    monkeypatch.setattr(logging.getLogger("vvk"), "handlers", [])  # as in a Python session
    with caplog.at_level(logging.WARNING, logger="vvk.data"):
        BadFiles().add("/videos/a.mp4", "empty", "0 bytes")
        monkeypatch.setenv("RANK", "1")  # every rank builds the dataset; one speaks
        BadFiles().add("/videos/b.mp4", "empty", "0 bytes")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("vvk.data", "WARNING", "/videos/a.mp4: zero-byte file (0 bytes); skipped")
    ]
    assert capsys.readouterr().err == ""  # nothing written behind the logger's back
