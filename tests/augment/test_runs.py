"""The span kernels against their references: pycocotools for polygons and RLE strings, numpy on
full frames for everything else."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vvk.augment import runs
from vvk.augment.jitter import Jitter, Polygons, jitter_segmentation, sample_jitter
from vvk.data.coco import find_coco_layout, load_coco


def spans_of(full: np.ndarray) -> np.ndarray:
    """Reference spans: the runs of ones of the column-major frame, by numpy."""
    seq = np.concatenate(([False], full.T.ravel(), [False]))
    edges = np.flatnonzero(seq[1:] != seq[:-1])
    return edges.reshape(-1, 2).astype(np.int64)


def full_of(spans: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    height, width = frame
    flat = np.zeros(height * width, bool)
    for start, end in spans:
        flat[start:end] = True
    return flat.reshape(width, height).T


def coco_string(full: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))["counts"].decode("ascii")


def random_frames(seed: int, count: int) -> list[np.ndarray]:
    """Frames with blobs and noise, empty ones, full ones, and the first and last pixels set."""
    rng = np.random.default_rng(seed)
    frames = [np.zeros((5, 7), bool), np.ones((4, 3), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        full = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.2, 1.0)
        full[0, 0] |= rng.random() < 0.2
        full[-1, -1] |= rng.random() < 0.2
        frames.append(full)
    return frames


def reference_polygons(polygons: list[np.ndarray], size: int, rows: int, cols: int) -> np.ndarray:
    """pycocotools' rasterisation of flat polygons in a (size, size) frame, cut to the content."""
    rle = mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in polygons], size, size))
    full = mask_utils.decode(rle).astype(bool)
    full[rows:] = False
    full[:, cols:] = False
    return full


def random_polygon(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat polygon that may be tiny, huge, self-crossing, partly or wholly outside the frame,
    with repeated vertices, vertices on pixel centres or on the 5x grid's half-steps."""
    k = int(rng.integers(3, 25))
    centre = rng.uniform(-0.3 * size, 1.3 * size, size=2)
    radius = rng.choice([0.3, 2.0, size / 8, size / 2, 1.5 * size])
    xy = centre + rng.normal(size=(k, 2)) * radius
    style = rng.integers(4)
    if style == 1:
        xy = np.round(xy) + 0.5  # pixel centres
    elif style == 2:
        xy = np.round(xy * 10) / 10  # 0.1 steps: edges through the 5x grid's half-steps
    elif style == 3:
        xy[rng.integers(k)] = xy[0]  # a repeated vertex
    return xy.ravel()


def test_polygons_rasterise_as_pycocotools_does():
    rng = np.random.default_rng(0)
    drawn = 0
    for trial in range(1500):
        size = int(rng.choice([1, 7, 32, 100]))
        cut = rng.random() < 0.5  # half the cases have padding to cut away
        rows, cols = (int(v) for v in rng.integers(1, size + 1, size=2)) if cut else (size, size)
        polygons = [random_polygon(rng, size) for _ in range(int(rng.integers(1, 4)))]
        polys = Polygons.from_coco([p.tolist() for p in polygons])
        spans = runs.polygon_spans(polys.xy, polys.ends, size, rows, cols, False, 1.0, 1.0, 1.0, 0.0, 0.0)
        expected = reference_polygons(polygons, size, rows, cols)
        assert np.array_equal(spans, spans_of(expected)), trial
        drawn += expected.any()
    assert drawn > 800  # most cases draw something (the others are outside or cut away)


@pytest.mark.parametrize("flip", [False, True])
def test_jittered_real_polygons_are_the_mapped_polygons_rasterised_by_pycocotools(shared_data, flip):
    """Every tiny_coco polygon under random jitters (crops, enlargements, padding): the kernel's
    vertex mapping is Jitter.map_xy's, and its pixels are pycocotools' for the mapped polygon."""
    dataset = load_coco(*find_coco_layout(shared_data / "coco" / "tiny_coco"))
    rng = np.random.default_rng(int(flip))
    checked = 0
    for image_id, anns in dataset.annotations.items():
        image = dataset.images[image_id]
        for _ in range(2):
            size = int(rng.choice([96, 256]))
            h, w = image.height, image.width
            drawn = sample_jitter(rng, height=h, width=w, size=size, scale_range=(0.1, 2.0))
            jitter = Jitter(drawn.in_size, drawn.size, drawn.scaled, drawn.offset, flip)
            for ann in anns:
                if not isinstance(ann.segmentation, list):
                    continue
                mapped = []
                for flat in ann.segmentation:
                    xs, ys = jitter.map_xy(np.array(flat[0::2]), np.array(flat[1::2]))
                    mapped.append(np.stack([xs, ys], axis=1).ravel())
                expected = reference_polygons(mapped, size, *jitter.content)
                mask = jitter_segmentation(ann.segmentation, jitter)
                assert np.array_equal(mask.to_full(), expected), (image_id, ann.id)
                checked += 1
    assert checked > 500


@pytest.mark.parametrize("full", random_frames(1, 60))
def test_stats_window_and_string_of_one_mask(full):
    height, width = full.shape
    spans = runs.window_spans(full, 0, 0, height)
    assert np.array_equal(spans, spans_of(full))
    area, x0, y0, x1, y1 = runs.span_stats(spans, height)
    assert area == full.sum()
    if area:
        ys, xs = np.nonzero(full)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert np.array_equal(runs.decode_window(spans, height, x0, y0, x1, y1), full[y0:y1, x0:x1])
    assert runs.encode_spans(spans, height, width).tobytes().decode("ascii") == coco_string(full)


def test_windows_placed_anywhere_in_tall_frames():
    """A window touching the frame's top, bottom, both or neither; its string as pycocotools
    encodes the whole frame; decoded at any offset."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        height, width = int(rng.integers(1, 80)), int(rng.integers(1, 30))
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        bits = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        full = np.zeros((height, width), bool)
        full[top : top + h, left : left + w] = bits
        spans = runs.window_spans(bits, top, left, height)
        assert np.array_equal(spans, spans_of(full))
        assert runs.encode_spans(spans, height, width).tobytes().decode("ascii") == coco_string(full)
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        y1, x1 = int(rng.integers(y0, height + 1)), int(rng.integers(x0, width + 1))
        assert np.array_equal(runs.decode_window(spans, height, x0, y0, x1, y1), full[y0:y1, x0:x1])


def test_union_and_difference():
    rng = np.random.default_rng(3)
    for trial in range(300):
        frame = tuple(int(v) for v in rng.integers(1, 30, size=2))
        masks = [rng.random(frame) < rng.uniform(0, 1) for _ in range(int(rng.integers(1, 4)))]
        masks.append(np.zeros(frame, bool))
        pieces = np.concatenate([spans_of(m) for m in masks])
        union = runs.merge_spans(pieces[rng.permutation(len(pieces))])  # in any order
        assert np.array_equal(union, spans_of(np.logical_or.reduce(masks))), trial
        for a in masks:
            for b in (*masks, np.logical_or.reduce(masks), np.ones(frame, bool)):
                rest = runs.minus_spans(spans_of(a), spans_of(b))
                assert np.array_equal(rest, spans_of(a & ~b)), trial


def test_kernels_stay_inside_their_arrays(tmp_path):
    """Compiled code does not check indices: rerun this file's tests with numba's bounds checks
    compiled in, so that a read or write past an array raises instead of passing silently."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}  # a fresh compile
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    done = subprocess.run([*command, "-k", "not stay_inside"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
