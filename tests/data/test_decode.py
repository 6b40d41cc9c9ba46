"""Decoding: the right frames (by timestamp), upright, resized; audio aligned; both decoders agree."""

from __future__ import annotations

import av
import numpy as np
import pytest

from vvk.data import decode
from vvk.data.decode import PyAVDecoder, frames_on_screen, output_size, probe, seek_runs
from vvk.data.decoders import get_decoder, torchcodec_status
from vvk.data.synth import read_frame_code, write_video

# Real files that stress different paths: a raw MPEG-4 elementary stream (no container, header
# rate wrong), an AVI with out-of-order timestamps, a 19.62 fps H.264 with audio, Kinetics.
REAL = [
    "ucf24/v_Basketball_g01_c02.mp4",
    "misc/test.avi",
    "activitynet/v_GGSY1Qvo990.mp4",
    "kinetics/arm_wrestling.mp4",
]

needs_torchcodec = pytest.mark.skipif(not torchcodec_status()[0], reason="torchcodec not usable here")


def _all_frames(path, size=None) -> list[np.ndarray]:
    """Reference: decode every frame in order, the naive way."""
    with av.open(str(path)) as c:
        if size is None:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return [
            f.reformat(width=size[1], height=size[0], format="rgb24").to_ndarray() for f in c.decode(video=0)
        ]


def test_output_size():
    assert output_size(240, 320, None) == (240, 320)
    assert output_size(240, 320, 120) == (120, 160)  # short side
    assert output_size(320, 240, 120) == (160, 120)
    assert output_size(240, 320, (112, 112)) == (112, 112)


def test_frames_on_screen_and_seek_runs():
    times = np.array([0.0, 0.1, 0.15, 0.4])  # variable frame rate
    np.testing.assert_array_equal(
        frames_on_screen(times, np.array([-1, 0.0, 0.12, 0.399, 0.4, 9])), [0, 0, 1, 2, 3, 3]
    )
    assert seek_runs(np.array([0.0, 0.5, 2.0, 2.1, 5.0]), gap=1.0) == [(0, 2), (2, 4), (4, 5)]
    assert seek_runs(np.array([]), gap=1.0) == []


@pytest.mark.parametrize("name", REAL)
def test_clip_equals_the_same_frames_of_a_full_decode(shared_data, name):
    path = shared_data / "video" / name
    meta = probe(path)
    full = _all_frames(path)
    assert meta.num_frames == len(full)
    positions = np.random.default_rng(0).choice(meta.num_frames, 24)  # any order, repeats, far apart
    got = PyAVDecoder().frames(path, (positions + 0.5) / meta.fps, meta=meta)
    np.testing.assert_array_equal(got, np.stack([full[i] for i in positions]))


def test_resize_happens_in_the_decoder_with_the_same_result(shared_data):
    path = shared_data / "video" / "kinetics" / "arm_wrestling.mp4"
    meta = probe(path)
    full = _all_frames(path, size=(84, 112))
    positions = np.arange(0, meta.num_frames, 17)
    got = PyAVDecoder().frames(path, (positions + 0.5) / meta.fps, meta=meta, size=(84, 112))
    np.testing.assert_array_equal(got, np.stack([full[i] for i in positions]))


