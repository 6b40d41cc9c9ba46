"""vvk against the libraries users would pick instead: time ratios with an agreement check (issue 22).

    python benchmarks/peers.py                                  # every comparison, one thread
    python benchmarks/peers.py --only contrastive --rounds 5    # one comparison (others kept in the JSON)
    python benchmarks/peers.py --only roi-align --threads 2
    python benchmarks/peers.py --quick --out /tmp/peers.json    # tiny sizes: checks the script only
    python benchmarks/peers.py --only copy-paste --torchvision-references vision/references/detection

Every comparison gives both sides the same inputs and times them in interleaved rounds (peer,
vvk, peer, vvk, ... after one untimed round), so load from other jobs falls on both alike; the
figure is peer seconds over vvk seconds, round by round: its median, min and max. Each comes
with a check that the outputs agree, and counts only when it passed (``counts``). A peer that
does not install or import here is recorded as skipped with the reason. Comparisons:

- ``copy-paste``: the paste step of Simple Copy-Paste per 1024² pair, vvk's dataset path and
  online transform vs mmdetection's ``CopyPaste`` and torchvision's reference ``_copy_paste``
  (``_peers_copy_paste.py``; identical masks, boxes and images);
- ``decode``: 16-frame clips at stride 2 resized to 112², vvk's PyAV decoder vs decord,
  mmaction2's ``PyAVDecode`` and torchcodec (``_peers_decode.py``; frames byte-equal at full size);
- ``contrastive``: symmetric InfoNCE forward + backward, D = 256, float32, N = 4,096 / 8,192 /
  16,384: ``vvk.kernels.contrastive_loss`` (the automatic path: logits materialised up to
  ``PLAIN_BELOW_BYTES``, tiles beyond; and tiles forced, ``plain_below_bytes=0``) vs open_clip's
  ``ClipLoss`` on the normalised features with ``logit_scale = 1 / t``; loss and gradients to
  1e-6 relative; the extra peak memory of each step (VmHWM, as ``kernels.py`` measures it);
- ``roi-align``: RoIAlign-3D and the tube variant, forward + backward, 512 rois on a (2, 256, 8,
  28, 28) map (``kernels.py``'s inputs), vvk's reference backend vs torchvision's ``roi_align``
  per frame; outputs and input gradients to 1e-6 relative;
- ``tracking``: per-frame updates on VOT bag, ``vvk track``'s SiamFC (``random:tiny`` and
  ``random:paper``) vs OpenCV's CSRT and KCF; different trackers, so the check is on the form of
  the outputs only (a box for every frame);
- ``federate``: a federated round, ``vvk federate`` vs Flower's stock ``FedAvg`` on the same
  client work (``_peers_federate.py``; global model to 1e-6, accuracies equal);
- ``detection``: inference of vvk's RetinaNets vs torchvision's detectors (``detection_inference.py``'s
  pairs, random weights); different networks, so the check is on the form of the outputs only.

Writes ``benchmarks/results/peers.json`` (``--out``): the machine, the threads, and per comparison
its records (under the comparison's name, with ``(N threads)`` after it for ``--threads N``
other than 1); comparisons not run this time keep their earlier records.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _peers_common import Timed, interleave, record, relative_error, skipped, version  # noqa: E402
from _records import save_records  # noqa: E402

from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "peers.json"
COMPARISONS = ("copy-paste", "decode", "contrastive", "roi-align", "tracking", "federate", "detection")
MIB = 2**20
TOLERANCE = 1e-6  # relative, for losses, gradients and RoIAlign outputs (float32)


# --- contrastive -------------------------------------------------------------------------------


def _step_with_peak(loss_fn, q, k, peaks: list[float]):
    """Loss and gradients of one forward + backward; its peak resident memory above the start
    (writing 5 to clear_refs resets the high-water mark) is appended to ``peaks``, in MiB."""
    from kernels import _status_bytes

    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    loss = loss_fn(q, k)
    loss.backward()
    peaks.append((_status_bytes("VmHWM") - before) / MIB)
    return loss.detach(), q.grad, k.grad


def _errors(ours, theirs) -> dict[str, float]:
    """Relative error of the loss and of each gradient, ``ours`` against ``theirs``."""
    names = ("loss", "grad_q", "grad_k")
    return {
        name: relative_error(a.double(), b.double()) for name, a, b in zip(names, ours, theirs, strict=True)
    }


def _contrastive_agreement(ours, theirs, exact) -> dict:
    """Within the tolerance of the peer; each side's distance from a float64 evaluation tells
    float32 rounding (both sides as far) from a real difference."""
    errors = _errors(ours, theirs)
    return {
        "ok": max(errors.values()) <= TOLERANCE,
        "tolerance": f"{TOLERANCE} relative",
        "relative_error": errors,
        "float64_relative_error": {
            "vvk": max(_errors(ours, exact).values()),
            "peer": max(_errors(theirs, exact).values()),
        },
    }


def contrastive_size(n: int, d: int, sides: dict, exact_fn, rounds: int, plain_below_bytes: int) -> dict:
    """The sides (peer first) at N = ``n``: times, extra peak memory, agreement with the peer;
    ``exact_fn``: the loss evaluated in float64."""
    gen = torch.Generator().manual_seed(n)
    q, k = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    exact = _step_with_peak(exact_fn, q.double(), k.double(), [])
    peaks: dict[str, list[float]] = {name: [] for name in sides}
    calls = {name: lambda fn=fn, p=peaks[name]: _step_with_peak(fn, q, k, p) for name, fn in sides.items()}
    results = {name: call() for name, call in calls.items()}
    seconds = interleave(calls, rounds)
    memory = {name: round(max(p), 1) for name, p in peaks.items()}
    peer, *ours = sides
    logits = n * n * 4  # float32
    comparisons = [
        record(
            peer,
            side,
            seconds,
            _contrastive_agreement(results[side], results[peer], exact),
            memory_ratio=round(memory[side] / memory[peer], 3),
        )
        for side in ours
    ]
    path = "plain (logits materialised)" if logits <= plain_below_bytes else "tiles"
    return {
        "n": n,
        "logits_mib": logits / MIB,
        "vvk_path": path,
        "extra_peak_mib": memory,
        "comparisons": comparisons,
    }


def contrastive(args) -> dict:
    from open_clip.loss import ClipLoss

    from vvk.kernels import contrastive_loss
    from vvk.kernels.contrastive.op import PLAIN_BELOW_BYTES

    t, d, clip_loss = 0.07, 256, ClipLoss()
    sides = {  # peer first; vvk normalises inside, ClipLoss wants normalised features
        "open_clip ClipLoss": lambda q, k: clip_loss(F.normalize(q, dim=1), F.normalize(k, dim=1), 1 / t),
        "vvk contrastive_loss": lambda q, k: contrastive_loss(q, k, t, symmetric=True),
        "vvk contrastive_loss (tiles)": lambda q, k: contrastive_loss(
            q, k, t, symmetric=True, plain_below_bytes=0
        ),
    }
    # float64 in tiles: no N x N matrix of float64 at N = 16,384 (2 GiB a direction)
    exact = sides["vvk contrastive_loss (tiles)"]
    sizes = []
    for n in (512, 1024) if args.quick else (4096, 8192, 16384):
        sizes.append(contrastive_size(n, d, sides, exact, args.rounds, PLAIN_BELOW_BYTES))
        print(json.dumps({"contrastive_n": n, "extra_peak_mib": sizes[-1]["extra_peak_mib"]}), flush=True)
    return {
        "d": d,
        "temperature": t,
        "plain_below_bytes": PLAIN_BELOW_BYTES,
        "versions": version("open_clip_torch"),
        "sizes": sizes,
    }


# --- RoIAlign-3D -------------------------------------------------------------------------------


def _output_and_grad(fn, features):
    x = features.detach().requires_grad_()
    out = fn(x)
    out.backward(torch.ones_like(out))
    return out.detach(), x.grad


def roi_align(args) -> dict:
    from kernels import roi_inputs, roi_variants

    rois = 64 if args.quick else 512
    inputs = roi_inputs("cpu", k=rois)
    variants = roi_variants(inputs, ["reference"])
    # the same inputs in float64: which side float32 rounding moved further from the exact result
    inputs64 = roi_inputs("cpu", dtype=torch.float64, k=rois)
    variants64 = roi_variants(inputs64, ["reference"])
    out = {
        "rois": rois,
        "features": list(inputs["features"].shape),
        "versions": version("torchvision"),
        "comparisons": [],
    }
    for op in ("3d", "tube"):
        peer, ours = f"torchvision roi_align per frame ({op})", f"vvk roi_align_{op} (reference)"
        fns = {peer: variants[f"{op}/torchvision_loop"], ours: variants[f"{op}/reference"]}
        results = {name: _output_and_grad(fn, inputs["features"]) for name, fn in fns.items()}
        errors = {
            part: relative_error(a, b)
            for part, a, b in zip(("output", "grad"), results[ours], results[peer], strict=True)
        }
        exact = _output_and_grad(variants64[f"{op}/torchvision_loop"], inputs64["features"])
        to_exact = {
            name: max(relative_error(a.double(), b) for a, b in zip(result, exact, strict=True))
            for name, result in results.items()
        }
        check = {
            # within the tolerance of the peer, or no further from the float64 result than the peer
            # is plus the tolerance: 512 rois summed into one input gradient put both sides about
            # 2.6e-6 from it in float32, and 1.1e-6 from each other, by rounding alone
            "ok": max(errors.values()) <= TOLERANCE or to_exact[ours] <= to_exact[peer] + TOLERANCE,
            "tolerance": f"{TOLERANCE} relative to the peer, or to the peer's distance from float64",
            "relative_error": errors,
            "float64_relative_error": {"vvk": to_exact[ours], "peer": to_exact[peer]},
        }
        calls = {name: lambda fn=fn: _output_and_grad(fn, inputs["features"]) for name, fn in fns.items()}
        out["comparisons"].append(record(peer, ours, interleave(calls, args.rounds), check))
    return out


# --- tracking ----------------------------------------------------------------------------------


def _opencv_run(create, frames: list, box: tuple[int, int, int, int], boxes: list) -> Timed:
    """Seconds of an OpenCV tracker's updates over ``frames`` (BGR), started on the first; its
    ``(found, box)`` per frame into ``boxes``."""
    tracker = create()
    tracker.init(frames[0], box)
    start = time.perf_counter()
    boxes[:] = [tracker.update(frame) for frame in frames[1:]]
    return Timed(time.perf_counter() - start)


def _vvk_run(model, frames: list, box, boxes: list) -> Timed:
    from vvk.methods.tracking.tracker import SiamFCTracker

    tracker = SiamFCTracker(model)
    tracker.init(frames[0], box)
    start = time.perf_counter()
    boxes[:] = [(True, tracker.update(frame)) for frame in frames[1:]]  # SiamFC always answers
    return Timed(time.perf_counter() - start)


def _boxes_check(boxes: dict[str, list], frames: int) -> dict:
    """Different trackers: only the outputs' form is checked (a finite box for every frame)."""
    finite = all(
        len(found_boxes) == frames - 1 and all(math.isfinite(v) for _, box in found_boxes for v in box)
        for found_boxes in boxes.values()
    )
    lost = {name: sum(not found for found, _ in found_boxes) for name, found_boxes in boxes.items()}
    return {
        "ok": finite,
        "kind": "output form only: different algorithms, boxes are not expected to agree",
        "frames_reported_lost": lost,
    }


