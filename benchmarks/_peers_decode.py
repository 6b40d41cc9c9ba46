"""``peers.py --only decode``: training clips (16 frames at stride 2, resized to 112²), vvk's PyAV
decoder against decord, mmaction2's ``PyAVInit`` + ``PyAVDecode`` + ``Resize`` and torchcodec.

The videos: the shared ucf24 clips (raw MPEG-4 Part 2 streams), kinetics/arm_wrestling.mp4 (H.264
340x256) and misc/bigbuckbunny.mp4 (H.264 1280x720). vvk picks each clip's frame indices
(``RandomClip``, seed 0) and every peer is asked for exactly those; vvk asks its decoder for the
times the frames are on screen, ``(index + 0.5) / fps``, as ``ClipDataset`` does. A round decodes
every clip once at 112² (each side's own resize: vvk's swscale in the decoder, decord's FFmpeg
scaler, mmaction2's cv2, torchvision's for torchcodec), so only decoding at full resolution can be
compared: the check decodes each clip once more without resizing and needs the frames byte-equal.
A video a peer cannot decode is listed with its error and left out of that peer's timing (vvk is
timed on the same clips as the peer).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import av
import numpy as np
from _peers_common import interleave, record, skipped, version
from video_input import FRAMES, SIZE, STRIDE

from vvk.data.decoders import get_decoder, torchcodec_status
from vvk.data.index import build_index
from vvk.data.media import VideoMeta
from vvk.data.samplers import RandomClip

VVK = "vvk PyAVDecoder"


@dataclass(frozen=True)
class Clip:
    path: str
    positions: np.ndarray  # frame indices, (FRAMES,)
    meta: VideoMeta


def videos(root: Path, quick: bool) -> list[Path]:
    folder = root / "video"
    ucf = sorted((folder / "ucf24").glob("*.mp4"))
    return [
        *ucf[: 1 if quick else None],
        folder / "kinetics/arm_wrestling.mp4",
        folder / "misc/bigbuckbunny.mp4",
    ]


def clips(paths: list[Path], per_video: int) -> list[Clip]:
    index = build_index(paths, decoder="pyav", workers=1)
    rng, sampler = np.random.default_rng(0), RandomClip(frames=FRAMES, stride=STRIDE)
    return [
        Clip(e.path, sampler(e.meta.num_frames, rng).views["video"], e.meta)
        for e in index
        if e.ok
        for _ in range(per_video)
    ]


def vvk_clip(clip: Clip, size=SIZE) -> np.ndarray:
    """(T, H, W, 3) uint8; ``size=None``: full resolution."""
    times = (clip.positions + 0.5) / clip.meta.fps  # frame p is on screen then (ClipDataset's rule)
    return get_decoder("pyav").frames(clip.path, times, meta=clip.meta, size=size)


def decord_clip(clip: Clip, size=SIZE) -> np.ndarray:
    import decord

    scaled = {} if size is None else {"height": size[0], "width": size[1]}
    reader = decord.VideoReader(clip.path, ctx=decord.cpu(0), num_threads=1, **scaled)
    return reader.get_batch(clip.positions.tolist()).asnumpy()


def mmaction_clip(clip: Clip, size=SIZE) -> np.ndarray:
    from mmaction.datasets.transforms import PyAVDecode, PyAVInit, Resize

    steps = [PyAVInit(), PyAVDecode()]  # mmaction2's defaults: one thread, 'accurate' decoding
    if size is not None:
        steps.append(Resize(scale=(size[1], size[0]), keep_ratio=False))  # scale is (w, h)
    results = {"filename": clip.path, "frame_inds": clip.positions.copy()}
    for step in steps:
        results = step(results)
    return np.stack(results["imgs"])


def torchcodec_clip(clip: Clip, size=SIZE) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder
    from torchvision.transforms.v2 import functional as F

    frames = VideoDecoder(clip.path, num_ffmpeg_threads=1).get_frames_at(clip.positions.tolist()).data
    if size is not None:
        frames = F.resize(frames, list(size), antialias=True)
    return frames.permute(0, 2, 3, 1).numpy()  # (T, 3, H, W) -> (T, H, W, 3)


def _importable(module: str) -> dict:
    importlib.import_module(module)
    return {}


def _usable_torchcodec() -> dict:
    usable, detail = torchcodec_status()
    if not usable:
        raise RuntimeError(
            f"{detail} (torchcodec needs the system FFmpeg, or PyAV's: "
            "LD_LIBRARY_PATH=$(python benchmarks/pyav_ffmpeg.py) python benchmarks/peers.py)"
        )
    from torchcodec._core import get_ffmpeg_library_versions

    return {"ffmpeg": get_ffmpeg_library_versions()["ffmpeg_version"]}  # the one it loaded


PEERS = {  # name -> (decode function, distributions whose versions matter, check: {details} or raise)
    "decord": (decord_clip, ("decord",), partial(_importable, "decord")),
    "mmaction2 PyAVDecode": (
        mmaction_clip,
        ("mmaction2", "mmcv-lite", "mmengine", "av"),
        partial(_importable, "mmaction.datasets.transforms"),
    ),
    "torchcodec": (torchcodec_clip, ("torchcodec",), _usable_torchcodec),
}


def full_resolution_check(decode, data: list[Clip]) -> tuple[list[Clip], dict]:
    """The clips ``decode`` decodes, and the check: their frames byte-equal to vvk's at full size."""
    decoded, failed, differing = [], {}, {}
    for clip in data:
        name = f"{Path(clip.path).parent.name}/{Path(clip.path).name} from frame {clip.positions[0]}"
        try:
            frames = decode(clip, size=None)
        except Exception as error:  # noqa: BLE001 - a video a peer cannot decode is a finding
            failed[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
            continue
        decoded.append(clip)
        ours = vvk_clip(clip, size=None)
        if frames.shape != ours.shape or not np.array_equal(frames, ours):
            diff = int(np.abs(frames.astype(int) - ours).max()) if frames.shape == ours.shape else None
            differing[name] = {
                "shape": list(frames.shape),
                "vvk_shape": list(ours.shape),
                "max_abs_diff": diff,
            }
    agreement = {
        "ok": bool(decoded) and not differing,
        "tolerance": "byte-equal frames at full resolution",
        "clips_compared": len(decoded),
        "differing": differing,
        "failed": failed,
    }
    return decoded, agreement


def run(root: Path, *, rounds: int, quick: bool) -> dict:
    data = clips(videos(root, quick), per_video=1 if quick else 2)
    out = {
        "unit": f"seconds per round: every clip, {FRAMES} frames at stride {STRIDE} -> {SIZE[0]}x{SIZE[1]}",
        "clips": len(data),
        "videos": sorted({c.path for c in data}),
        "vvk_ffmpeg": av.ffmpeg_version_info,  # PyAV's own
        "comparisons": [],
    }
    for peer, (decode, distributions, check_import) in PEERS.items():
        try:
            details = check_import()
        except Exception as error:  # noqa: BLE001 - a peer that does not run here is reported, not fatal
            out["comparisons"].append(skipped(peer, error))
            continue
        decoded, agreement = full_resolution_check(decode, data)
        if not decoded:
            out["comparisons"].append({**skipped(peer, "decoded none of the clips"), "agreement": agreement})
            continue
        calls = {
            peer: lambda d=decode, cs=decoded: [d(c) for c in cs],
            VVK: lambda cs=decoded: [vvk_clip(c) for c in cs],
        }
        seconds = interleave(calls, rounds)
        out["comparisons"].append(
            record(
                peer, VVK, seconds, agreement, clips=len(decoded), versions=version(*distributions), **details
            )
        )
    return out
