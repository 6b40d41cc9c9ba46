"""The two InstanceMask classes: window arithmetic and encodings equal the full-frame
computations, and LocalMask and RunMask answer alike on the same mask."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vvk.augment.masks import Cover, InstanceMask, LocalMask, RunMask
from vvk.data.coco import decode_segmentation, tight_box


def random_masks():
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(40):
        h, w = rng.integers(1, 40, size=2)
        full = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.2, 1.0)
        frames.append(full)
    edge = np.zeros((5, 7), bool)
    edge[0, 0] = edge[4, 6] = True  # first and last pixel of the frame
    frames += [edge, np.ones((3, 4), bool), np.zeros((6, 2), bool)]
    return frames


@pytest.mark.parametrize("full", random_masks())
def test_rle_equals_pycocotools_encoding_of_the_full_frame(full):
    mask = LocalMask.from_full(full)
    expected = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    assert mask.to_rle() == {"size": list(full.shape), "counts": expected["counts"].decode("ascii")}
    assert mask.area == int(full.sum())
    assert mask.box == tight_box(full)
    assert np.array_equal(mask.to_full(), full)


def test_minus_paint_and_tight_in_a_frame():
    frame = (10, 12)
    bits = np.ones((4, 5), bool)
    mask = LocalMask(3, 2, bits, frame)
    assert mask.box == (2, 3, 7, 7) and mask.area == 20
    left = np.zeros(frame, bool)
    left[3:7, 2:4] = True  # the left two columns
    rest = mask.minus(Cover(frame, [LocalMask.from_full(left)])).tight()
    assert rest.box == (4, 3, 7, 7) and rest.area == 12 and (rest.top, rest.left) == (3, 4)
    canvas = np.zeros(frame, bool)
    rest.paint(canvas)
    assert canvas.sum() == 12 and canvas[3:7, 4:7].all()
    assert mask.minus(Cover(frame, [LocalMask.from_full(np.ones(frame, bool))])).tight().box is None
    assert mask.tight() is mask  # already tight: no copy


def test_polygons_rasterise_back_to_the_same_pixels():
    full = np.zeros((30, 40), bool)
    full[5:20, 8:30] = True
    full[10:14, 12:16] = False  # a hole: polygons cannot hold it, it is filled
    full[24:27, 2:5] = True  # a second component
    polygons = LocalMask.from_full(full).to_polygons()
    assert len(polygons) == 2
    back = decode_segmentation(polygons, 30, 40)
    filled = full.copy()
    filled[10:14, 12:16] = True
    assert np.array_equal(back, filled)
    assert LocalMask.from_full(np.zeros((4, 4), bool)).to_polygons() == []


def random_cover(rng, frame, count):
    """Up to ``count`` random masks in a frame, some touching its first or last pixel."""
    masks = []
    for _ in range(count):
        full = np.zeros(frame, bool)
        y0, x0 = rng.integers(0, frame[0]), rng.integers(0, frame[1])
        y1, x1 = rng.integers(y0, frame[0] + 1), rng.integers(x0, frame[1] + 1)
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.3, 1.0)
        full[0, 0] |= rng.random() < 0.2
        full[-1, -1] |= rng.random() < 0.2
        masks.append(LocalMask.from_full(full))
    return masks


def test_cover_is_the_union_as_pixels_and_as_spans():
    """Overlapping, adjacent, empty, frame-start and frame-end masks, and no masks at all."""
    rng = np.random.default_rng(4)
    for trial in range(200):
        frame = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        masks = random_cover(rng, frame, int(rng.integers(0, 5)))
        cover = Cover(frame, masks)
        union = np.zeros(frame, bool)
        for m in masks:
            union |= m.to_full()
        assert np.array_equal(cover.bits, union)
        assert np.array_equal(RunMask(cover.spans, frame).to_full(), union), trial


def test_both_classes_implement_the_protocol():
    """Every member of InstanceMask is on both classes, methods with the protocol's parameters,
    so code typed against the protocol can be handed either."""
    members = {name: value for name, value in vars(InstanceMask).items() if not name.startswith("_")}
    assert {"area", "box", "minus", "local", "spans", "to_rle"} <= set(members)
    full = np.zeros((6, 5), bool)
    full[1:4, 2:5] = True
    local = LocalMask.from_full(full)
    for mask in (local, RunMask(local.spans, local.frame)):
        assert isinstance(mask, InstanceMask)
        for name, member in members.items():
            if isinstance(member, property):
                assert not callable(getattr(mask, name)), name  # an attribute, not a method
            else:
                expected = list(inspect.signature(member).parameters)
                assert list(inspect.signature(getattr(type(mask), name)).parameters) == expected, name
    assert not isinstance(Cover(local.frame, [local]), InstanceMask)  # has spans, lacks the rest


def assert_same_mask(run: InstanceMask, local: InstanceMask) -> None:
    """Every answer of the protocol, from the one and from the other."""
    assert run.frame == local.frame and run.area == local.area and run.box == local.box
    assert np.array_equal(run.spans, local.spans)
    window_run, window_local = run.local.tight(), local.local.tight()
    assert (window_run.top, window_run.left) == (window_local.top, window_local.left)
    assert np.array_equal(window_run.bits, window_local.bits)
    assert run.to_rle() == local.to_rle() and np.array_equal(run.to_full(), local.to_full())
    canvas = np.zeros(run.frame, bool)
    run.paint(canvas)
    assert np.array_equal(canvas, local.to_full())


def test_run_mask_answers_as_the_pixels_do():
    """A RunMask and a LocalMask of the same pixels give the same answers to every protocol
    call, before and after subtracting a cover; polygons are compared on the original masks."""
    rng = np.random.default_rng(5)
    for _ in range(100):
        frame = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        local = random_cover(rng, frame, 1)[0]
        run = RunMask(local.spans, frame)
        assert_same_mask(run, local)
        assert run.tight() is run
        assert run.to_polygons() == local.to_polygons()
        cover = Cover(frame, random_cover(rng, frame, int(rng.integers(0, 3))))
        assert_same_mask(run.minus(cover), local.minus(cover))
        assert_same_mask(run.minus(cover), local.minus(cover).tight())
