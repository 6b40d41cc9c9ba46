"""Multi-view testing of a video classifier, as ``tensorflow/models: official/vision`` tests one.

Each video is decoded once at ``size`` (the short side: ``preprocess_ops_3d.resize_smallest``);
``T`` clips are taken at evenly spaced starts (``sample_linspace_sequence``, vvk's
``uniform_starts``) and ``S`` square crops of each (``crop_image``: the centre crop for one; for
three, the first, centre and last along the frame's longer side), and the softmax scores of the
``T x S`` views are averaged (``video_classification.py::inference_step``). The centre clip's
centre crop is scored too, so that every test reports the single-view ``1x1`` scheme beside
``TxS``. Top-1 and top-5 are given per scheme, with its views, in the record.

``evaluate(..., out=RUN)`` also writes, atomically, into the run folder: ``evaluation.json``
(the record), ``predictions.jsonl`` (each video's label and its top-5 classes and scores under
the main scheme), ``confusion.csv`` (true classes in rows, predicted in columns) and
``confusion.png``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vvk.atomic import atomic_path, atomic_write_text
from vvk.data.samplers import ClipPlan, clip_span, uniform_starts
from vvk.data.sources import Data
from vvk.engine import autocast
from vvk.eval.linear_probe import topk_accuracy
from vvk.methods.finetune.preset import FinetunePreset

EVALUATION_FILE, PREDICTIONS_FILE = "evaluation.json", "predictions.jsonl"
CONFUSION_CSV, CONFUSION_PNG = "confusion.csv", "confusion.png"
TOP_K = 5


@dataclass(frozen=True)
class EvalProtocol:
    """How videos are tested: clips of ``frames`` at ``stride`` from frames decoded at ``size``,
    ``views`` = (clips, crops) of ``crop``², fed ``batch_size`` views at a time."""

    frames: int
    stride: int
    size: int
    crop: int
    views: tuple[int, int]
    zero_center: bool
    fps: float | None = None
    batch_size: int = 8
    precision: str = "fp32"
    num_workers: int = 0
    frame_cache: bool = False

    @classmethod
    def of(cls, config: FinetunePreset) -> EvalProtocol:
        return cls(
            frames=config.frames, stride=config.stride, size=config.eval_size, crop=config.eval_crop,
            views=tuple(config.eval_views), zero_center=config.zero_center, fps=config.fps,
            batch_size=config.eval_batch_size, precision=config.train.precision,
            num_workers=config.train.num_workers, frame_cache=config.train.frame_cache,
        )  # fmt: skip

    @property
    def multi_view(self) -> bool:
        return tuple(self.views) != (1, 1)

    @property
    def main(self) -> str:
        """The scheme a test is reported with: ``TxS``."""
        return scheme_name(*self.views)


def scheme_name(clips: int, crops: int) -> str:
    return f"{clips}x{crops}"


@dataclass(frozen=True)
class EvalClips:
    """The clips of one test sample: the centre clip, then ``clips`` evenly spaced ones (none:
    the centre clip alone): {"video": (1 + clips, frames)} positions."""

    frames: int
    stride: int
    clips: int
    fps: float | None = None

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        span = clip_span(self.frames, self.stride)
        starts = np.concatenate(
            [uniform_starts(num_frames, span, 1), uniform_starts(num_frames, span, self.clips)]
        )  # (1 + clips,)
        # (1 + clips,) + (frames,) -> (1 + clips, frames)
        return ClipPlan(views={"video": starts[:, None] + self.stride * np.arange(self.frames)[None, :]})


def crop_offsets(height: int, width: int, crop: int, count: int) -> list[tuple[int, int]]:
    """(top, left) of ``count`` square crops of a ``height`` x ``width`` frame: evenly spaced
    along the longer side (height when they are equal, as the reference decides) and centred
    across it; one is the centre crop."""
    down = height >= width
    room_along, room_across = (height - crop, width - crop) if down else (width - crop, height - crop)
    if count == 1:
        along = [room_along // 2]
    else:
        along = np.round(np.linspace(0, room_along, count)).astype(int).tolist()
    across = room_across // 2
    return [(a, across) if down else (across, a) for a in along]


def video_views(clips: Tensor, frame_size: Sequence[int], *, crop: int, crops: int) -> Tensor:
    """One video's views: (1 + T, C, F, H, W) clips (the centre clip first, on a canvas whose
    top-left ``frame_size`` = (h, w) is the frame) -> (1 + T·S, C, F, crop, crop): the centre
    clip's centre crop, then each further clip's ``crops`` crops."""
    h, w = (int(v) for v in frame_size)
    ((top, left),) = crop_offsets(h, w, crop, 1)
    views = [clips[0, ..., top : top + crop, left : left + crop]]
    for clip in clips[1:]:
        views += [clip[..., t : t + crop, c : c + crop] for t, c in crop_offsets(h, w, crop, crops)]
    return torch.stack(views)


def to_input(views: Tensor, zero_center: bool) -> Tensor:
    """uint8 -> float in [0, 1], or [-1, 1] (``preprocess_ops_3d.normalize_image``)."""
    x = views.float() / 255.0
    return x * 2.0 - 1.0 if zero_center else x


@torch.no_grad()
def view_scores(model: nn.Module, views: Tensor, protocol: EvalProtocol) -> Tensor:
    """Softmax scores (V, K) of (V, C, F, crop, crop) uint8 views, ``batch_size`` at a time."""
    device = next(model.parameters()).device
    scores = []
    for chunk in views.split(protocol.batch_size):
        with autocast(device, protocol.precision):
            logits = model(to_input(chunk.to(device), protocol.zero_center))
        scores.append(logits.float().softmax(dim=-1).cpu())
    return torch.cat(scores)


def scheme_scores(scores: Tensor, views: tuple[int, int]) -> dict[str, Tensor]:
    """(1 + T·S, K) view scores -> {"1x1": the centre view's, "TxS": the mean of the others}."""
    schemes = {scheme_name(1, 1): scores[0]}
    if tuple(views) != (1, 1):
        schemes[scheme_name(*views)] = scores[1:].mean(dim=0)
    return schemes


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    protocol: EvalProtocol,
    classes: Sequence[str],
    label_map: Sequence[int] | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    weights: str = "model",
) -> dict[str, Any]:
    """Test ``model`` (a classifier over ``classes``) on the labelled videos ``data``.

    Args:
        label_map: the training class of each of ``data``'s own labels (None: the same).
        out: a run folder for the record, predictions and confusion matrix (None: not written).
        weights: which weights ``model`` holds ("model", "ema"), for the record.

    Returns:
        The record: ``{"videos", "classes", "chance", "main", "views", "top1", "top5", "schemes":
        {name: {"clips", "crops", "top1", "top5"}}, "clip", "skipped", "weights"}``.
    """
    from vvk.data import collate, open_video_dataset

    model.eval()
    clips = protocol.views[0] if protocol.multi_view else 0
    sampler = EvalClips(frames=protocol.frames, stride=protocol.stride, clips=clips, fps=protocol.fps)
    dataset = open_video_dataset(data, sampler=sampler, size=protocol.size, cache_dir=cache_dir,
                                 frame_cache=protocol.frame_cache)  # fmt: skip
    to_train = torch.as_tensor(label_map if label_map is not None else range(len(classes)))
    loader = DataLoader(dataset, batch_size=1, num_workers=protocol.num_workers, collate_fn=collate)
    paths, labels, per_scheme, skipped = [], [], {}, len(dataset.bad_files)  # files unreadable from the start
    for batch in loader:
        if batch["skipped"]:  # a video that failed to decode, replaced by another: left out
            skipped += 1
            continue
        views = video_views(
            batch["video"][0], batch["frame_size"][0], crop=protocol.crop, crops=protocol.views[1]
        )
        for name, scores in scheme_scores(view_scores(model, views, protocol), protocol.views).items():
            per_scheme.setdefault(name, []).append(scores)
        paths.append(batch["path"][0])
        labels.append(int(to_train[batch["label"][0]]))
    y = torch.tensor(labels)
    scores = {name: torch.stack(rows) for name, rows in per_scheme.items()}  # (N, K) each
    record = {**_record(scores, y, protocol, classes, skipped), "weights": weights}
    if out is not None:
        write_results(
            Path(out), record, paths=paths, labels=y, scores=scores[record["main"]], classes=classes
        )
    return record


