"""Does a pretrained backbone track better? SiamFC on the shared OTB sequences and VOT ``bag``.

    python benchmarks/tracking_otb.py [--seeds 0 1 2] [--pretrain-method cvrl] [--pretrain-steps N]
        [--train-steps N] [--set KEY=VALUE ...] [--label NAME] [--merge] [--keep DIR] [--jobs N]
    python benchmarks/tracking_otb.py --seeds 0 --pretrain-steps 20 --train-steps 20 --label smoke

Test sequences (none of them is seen in pretraining or tracker training): Crossing and Couple
(OTB-2015, ``tracking/otb``) and VOT2015 ``bag`` (``tracking/vot/bag``) as a one-target sequence,
laid out as an OTB folder in a temporary directory. ``bag``'s ground truth is 8-value rotated
polygons; each becomes an axis-aligned x, y, w, h box by got10k's rule (``--vot-boxes area``,
the default: ``got-10k/toolkit: got10k/datasets/vot.py``, ``VOT._corner2rect``, applied by its
default ``anno_type='rect'``; the same as ``STVIR/pysot: pysot/utils/bbox.py``,
``get_axis_aligned_bbox``): centre at the mean of the corners, the bounding box of the corners
scaled to the polygon's area, plus 1 on each side. ``--vot-boxes bounds`` takes the bounding
box of the corners instead, as the VOT toolkit converts a polygon to a rectangle
(``votchallenge/toolkit: vot/region/shapes.py``, ``Polygon.convert``).

Trackers, each scored by ``vvk.eval.tracking.evaluate_otb`` (got10k's OTB definitions) on the
same folder:

- ``pretrained``, per seed: ``vvk pretrain <method> --preset tiny`` on the shared videos
  (``video/``: UCF101-24, ActivityNet, Kinetics and misc clips) for ``--pretrain-steps``, then
  ``vvk train tracker --preset tiny --weights RUN --freeze-backbone`` on the UCF101-24 tubes of
  ``video/ucf24`` (the 15 tubes of its 9 clips), then ``vvk track run`` on the test folder;
- ``random``, per seed: the same tracker training and tracking on the same architecture at
  random initialisation (``train.seed`` seeds it, and the pairs);
- ``CSRT`` and ``KCF`` (OpenCV's, ``opencv-contrib-python-headless``, the ``bench`` extra):
  initialised on the first ground-truth box (rounded to whole pixels, 0-based as OpenCV counts),
  updated on every later frame read by ``cv2.imread``; when a tracker reports a failure its last
  box is kept (OPE has no re-initialisation) and the failure is counted. Deterministic: run once.

Frames/s are the trackers' own work (decoding excluded), on whatever else the machine was
running: read them from ``docs/benchmarks.md``'s speed figures instead.

Writes benchmarks/results/tracking_otb.json: the machine, the protocol, each sequence's frames
and source, and per record (``--label``, default ``siamfc-tiny-frozen``; ``opencv``) every
seed's success and precision, overall and per sequence, and their spread over the seeds.
Records of earlier invocations are kept; ``--merge`` adds this invocation's seeds to the
record of the same label (same ``--set`` and pretraining method), so seeds can be run apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records, spread  # noqa: E402
from _seeds import seed_results  # noqa: E402

from vvk.data.otb import read_otb  # noqa: E402
from vvk.eval.tracking import evaluate_otb  # noqa: E402
from vvk.methods.pretrain import pretrain  # noqa: E402
from vvk.methods.tracking.run import format_boxes, track_otb  # noqa: E402
from vvk.methods.tracking.train import train_tracker  # noqa: E402
from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "tracking_otb.json"
OTB_SEQUENCES = ("Crossing", "Couple")
VOT_SEQUENCE = "bag"
BACKBONES = ("pretrained", "random")
OPENCV_TRACKERS = ("CSRT", "KCF")


# ---------------------------------------------------------------------------------------------
# The test folder


def polygon_boxes(corners: np.ndarray, rule: str = "area") -> np.ndarray:
    """(N, 8) polygons x1, y1, ..., x4, y4 -> (N, 4) axis-aligned x, y, w, h (module docstring:
    ``area`` is got10k's ``VOT._corner2rect``, ``bounds`` the VOT toolkit's ``Polygon.convert``)."""
    xs, ys = corners[:, 0::2], corners[:, 1::2]  # (N, 4) each
    x1, x2, y1, y2 = xs.min(axis=1), xs.max(axis=1), ys.min(axis=1), ys.max(axis=1)
    if rule == "bounds":
        return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    # the rotated rectangle's area: the lengths of two adjacent sides
    area = np.linalg.norm(corners[:, 0:2] - corners[:, 2:4], axis=1) * np.linalg.norm(
        corners[:, 2:4] - corners[:, 4:6], axis=1
    )
    scale = np.sqrt(area / ((x2 - x1) * (y2 - y1)))
    w, h = scale * (x2 - x1) + 1, scale * (y2 - y1) + 1
    return np.stack([xs.mean(axis=1) - w / 2, ys.mean(axis=1) - h / 2, w, h], axis=1)


def make_test_root(data: Path, into: Path, rule: str) -> dict[str, dict]:
    """An OTB folder at ``into``: the OTB sequences linked, ``bag`` with its polygons converted.
    Returns each sequence's frames and source."""
    into.mkdir(parents=True, exist_ok=True)
    for name in OTB_SEQUENCES:
        (into / name).symlink_to(data / "tracking" / "otb" / name, target_is_directory=True)
    bag = data / "tracking" / "vot" / VOT_SEQUENCE
    corners = np.loadtxt(bag / "groundtruth.txt", delimiter=",", dtype=np.float64)  # (N, 8)
    (into / VOT_SEQUENCE).mkdir()
    (into / VOT_SEQUENCE / "img").symlink_to(bag / "imgs", target_is_directory=True)
    (into / VOT_SEQUENCE / "groundtruth_rect.txt").write_text(format_boxes(polygon_boxes(corners, rule)))
    sources = {name: f"tracking/otb/{name}" for name in OTB_SEQUENCES}
    sources[VOT_SEQUENCE] = f"tracking/vot/{VOT_SEQUENCE} (VOT2015 polygons -> boxes by rule {rule!r})"
    return {seq.name: {"frames": len(seq), "source": sources[seq.name]} for seq in read_otb(into)}


