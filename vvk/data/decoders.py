"""Which video decoders can run on this machine, and choosing one (``--decoder``).

``auto`` picks torchcodec when it imports *and* decodes a tiny clip made on the spot (it needs
the system FFmpeg libraries, which a pip install does not bring), and PyAV otherwise.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Protocol

import numpy as np

from vvk.data.media import VideoMeta, first_line
from vvk.errors import VvkError

DECODER_CHOICES = ("auto", "pyav", "torchcodec")


class Decoder(Protocol):
    """What datasets need from a decoder (``PyAVDecoder``, ``TorchCodecDecoder``)."""

    name: str

    def probe(self, path: str | os.PathLike, *, deep: bool = False) -> VideoMeta: ...

    def frames(
        self, path: str | os.PathLike, times: np.ndarray, *, meta: VideoMeta, size=None
    ) -> np.ndarray: ...

    def audio(
        self, path: str | os.PathLike, start: float, end: float, *, meta: VideoMeta, sample_rate: int
    ) -> np.ndarray: ...


def available_decoders() -> dict[str, dict[str, object]]:
    """``{decoder: {"usable": bool, "detail": str}}`` for pyav and torchcodec."""
    report: dict[str, dict[str, object]] = {}
    try:
        import av

        report["pyav"] = {"usable": True, "detail": f"av {av.__version__} (FFmpeg {_ffmpeg_version(av)})"}
    except ImportError as e:
        report["pyav"] = {"usable": False, "detail": f"av is not installed ({e})"}
    usable, detail = torchcodec_status()
    report["torchcodec"] = {"usable": usable, "detail": detail}
    return report


@functools.lru_cache(maxsize=1)
def torchcodec_status() -> tuple[bool, str]:
    """(usable, detail): torchcodec imports and decodes a two-frame clip encoded here."""
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        return False, "torchcodec is not installed"
    except Exception as e:  # a missing libavcodec surfaces as RuntimeError/OSError at import
        return False, f"torchcodec cannot load FFmpeg: {first_line(e)}"
    try:
        frame = VideoDecoder(_tiny_clip())[0]
        if tuple(frame.shape) != (3, 16, 16):
            return False, f"torchcodec decoded a wrong shape {tuple(frame.shape)}"
    except Exception as e:
        return False, f"torchcodec cannot decode: {first_line(e)}"
    return True, f"torchcodec {torchcodec.__version__}"


def _tiny_clip() -> bytes:
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.mp4")
        with av.open(path, "w") as out:
            stream = out.add_stream("mpeg4", rate=10)
            stream.width = stream.height = 16
            stream.pix_fmt = "yuv420p"
            for i in range(2):
                image = np.full((16, 16, 3), 100 * i, dtype=np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(stream.encode())
        with open(path, "rb") as f:
            return f.read()


def get_decoder(name: str = "auto", *, threads: int = 1) -> Decoder:
    """The decoder for ``--decoder NAME`` (auto, pyav or torchcodec)."""
    if name == "auto":
        name = "torchcodec" if torchcodec_status()[0] else "pyav"
    if name == "pyav":
        from vvk.data.decode import PyAVDecoder

        return PyAVDecoder(threads=threads)
    if name == "torchcodec":
        usable, detail = torchcodec_status()
        if not usable:
            raise VvkError(
                f"--decoder torchcodec: {detail}",
                hint="pip install torchcodec and apt-get install ffmpeg, or use --decoder pyav",
            )
        from vvk.data.decode_torchcodec import TorchCodecDecoder

        return TorchCodecDecoder(threads=threads)
    raise VvkError(f"--decoder {name}: unknown decoder (choose one of {', '.join(DECODER_CHOICES)})")


def _ffmpeg_version(av_module) -> str:
    versions = getattr(av_module, "library_versions", {}) or {}
    major, minor, micro = versions.get("libavcodec", (0, 0, 0))
    return f"libavcodec {major}.{minor}.{micro}"
