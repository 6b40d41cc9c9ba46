"""vvk.data.detection: COCO instances -> training samples with scale jitter, flip, crop/pad and
online Copy-Paste; bad images skipped and counted; real tiny_coco."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vvk.augment.jitter import sample_jitter
from vvk.data.coco import decode_segmentation, load_coco
from vvk.data.datasets import BadFiles
from vvk.data.detection import (
    LSJ,
    SSJ,
    DetectionDataset,
    DetectionImages,
    collate_detection,
    open_coco,
    open_detection_dataset,
)
from vvk.data.loader import make_loader
from vvk.errors import VvkError


def square(x0: int, y0: int, side: int) -> list[list[float]]:
    """A square COCO polygon covering pixels x0..x0+side-1, y0..y0+side-1."""
    x1, y1 = x0 + side, y0 + side
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(folder: Path, images: list[dict], *, categories=("a", "b")) -> Path:
    """A COCO dataset folder: ``images`` are ``{"name", "pixels" (H, W, 3) uint8 or None (no
    file), "objects": [(category id, polygons, iscrowd)]}``; returns the folder."""
    (folder / "images").mkdir(parents=True)
    records, annotations = [], []
    for i, spec in enumerate(images, start=1):
        pixels = spec.get("pixels")
        height, width = spec.get("size", pixels.shape[:2] if pixels is not None else (32, 32))
        if pixels is not None:
            Image.fromarray(pixels).save(folder / "images" / spec["name"])
        records.append({"id": i, "file_name": spec["name"], "width": width, "height": height})
        for category, polygons, crowd in spec.get("objects", []):
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": category, "iscrowd": int(crowd),
                "segmentation": polygons, "area": 1.0, "bbox": [0, 0, 1, 1],
            })  # fmt: skip
    data = {"images": records, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(categories)]}  # fmt: skip
    (folder / "instances_train.json").write_text(json.dumps(data))
    return folder


def flat(value: int, size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def painted(background: int, colour: tuple[int, int, int], x0: int, y0: int, side: int, size=64):
    pixels = flat(background, size)
    pixels[y0 : y0 + side, x0 : x0 + side] = colour
    return pixels


def mask_boxes(masks: torch.Tensor) -> list[list[float]]:
    """Tight XYXY pixel-edge boxes of (N, H, W) masks."""
    out = []
    for m in masks.bool():
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
    return out


def test_scale_jitter_stays_in_its_range(tmp_path):
    # A white square image on a black canvas: the white extent is the resized image, cut to S.
    folder = write_coco(tmp_path / "d", [{"name": "w.png", "pixels": flat(255, 100)}])
    for scale_range in (LSJ, SSJ):
        data = open_detection_dataset(folder, size=64, scale_range=scale_range, flip_prob=0.0)
        sides = []
        for draw in range(200):
            image, _ = data[(0, draw)]
            white = image[0] > 0.5  # (S, S)
            sides.append(int(white.any(dim=0).sum()))
            assert white.any(dim=0).sum() == white.any(dim=1).sum()  # square, kept at the top left
        sides = np.array(sides)
        low, high = scale_range
        assert sides.min() >= np.floor(low * 64) and sides.max() <= 64
        # The image fills the canvas exactly when its scale is >= 1: P = (high - 1) / (high - low).
        assert abs((sides == 64).mean() - (high - 1) / (high - low)) < 0.12
        assert sides.min() <= low * 64 + 0.1 * 64 * (high - low)  # the low end is reached


def test_flip_moves_the_image_boxes_and_masks_together(tmp_path):
    pixels = painted(0, (255, 0, 0), 5, 10, 20)
    folder = write_coco(
        tmp_path / "d", [{"name": "a.png", "pixels": pixels, "objects": [(1, square(5, 10, 20), 0)]}]
    )
    plain = open_detection_dataset(folder, size=64, scale_range=(1.0, 1.0), flip_prob=0.0)
    flipped = open_detection_dataset(folder, size=64, scale_range=(1.0, 1.0), flip_prob=1.0)
    (image, target), (image_f, target_f) = plain[0], flipped[0]
    assert target["boxes"].tolist() == [[5, 10, 25, 30]]
    assert target_f["boxes"].tolist() == [[64 - 25, 10, 64 - 5, 30]]
    assert torch.equal(target_f["masks"], target["masks"].flip(-1))
    assert torch.equal(image_f, image.flip(-1))
    red = image_f[0] > 0.5
    assert torch.equal(red, target_f["masks"][0].bool())  # the pixels moved with the mask


def test_boxes_are_the_masks_boxes_after_crop_and_paste(shared_data):
    data = open_detection_dataset(shared_data / "coco" / "tiny_coco", size=128, copy_paste=True)
    total = 0
    for draw in range(20):
        image, target = data[(draw % len(data), draw)]
        masks, boxes = target["masks"], target["boxes"]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        assert masks.dtype == torch.uint8 and masks.shape[1:] == (128, 128)
        assert boxes.format.value == "XYXY" and tuple(boxes.canvas_size) == (128, 128)
        assert len(masks) == len(boxes) == len(target["labels"])
        assert target["labels"].dtype == torch.int64
        assert ((target["labels"] >= 1) & (target["labels"] <= 80)).all()
        if len(masks):
            assert (masks.flatten(1).sum(1) > 0).all()  # cut-away objects are dropped
            assert boxes.tolist() == mask_boxes(masks)
        total += len(masks)
    assert total > 50


def test_masks_match_torchvision_v2_on_the_same_geometry(shared_data):
    """The exact polygon path agrees with v2's flip + nearest resize + crop of the full masks."""
    root = shared_data / "coco" / "tiny_coco"
    data = open_detection_dataset(root, size=256, scale_range=LSJ)
    coco = data.coco
    compared = 0
    for draw in range(6):
        index = draw * 7 % len(data)
        _, target = data[(index, draw)]
        image = coco.images[int(data.image_ids[index])]
        # The dataset's first draws are the jitter's (sample_jitter), from the sample's generator.
        jitter = sample_jitter(
            np.random.default_rng([0, draw]), height=image.height, width=image.width, size=256,
            scale_range=LSJ, flip_prob=0.5,
        )  # fmt: skip
        objects = [a for a in coco.annotations[image.id] if not a.iscrowd]
        full = torch.from_numpy(
            np.stack([decode_segmentation(a.segmentation, image.height, image.width) for a in objects])
        ).to(torch.uint8)  # (N, H, W)
        if jitter.flip:
            full = F.horizontal_flip(full)
        resized = F.resize(full, list(jitter.scaled), interpolation=InterpolationMode.NEAREST)
        theirs = F.crop(resized, jitter.offset[0], jitter.offset[1], 256, 256).bool()  # pads past the edge
        theirs = theirs[theirs.flatten(1).any(1)]
        ours = target["masks"].bool()
        for mine, other in zip(ours, theirs, strict=False):
            if other.sum() < 200:  # at a few pixels, nearest sampling and rasterising differ
                continue
            iou = (mine & other).sum() / (mine | other).sum()
            assert iou > 0.85, (draw, iou)
            compared += 1
    assert compared >= 10