def tracking(args, data: Path) -> dict:
    import cv2
    from tracking_speed import FIRST_BOX, load_frames

    from vvk.methods.tracking.io import load_tracker

    count = 10 if args.quick else 60
    frames = load_frames(data, count + 1)
    bgr = [cv2.cvtColor(f.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR) for f in frames]
    x, y, w, h = FIRST_BOX  # OTB: 1-based corner; OpenCV: 0-based whole pixels
    cv_box = (round(x - 1), round(y - 1), round(w), round(h))
    out = {
        "sequence": "VOT bag",
        "updates_per_round": count,
        "first_box": FIRST_BOX,
        "opencv_box": cv_box,
        "versions": version("opencv-contrib-python-headless", "opencv-python"),
        "comparisons": [],
    }
    peers = {}
    for name in ("CSRT", "KCF"):
        create = getattr(cv2, f"Tracker{name}_create", None)
        if create is None:
            out["comparisons"].append(
                skipped(f"OpenCV {name}", f"cv2 {cv2.__version__} has no Tracker{name}_create")
            )
        else:
            peers[f"OpenCV {name}"] = create
    for preset in ("tiny",) if args.quick else ("tiny", "paper"):
        model, _ = load_tracker(f"random:{preset}")
        ours = f"vvk SiamFC random:{preset}"
        for peer, create in peers.items():
            boxes: dict[str, list] = {peer: [], ours: []}
            calls = {
                peer: lambda c=create, b=boxes[peer]: _opencv_run(c, bgr, cv_box, b),
                ours: lambda m=model, b=boxes[ours]: _vvk_run(m, frames, FIRST_BOX, b),
            }
            seconds = interleave(calls, args.rounds)
            out["comparisons"].append(record(peer, ours, seconds, _boxes_check(boxes, len(frames))))
    return out


