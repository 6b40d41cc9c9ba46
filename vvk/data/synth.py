"""Small synthetic media files for tests and examples, written with PyAV.

Every frame carries its own number (``frame_code_image``), readable back after lossy coding
(``read_frame_code``), so a test can check *which* frames a decoder returned. Files can have
variable frame rates (explicit timestamps), a display rotation (as phones write it), and an
audio track.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_LEVELS = 15  # grey levels per half-frame, 16 apart: survive lossy coding, 225 frames in all


def frame_code_image(index: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 whose left and right halves encode ``index`` (< 225) as two grey levels."""
    if not 0 <= index < _LEVELS * _LEVELS:
        raise ValueError(f"frame index {index} cannot be encoded")
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = 8 + 16 * (index % _LEVELS)
    image[:, width // 2 :] = 8 + 16 * (index // _LEVELS)
    return image


def read_frame_code(frame: np.ndarray) -> int:
    """The index ``frame_code_image`` wrote into an (H, W, 3) frame (the centre of each half)."""
    h, w = frame.shape[:2]
    low = frame[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8].mean()
    high = frame[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8].mean()
    return int(round((low - 8) / 16)) + _LEVELS * int(round((high - 8) / 16))


def write_video(
    path: str | os.PathLike,
    *,
    num_frames: int = 30,
    fps: float = 25.0,
    size: tuple[int, int] = (32, 48),
    times: np.ndarray | None = None,
    codec: str = "mpeg4",
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    audio_codec: str = "pcm_s16le",
    rotation: int = 0,
) -> Path:
    """Write a video whose frame i shows ``frame_code_image(i)``.

    Args:
        size: stored (height, width).
        times: presentation time of each frame in seconds (variable frame rate); default i / fps.
        audio: a mono float waveform in [-1, 1] starting at time 0.
        rotation: display rotation written into the mp4/mov track header, as ``VideoMeta``
            reports it (see ``set_mp4_rotation``).
    """
    path = Path(path)
    times = np.arange(num_frames) / fps if times is None else np.asarray(times, dtype=np.float64)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        video.height, video.width = size
        video.pix_fmt = "yuv420p"
        # Milliseconds; kept in a variable because the muxer changes the stream's time base.
        clock = video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.codec_context.options = {"qscale": "2"} if codec == "mpeg4" else {}
        sound = out.add_stream(audio_codec, rate=audio_rate, layout="mono") if audio is not None else None
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_code_image(i, *size), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = clock
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            _write_audio(out, sound, audio, audio_rate)
    if rotation:
        set_mp4_rotation(path, rotation)
    return path


def write_audio(path: str | os.PathLike, wave: np.ndarray, *, rate: int = 16000, codec: str = "aac") -> Path:
    """An audio-only file (e.g. ``clip.m4a`` with AAC)."""
    with av.open(str(path), "w") as out:
        _write_audio(out, out.add_stream(codec, rate=rate, layout="mono"), wave, rate)
    return Path(path)


def _write_audio(out, stream, wave: np.ndarray, rate: int) -> None:
    samples = np.clip(np.asarray(wave, dtype=np.float64), -1, 1)
    pcm = (samples * 32767).astype(np.int16)
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, len(pcm), chunk):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + chunk], format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def set_mp4_rotation(path: str | os.PathLike, rotation: int) -> None:
    """Write a display rotation into an mp4/mov track header (``tkhd`` matrix), as phones do.

    ``rotation`` is in ``VideoMeta.rotation``'s terms: degrees counter-clockwise that stored
    frames turn when displayed. A portrait phone video stored landscape is usually 270 (a
    quarter turn clockwise; the matrix of the old ``rotate=90`` tag).
    """
    quarter = {0: (1, 0, 0, 1), 90: (0, -1, 1, 0), 180: (-1, 0, 0, -1), 270: (0, 1, -1, 0)}
    if rotation not in quarter:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    data = bytearray(Path(path).read_bytes())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    if at < 0:
        raise ValueError(f"{path}: no identity track matrix to replace")
    a, b, c, d = quarter[rotation]
    data[at : at + 36] = struct.pack(
        ">9i", a * 0x10000, b * 0x10000, 0, c * 0x10000, d * 0x10000, 0, 0, 0, 0x40000000
    )
    Path(path).write_bytes(bytes(data))