def scores(report: dict) -> dict:
    """The overall and per-sequence success and precision of an ``evaluate_otb`` report."""
    per_sequence = {
        name: {"success": round(s["success"], 4), "precision": round(s["precision"], 4)}
        for name, s in report["sequences"].items()
    }
    return {"success": round(report["success"], 4), "precision": round(report["precision"], 4),
            "sequences": per_sequence}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# SiamFC: pretrained or random backbone, the same head training


def run_one(backbone: str, seed: int, work: Path, args) -> dict:
    """Pretrain (``pretrained`` only), train the head, track the test folder, score it."""
    record: dict = {"seed": seed, "backbone": backbone}
    weights = None
    if backbone == "pretrained":
        run_dir = work / f"{args.pretrain_method}-s{seed}"
        if (run_dir / "backbone.safetensors").is_file():  # --keep: a run of an earlier invocation
            record["pretrain"] = {"run": str(run_dir), "reused": True}
        else:
            started = time.monotonic()
            run = pretrain(
                args.pretrain_method, data=args.data / "video", preset="tiny", steps=args.pretrain_steps,
                overrides=[f"train.seed={seed}"], out=run_dir, progress=False,
            )  # fmt: skip
            record["pretrain"] = {"run": str(run_dir), "steps": run.preset["train"]["steps"],
                                  "seconds": round(time.monotonic() - started, 1),
                                  "loss_last": round(run.losses["loss"], 4)}  # fmt: skip
        weights = run_dir
    tracker_dir = work / f"{args.label}-{backbone}-s{seed}"
    shutil.rmtree(tracker_dir, ignore_errors=True)
    started = time.monotonic()
    trained = train_tracker(
        data=args.data / "video" / "ucf24", weights=weights, freeze_backbone=True, preset="tiny",
        steps=args.train_steps, overrides=[f"train.seed={seed}", *args.set], out=tracker_dir, progress=False,
    )  # fmt: skip
    record["train"] = {
        "steps": trained.step,
        "seconds": round(time.monotonic() - started, 1),
        "loss_last": round(trained.losses["loss"], 4),
        "hit_last": round(trained.losses["hit"], 4),
        "tracks": json.loads((tracker_dir / "preset.json").read_text())["tracks"],
    }
    results = work / "results" / f"{args.label}-{backbone}-s{seed}"
    runs = track_otb(args.test_root, weights=tracker_dir, out=results, overwrite=True, device="cpu")
    record.update(scores(evaluate_otb(args.test_root, results)))
    record["fps"] = {run.name: round(run.fps, 1) for run in runs}
    record["load_average_1min"] = round(os.getloadavg()[0], 2)
    return record