# --- detection ---------------------------------------------------------------------------------


EVERY_SCORE = 100  # detections per image when no score threshold applies: the same work on both sides


def _detections_check(outputs: dict[str, list], size: int, count: int | None) -> dict:
    """Different networks: only the outputs' form is checked (boxes, scores and labels per image,
    boxes inside it; ``count`` detections each where given)."""
    problems = []
    for name, images in outputs.items():
        for result in images:
            boxes, scores = result["boxes"], result["scores"]
            if (
                boxes.ndim != 2
                or boxes.shape[1] != 4
                or not len(scores) == len(boxes) == len(result["labels"])
            ):
                problems.append(f"{name}: shapes")
            elif count is not None and len(boxes) != count:
                problems.append(f"{name}: {len(boxes)} detections, not {count}")
            elif len(boxes) and not (
                torch.isfinite(boxes).all() and boxes.min() >= 0 and boxes.max() <= size
            ):
                problems.append(f"{name}: boxes outside the image")
    return {
        "ok": not problems,
        "kind": "output form only: different networks at random initialisation",
        "problems": problems,
        "detections": {n: [len(r["boxes"]) for r in rs] for n, rs in outputs.items()},
    }


def _infer(model, images: list):
    with torch.inference_mode():
        return model(images)


def _same_features(folded, unfolded, image) -> dict:
    """Folding's check: the backbone's features at every level equal up to float rounding."""
    with torch.inference_mode():
        ours, theirs = folded.backbone(image[None]), unfolded.backbone(image[None])
    worst = max(relative_error(ours[k].double(), theirs[k].double()) for k in theirs)
    return {"ok": list(ours) == list(theirs) and worst <= 1e-5, "tolerance": "1e-5 relative, every level",
            "max_relative_error": worst}  # fmt: skip


