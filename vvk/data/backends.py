"""Which video decoders can run on this machine."""

from __future__ import annotations


def available_decoders() -> dict[str, dict[str, object]]:
    """``{decoder: {"usable": bool, "detail": str}}`` for pyav and torchcodec."""
    report: dict[str, dict[str, object]] = {}
    try:
        import av

        report["pyav"] = {"usable": True, "detail": f"av {av.__version__} (FFmpeg {_ffmpeg_version(av)})"}
    except ImportError as e:
        report["pyav"] = {"usable": False, "detail": f"av is not installed ({e})"}
    try:
        # Importing the decoders loads torchcodec's core, which needs the system FFmpeg libraries.
        import torchcodec
        from torchcodec.decoders import VideoDecoder  # noqa: F401

        report["torchcodec"] = {"usable": True, "detail": f"torchcodec {torchcodec.__version__}"}
    except ImportError:
        report["torchcodec"] = {"usable": False, "detail": "torchcodec is not installed"}
    except Exception as e:  # a missing libavcodec surfaces as RuntimeError/OSError at import
        report["torchcodec"] = {"usable": False, "detail": f"torchcodec cannot load FFmpeg: {_first_line(e)}"}
    return report


def _ffmpeg_version(av_module) -> str:
    versions = getattr(av_module, "library_versions", {}) or {}
    major, minor, micro = versions.get("libavcodec", (0, 0, 0))
    return f"libavcodec {major}.{minor}.{micro}"


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