def summarise(runs: list[dict], names: list[str]) -> dict:
    """Per backbone: spread over seeds of the overall and per-sequence scores; and the mean of
    the per-seed differences pretrained - random."""
    out: dict = {}
    for backbone in BACKBONES:
        mine = [r for r in runs if r["backbone"] == backbone]
        if not mine:
            continue
        entry = {key: spread([r[key] for r in mine]) for key in ("success", "precision")}
        entry["sequences"] = {
            name: {key: spread([r["sequences"][name][key] for r in mine]) for key in ("success", "precision")}
            for name in names
        }
        out[backbone] = entry
    paired = {r["seed"]: r for r in runs if r["backbone"] == "pretrained"}
    diffs = [(paired[r["seed"]], r) for r in runs if r["backbone"] == "random" and r["seed"] in paired]
    if diffs:
        out["pretrained_minus_random"] = {
            key: spread([round(p[key] - q[key], 4) for p, q in diffs]) for key in ("success", "precision")
        }
        out["seeds_pretrained_better"] = {
            key: sum(p[key] > q[key] for p, q in diffs) for key in ("success", "precision")
        }
    return out


def earlier_runs(args) -> list[dict]:
    """The runs the record ``args.label`` holds for seeds other than ``args.seeds`` (``--merge``);
    refused when that record was made with other overrides or another pretraining method."""
    if not RESULTS.is_file():
        return []
    earlier = json.loads(RESULTS.read_text()).get("trackers", {}).get(args.label)
    if earlier is None:
        return []
    recipe = (earlier.get("overrides"), earlier.get("pretrain_method"))
    if recipe != (args.set, args.pretrain_method):
        raise SystemExit(f"--merge: the record {args.label!r} was made with (--set, method) {recipe}")
    return [run for run in earlier["runs"] if run["seed"] not in args.seeds]


# ---------------------------------------------------------------------------------------------
# OpenCV's CSRT and KCF


def opencv_tracker(name: str):
    """``cv2.Tracker<name>_create()``: in the main namespace since OpenCV 4.5.1 (contrib builds),
    under ``cv2.legacy`` in older ones."""
    import cv2

    make = getattr(cv2, f"Tracker{name}_create", None) or getattr(getattr(cv2, "legacy", None),
                                                                  f"Tracker{name}_create", None)  # fmt: skip
    if make is None:
        raise SystemExit(
            f"cv2 {cv2.__version__} has no Tracker{name}_create: install the bench extra "
            "(opencv-contrib-python-headless); if opencv-python was installed after it, run "
            "pip install --force-reinstall --no-deps opencv-contrib-python-headless"
        )
    return make()