def detection(args) -> dict:
    """Each pair twice: with each model's own thresholds (at random initialisation vvk's
    RetinaNets keep no box, SSDlite keeps 300: the networks' cost), then with no score threshold
    and ``EVERY_SCORE`` detections on both (post-processing at its most: every anchor's scores
    go to the top-k and NMS). vvk's model is the one ``vvk detect`` runs (batch norms folded into
    the convs); the same model unfolded is timed beside it."""
    import copy

    from detection_inference import PAIRS, torchvision_detector

    import vvk.models
    from vvk.methods.detection.predict import set_thresholds
    from vvk.models.layers import fold_batch_norms

    out = {"batch": 1, "weights": "random", "versions": version("torchvision"), "comparisons": []}
    for vvk_name, tv_name, size in PAIRS[:1] if args.quick else PAIRS:
        torch.manual_seed(0)
        images = [torch.rand(3, size, size)]
        unfolded = f"{vvk_name}, norms not folded"
        vvk_model = vvk.models.build(vvk_name).eval()
        models = {tv_name: torchvision_detector(tv_name, size).eval(), unfolded: copy.deepcopy(vvk_model)}
        fold_batch_norms(vvk_model)
        models[vvk_name] = vvk_model
        folding = _same_features(vvk_model, models[unfolded], images[0])
        for thresholds, count in (("their own", None), ("none", EVERY_SCORE)):
            if count is not None:
                for model in models.values():
                    set_thresholds(model, min_score=0.0, max_dets=count)
            calls = {name: lambda m=model, x=images: _infer(m, x) for name, model in models.items()}
            check = _detections_check({name: call() for name, call in calls.items()}, size, count)
            seconds = interleave(calls, args.rounds)
            setting = {"input": size, "thresholds": thresholds}
            out["comparisons"] += [
                record(tv_name, vvk_name, seconds, check, **setting),
                record(unfolded, vvk_name, seconds, folding, **setting),
            ]
    return out


