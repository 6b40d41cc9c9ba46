"""``peers.py --only copy-paste``: the paste step of Simple Copy-Paste, vvk against mmdetection's
``CopyPaste`` and torchvision's detection reference ``_copy_paste``.

The pairs are outputs of ``vvk augment copy-paste`` on tiny_coco (``augment_coco``'s plan, seed 0):
each pair's destination and source images already jittered to the square frame (vvk's jitter) with
their objects' masks in it, and the source objects the dataset tool draws to paste. Timed, on the
same pairs (a side's own input types built beforehand, e.g. mmdet's dense ``BitmapMasks``):

- ``vvk dataset path``: ``vvk.augment.paste`` on the dataset tool's masks (``LocalMask`` /
  ``RunMask``, as ``augment_coco`` renders them), composing into a copy of the destination;
- ``vvk online transform``: ``vvk.augment.CopyPaste.paste_pair`` on ``tv_tensors`` (dense masks in
  and out, as a training pipeline holds them);
- ``mmdet CopyPaste``: ``CopyPaste(selected=False)`` given exactly the objects to paste (its own
  random choice would pick others), each destination's boxes the tight boxes of its masks (vvk's
  rule compares with those; mmdet with the given boxes);
- ``torchvision _copy_paste``: the reference's function (``blending=False``: a hard paste, as the
  others) under a fixed torch seed; it draws its own subset of the source's objects and cannot be
  told which, so vvk's two paths are timed once more pasting the subset it drew (made again from
  the seed: its labels leave out drawn objects whose box it then drops, though their pixels
  were pasted).

vvk's ``CopyPaste`` draws its objects from a torch generator; the seed that makes it paste all
of the given objects is found on a stand-in sample of the same object count (the draw depends on
the generator and the count only), and the agreement check confirms the real pair pasted them.

Agreement, pair by pair, against vvk's dataset path: mmdet and vvk's online transform must give
the same image, masks, boxes and labels (exact). torchvision keeps every destination object with a
pixel left and drops boxes one pixel wide or tall (its boxes: inclusive corners), where vvk and
mmdet drop occluded objects of at most 300 pixels: the check is the same image, equal masks and
boxes (+1 on the far corner) for every object both keep, and each object only one keeps explained
by those rules, and the pasted objects its labels name all in the draw made again.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from _peers_common import interleave, record, skipped, version
from copy_paste import self_plan
from torchvision import tv_tensors

from vvk.augment import CopyPaste, CopyPasteOptions, Instance, paste, survives_occlusion
from vvk.augment.copy_paste import AREA_PX, BOX_PX
from vvk.augment.jitter import jitter_image
from vvk.augment.render import draw_copy, jitter_objects
from vvk.data.images import load_rgb

DATASET, ONLINE = "vvk dataset path", "vvk online transform"
MMDET, TORCHVISION = "mmdet CopyPaste", "torchvision _copy_paste"


@dataclass
class Pair:
    """One destination and one source in the jittered frame; ``origin`` numbers every object:
    the destination's ``0..n-1``, the source's candidates from ``n`` on."""

    image: np.ndarray  # (S, S, 3) uint8
    objects: list[Instance]
    src_image: np.ndarray  # (S, S, 3) uint8
    candidates: list[Instance]  # the source's objects that may be pasted
    chosen: list[int]  # indices into candidates: the dataset tool's draw

    @cached_property
    def object_masks(self) -> np.ndarray:
        """(N, S, S) bool, shared by the sides' inputs (as uint8 views where a side wants those)."""
        return _dense(self.objects, self.image.shape[0])

    @cached_property
    def candidate_masks(self) -> np.ndarray:
        return _dense(self.candidates, self.image.shape[0])