def run_opencv(name: str, root: Path, out: Path) -> dict:
    """Track every sequence of ``root`` with OpenCV's ``name`` tracker into ``out``; score it."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    fps, failures = {}, {}
    for seq in read_otb(root):
        tracker = opencv_tracker(name)
        x, y, w, h = seq.boxes[0]
        boxes, busy, lost = [seq.boxes[0]], 0.0, 0
        for i, path in enumerate(seq.frames):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, as OpenCV's trackers expect
            started = time.perf_counter()
            if i == 0:
                # OTB's 1-based corner -> OpenCV's 0-based pixel, whole pixels (cv::Rect)
                tracker.init(image, (round(x - 1), round(y - 1), max(1, round(w)), max(1, round(h))))
            else:
                ok, rect = tracker.update(image)
                if ok:
                    boxes.append(np.array([rect[0] + 1, rect[1] + 1, rect[2], rect[3]], dtype=np.float64))
                else:
                    lost += 1
                    boxes.append(boxes[-1])
            busy += time.perf_counter() - started
        (out / f"{seq.name}.txt").write_text(format_boxes(np.stack(boxes)))
        fps[seq.name], failures[seq.name] = round(len(seq) / busy, 1), lost
    return {**scores(evaluate_otb(root, out)), "fps": fps, "reported_failures": failures}


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-method", default="cvrl", choices=["cvrl", "constcl", "teg"],
                        help="the vvk pretrain method (only cvrl has been measured)")  # fmt: skip
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default: the tiny preset's")
    parser.add_argument("--train-steps", type=int, default=None, help="default: the tiny preset's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="tracker preset override, for both backbones")  # fmt: skip
    parser.add_argument("--vot-boxes", default="area", choices=["area", "bounds"])
    parser.add_argument("--label", default="siamfc-tiny-frozen", help="the SiamFC record's key")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other seeds of the record of this label (same --set)")  # fmt: skip
    parser.add_argument("--no-opencv", action="store_true", help="skip CSRT and KCF")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run folders here (and reuse the pretraining runs there)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="seeds at a time, one thread each")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    data = shared_data_root()
    if data is None:
        parser.error(shared_data_reason())
    args.data = data
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="vvk-tracking-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.test_root = work / f"test-{args.vot_boxes}"
    shutil.rmtree(args.test_root, ignore_errors=True)
    sequences = make_test_root(args.data, args.test_root, args.vot_boxes)
    protocol = {
        "test": sequences,
        "vot_boxes": args.vot_boxes,
        "tracker_training_data": "video/ucf24 (UCF101-24 tubes of the 9 shared clips)",
        "pretraining_data": "video/ (all shared videos)",
        "evaluation": "vvk.eval.tracking.evaluate_otb (got10k ExperimentOTB definitions)",
    }
    results: dict = {"machine": machine_info(), "protocol": protocol, "trackers": {}}
    try:
        if not args.no_opencv:
            import cv2

            for name in OPENCV_TRACKERS:
                started = time.monotonic()
                record = run_opencv(name, args.test_root, work / "results" / f"opencv-{name}")
                record["seconds"] = round(time.monotonic() - started, 1)
                results["trackers"][f"opencv-{name}"] = {"opencv": cv2.__version__, **record}
                print(json.dumps({"tracker": f"opencv-{name}", **record}), flush=True)
            save_records(RESULTS, results, "trackers")
        runs: list[dict] = earlier_runs(args) if args.merge else []
        for seed_runs in seed_results(run_one, BACKBONES, args.seeds, work, args, key="backbone",
                                      jobs=args.jobs):  # fmt: skip
            runs.extend(record for _, record in seed_runs)
            results["trackers"][args.label] = {
                "summary": summarise(runs, list(sequences)),
                "runs": sorted(runs, key=lambda r: r["seed"]),
                "pretrain_method": args.pretrain_method,
                "overrides": args.set,
                "machine": machine_info(),
            }
            save_records(RESULTS, results, "trackers")  # after every seed: a stopped run keeps its seeds
        if runs:
            summary = results["trackers"][args.label]["summary"]
            print(json.dumps({"tracker": args.label, **summary}), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