# --- main --------------------------------------------------------------------------------------


def run(name: str, args, data: Path) -> dict:
    if name == "copy-paste":
        import _peers_copy_paste

        return _peers_copy_paste.run(
            data,
            pairs=4 if args.quick else 40,
            size=256 if args.quick else 1024,
            rounds=args.rounds,
            torchvision_references=args.torchvision_references,
        )
    if name == "decode":
        import _peers_decode

        return _peers_decode.run(data, rounds=args.rounds, quick=args.quick)
    if name == "federate":
        import _peers_federate

        steps = ["pretrain_steps=5", "client_steps=2"] if args.quick else []
        return _peers_federate.run(
            rounds=args.rounds,
            fl_rounds=1 if args.quick else 3,
            seed=0,
            preset_overrides=steps,
            num_cpus=args.threads,
        )
    if name == "tracking":
        return tracking(args, data)
    return {"contrastive": contrastive, "roi-align": roi_align, "detection": detection}[name](args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=COMPARISONS, action="append", help="this comparison (repeatable)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each side, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch (and OpenMP) threads of both sides")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the figures")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file (records of others kept)")
    parser.add_argument(
        "--torchvision-references",
        type=Path,
        default=None,
        help="pytorch/vision's references/detection folder (not in the wheel), for copy-paste",
    )
    args = parser.parse_args()
    data = shared_data_root()
    if data is None:
        parser.error(shared_data_reason())
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for what starts later (Ray's workers)
    torch.set_num_threads(args.threads)
    figure = "peer seconds / vvk seconds per interleaved round (median, min, max), with an agreement check"
    results: dict = {"figure": figure, "comparisons": {}}  # each comparison records its own run
    for name in args.only or COMPARISONS:
        started = time.perf_counter()
        try:
            entry = run(name, args, data)
        except Exception as error:  # noqa: BLE001 - one comparison's failure leaves the others to run
            entry = {"error": f"{type(error).__name__}: {error}"}
        entry.update(
            machine=machine_info(),
            threads=args.threads,
            rounds=args.rounds,
            quick=args.quick,
            seconds=round(time.perf_counter() - started, 1),
        )
        # one record per comparison and thread count: a 2-thread run keeps the 1-thread record
        results["comparisons"][name if args.threads == 1 else f"{name} ({args.threads} threads)"] = entry
        save_records(args.out, results, "comparisons")
        print(json.dumps({"comparison": name, **summary(entry)}), flush=True)
    print(f"wrote {args.out}")


def summary(entry: dict) -> dict:
    """The comparison's ratios and checks, one line per peer/vvk pair, for the console."""
    rows = entry.get("comparisons", []) + [c for s in entry.get("sizes", []) for c in s["comparisons"]]
    return (
        {"error": entry["error"]}
        if "error" in entry
        else {
            "rows": [
                {"peer": r["peer"], "skipped": r["skipped"]}
                if "skipped" in r
                else {
                    "peer": r["peer"],
                    "vvk": r["vvk"],
                    "ratio_median": r["ratio_peer_over_vvk"]["median"],
                    "range": [r["ratio_peer_over_vvk"]["min"], r["ratio_peer_over_vvk"]["max"]],
                    "agrees": r["agreement"]["ok"],
                }
                for r in rows
            ]
        }
    )


if __name__ == "__main__":
    main()
