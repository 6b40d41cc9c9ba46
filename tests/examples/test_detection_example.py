"""The built-in detection example set: a sound COCO dataset, honest splits, occlusion, safety."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

import vvk.examples.digits_on_photos as dop
from vvk.data.coco import check_instances, decode_segmentation, find_coco_layout, load_coco, tight_box
from vvk.examples.digits_on_photos import (
    DetectionExampleSpec,
    compose_image,
    detection_example_dir,
    digit_alpha,
    generate_detection_example,
    load_digit_pools,
    photo_region,
    visible_masks,
)

SMALL = DetectionExampleSpec(train_images=30, val_images=10, size=128, min_scale=12, max_scale=48)


@pytest.fixture(scope="module")
def default_root() -> Path:
    return detection_example_dir()


def instances(root: Path, split: str) -> dict:
    return json.loads((root / split / "annotations" / f"instances_{split}.json").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_set_is_a_clean_coco_dataset(default_root):
    counts = {"train": 400, "train10": 40, "val": 100}
    assert sorted(p.name for p in default_root.iterdir()) == ["manifest.json", "train", "train10", "val"]
    for split, n_images in counts.items():
        ann_path, images_dir = find_coco_layout(default_root / split)
        assert ann_path == default_root / split / "annotations" / f"instances_{split}.json"
        assert images_dir == default_root / split / "images"
        dataset = load_coco(ann_path, images_dir)
        assert not dataset.issues  # nothing skipped, every image has objects
        assert dataset.split == split and len(dataset.images) == n_images
        assert dataset.category_names() == {d + 1: str(d) for d in range(10)}
        assert check_instances(ann_path, images_dir) == []  # files, sizes, ids, areas, tight boxes
        coco = COCO(str(ann_path))
        assert len(coco.anns) >= 2 * n_images  # a few objects per image
    manifest = json.loads((default_root / "manifest.json").read_text())
    assert {s: c["images"] for s, c in manifest["splits"].items()} == counts


def test_second_call_reuses_the_set(default_root):
    stamp = (default_root / "manifest.json").stat().st_mtime_ns
    assert detection_example_dir() == default_root
    assert (default_root / "manifest.json").stat().st_mtime_ns == stamp


def test_masks_agree_with_boxes_and_areas_and_do_not_overlap(default_root):
    data = instances(default_root, "val")
    by_image: dict[int, list[np.ndarray]] = {}
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 10
        mask = decode_segmentation(ann["segmentation"], *sizes[ann["image_id"]])
        x0, y0, x1, y1 = tight_box(mask)
        assert np.allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=1)
        assert ann["area"] == mask.sum() > 0
        by_image.setdefault(ann["image_id"], []).append(mask)
    for masks in by_image.values():  # occlusion gives each pixel to at most one object
        assert (np.sum(masks, axis=0) <= 1).all()
    sides = [max(a["bbox"][2:]) for a in data["annotations"]]
    assert min(sides) < 24 and max(sides) > 64  # small and large digits both present


def test_visible_masks_give_hidden_pixels_to_the_object_on_top():
    def box(y0, y1, x0, x1):
        m = np.zeros((20, 20), bool)
        m[y0:y1, x0:x1] = True
        return m

    below, hidden, top = box(0, 10, 0, 10), box(12, 15, 12, 15), box(5, 20, 5, 20)
    vis_below, vis_hidden, vis_top = visible_masks([below, hidden, top])
    assert not vis_hidden.any()  # fully covered: nothing left, so it is dropped
    assert vis_below.sum() == 100 - 25 and not (vis_below & top).any() and (vis_below <= below).all()
    assert (vis_top == top).all()
    assert visible_masks([]) == []


@pytest.fixture
def pasted(monkeypatch) -> list[np.ndarray]:
    """The full-canvas mask of every digit ``compose_image`` pastes, in paste order."""
    record: list[np.ndarray] = []
    place = dop._place

    def recording_place(mask, full, spec, rng):
        placed = place(mask, full, spec, rng)
        if placed is not None:
            record.append(placed[2])
        return placed

    monkeypatch.setattr(dop, "_place", recording_place)
    return record


def crowded(size: int, seed: int, *, objects: int = 8, min_scale: int = 40) -> tuple[np.ndarray, list[dict]]:
    spec = DetectionExampleSpec(
        size=size, min_objects=objects, max_objects=objects, min_scale=min_scale, max_scale=64
    )
    background = np.full((size, size, 3), 128, np.uint8)
    pools = load_digit_pools(spec)["train"]
    return compose_image(background, dop._digit_ink(), pools, spec, np.random.default_rng(seed))


def test_compose_image_drops_covered_objects_and_keeps_visible_pixels(monkeypatch, pasted):
    """With placement free to hide objects, the annotations follow from the full masks alone."""
    monkeypatch.setattr(dop, "MIN_VISIBLE", 0.0)
    seen_dropped = seen_partial = False
    for seed in range(4):
        pasted.clear()
        # Small digits under large ones: some vanish entirely.
        image, objects = crowded(64, seed, objects=12, min_scale=8)
        expected = []
        for k, full in enumerate(pasted):
            later = np.any(pasted[k + 1 :], axis=0) if k + 1 < len(pasted) else np.zeros_like(full)
            expected.append(full & ~later)
        kept = [e for e in expected if e.any()]
        assert [o["mask"].tolist() for o in objects] == [e.tolist() for e in kept]
        seen_dropped |= len(kept) < len(pasted)
        seen_partial |= any(0 < e.sum() < f.sum() for e, f in zip(expected, pasted, strict=True))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert seen_dropped and seen_partial


def test_placement_leaves_every_object_mostly_visible(pasted):
    seen_partial = False
    for seed in range(5):
        pasted.clear()
        _, objects = crowded(128, seed)
        assert len(objects) == len(pasted) >= 2  # nothing hidden enough to be dropped
        for obj, full in zip(objects, pasted, strict=True):
            assert dop.MIN_VISIBLE * full.sum() <= obj["mask"].sum() <= full.sum()
            seen_partial |= obj["mask"].sum() < full.sum()
    assert seen_partial  # and yet digits do overlap


def test_digit_alpha_is_soft_outside_and_opaque_inside_the_mask():
    ink = dop._digit_ink()
    for index in (0, 1, 500, 1796):
        alpha, mask = digit_alpha(ink[index], 60, 45)
        assert alpha.shape == mask.shape and mask.shape[0] <= 60 and mask.shape[1] <= 45
        assert ((alpha >= 0.5) == mask).all()
        assert tight_box(mask) == (0, 0, mask.shape[1], mask.shape[0])  # cropped tight


def test_train_and_val_share_no_digit_and_no_photo_pixels(default_root):
    pools = load_digit_pools(DetectionExampleSpec())
    train_pool = set(np.concatenate(pools["train"]).tolist())
    val_pool = set(np.concatenate(pools["val"]).tolist())
    assert not train_pool & val_pool and len(train_pool | val_pool) == 1797
    used = {}
    for split in ("train", "val"):
        data = instances(default_root, split)
        used[split] = {a["digit_index"] for a in data["annotations"]}
        assert {a["category_id"] for a in data["annotations"]} == set(range(1, 11))
        photos = dop.load_photos()
        for im in data["images"]:
            x, y, side = im["background"]["crop"]
            x0, y0, x1, y1 = photo_region(photos[im["background"]["photo"]].shape, split, 0.3)
            assert x0 <= x and x + side <= x1 and y0 <= y and y + side <= y1
    assert used["train"] <= train_pool and used["val"] <= val_pool
    for name, photo in dop.load_photos().items():  # the two regions of a photo never overlap
        tx0, ty0, tx1, ty1 = photo_region(photo.shape, "train", 0.3)
        vx0, vy0, vx1, vy1 = photo_region(photo.shape, "val", 0.3)
        assert min(tx1, vx1) <= max(tx0, vx0) or min(ty1, vy1) <= max(ty0, vy0), name


def test_low_data_split_is_the_start_of_train(default_root):
    train, low = instances(default_root, "train"), instances(default_root, "train10")
    assert low["images"] == train["images"][:40]
    ids = {im["id"] for im in low["images"]}
    assert low["annotations"] == [a for a in train["annotations"] if a["image_id"] in ids]
    for im in low["images"]:
        name = im["file_name"]
        assert (default_root / "train10" / "images" / name).read_bytes() == (
            default_root / "train" / "images" / name
        ).read_bytes()
    assert len(list((default_root / "train10" / "images").iterdir())) == 40


def test_same_spec_same_bytes_other_seed_other_set(tmp_path):
    a = generate_detection_example(tmp_path / "a", SMALL)
    b = generate_detection_example(tmp_path / "b", SMALL)
    assert files(a) == files(b)
    assert check_instances(*find_coco_layout(a / "val")) == []
    other = DetectionExampleSpec(**{**SMALL.__dict__, "seed": 1})
    assert other.key() != SMALL.key()
    c = generate_detection_example(tmp_path / "c", other)
    assert instances(c, "train")["annotations"] != instances(a, "train")["annotations"]


def test_interrupted_generation_leaves_nothing_that_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path))
    write_jpeg, calls = dop.write_jpeg, []

    def failing_write(path, image):
        calls.append(path)
        if len(calls) == 25:  # midway through train
            raise KeyboardInterrupt
        write_jpeg(path, image)

    monkeypatch.setattr(dop, "write_jpeg", failing_write)
    with pytest.raises(KeyboardInterrupt):
        detection_example_dir(SMALL)
    assert list((tmp_path / "examples").iterdir()) == []  # no set and no stage left behind
    monkeypatch.setattr(dop, "write_jpeg", write_jpeg)
    root = detection_example_dir(SMALL)
    assert (root / "manifest.json").is_file() and len(list((root / "train" / "images").iterdir())) == 30


def test_leftovers_of_a_killed_run_are_not_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path))
    dest = tmp_path / "examples" / f"digits-on-photos-{SMALL.key()}"
    (dest / "train" / "images").mkdir(parents=True)  # a folder without the manifest
    (dest / "train" / "images" / "000001.jpg").write_bytes(b"half")
    old_stage = tmp_path / "examples" / f".{dest.name}.dead.tmp"
    fresh_stage = tmp_path / "examples" / f".{dest.name}.running.tmp"
    old_stage.mkdir()
    fresh_stage.mkdir()
    hours_ago = time.time() - 2 * 3600
    os.utime(old_stage, (hours_ago, hours_ago))
    root = detection_example_dir(SMALL)
    assert root == dest and check_instances(*find_coco_layout(root / "train")) == []
    assert not old_stage.exists() and fresh_stage.exists()  # a recent stage may be another process's
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == sorted([dest.name, fresh_stage.name])


@pytest.mark.parametrize(
    "changes",
    [{"min_objects": 0}, {"min_scale": 4}, {"max_scale": 300}, {"val_fraction": 1.0}, {"train_images": 0}],
)
def test_bad_spec_is_refused(changes):
    with pytest.raises(ValueError):
        DetectionExampleSpec(**changes)
