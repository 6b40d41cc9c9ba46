"""What a media file is: its metadata record, and the problems that make it unusable.

Times in vvk are seconds on the video stream's own clock, with 0 at the first frame
(``VideoMeta.start`` holds where that is on the container timeline, so audio can be aligned).
Sizes are the *displayed* size: a phone video stored 1920×1080 with a 90° display rotation is
1080×1920 here, and decoded frames come out upright.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Every reason a file is skipped, with the words a user sees in `vvk data check`.
PROBLEMS: dict[str, str] = {
    "empty": "zero-byte file",
    "not_media": "not a video file FFmpeg can read",
    "truncated": "the file ends before the data its header declares",
    "no_video": "no video stream (audio only?)",
    "too_short": "shorter than the clip",
    "decode_error": "the video stream cannot be decoded",
    "unreadable": "the file cannot be opened",  # the OS error (a link loop, no permission) is the detail
    "outside": "a list names it outside the list's folder (or root)",  # see vvk.data.sources
    # Images of a detection dataset (vvk.data.detection)
    "missing": "no such file",
    "not_image": "not an image file that can be decoded",
    "image_size": "its size is not the one its annotations were drawn on",
}

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
)
# Audio files are scanned too: one in a video folder is a problem worth reporting, not ignoring.
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS


class BadVideo(Exception):
    """A file that cannot give the clip asked of it; ``kind`` is a key of ``PROBLEMS``."""

    def __init__(self, kind: str, detail: str = ""):
        if kind not in PROBLEMS:
            raise ValueError(f"unknown problem kind {kind!r}")
        super().__init__(f"{PROBLEMS[kind]}: {detail}" if detail else PROBLEMS[kind])
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class VideoMeta:
    """What the index knows about one video.

    Attributes:
        duration: seconds from the start of the first frame to the end of the last.
        fps: average frame rate, ``num_frames / duration`` (measured from timestamps, not the
            header's nominal rate, which is wrong for some raw streams).
        num_frames: video frames (packets) in the file.
        width, height: displayed size, after rotation.
        rotation: degrees counter-clockwise the stored frames are turned to display them (0, 90,
            180 or 270).
        start: seconds of the first frame on the container timeline.
        has_audio: the file has an audio stream.
        audio_rate: its sample rate (None without audio).
        codec: the video codec's name.
        clock: which timestamps order the frames, "pts" (normal) or "dts" (see ``decode.probe``).
    """

    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    rotation: int = 0
    start: float = 0.0
    has_audio: bool = False
    audio_rate: int | None = None
    codec: str = ""
    clock: str = "pts"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> VideoMeta:
        return cls(**record)


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception message, for one-line warnings. FFmpeg and OS errors give
    their reason alone (their full message repeats the file name, which the warning has)."""
    reason = getattr(e, "strerror", None)
    if isinstance(reason, str) and reason:
        return reason[:limit]
    return (str(e).splitlines() or [type(e).__name__])[0][:limit]