def load_pairs(root: Path, count: int, size: int) -> list[Pair]:
    """``count`` pairs from tiny_coco's plan (copy 0 of each image, then copy 1, ...), leaving out
    draws that paste nothing (every side returns the destination as it is)."""
    plan = self_plan(root / "coco" / "tiny_coco", CopyPasteOptions(size=size, seed=0))
    pairs: list[Pair] = []
    for copy in range(count):  # each copy is a new draw for every image
        for dst in plan.destinations:
            draw = draw_copy(plan, dst, copy)
            objects = jitter_objects(dst.objects, draw.dst_jitter)
            pasteable = tuple(o for o in draw.source.objects if not o.iscrowd)
            candidates = jitter_objects(pasteable, draw.src_jitter)
            picked = {o.ann_id for o in draw.chosen}
            chosen = [i for i, c in enumerate(candidates) if c.origin in picked]
            if not chosen:
                continue
            image = jitter_image(load_rgb(dst.path, exif_orientation=dst.exif_orientation), draw.dst_jitter)
            source = draw.source
            src_image = jitter_image(
                load_rgb(source.path, exif_orientation=source.exif_orientation), draw.src_jitter
            )
            objects = [replace(o, origin=k) for k, o in enumerate(objects)]
            candidates = [replace(c, origin=len(objects) + k) for k, c in enumerate(candidates)]
            pairs.append(Pair(image, objects, src_image, candidates, chosen))
            if len(pairs) == count:
                return pairs
    raise RuntimeError(f"tiny_coco gave {len(pairs)} pairs that paste something, not {count}")


@dataclass
class Output:
    """What a side returned, in one form for the checks: kept destination objects, then pasted."""

    image: np.ndarray  # (S, S, 3)
    masks: np.ndarray  # (N, S, S) bool
    boxes: np.ndarray  # (N, 4) float64, x0 y0 x1 y1 (pixel edges)
    origins: list[int]  # which object each one is (``Pair``'s numbering)


def _dense(instances: list[Instance], size: int) -> np.ndarray:
    masks = np.zeros((len(instances), size, size), dtype=bool)
    for k, inst in enumerate(instances):
        inst.mask.paint(masks[k])
    return masks


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) pixel-edge boxes of (N, H, W) masks (a lone pixel at (x, y): x, y, x + 1, y + 1)."""
    boxes = np.zeros((len(masks), 4))
    for k, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[k] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def _origins(instances: list[Instance]) -> np.ndarray:
    return np.array([inst.origin for inst in instances], dtype=np.int64)


# --- vvk ---------------------------------------------------------------------------------------


def dataset_call(pair: Pair, chosen: list[int]):
    pasted = [pair.candidates[i] for i in chosen]
    return lambda: paste(pair.image, pair.objects, pair.src_image, pasted)


def dataset_output(result) -> Output:
    masks = _dense(result.instances, result.image.shape[0])
    boxes = np.array([inst.mask.box for inst in result.instances], dtype=float).reshape(-1, 4)
    return Output(result.image, masks, boxes, [inst.origin for inst in result.instances])


def _target(masks: np.ndarray, origins: np.ndarray) -> dict:
    """A ``tv_tensors`` target; labels carry the objects' origins, so the output tells which is which."""
    boxes = tv_tensors.BoundingBoxes(
        torch.from_numpy(_tight_boxes(masks)).float(), format="XYXY", canvas_size=masks.shape[-2:]
    )
    return {
        "masks": tv_tensors.Mask(torch.from_numpy(masks)),
        "boxes": boxes,
        "labels": torch.from_numpy(origins),
    }


def seed_pasting_all(count: int) -> int:
    """A generator seed with which ``CopyPaste(max_objects=count)`` pastes all of ``count`` objects,
    found on a 1 x count stand-in whose objects are one pixel each."""
    image = tv_tensors.Image(torch.zeros(3, 1, count, dtype=torch.uint8))
    masks = np.eye(count, dtype=bool).reshape(count, 1, count)  # object k: the pixel (0, k)
    target, empty = _target(masks, np.arange(count)), _target(masks[:0], np.arange(0))
    for seed in range(100 * (count + 1)):  # each seed pastes all with chance 1 / (count + 1)
        transform = CopyPaste(max_objects=count, generator=torch.Generator().manual_seed(seed))
        if len(transform.paste_pair(image, empty, image, target)[1]["labels"]) == count:
            return seed
    raise RuntimeError(f"no seed pastes all {count} objects: has CopyPaste's draw changed?")


def online_call(pair: Pair, chosen: list[int]):
    transform = CopyPaste(max_objects=len(chosen), generator=torch.Generator())
    seed = seed_pasting_all(len(chosen))
    image = tv_tensors.Image(torch.from_numpy(pair.image).permute(2, 0, 1))
    src_image = tv_tensors.Image(torch.from_numpy(pair.src_image).permute(2, 0, 1))
    target = _target(pair.object_masks, _origins(pair.objects))
    src_target = _target(pair.candidate_masks[chosen], _origins(pair.candidates)[chosen])

    def call():
        transform.generator.manual_seed(seed)
        return transform.paste_pair(image, target, src_image, src_target)

    return call


