"""The video index: metadata of real files, the cache outside the input, incremental rebuilds."""

from __future__ import annotations

import os
import shutil

import pytest

from vvk.data import index as index_module
from vvk.data.datasets import BadFiles
from vvk.data.index import VideoIndex, build_index, cache_path
from vvk.data.samplers import RandomClip
from vvk.data.sources import find_media
from vvk.data.synth import write_video
from vvk.errors import VvkError


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_index_of_the_real_videos(shared_data):
    paths = find_media(shared_data / "video")
    index = build_index(paths, decoder="pyav", progress=True)
    assert len(index) == 17
    assert index.problems() == {"no_video": 1}  # misc/test.wav
    meta = index[shared_data / "video" / "activitynet" / "v_ZNVhz7ctTq0.mp4"].meta
    assert (meta.num_frames, meta.fps, meta.width, meta.height, meta.has_audio) == (420, 30.0, 480, 360, True)
    assert meta.duration == pytest.approx(14.0)
    bunny = index[shared_data / "video" / "misc" / "bigbuckbunny.mp4"].meta
    assert (bunny.width, bunny.height, bunny.audio_rate) == (1280, 720, 48000)


def test_cache_is_reused_and_only_changed_files_are_probed_again(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_video(folder / f"v{i}.mp4", num_frames=20 + i)
    cache = cache_path(folder, tmp_path / "run")
    first = build_index(find_media(folder), cache=cache, decoder="pyav")
    assert cache.is_file() and len(VideoIndex.load(cache)) == 3

    probed = []
    real = index_module.probe_file
    monkeypatch.setattr(index_module, "probe_file", lambda p, d, **k: probed.append(p) or real(p, d, **k))
    again = build_index(find_media(folder), cache=cache, decoder="pyav")
    assert probed == [] and [e.to_json() for e in again] == [e.to_json() for e in first]
    write_video(folder / "v1.mp4", num_frames=33)  # changed file
    third = build_index(find_media(folder), cache=cache, decoder="pyav")
    assert probed == [str((folder / "v1.mp4").resolve())]
    assert third[(folder / "v1.mp4").resolve()].meta.num_frames == 33
    monkeypatch.setattr("vvk.data.decoders.torchcodec_status", lambda: (True, "pretend"))
    monkeypatch.setattr("vvk.data.decode_torchcodec.TorchCodecDecoder.frames", lambda *a, **k: None)
    probed.clear()
    other = build_index(find_media(folder), cache=cache, decoder="torchcodec")
    assert len(probed) == 3 and other.decoder == "torchcodec"  # verified again by the other decoder


def test_a_foreign_or_stale_cache_is_rebuilt_not_trusted(tmp_path):
    write_video(tmp_path / "v.mp4", num_frames=20)
    cache = tmp_path / "cache" / "index.json"
    cache.parent.mkdir()
    cache.write_text('{"format": "something else"}')
    with pytest.raises(VvkError, match="cannot read the video index"):
        VideoIndex.load(cache)
    assert len(build_index([tmp_path / "v.mp4"], cache=cache, decoder="pyav")) == 1
    assert len(VideoIndex.load(cache)) == 1


def test_the_input_folder_is_never_written_to(tmp_path, shared_data, monkeypatch):
    from vvk.data.datasets import open_video_dataset

    folder = tmp_path / "input"
    shutil.copytree(shared_data / "video" / "ucf24", folder)
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "user-cache"))
    before = _snapshot(folder)
    data = open_video_dataset(folder, sampler=RandomClip(frames=4, stride=2), decoder="pyav", size=32)
    data[0]
    assert _snapshot(folder) == before
    assert list((tmp_path / "user-cache" / "index").glob("input-*.index.json"))
    with pytest.raises(VvkError, match="never writes into its input"):
        cache_path(folder, folder / "cache")


def test_open_video_dataset_caches_into_the_run_folder(tmp_path, shared_data):
    from vvk.data.datasets import open_video_dataset

    run = tmp_path / "run"
    data = open_video_dataset(
        shared_data / "video", sampler=RandomClip(frames=4, stride=2), decoder="pyav", cache_dir=run,
        size=32, bad_files=BadFiles(warn=lambda _: None),
    )  # fmt: skip
    assert len(data) == 16 and len(data.bad_files) == 1
    (cached,) = run.glob("video-*.index.json")
    assert os.path.getsize(cached) > 1000