def test_crowd_annotations_are_left_out(shared_data):
    coco = open_coco(shared_data / "coco" / "tiny_coco")
    crowded = [i for i, anns in coco.annotations.items() if any(a.iscrowd for a in anns)]
    assert crowded
    data = DetectionDataset(coco, size=640, scale_range=(1.0, 1.0), flip_prob=0.0)
    for image_id in crowded:
        index = int(np.flatnonzero(data.image_ids == image_id)[0])
        image = coco.images[image_id]
        if max(image.width, image.height) != 640:
            continue  # at another size, small objects may vanish when rasterised
        _, target = data[index]
        solid = [a for a in coco.annotations[image_id] if not a.iscrowd]
        assert len(target["labels"]) == len(solid)
        assert target["labels"].tolist() == [data.labels[a.category_id] for a in solid]


def test_an_image_without_objects_is_a_sample_with_empty_targets(tmp_path):
    folder = write_coco(tmp_path / "d", [{"name": "e.png", "pixels": flat(90)}])
    image, target = open_detection_dataset(folder, size=32)[0]
    assert image.shape == (3, 32, 32)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 32, 32)
    batch = collate_detection([(image, target), (image, target)])
    assert batch["images"].shape == (2, 3, 32, 32) and batch["skipped"] == []
    assert "skipped" not in batch["targets"][0]