def online_output(result) -> Output:
    image, target = result
    return Output(
        image.permute(1, 2, 0).numpy(),
        target["masks"].numpy(),
        target["boxes"].numpy().astype(float),
        target["labels"].tolist(),
    )


# --- mmdetection -------------------------------------------------------------------------------


class _StubbedOps(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``mmcv.ops`` and its submodules as empty modules whose functions raise when called: mmdet's
    mask structures import ``mmcv.ops.roi_align`` at import time, and mmcv-lite has no compiled ops;
    ``CopyPaste`` itself is numpy and never calls one."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)

        def missing(name: str):
            if name.startswith("__"):
                raise AttributeError(name)

            def call(*args, **kwargs):
                raise NotImplementedError(f"{spec.name}.{name}: stubbed by benchmarks/peers.py (no mmcv ops)")

            return call

        module.__getattr__ = missing
        return module

    def exec_module(self, module):
        module.__path__ = []


def import_mmdet() -> tuple[types.SimpleNamespace, str | None]:
    """mmdet's ``CopyPaste``, ``BitmapMasks`` and ``HorizontalBoxes``; and, when mmcv's compiled
    ops do not import, the note that ``mmcv.ops`` was stubbed (with their import error)."""
    note = None
    try:
        import mmcv.ops  # noqa: F401
    except ImportError as error:
        for name in [m for m in sys.modules if m == "mmcv.ops" or m.startswith("mmcv.ops.")]:
            del sys.modules[name]  # the half-imported package, before the stub takes its place
        sys.meta_path.insert(0, _StubbedOps())
        note = f"mmcv.ops stubbed: {type(error).__name__}: {error}"
    from mmdet.datasets.transforms import CopyPaste as MMDetCopyPaste
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks

    return types.SimpleNamespace(
        CopyPaste=MMDetCopyPaste, BitmapMasks=BitmapMasks, Boxes=HorizontalBoxes
    ), note


def _mmdet_results(mm, image: np.ndarray, masks: np.ndarray, instances: list[Instance]) -> dict:
    """mmdet's fields but ``gt_masks``: its ``BitmapMasks`` is made per call (see ``mmdet_call``)."""
    return {
        "img": image,
        "masks": masks.view(np.uint8),
        "gt_bboxes": mm.Boxes(_tight_boxes(masks).astype(np.float32)),
        "gt_bboxes_labels": _origins(instances),
        "gt_ignore_flags": np.array([i.iscrowd for i in instances]),
    }


def mmdet_call(mm, pair: Pair, chosen: list[int]):
    transform = mm.CopyPaste(selected=False, bbox_occluded_thr=BOX_PX, mask_occluded_thr=AREA_PX)
    dst = _mmdet_results(mm, pair.image, pair.object_masks, pair.objects)
    src = _mmdet_results(
        mm, pair.src_image, pair.candidate_masks[chosen], [pair.candidates[i] for i in chosen]
    )
    size = pair.image.shape[0]

    def with_masks(results: dict) -> dict:
        return {**results, "gt_masks": mm.BitmapMasks(results["masks"], size, size)}

    # CopyPaste rebinds the destination's BitmapMasks.masks: a fresh wrapper (no copy) per call
    return lambda: transform({**with_masks(dst), "mix_results": [with_masks(src)]})


def mmdet_output(results: dict) -> Output:
    return Output(
        results["img"],
        results["gt_masks"].masks.astype(bool),
        results["gt_bboxes"].tensor.numpy().astype(float),
        results["gt_bboxes_labels"].tolist(),
    )


# --- torchvision's detection reference ---------------------------------------------------------


def import_torchvision_reference(folder: Path | None):
    """``_copy_paste`` from ``FOLDER/transforms.py`` of pytorch/vision's references/detection (not in
    the torchvision wheel)."""
    if folder is None:
        raise FileNotFoundError(
            "torchvision's references/detection is not in its wheel: pass "
            "--torchvision-references DIR (a checkout's references/detection)"
        )
    spec = importlib.util.spec_from_file_location(
        "torchvision_references_detection", folder / "transforms.py"
    )
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{folder / 'transforms.py'}: not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._copy_paste


def _torchvision_target(masks: np.ndarray, instances: list[Instance]) -> dict:
    boxes = torch.from_numpy(_tight_boxes(masks)).float() - torch.tensor([0.0, 0.0, 1.0, 1.0])  # inclusive
    return {
        "masks": torch.from_numpy(masks.view(np.uint8)),
        "boxes": boxes,
        "labels": torch.from_numpy(_origins(instances)),
    }


def torchvision_call(copy_paste, pair: Pair, seed: int):
    image = torch.from_numpy(pair.image).permute(2, 0, 1)
    src_image = torch.from_numpy(pair.src_image).permute(2, 0, 1)
    target = _torchvision_target(pair.object_masks, pair.objects)
    src_target = _torchvision_target(pair.candidate_masks, pair.candidates)

    def call():
        torch.manual_seed(seed)  # its draw of objects: the same every round
        return copy_paste(image, target, src_image, src_target, blending=False)

    return call


def torchvision_output(result) -> Output:
    image, target = result
    boxes = target["boxes"].numpy().astype(float) + [0, 0, 1, 1]  # inclusive far corner -> pixel edge
    return Output(
        image.permute(1, 2, 0).numpy(), target["masks"].numpy().astype(bool), boxes, target["labels"].tolist()
    )


def _drawn(pair: Pair, seed: int) -> list[int]:
    """The candidates ``_copy_paste`` pastes under ``torch.manual_seed(seed)``: its draw, made
    again with the same generator calls (``randint`` of n among n, then ``unique``). Its output
    labels cannot tell: it pastes every drawn object's pixels but then drops the ones whose box
    is one pixel wide or tall from the target (pair 24 of the 1024² set: a 3-pixel sliver)."""
    n = len(pair.candidates)
    torch.manual_seed(seed)
    return torch.unique(torch.randint(0, n, (n,))).tolist()


def _labels_within_draw(result, pair: Pair, drawn: list[int]) -> list[str]:
    """A check that ``_drawn`` made torchvision's draw: the pasted objects its labels name are drawn."""
    first = len(pair.objects)
    named = {origin - first for origin in result[1]["labels"].tolist() if origin >= first}
    return [] if named <= set(drawn) else [f"pasted {sorted(named - set(drawn))} outside the draw {drawn}"]


# --- checks ------------------------------------------------------------------------------------


def same(a: Output, b: Output) -> list[str]:
    """What differs between two outputs that should be identical (empty when nothing)."""
    problems = [] if np.array_equal(a.image, b.image) else ["image"]
    if a.origins != b.origins:
        problems.append(f"objects {a.origins} vs {b.origins}")
    elif not np.array_equal(a.masks, b.masks):
        problems.append("masks")
    elif not np.array_equal(a.boxes, b.boxes):
        problems.append("boxes")
    return problems


def explained(vvk: Output, tv: Output, pair: Pair) -> list[str]:
    """What differs between vvk's and torchvision's outputs beyond their two documented rules."""
    problems = [] if np.array_equal(vvk.image, tv.image) else ["image"]
    ours = {origin: k for k, origin in enumerate(vvk.origins)}
    theirs = {origin: k for k, origin in enumerate(tv.origins)}
    for origin in ours.keys() & theirs.keys():
        i, j = ours[origin], theirs[origin]
        if not (np.array_equal(vvk.masks[i], tv.masks[j]) and np.array_equal(vvk.boxes[i], tv.boxes[j])):
            problems.append(f"object {origin}: mask or box")
    for origin in theirs.keys() - ours.keys():  # kept by torchvision alone: vvk's occlusion rule dropped it
        mask = tv.masks[theirs[origin]]
        after = tuple(_tight_boxes(mask[None])[0])
        if survives_occlusion(pair.objects[origin].mask.box, after, int(mask.sum())):
            problems.append(f"object {origin}: torchvision keeps it and vvk's rule would too")
    for origin in ours.keys() - theirs.keys():  # kept by vvk alone: torchvision drops 1-pixel boxes
        x0, y0, x1, y1 = vvk.boxes[ours[origin]]
        if min(x1 - x0, y1 - y0) > 1:
            problems.append(f"object {origin}: vvk keeps it and torchvision drops it (not a 1-pixel box)")
    return problems


def _agreement(problems: list[list[str]], rule: str) -> dict:
    bad = {str(k): p for k, p in enumerate(problems) if p}
    return {
        "ok": not bad,
        "pairs": len(problems),
        "rule": rule,
        "tolerance": "exact",
        "differing_pairs": len(bad),
        "first_differences": dict(list(bad.items())[:5]),
    }


def _all(calls: list):
    return lambda: [call() for call in calls]


def mmdet_comparisons(data: list[Pair], reference: list[Output], rounds: int) -> tuple[list[dict], dict]:
    """mmdet against vvk's two paths, on the dataset tool's draws; and how mmdet was imported."""
    try:
        mm, note = import_mmdet()
    except Exception as error:  # noqa: BLE001 - a peer that does not import is reported, not fatal
        return [skipped(MMDET, error)], {}
    calls = {
        MMDET: [mmdet_call(mm, p, p.chosen) for p in data],
        ONLINE: [online_call(p, p.chosen) for p in data],
        DATASET: [dataset_call(p, p.chosen) for p in data],
    }
    online = [same(r, online_output(c())) for r, c in zip(reference, calls[ONLINE], strict=True)]
    checks = [same(r, mmdet_output(c())) for r, c in zip(reference, calls[MMDET], strict=True)]
    agreement = _agreement(checks, "identical image, masks, boxes and objects in order")
    seconds = interleave({name: _all(c) for name, c in calls.items()}, rounds)
    info = {
        "mmdet_import": note or "mmcv.ops imported",
        "vvk_online_vs_dataset": _agreement(online, "identical image, masks, boxes and objects"),
    }
    return [record(MMDET, side, seconds, agreement) for side in (ONLINE, DATASET)], info


def torchvision_comparisons(data: list[Pair], rounds: int, references: Path | None) -> list[dict]:
    """torchvision's ``_copy_paste`` against vvk's two paths, on the objects torchvision draws."""
    try:
        copy_paste = import_torchvision_reference(references)
    except Exception as error:  # noqa: BLE001
        return [skipped(TORCHVISION, error)]
    tv_calls = [torchvision_call(copy_paste, p, seed) for seed, p in enumerate(data)]
    results = [c() for c in tv_calls]
    drawn = [_drawn(p, seed) for seed, p in enumerate(data)]
    vvk = [dataset_output(dataset_call(p, d)()) for p, d in zip(data, drawn, strict=True)]
    checks = [
        _labels_within_draw(r, p, d) + explained(v, torchvision_output(r), p)
        for v, r, p, d in zip(vvk, results, data, drawn, strict=True)
    ]
    agreement = _agreement(
        checks,
        "same image; equal masks and boxes (pixel edges) where both keep an "
        "object; every other object dropped by one side's documented rule",
    )
    calls = {
        TORCHVISION: tv_calls,
        ONLINE: [online_call(p, d) for p, d in zip(data, drawn, strict=True)],
        DATASET: [dataset_call(p, d) for p, d in zip(data, drawn, strict=True)],
    }
    seconds = interleave({name: _all(c) for name, c in calls.items()}, rounds)
    pasted = sum(len(d) for d in drawn)
    return [
        record(TORCHVISION, side, seconds, agreement, pasted_objects=pasted, references=str(references))
        for side in (ONLINE, DATASET)
    ]


def run(root: Path, *, pairs: int, size: int, rounds: int, torchvision_references: Path | None) -> dict:
    data = load_pairs(root, pairs, size)
    reference = [dataset_output(dataset_call(p, p.chosen)()) for p in data]
    mmdet, info = mmdet_comparisons(data, reference, rounds)
    return {
        "unit": f"seconds per round: the paste step of all {len(data)} pairs, {size}x{size}",
        "pairs": len(data),
        "destination_objects": sum(len(p.objects) for p in data),
        "pasted_objects": sum(len(p.chosen) for p in data),
        "versions": version("mmdet", "mmcv-lite", "mmcv", "mmengine", "torchvision"),
        **info,
        "comparisons": mmdet + torchvision_comparisons(data, rounds, torchvision_references),
    }