def _record(
    scores: dict[str, Tensor], labels: Tensor, protocol: EvalProtocol, classes: Sequence[str], skipped: int
) -> dict[str, Any]:
    schemes = {}
    for name, values in scores.items():
        clips, crops = (int(v) for v in name.split("x"))
        accuracy = topk_accuracy(values, labels, (1, TOP_K))
        schemes[name] = {"clips": clips, "crops": crops, "top1": accuracy[1], "top5": accuracy[TOP_K]}
    main = protocol.main
    clip = {k: v for k, v in asdict(protocol).items() if k in ("frames", "stride", "size", "crop", "fps")}
    return {
        "videos": len(labels), "classes": len(classes), "chance": 1.0 / len(classes), "main": main,
        "views": {"clips": protocol.views[0], "crops": protocol.views[1]}, "top1": schemes[main]["top1"],
        "top5": schemes[main]["top5"], "schemes": schemes, "clip": clip, "skipped": skipped,
    }  # fmt: skip


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    counts.index_add_(0, labels * num_classes + predicted, torch.ones_like(labels))
    return counts.view(num_classes, num_classes)


def write_results(
    out: Path, record: dict[str, Any], *, paths: Sequence[str], labels: Tensor, scores: Tensor,
    classes: Sequence[str],
) -> None:  # fmt: skip
    """``evaluation.json``, ``predictions.jsonl`` and the confusion matrix of the main scheme."""
    top = scores.topk(min(TOP_K, scores.shape[1]), dim=1)
    lines = []
    for path, label, values, indices in zip(paths, labels.tolist(), top.values, top.indices, strict=True):
        ranked = [
            {"class": classes[i], "score": round(float(v), 6)} for v, i in zip(values, indices, strict=True)
        ]
        lines.append(
            json.dumps({"video": path, "label": classes[label], "scheme": record["main"], "top5": ranked})
        )
    atomic_write_text(out / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))
    matrix = confusion_matrix(scores.argmax(dim=1), labels, len(classes))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["true\\predicted", *classes])
    writer.writerows([name, *row] for name, row in zip(classes, matrix.tolist(), strict=True))
    atomic_write_text(out / CONFUSION_CSV, table.getvalue())
    plot_confusion(
        matrix, classes, out / CONFUSION_PNG, title=f"{record['main']} views, top-1 {record['top1']:.3f}"
    )
    atomic_write_text(out / EVALUATION_FILE, json.dumps(record, indent=2) + "\n")


def plot_confusion(matrix: Tensor, classes: Sequence[str], path: Path, *, title: str) -> Path:
    """The confusion matrix as a PNG, on a bare matplotlib ``Figure`` (no pyplot, no display);
    class names on the axes up to 40 classes."""
    from matplotlib.figure import Figure

    k = len(classes)
    side = min(12.0, 3.0 + 0.25 * k)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize="small")
        ax.set_yticks(range(k), classes, fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