def test_copy_paste_adds_objects_and_occludes(tmp_path):
    green = (0, 255, 0)
    folder = write_coco(
        tmp_path / "d",
        [
            # a's small object lies where b's big one lands: a pasted b covers it whole
            {"name": "a.png", "pixels": painted(0, (255, 0, 0), 20, 20, 16),
             "objects": [(1, square(20, 20, 16), 0)]},
            {"name": "b.png", "pixels": painted(40, green, 10, 10, 40),
             "objects": [(2, square(10, 10, 40), 0)]},
        ],
    )  # fmt: skip
    data = open_detection_dataset(folder, size=64, scale_range=(1.0, 1.0), flip_prob=0.0, copy_paste=True)
    seen = set()
    for draw in range(60):
        index = draw % 2
        image, target = data[(index, draw)]
        labels = target["labels"].tolist()
        masks = target["masks"].bool()
        if index == 0 and labels == [2]:  # b pasted on a: a is hidden and dropped
            seen.add("dropped")
            assert torch.equal(image[1] > 0.9, masks[0])  # green exactly where the pasted mask is
        if index == 1 and labels == [2, 1]:  # a pasted on b: b keeps its box and loses a's pixels
            seen.add("occluded")
            assert masks[0].sum() == 40 * 40 - 16 * 16 and masks[1].sum() == 16 * 16
            assert not (masks[0] & masks[1]).any()
            assert target["boxes"].tolist() == [[10, 10, 50, 50], [20, 20, 36, 36]]
        if labels == [index + 1]:
            seen.add("nothing pasted")
    assert seen == {"dropped", "occluded", "nothing pasted"}


def test_bad_images_are_replaced_skipped_and_counted(tmp_path):
    folder = write_coco(
        tmp_path / "d",
        [
            {"name": "good.png", "pixels": flat(200), "objects": [(1, square(4, 4, 10), 0)]},
            {"name": "gone.png", "pixels": None, "size": (64, 64)},
            {"name": "notes.png", "pixels": None, "size": (64, 64)},
            {"name": "small.png", "pixels": flat(10, 32), "size": (64, 64)},  # json says 64x64
        ],
    )
    (folder / "images" / "notes.png").write_text("not an image")
    data = open_detection_dataset(folder, size=32, flip_prob=0.0)
    batch = collate_detection([data[(i, i)] for i in range(4)])
    assert all(t["image_id"] == 1 for t in batch["targets"])  # every bad one replaced by the good one
    problems = {Path(r["path"]).name: r["problem"] for r in batch["skipped"]}
    assert problems == {"gone.png": "missing", "notes.png": "not_image", "small.png": "image_size"}
    lines: list[str] = []
    bad = BadFiles(warn=lines.append)
    bad.merge(batch["skipped"])
    bad.merge(batch["skipped"])  # met again in a later batch: still one warning each
    assert bad.summary()["by_problem"] == {"missing": 1, "not_image": 1, "image_size": 1}
    assert len(lines) == 3 and all(line.endswith("; skipped") for line in lines)
    images = DetectionImages(data.coco)
    assert images[1][0] is None and images[1][1]["skipped"][0]["problem"] == "missing"


def test_only_bad_images_is_an_error_naming_the_last(tmp_path):
    folder = write_coco(tmp_path / "d", [{"name": "gone.png", "pixels": None, "size": (8, 8)}])
    with pytest.raises(VvkError, match=r"1 image\(s\) in a row could not be read, last: .*gone\.png"):
        open_detection_dataset(folder, size=16)[0]


