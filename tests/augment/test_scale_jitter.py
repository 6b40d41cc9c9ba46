"""Large scale jitter: the image and its masks move together, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vvk.augment.jitter import (
    Jitter,
    frame_window,
    jitter_image,
    jitter_segmentation,
    parse_scale_range,
    sample_jitter,
    source_box,
)
from vvk.errors import VvkError


def test_sample_jitter_covers_its_ranges():
    rng = np.random.default_rng(0)
    draws = [sample_jitter(rng, height=300, width=400, size=128, scale_range=(0.1, 2.0)) for _ in range(400)]
    long_sides = np.array([max(j.scaled) for j in draws]) / 128
    assert 0.1 <= long_sides.min() < 0.2 and 1.9 < long_sides.max() <= 2.0
    assert 0.35 < np.mean([j.flip for j in draws]) < 0.65
    for j in draws:
        assert abs(j.scaled[0] / j.scaled[1] - 0.75) < 0.05  # aspect ratio kept
        assert 0 <= j.offset[0] <= max(0, j.scaled[0] - 128) and 0 <= j.offset[1] <= max(0, j.scaled[1] - 128)
    assert any(j.content == (128, 128) for j in draws) and any(j.content[1] < 128 for j in draws)


def test_parse_scale_range():
    assert parse_scale_range("lsj") == (0.1, 2.0) and parse_scale_range("SSJ") == (0.8, 1.25)
    assert parse_scale_range("0.5,1.5") == (0.5, 1.5)
    for bad in ("1", "2,1", "0,1", "a,b", "1,inf"):
        with pytest.raises(VvkError, match="--scale-jitter"):
            parse_scale_range(bad)


def test_image_geometry_crop_pad_and_flip():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    same = Jitter((4, 6), 5, (4, 6), (0, 1), False)  # no resize: a pure crop and pad
    out = jitter_image(image, same)
    assert np.array_equal(out[:4, :5], image[:, 1:6]) and out[4:].max() == 0
    flipped = Jitter((4, 6), 5, (4, 6), (0, 1), True)
    assert np.array_equal(jitter_image(image, flipped)[:4, :5], image[:, ::-1][:, 1:6])
    doubled = Jitter((4, 6), 8, (8, 12), (2, 3), False)
    assert jitter_image(image, doubled).shape == (8, 8, 3)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scaled,offset", [((90, 120), (0, 0)), ((180, 240), (37, 101)), ((30, 40), (0, 0))])
def test_mask_follows_the_image(flip, scaled, offset):
    """A red square on grey: after any jitter, the jittered mask covers exactly the red pixels
    (up to the one-pixel rim that resampling blurs)."""
    image = np.full((60, 80, 3), 100, np.uint8)
    image[10:40, 20:50] = (255, 0, 0)
    polygon = [[20.0, 10.0, 50.0, 10.0, 50.0, 40.0, 20.0, 40.0]]
    jitter = Jitter((60, 80), 128, scaled, offset, flip)
    out = jitter_image(image, jitter)
    mask = jitter_segmentation(polygon, jitter).to_full()
    red = (out[:, :, 0] > 177) & (out[:, :, 1] < 50)  # more red than grey
    assert mask.sum() > 0
    shifts = [np.roll(mask, s, axis) for s in (1, -1) for axis in (0, 1)]
    rim = np.logical_or.reduce([mask, *shifts]) & ~np.logical_and.reduce([mask, *shifts])
    assert not ((mask ^ red) & ~rim).any()  # any disagreement lies on the mask's one-pixel rim
    assert (mask ^ red).sum() <= 0.5 * rim.sum()


@pytest.mark.parametrize("flip", [False, True])
def test_rle_and_polygon_paths_agree(flip):
    polygon = [[12.5, 7.0, 61.0, 15.0, 40.0, 52.0, 8.0, 33.0]]
    rle = mask_utils.merge(mask_utils.frPyObjects(polygon, 60, 80))
    jitter = Jitter((60, 80), 100, (120, 160), (10, 30), flip)
    from_polygon = jitter_segmentation(polygon, jitter).to_full()
    from_rle = jitter_segmentation(rle, jitter).to_full()
    iou = (from_polygon & from_rle).sum() / (from_polygon | from_rle).sum()
    assert iou > 0.95


def test_cropped_away_objects_are_empty_and_boxes_clip():
    polygon = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]]
    away = Jitter((60, 80), 64, (120, 160), (50, 60), False)  # the crop starts right of it
    assert frame_window(source_box(polygon, 60, 80), away) is None
    assert jitter_segmentation(polygon, away).area == 0
    beyond = [[-5.0, -5.0, 90.0, -5.0, 90.0, 70.0, -5.0, 70.0]]  # larger than the image
    assert source_box(beyond, 60, 80) == (0.0, 0.0, 80.0, 60.0)
    whole = jitter_segmentation(beyond, Jitter((60, 80), 100, (60, 80), (0, 0), False))
    assert whole.box == (0, 0, 80, 60)  # clipped to the image content, not into the padding


@pytest.mark.parametrize("flip", [False, True])
def test_polygons_are_rasterised_in_the_output_frame(flip):
    """Mapped polygons rasterised where COCO tools would rasterise them: in the output frame
    (pycocotools' annToMask on the jittered polygon), cut to the image content."""
    polygons = [[12.5, 7.0, 61.0, 15.0, 40.0, 52.0, 8.0, 33.0], [65.0, 40.0, 79.0, 41.0, 70.0, 59.5]]
    for jitter in (
        Jitter((60, 80), 100, (120, 160), (10, 30), flip),  # crop: cut at the frame's edges
        Jitter((60, 80), 128, (90, 120), (0, 0), flip),  # padding at the bottom and right
    ):
        mapped = []
        for flat in polygons:
            xs, ys = jitter.map_xy(np.array(flat[0::2]), np.array(flat[1::2]))
            mapped.append(np.stack([xs, ys], axis=1).ravel().tolist())
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(mapped, 128, 128))).astype(bool)
        expected = expected[: jitter.size, : jitter.size]
        rows, cols = jitter.content
        expected[rows:], expected[:, cols:] = False, False
        assert expected.any() and np.array_equal(jitter_segmentation(polygons, jitter).to_full(), expected)


def test_polygons_stay_out_of_the_padding():
    beyond = [[-5.0, -5.0, 90.0, -5.0, 90.0, 70.0, -5.0, 70.0]]  # larger than the image
    mask = jitter_segmentation(beyond, Jitter((60, 80), 100, (60, 80), (0, 0), False))
    assert mask.box == (0, 0, 80, 60) and mask.area == 80 * 60