def test_probe_measures_rate_from_timestamps_not_the_header(shared_data):
    path = shared_data / "video" / "ucf24" / "v_Basketball_g01_c02.mp4"
    with av.open(str(path)) as c:
        assert c.format.name == "m4v"  # a raw elementary stream, no container
        assert float(c.streams.video[0].average_rate) == 25.0  # what the header claims
    meta = probe(path)
    assert meta.fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert meta.duration == pytest.approx(180 * 1001 / 30000, rel=1e-6)
    assert (meta.width, meta.height, meta.has_audio, meta.codec) == (340, 256, False, "mpeg4")
    assert probe(shared_data / "video" / "misc" / "test.avi").clock == "dts"
    assert probe(shared_data / "video" / "activitynet" / "v_GGSY1Qvo990.mp4").audio_rate == 44100


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    gaps = np.random.default_rng(0).uniform(0.02, 0.12, 59)
    times = np.concatenate([[0.0], np.cumsum(gaps)]).round(3)
    path = write_video(tmp_path / "vfr.mp4", num_frames=60, times=times)
    meta = probe(path)
    wanted = np.random.default_rng(1).uniform(0, meta.duration, 40)
    got = PyAVDecoder().frames(path, wanted, meta=meta)
    assert [read_frame_code(f) for f in got] == frames_on_screen(times, wanted).tolist()


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_phone_video_comes_out_upright(tmp_path, rotation):
    path = write_video(tmp_path / "phone.mp4", num_frames=10, size=(32, 48), rotation=rotation)
    meta = probe(path)
    assert meta.rotation == rotation
    assert (meta.height, meta.width) == ((48, 32) if rotation in (90, 270) else (32, 48))
    got = PyAVDecoder().frames(path, [0.22], meta=meta, size=16)  # frame 5 at 25 fps
    assert got.shape[1:3] == ((24, 16) if rotation in (90, 270) else (16, 24))
    stored = np.rot90(got[0], k=-rotation // 90)  # undo the display rotation: the code is readable
    assert read_frame_code(stored) == 5


@pytest.mark.parametrize("late", [2.0, 100.0])  # caught by seeking further back / decoding from the start
def test_a_seek_that_lands_late_is_caught(tmp_path, monkeypatch, late):
    path = write_video(tmp_path / "v.mp4", num_frames=200, fps=25)
    meta = probe(path)
    real_seek = decode._seek
    seeks = []

    def late_seek(container, stream, seconds):  # a container with a sparse or broken index
        seeks.append(seconds)
        real_seek(container, stream, None if seconds is None else seconds + late)

    monkeypatch.setattr(decode, "_seek", late_seek)
    positions = np.array([10, 100, 101, 180])
    got = PyAVDecoder(seek_gap=0.5).frames(path, (positions + 0.5) / 25, meta=meta)
    assert [read_frame_code(f) for f in got] == positions.tolist()
    assert (None in seeks) == (late == 100.0)


@pytest.mark.parametrize("container,codec", [("mkv", "pcm_s16le"), ("mp4", "aac")])
def test_audio_window_is_aligned_to_the_video_clock(tmp_path, container, codec):
    rate = 16000
    wave = np.zeros(3 * rate)
    wave[int(1.5 * rate) : int(1.5 * rate) + 80] = 0.9  # a 5 ms click at 1.5 s
    path = write_video(
        tmp_path / f"av.{container}", num_frames=75, audio=wave, audio_rate=rate, audio_codec=codec
    )
    meta = probe(path)
    got = PyAVDecoder().audio(path, 1.0, 2.0, meta=meta, sample_rate=8000)
    assert got.shape == (8000,) and got.dtype == np.float32
    assert np.argmax(np.abs(got)) / 8000 == pytest.approx(0.5, abs=0.002)
    # Past the end of the audio: zeros, same length.
    tail = PyAVDecoder().audio(path, 2.5, 3.5, meta=meta, sample_rate=8000)
    assert tail.shape == (8000,) and np.all(tail[5000:] == 0)


def test_real_audio_is_mono_float_and_silent_without_a_track(shared_data):
    path = shared_data / "video" / "activitynet" / "v_ZNVhz7ctTq0.mp4"
    meta = probe(path)
    wave = PyAVDecoder().audio(path, 4.0, 7.2, meta=meta, sample_rate=48000)
    assert wave.shape == (153600,) and wave.dtype == np.float32  # VATT's 3.2 s at 48 kHz
    assert 0.001 < np.abs(wave).mean() < 1.0
    silent = shared_data / "video" / "kinetics" / "arm_wrestling.mp4"
    assert not PyAVDecoder().audio(silent, 0, 1, meta=probe(silent), sample_rate=16000).any()


def test_auto_decoder_falls_back_to_pyav_when_torchcodec_is_unusable(monkeypatch):
    from vvk.data import decoders

    monkeypatch.setattr(decoders, "torchcodec_status", lambda: (False, "torchcodec is not installed"))
    assert get_decoder("auto").name == "pyav"
    from vvk.errors import VvkError

    with pytest.raises(VvkError, match="--decoder torchcodec: torchcodec is not installed"):
        get_decoder("torchcodec")


@needs_torchcodec
@pytest.mark.parametrize("name", ["kinetics/arm_wrestling.mp4", "ucf24/v_SkateBoarding_g02_c01.mp4"])
def test_torchcodec_gives_the_same_frames(shared_data, name):
    path = shared_data / "video" / name
    meta = probe(path)
    times = (np.random.default_rng(2).choice(meta.num_frames, 16) + 0.5) / meta.fps
    ours, theirs = (
        PyAVDecoder().frames(path, times, meta=meta),
        get_decoder("torchcodec").frames(path, times, meta=meta),
    )
    assert ours.shape == theirs.shape
    # Same frames; the two FFmpeg builds (bundled in PyAV, system for torchcodec) may round differently.
    assert np.abs(ours.astype(int) - theirs).max() <= 3


@needs_torchcodec
def test_torchcodec_handles_rotation_vfr_and_audio_like_pyav(tmp_path):
    tc = get_decoder("torchcodec")
    path = write_video(tmp_path / "phone.mp4", num_frames=10, size=(32, 48), rotation=270)
    meta = probe(path)
    np.testing.assert_array_equal(
        tc.frames(path, [0.22], meta=meta), PyAVDecoder().frames(path, [0.22], meta=meta)
    )
    times = np.concatenate([[0.0], np.cumsum(np.random.default_rng(0).uniform(0.02, 0.12, 39))]).round(3)
    path = write_video(tmp_path / "vfr.mp4", num_frames=40, times=times)
    meta = probe(path)
    wanted = np.random.default_rng(1).uniform(0, meta.duration, 20)
    assert [read_frame_code(f) for f in tc.frames(path, wanted, meta=meta)] == frames_on_screen(
        times, wanted
    ).tolist()
    wave = np.zeros(48000)
    wave[24000:24080] = 0.9
    path = write_video(tmp_path / "av.mp4", num_frames=75, audio=wave, audio_codec="aac")
    got = tc.audio(path, 1.0, 2.0, meta=probe(path), sample_rate=8000)
    assert np.argmax(np.abs(got)) / 8000 == pytest.approx(0.5, abs=0.002)
