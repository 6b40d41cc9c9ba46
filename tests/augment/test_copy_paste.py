"""The per-image algorithm: composition, object choice, and the per-object occlusion rule."""

from __future__ import annotations

import numpy as np
import pytest

from vvk.augment.copy_paste import Instance, choose_objects, compose, paste, survives_occlusion
from vvk.augment.masks import LocalMask

FRAME = (128, 128)


def rect(x0, y0, x1, y1, frame=FRAME):
    """A filled rectangle covering pixel columns x0..x1-1 and rows y0..y1-1."""
    return LocalMask(y0, x0, np.ones((y1 - y0, x1 - x0), bool), frame)


def frames(seed=0):
    rng = np.random.default_rng(seed)
    dst = rng.integers(0, 128, size=(*FRAME, 3), dtype=np.uint8)
    src = rng.integers(128, 256, size=(*FRAME, 3), dtype=np.uint8)  # never equal to a dst pixel
    return dst, src


def run(dst_masks, pasted_masks, **kw):
    dst, src = frames()
    dst_instances = [Instance(1, m, origin=k) for k, m in enumerate(dst_masks)]
    pasted = [Instance(2, m, origin=100 + k) for k, m in enumerate(pasted_masks)]
    return paste(dst, dst_instances, src, pasted, **kw)


def by_origin(result):
    return {inst.origin: inst for inst in result.instances}


def test_fully_covered_object_is_dropped():
    result = run([rect(20, 20, 40, 40)], [rect(10, 10, 50, 50)])
    assert set(by_origin(result)) == {100} and result.num_dropped == 1


def test_partly_covered_small_remainder_is_dropped():
    # 40x20 object, left 35 columns covered: 5x20 = 100 px left and its left edge moved 35 px.
    result = run([rect(20, 20, 60, 40)], [rect(0, 0, 55, 128)])
    assert 0 not in by_origin(result) and result.num_dropped == 1


def test_covered_but_still_large_is_kept_with_a_new_box():
    # 100x50 object, left 60 columns covered: 2000 px remain, box now starts at x = 70.
    result = run([rect(10, 10, 110, 60)], [rect(0, 0, 70, 128)])
    kept = by_origin(result)[0]
    assert kept.mask.area == 2000 and kept.mask.box == (70, 10, 110, 60)
    assert result.num_dropped == 0


def test_slightly_covered_small_object_is_kept_because_not_occluded():
    # 20x10 = 200 px (under 300), 5 columns covered: the box moves 5 px <= 10, so not occluded.
    result = run([rect(20, 20, 40, 30)], [rect(15, 0, 25, 128)])
    kept = by_origin(result)[0]
    assert kept.mask.area == 150 and kept.mask.box == (25, 20, 40, 30)


def test_hole_in_the_middle_keeps_the_box_and_the_object():
    # Only a one-pixel rim survives (156 px < 300) but every box edge stays put.
    result = run([rect(10, 10, 50, 50)], [rect(11, 11, 49, 49)])
    kept = by_origin(result)[0]
    assert kept.mask.area == 40 * 40 - 38 * 38 and kept.mask.box == (10, 10, 50, 50)


def test_occlusion_is_decided_per_object_not_per_image():
    """The official TF code's reduce_any without an axis marks every object "occluded" once any
    is, which would drop this untouched 100-px object; per object it stays."""
    untouched = rect(100, 100, 110, 110)
    result = run([rect(20, 20, 60, 40), untouched], [rect(0, 0, 55, 128)])
    assert set(by_origin(result)) == {1, 100}
    assert by_origin(result)[1].mask is untouched


def test_crowd_regions_are_updated_like_other_masks():
    dst, src = frames()
    crowd = Instance(3, rect(60, 60, 100, 100), iscrowd=True, origin=7)
    result = paste(dst, [crowd], src, [Instance(2, rect(0, 0, 80, 128))])
    kept = by_origin(result)[7]
    assert kept.iscrowd and kept.mask.box == (80, 60, 100, 100)


@pytest.mark.parametrize(
    "before,after,area,keep",
    [
        ((0, 0, 40, 20), (10, 0, 40, 20), 10, True),  # moved exactly 10: not occluded
        ((0, 0, 40, 20), (11, 0, 40, 20), 300, False),  # occluded, exactly 300 left: dropped
        ((0, 0, 40, 20), (11, 0, 40, 20), 301, True),  # occluded, 301 left: kept
        ((0, 0, 40, 20), (0, 0, 40, 9), 5, False),  # bottom edge moved 11
        ((0, 0, 40, 20), None, 0, False),  # nothing left
    ],
)
def test_survives_occlusion_thresholds(before, after, area, keep):
    assert survives_occlusion(before, after, area) is keep


def test_thresholds_are_options():
    result = run([rect(20, 20, 60, 40)], [rect(0, 0, 55, 128)], area_px=50)
    assert 0 in by_origin(result)  # 100 px left > 50
    result = run([rect(20, 20, 60, 40)], [rect(0, 0, 55, 128)], box_px=40)
    assert 0 in by_origin(result)  # moved 35 <= 40: not occluded


def test_pixels_come_from_source_under_the_paste_and_destination_elsewhere():
    dst, src = frames(3)
    pasted = [
        Instance(2, rect(5, 5, 30, 40)),
        Instance(2, rect(20, 30, 90, 60)),
        Instance(4, rect(100, 0, 128, 8)),
    ]
    result = paste(dst, [Instance(1, rect(0, 0, 128, 128))], src, pasted)
    union = np.zeros(FRAME, bool)
    for inst in pasted:
        inst.mask.paint(union)
    assert np.array_equal(result.union.to_full(), union)
    assert np.array_equal(result.image[union], src[union])
    assert np.array_equal(result.image[~union], dst[~union])
    assert result.pasted_flags == [False, True, True, True]
    assert [i.category_id for i in result.instances] == [1, 2, 2, 4]
    assert result.instances[0].mask.area == 128 * 128 - union.sum()
    assert not np.shares_memory(result.image, dst)


def test_compose_in_place_and_blend():
    dst, src = frames(4)
    mask = rect(30, 30, 90, 90)
    hard = compose(dst.copy(), src, [mask])
    target = dst.copy()
    assert compose(target, src, [mask], in_place=True) is target and np.array_equal(target, hard)
    soft = compose(dst, src, [mask], blend_sigma=2.0)
    far_inside, far_outside = (slice(40, 80), slice(40, 80)), (slice(0, 20), slice(0, 128))
    assert np.array_equal(soft[far_inside], src[far_inside])
    assert np.array_equal(soft[far_outside], dst[far_outside])
    edge = soft[60, 28:33].astype(int)  # across the left edge: a mix of both images
    assert ((edge != dst[60, 28:33]) & (edge != src[60, 28:33])).any()
    assert np.array_equal(compose(dst, src, []), dst)


def test_choose_objects_count_is_uniform_up_to_n():
    rng = np.random.default_rng(0)
    counts = np.bincount([len(choose_objects(rng, 5, 3)) for _ in range(4000)], minlength=4)
    assert len(counts) == 4 and (np.abs(counts / 4000 - 0.25) < 0.04).all()  # 0, 1, 2, 3 alike
    picks = [choose_objects(rng, 4, 100) for _ in range(500)]
    assert max(len(p) for p in picks) == 4  # the count reaches min(N, n), unlike mmdet's randint
    assert all(list(p) == sorted(set(p)) for p in picks)
    assert len(choose_objects(rng, 0, 10)) == 0