def test_loader_workers_give_the_same_batches_as_one_process(shared_data):
    data = open_detection_dataset(shared_data / "coco" / "tiny_coco", size=96, copy_paste=True)
    batches = []
    for workers in (0, 2):
        loader = make_loader(data, batch_size=3, num_workers=workers, seed=5, collate_fn=collate_detection)
        batches.append([b for _, b in zip(range(2), loader, strict=False)])
    for one, many in zip(*batches, strict=True):
        assert torch.equal(one["images"], many["images"])
        for a, b in zip(one["targets"], many["targets"], strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


def test_labels_follow_the_category_order_of_the_file(tmp_path):
    folder = write_coco(
        tmp_path / "d", [{"name": "a.png", "pixels": flat(0), "objects": [(7, square(1, 1, 8), 0)]}],
        categories=("x",),
    )  # fmt: skip
    path = folder / "instances_train.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    path.write_text(json.dumps(data))
    dataset = DetectionDataset(load_coco(path, folder / "images"), size=16, scale_range=(0.25, 0.25))
    assert dataset.categories == [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    assert dataset[0][1]["labels"].tolist() == [1]


def test_a_missing_dataset_names_the_parameter(tmp_path):
    with pytest.raises(VvkError, match=r"^val=.*nowhere: no such folder or file"):
        open_coco(tmp_path / "nowhere", what="val")


def test_excluded_categories_lose_their_boxes_not_their_pixels(tmp_path):
    pixels = painted(0, (255, 0, 0), 5, 10, 20)
    objects = [(1, square(5, 10, 20), 0), (2, square(40, 40, 10), 0)]
    folder = write_coco(tmp_path / "d", [{"name": "a.png", "pixels": pixels, "objects": objects}])
    whole = open_detection_dataset(folder, size=64, scale_range=(1.0, 1.0), flip_prob=0.0)
    novel_out = open_detection_dataset(
        folder, size=64, scale_range=(1.0, 1.0), flip_prob=0.0, exclude_categories=[1]
    )
    (image, target), (image_n, target_n) = whole[0], novel_out[0]
    assert novel_out.categories == [{"id": 2, "name": "b"}]
    assert target_n["labels"].tolist() == [1] and target_n["boxes"].tolist() == [[40, 40, 50, 50]]
    assert torch.equal(image_n, image) and target["labels"].tolist() == [1, 2]


class _Regions:
    """A region store of one 100 x 100 image: a box, a strip along its right edge, the whole image."""

    def __getitem__(self, image_id):
        return torch.tensor(
            [[4.0, 8.0, 20.0, 40.0], [90.0, 0.0, 99.0, 100.0], [0.0, 0.0, 100.0, 100.0]]
        ), torch.eye(3)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_regions_move_with_the_image(tmp_path, flip):
    # scale 0.5 of a 64 canvas: the image is resized to 32 px (x 0.32) at the top left, no crop
    folder = write_coco(tmp_path / "d", [{"name": "a.png", "pixels": flat(0, 100)}])
    data = open_detection_dataset(folder, size=64, scale_range=(0.5, 0.5), flip_prob=flip, regions=_Regions())
    target = data[0][1]
    boxes = torch.tensor([[4.0, 8.0, 20.0, 40.0], [90.0, 0.0, 99.0, 100.0], [0.0, 0.0, 100.0, 100.0]])
    if flip:
        boxes[:, [0, 2]] = 100 - boxes[:, [2, 0]]
    assert torch.allclose(target["region_boxes"], boxes * 0.32, atol=1e-4)
    assert torch.equal(target["region_embeddings"], torch.eye(3))


def test_regions_are_cut_to_the_crop_and_those_it_cuts_away_dropped(tmp_path):
    # scale 2: the image is resized to 128 px and a random 64 px window of it kept
    folder = write_coco(tmp_path / "d", [{"name": "a.png", "pixels": flat(0, 100)}])
    data = open_detection_dataset(folder, size=64, scale_range=(2.0, 2.0), flip_prob=0.0, regions=_Regions())
    strip_kept = []
    for draw in range(30):
        target = data[(0, draw)][1]
        boxes, embeddings = target["region_boxes"], target["region_embeddings"]
        assert boxes[-1].tolist() == [0.0, 0.0, 64.0, 64.0] and embeddings[-1].tolist() == [0.0, 0.0, 1.0]
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
        strip_kept.append(bool((embeddings[:, 1] == 1).any()))
    assert 0 < sum(strip_kept) < 30  # the strip (x 115-127 px) is in the windows that reach it only
