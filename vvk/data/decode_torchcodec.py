"""Clip and audio decoding with torchcodec (optional: it needs the system FFmpeg libraries).

Metadata still comes from ``vvk.data.decode.probe`` (PyAV), so both decoders agree on every
video's clock, size and rotation; torchcodec applies the display rotation and the resize
itself. One difference: torchcodec orders frames by their presentation timestamps, so AVI
files whose timestamps are out of order (``VideoMeta.clock == "dts"``) can be a frame off.
"""

from __future__ import annotations

import os

import numpy as np

from vvk.data.decode import SizeArg, output_size, place_window, probe
from vvk.data.media import BadVideo, VideoMeta, first_line


class TorchCodecDecoder:
    """Args:
    threads: FFmpeg decoding threads per file (1 suits data-loader workers).
    """

    name = "torchcodec"

    def __init__(self, *, threads: int = 1):
        self.threads = threads

    probe = staticmethod(probe)  # PyAV's: both decoders see the same metadata

    def frames(
        self, path: str | os.PathLike, times: np.ndarray, *, meta: VideoMeta, size: SizeArg = None
    ) -> np.ndarray:
        """Same contract as ``PyAVDecoder.frames``: (N, H, W, 3) uint8."""
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        out_hw = output_size(meta.height, meta.width, size)
        transforms = [Resize(out_hw)] if out_hw != (meta.height, meta.width) else None
        try:
            # "exact" mode scans the file once: raw elementary streams have no header to trust.
            decoder = VideoDecoder(
                str(path), dimension_order="NHWC", num_ffmpeg_threads=self.threads, transforms=transforms
            )
            begin, end = decoder.metadata.begin_stream_seconds, decoder.metadata.end_stream_seconds
            seconds = np.clip(
                meta.start + np.asarray(times, dtype=np.float64), begin, np.nextafter(end, begin)
            )
            batch = decoder.get_frames_played_at(seconds=seconds.reshape(-1).tolist())
        except (RuntimeError, ValueError) as e:
            raise BadVideo("decode_error", f"torchcodec: {first_line(e)}") from e
        return batch.data.numpy()

    def audio(
        self, path: str | os.PathLike, start: float, end: float, *, meta: VideoMeta, sample_rate: int
    ) -> np.ndarray:
        """Same contract as ``PyAVDecoder.audio``: mono float32, zeros where there is no audio."""
        from torchcodec.decoders import AudioDecoder

        n = max(0, round((end - start) * sample_rate))
        if not meta.has_audio or n == 0:
            return np.zeros(n, dtype=np.float32)
        t0, t1 = meta.start + start, meta.start + end
        try:
            decoder = AudioDecoder(str(path), sample_rate=sample_rate, num_channels=1)
            begin = decoder.metadata.begin_stream_seconds or 0.0
            stop = begin + (decoder.metadata.duration_seconds or t1)
            if t0 >= stop or t1 <= begin:
                return np.zeros(n, dtype=np.float32)
            samples = decoder.get_samples_played_in_range(
                start_seconds=max(t0, begin), stop_seconds=min(t1, stop)
            )
        except (RuntimeError, ValueError) as e:
            raise BadVideo("decode_error", f"torchcodec audio: {first_line(e)}") from e
        return place_window(samples.data[0].numpy(), samples.pts_seconds - t0, n, sample_rate)
