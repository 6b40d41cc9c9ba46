"""OTB one-pass evaluation (OPE): success and precision of tracker results, and their plots.

::

    from vvk.eval.tracking import evaluate_otb, plot_otb

    report = evaluate_otb("data/otb", "results/siamfc")   # results/siamfc/<sequence>.txt
    report["success"], report["precision"]                # AUC of the success plot, precision at 20 px
    report["sequences"]["Jogging.1"]                      # {"success", "precision", "frames", ...}
    plot_otb({"SiamFC": report, "mine": other}, "otb.png")

The definitions are those of got10k's ``ExperimentOTB`` (got-10k/toolkit:
got10k/experiments/otb.py, got10k/utils/metrics.py), the evaluator behind the OTB numbers of
the self-supervised papers vvk reproduces:

- IoU of x, y, w, h boxes as continuous rectangles (the right edge is x + w);
- centre (x + (w - 1) / 2, y + (h - 1) / 2), centre error in pixels;
- success curve: the fraction of frames whose IoU is strictly above each of the 21 thresholds
  0, 0.05, ..., 1; success score: its mean (the area under it, "AUC" in the papers);
- precision curve: the fraction of frames whose centre error is at most 0, 1, ..., 50 px;
  precision score: its value at 20 px;
- frame 1 counts, scored with the ground-truth box the tracker starts from: the results' first
  line is replaced by it, as got10k (``boxes[0] = anno[0]``) and the OTB toolkit
  (jwlim/tracker_benchmark: butil/calc_seq_err_robust.py, ``rectMat[0] = rect_anno[0]``) do;
- every sequence weighs the same: the curves are averaged over sequences.

A frame without a prediction (a blank line, NaNs, any non-finite number) is a failure: IoU 0
and an infinite centre error. Sequences and their quirks come from ``vvk.data.otb``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vvk.atomic import atomic_path
from vvk.data.otb import OtbSequence, read_boxes, read_otb, sequence_names
from vvk.errors import VvkError

IOU_THRESHOLDS = np.linspace(0, 1, 21)  # got10k's values exactly: 0.15 is 0.15000000000000002
ERROR_THRESHOLDS = np.arange(51, dtype=np.float64)  # pixels
PRECISION_PIXELS = 20
MISSING_RESULTS = ("error", "fail")


def box_errors(predicted: np.ndarray, ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and centre error (pixels) of each frame, from two (N, 4) arrays of x, y, w, h boxes.

    A prediction holding a non-finite value scores IoU 0 and centre error inf. A box of zero or
    negative size overlaps nothing.
    """
    pred = np.asarray(predicted, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 4 or pred.shape != gt.shape:
        raise ValueError(f"expected two (N, 4) arrays of x, y, w, h boxes, got {pred.shape} and {gt.shape}")
    width = np.minimum(pred[:, 0] + pred[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(pred[:, 0], gt[:, 0])
    height = np.minimum(pred[:, 1] + pred[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(pred[:, 1], gt[:, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = pred[:, 2] * pred[:, 3] + gt[:, 2] * gt[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.clip(np.where(union > 0, inter / union, 0.0), 0.0, 1.0)
    # (N, 2) centre offsets: centres are xy + (wh - 1) / 2, and the -1 cancels in the difference
    offset = pred[:, :2] - gt[:, :2] + (pred[:, 2:] - gt[:, 2:]) / 2
    errors = np.hypot(offset[:, 0], offset[:, 1])
    missing = ~np.isfinite(pred).all(axis=1)
    iou[missing] = 0.0
    errors[missing] = np.inf
    return iou, errors


def success_curve(ious: np.ndarray) -> np.ndarray:
    """(21,) fraction of frames whose IoU is above each of ``IOU_THRESHOLDS`` (strictly, so a
    perfect box fails the last one)."""
    ious = np.asarray(ious, dtype=np.float64)
    return (ious[:, None] > IOU_THRESHOLDS[None, :]).mean(axis=0)  # (N, 21) -> (21,)


def precision_curve(errors: np.ndarray) -> np.ndarray:
    """(51,) fraction of frames whose centre error is at most each of ``ERROR_THRESHOLDS``."""
    errors = np.asarray(errors, dtype=np.float64)
    return (errors[:, None] <= ERROR_THRESHOLDS[None, :]).mean(axis=0)  # (N, 51) -> (51,)


def success_score(curve: np.ndarray) -> float:
    """The area under a success curve: its mean over the 21 thresholds."""
    return float(np.mean(curve))


def precision_score(curve: np.ndarray) -> float:
    """A precision curve's value at 20 px (thresholds are 0, 1, ... px, so also its index)."""
    return float(curve[PRECISION_PIXELS])


def sequence_curves(predicted: np.ndarray, ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Success and precision curves of one sequence under OPE; frame 1 is scored with the
    ground truth the tracker was given (``predicted`` itself is not changed)."""
    predicted = np.array(predicted, dtype=np.float64)
    predicted[0] = ground_truth[0]
    ious, errors = box_errors(predicted, ground_truth)
    return success_curve(ious), precision_curve(errors)


def read_results(
    results_dir: str | os.PathLike, sequences: Sequence[OtbSequence], *, missing_results: str = "error"
) -> dict[str, np.ndarray]:
    """Each sequence's predicted boxes from ``<results_dir>/<name>.txt``, by sequence name.

    A results file holds one ``x,y,w,h`` line per frame (got10k writes commas; tabs and spaces
    are read too), for the sequence's evaluated frames, or for every image of its folder when
    the tracker ran on all of them (David: 471 or 770 lines; the frames outside 300-770 are
    dropped). The file may carry the sequence's name or an alias (``Jogging-1.txt``), in any
    case. Any other line count is an error naming the file and both counts. A sequence without
    a file is an error, or with ``missing_results="fail"`` is left out of the result.
    """
    if missing_results not in MISSING_RESULTS:
        raise VvkError(
            f"missing_results={missing_results}: expected error or fail", params=["missing_results"]
        )
    folder = Path(results_dir)
    if not folder.is_dir():
        raise VvkError(f"results_dir={folder}: no such folder", params=["results_dir"])
    by_lower = {p.stem.lower(): p for p in sorted(folder.glob("*.txt"))}
    found, absent = {}, []
    for seq in sequences:
        path = _results_file(folder, (seq.name, *seq.aliases), by_lower)
        if path is None:
            absent.append(seq.name)
        else:
            found[seq.name] = _fit(read_boxes(path, missing_ok=True), seq, path)
    if absent and missing_results != "fail":
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise VvkError(
            f"results_dir={folder}: no results for {len(absent)} of {len(sequences)} sequences ({shown})",
            hint="evaluate fewer with sequences=[...], or score them as failures with missing_results='fail'",
            params=["results_dir", "sequences", "missing_results"],
        )
    return found


def _results_file(folder: Path, names: Iterable[str], by_lower: dict[str, Path]) -> Path | None:
    for name in names:
        if (folder / f"{name}.txt").is_file():
            return folder / f"{name}.txt"
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def _fit(boxes: np.ndarray, seq: OtbSequence, path: Path) -> np.ndarray:
    # one line per evaluated frame, or per image of the folder; rows past either count that hold
    # no prediction are blank lines at the end of the file, not frames
    for count in dict.fromkeys((len(seq), seq.folder_frames)):
        if len(boxes) >= count and np.isnan(boxes[count:]).all():
            boxes = boxes[:count]  # (count, 4)
            return boxes if count == len(seq) else boxes[seq.offset : seq.offset + len(seq)]
    every = f" or {seq.folder_frames} (one per image of its folder)" if seq.folder_frames != len(seq) else ""
    raise VvkError(f"{path}: {len(boxes)} lines, expected {len(seq)} (one per frame of {seq.name}){every}")


def evaluate_otb(
    root: str | os.PathLike,
    results_dir: str | os.PathLike,
    *,
    sequences: Iterable[str] | None = None,
    missing_results: str = "error",
) -> dict[str, Any]:
    """OTB success and precision of one tracker's results (see the module docstring).

    Args:
        root: the OTB folder (``vvk.data.otb.read_otb``).
        results_dir: the tracker's ``<sequence>.txt`` files (``read_results``).
        sequences: evaluate these only (names, aliases or folder names; e.g.
            ``read_sequence_list(root / "tb_50.txt")``); default every sequence under ``root``.
        missing_results: ``"error"`` (default) when a sequence has no results file, or
            ``"fail"`` to score all its frames after the first as failures.

    Returns:
        A JSON-ready dict: ``success`` and ``precision`` (the scores), ``success_curve`` (21)
        and ``precision_curve`` (51) over ``iou_thresholds`` and ``error_thresholds``,
        ``sequences`` (name -> ``success``, ``precision``, ``frames``, ``missing_frames``),
        ``num_sequences``, ``frames``, ``missing_frames`` (predictions absent or non-finite)
        and ``missing_sequences`` (without a results file).
    """
    seqs = read_otb(root, sequences)
    results = read_results(results_dir, seqs, missing_results=missing_results)
    success = np.empty((len(seqs), len(IOU_THRESHOLDS)))  # (S, 21)
    precision = np.empty((len(seqs), len(ERROR_THRESHOLDS)))  # (S, 51)
    per_sequence = {}
    for i, seq in enumerate(seqs):
        predicted = results[seq.name] if seq.name in results else np.full_like(seq.boxes, np.nan)
        success[i], precision[i] = sequence_curves(predicted, seq.boxes)
        per_sequence[seq.name] = {
            "success": success_score(success[i]),
            "precision": precision_score(precision[i]),
            "frames": len(seq),
            "missing_frames": int((~np.isfinite(predicted[1:]).all(axis=1)).sum()),  # frame 1 is the GT
        }
    success_mean, precision_mean = success.mean(axis=0), precision.mean(axis=0)  # (21,), (51,)
    return {
        "success": success_score(success_mean),
        "precision": precision_score(precision_mean),
        "success_curve": success_mean.tolist(),
        "precision_curve": precision_mean.tolist(),
        "iou_thresholds": IOU_THRESHOLDS.tolist(),
        "error_thresholds": ERROR_THRESHOLDS.tolist(),
        "sequences": per_sequence,
        "num_sequences": len(seqs),
        "frames": sum(len(seq) for seq in seqs),
        "missing_frames": sum(s["missing_frames"] for s in per_sequence.values()),
        "missing_sequences": [seq.name for seq in seqs if seq.name not in results],
    }


# (curve, score, x values, title, x label, y label, legend place) of each panel, as OTB draws them
_PANELS = (
    ("success_curve", "success", IOU_THRESHOLDS, "Success plots of OPE", "Overlap threshold",
     "Success rate", "lower left"),
    ("precision_curve", "precision", ERROR_THRESHOLDS, "Precision plots of OPE",
     "Location error threshold (pixels)", "Precision", "lower right"),
)  # fmt: skip


def plot_otb(reports: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """The success and precision plots of ``evaluate_otb`` reports, by tracker name, side by side
    in one image, as OTB papers draw them: one curve per tracker, the legend ranked by score with
    the score in brackets (success: the AUC; precision: at 20 px).

    The format follows ``path``'s suffix (png, pdf, svg, ...). Drawn on a bare matplotlib
    ``Figure``, rendered by Agg for PNG (no pyplot: no display, no global backend change), and
    written atomically. Returns ``path``.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    _check_reports(reports)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    formats = fig.canvas.get_supported_filetypes()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in formats:
        raise VvkError(
            f"path={path}: unknown image format {path.suffix!r} (one of {', '.join(sorted(formats))})",
            params=["path"],
        )
    names = list(reports)
    for ax, (curve, score, xs, title, xlabel, ylabel, place) in zip(fig.subplots(1, 2), _PANELS, strict=True):
        for i in sorted(range(len(names)), key=lambda i: -reports[names[i]][score]):
            report = reports[names[i]]
            # a tracker keeps its colour and dashes in both panels, whatever its rank
            style = {"color": f"C{i % 10}", "linestyle": ("-", "--", "-.", ":")[i // 10 % 4]}
            ax.plot(xs, report[curve], linewidth=2, label=f"{names[i]} [{report[score]:.3f}]", **style)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(xs[0], xs[-1]), ylim=(0, 1))
        ax.grid(True, alpha=0.3)
        ax.legend(loc=place, fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150)
    return path


def _check_reports(reports: Mapping[str, Mapping[str, Any]]) -> None:
    if not reports:
        raise VvkError("reports={}: nothing to plot", params=["reports"])
    for name, report in reports.items():
        for curve, score, xs, *_ in _PANELS:
            if not isinstance(report, Mapping) or curve not in report or score not in report:
                raise VvkError(
                    f"reports[{name!r}]: not an evaluate_otb report (no {curve!r} or {score!r})",
                    params=["reports"],
                )
            if len(report[curve]) != len(xs):
                raise VvkError(
                    f"reports[{name!r}]: {curve} has {len(report[curve])} points, expected {len(xs)}",
                    params=["reports"],
                )


def evaluate_results(
    root: str | os.PathLike,
    results: Sequence[str | os.PathLike],
    *,
    names: Sequence[str] | None = None,
    sequences: str | Sequence[str] | None = None,
    missing_results: str = "error",
) -> dict[str, dict[str, Any]]:
    """``evaluate_otb`` of each results folder, by tracker name (``names``, default each folder's
    name, or its path where two folders share a name); each report also has ``results``."""
    if not results:
        raise VvkError("results_dir=: give at least one results folder", params=["results_dir"])
    if names is not None and len(names) != len(results):
        raise VvkError(
            f"names={','.join(names)}: {len(names)} names for {len(results)} folders of results_dir= "
            "(one name per folder)",
            params=["names", "results_dir"],
        )
    if names is None:
        folders = [Path(r).name or str(r) for r in results]
        names = [str(r) if folders.count(f) > 1 else f for r, f in zip(results, folders, strict=True)]
    if len(set(names)) != len(names):
        raise VvkError(f"names={','.join(names)}: each tracker needs a name of its own", params=["names"])
    chosen = sequence_names(sequences, root)
    reports = {}
    for name, folder in zip(names, results, strict=True):
        report = evaluate_otb(root, folder, sequences=chosen, missing_results=missing_results)
        reports[name] = {"results": str(folder), **report}
    return reports
