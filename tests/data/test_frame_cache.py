"""The frame cache serves exactly the frames the decoder would, for every kind of file, and refuses
what it cannot hold."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from vvk.data.datasets import BadFiles, open_video_dataset
from vvk.data.decode import PyAVDecoder, probe
from vvk.data.frame_cache import FrameCache, cache_bytes, check_space
from vvk.data.loader import make_loader
from vvk.data.media import BadVideo
from vvk.data.samplers import TwoViews
from vvk.data.synth import write_video
from vvk.errors import VvkError

# A raw MPEG-4 elementary stream, an AVI whose timestamps are out of order (the dts clock), a
# 19.62 fps H.264 with audio, a 1280x720 file: each takes another path through the decoder.
REAL = [
    "ucf24/v_Basketball_g01_c02.mp4",
    "misc/test.avi",
    "activitynet/v_GGSY1Qvo990.mp4",
    "misc/bigbuckbunny.mp4",
]


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("size", [40, (24, 32)])
def test_cached_frames_equal_decoded_frames(shared_data, tmp_path, name, size):
    path = shared_data / "video" / name
    meta, decoder = probe(path), PyAVDecoder()
    cache = FrameCache(decoder, tmp_path)
    # Before the first frame, between frames, on the last one and past the end, in any order.
    times = np.random.default_rng(0).uniform(-0.2, meta.duration + 0.2, 48)
    times[:3] = [0.0, meta.duration, 1.0 / meta.fps]
    expected = decoder.frames(path, times, meta=meta, size=size)
    assert not cache.is_cached(path, size)
    first = cache.frames(path, times, meta=meta, size=size)  # decodes the whole video once
    again = FrameCache(decoder, tmp_path).frames(path, times[::-1], meta=meta, size=size)  # from disk
    assert cache.is_cached(path, size)
    assert first.dtype == np.uint8 and first.shape == expected.shape
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected[::-1])


def test_a_changed_file_gets_a_new_entry_and_a_broken_one_fails_each_time(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=30, size=(32, 48))
    meta = probe(path)
    cache = FrameCache(PyAVDecoder(), tmp_path / "cache")
    cache.frames(path, np.zeros(1), meta=meta, size=16)
    old = cache.entry(path, 16)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # damaged after indexing
    assert cache.entry(path, 16) != old and not cache.is_cached(path, 16)
    for _ in range(2):  # the second time without decoding again
        with pytest.raises(BadVideo):
            cache.frames(path, np.zeros(1), meta=meta, size=16)
    assert not cache.is_cached(path, 16)  # no entry for a failed decode, and no frames file
    assert sorted(cache.root.iterdir()) == sorted(old.with_suffix(s) for s in (".json", ".u8"))


def test_an_unfinished_entry_is_rebuilt(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=20, size=(32, 48))
    meta = probe(path)
    cache = FrameCache(PyAVDecoder(), tmp_path / "cache")
    entry = cache.entry(path, 16)
    entry.parent.mkdir()
    entry.with_suffix(".u8").write_bytes(b"\x07" * 10)  # frames written, the record never was
    times = np.arange(20) / meta.fps
    got = cache.frames(path, times, meta=meta, size=16)
    np.testing.assert_array_equal(got, PyAVDecoder().frames(path, times, meta=meta, size=16))


@pytest.mark.parametrize("damaged", [".u8", ".json"])
def test_a_truncated_entry_is_rebuilt_with_a_warning(tmp_path, damaged):
    path = write_video(tmp_path / "v.mp4", num_frames=20, size=(32, 48))
    meta = probe(path)
    times = np.arange(20) / meta.fps
    expected = PyAVDecoder().frames(path, times, meta=meta, size=16)
    FrameCache(PyAVDecoder(), tmp_path / "cache").frames(path, times, meta=meta, size=16)
    cache = FrameCache(PyAVDecoder(), tmp_path / "cache")  # a later run: no memory map open yet
    file = cache.entry(path, 16).with_suffix(damaged)
    whole = file.stat().st_size
    with open(file, "r+b") as f:  # cut short, as a full disk or a partial copy leaves it
        f.truncate(whole // 2)
    with pytest.warns(UserWarning, match=rf"frame cache: .*{cache.entry(path, 16).name}\.u8 is damaged"):
        got = cache.frames(path, times, meta=meta, size=16)
    np.testing.assert_array_equal(got, expected)
    assert file.stat().st_size == whole  # rebuilt, so the next run reads it without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            FrameCache(PyAVDecoder(), tmp_path / "cache").frames(path, times, meta=meta, size=16), expected
        )


def test_dataset_with_the_cache_gives_the_same_samples_through_workers(shared_data, tmp_path):
    folder = shared_data / "video" / "ucf24"
    common = dict(sampler=TwoViews(frames=4, stride=3), decoder="pyav", size=32, seed=5,
                  bad_files=BadFiles(warn=lambda _: None))  # fmt: skip
    plain = open_video_dataset(folder, cache_dir=tmp_path, **common)
    cached = open_video_dataset(folder, cache_dir=tmp_path, frame_cache=tmp_path / "frames", **common)
    assert isinstance(cached.decoder, FrameCache)
    keys = [(i % len(plain), i) for i in range(6)]
    for key in keys:
        a, b = plain[key], cached[key]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video_b"], b["video_b"])
    # Workers get a pickled copy without open memory maps and read the same entries.
    loader = make_loader(cached, batch_size=3, num_workers=2, seed=1)
    from_workers = torch.cat([b["video"] for b in itertools.islice(loader, 2)])
    in_process = make_loader(plain, batch_size=3, num_workers=0, seed=1)
    assert torch.equal(from_workers, torch.cat([b["video"] for b in itertools.islice(in_process, 2)]))


def test_the_size_estimate_is_what_is_written_and_too_much_is_refused(shared_data, tmp_path, monkeypatch):
    folder = shared_data / "video" / "ucf24"
    paths = sorted(folder.glob("*.mp4"))
    metas = [probe(p) for p in paths]
    cache = FrameCache(PyAVDecoder(), tmp_path / "frames")
    needed = check_space(cache, zip(paths, metas, strict=True), 32)
    assert needed == cache_bytes(metas, 32) > 0
    for path, meta in zip(paths, metas, strict=True):
        cache.frames(path, np.zeros(1), meta=meta, size=32)
    assert sum(f.stat().st_size for f in cache.root.glob("*.u8")) == needed
    assert check_space(cache, zip(paths, metas, strict=True), 32) == 0  # nothing left to write
    # A disk with a gigabyte and a little to spare is not enough for a new cache.
    monkeypatch.setattr("shutil.disk_usage", lambda _: type("Usage", (), {"free": (1 << 30) + needed - 1}))
    with pytest.raises(VvkError, match=rf"frame cache: {len(paths)} videos need .* GB"):
        open_video_dataset(folder, sampler=TwoViews(frames=4, stride=3), decoder="pyav", size=32,
                           cache_dir=tmp_path, frame_cache=tmp_path / "other",
                           bad_files=BadFiles(warn=lambda _: None))  # fmt: skip


def test_the_cache_is_never_written_inside_the_input(shared_data):
    with pytest.raises(VvkError, match="never writes into its input"):
        open_video_dataset(
            shared_data / "video" / "ucf24", sampler=TwoViews(frames=4, stride=3), decoder="pyav", size=32,
            frame_cache=shared_data / "video" / "ucf24" / "frames",
        )  # fmt: skip
