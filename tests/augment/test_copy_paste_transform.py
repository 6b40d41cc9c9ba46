"""vvk.augment.CopyPaste over torchvision tv_tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vvk.augment import CopyPaste
from vvk.data.coco import decode_segmentation, find_coco_layout, load_coco
from vvk.data.images import load_rgb


def sample(seed, rects, size=64, crowd=None, box_format="XYXY", mask_dtype=torch.bool):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
    masks = torch.zeros((len(rects), size, size), dtype=mask_dtype)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        masks[k, y0:y1, x0:x1] = 1
    xyxy = tv_tensors.BoundingBoxes(
        torch.tensor(rects, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(size, size)
    )
    target = {
        "boxes": F.convert_bounding_box_format(xyxy, new_format=box_format),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.arange(1, len(rects) + 1) + 10 * seed,
        "image_id": seed,
    }
    if crowd is not None:
        target["iscrowd"] = torch.tensor(crowd)
    return image, target


def test_batch_pastes_previous_sample_and_keeps_pixel_truth():
    a = sample(1, [(0, 0, 20, 20), (30, 30, 60, 50)])
    b = sample(2, [(10, 10, 40, 40)])
    cp = CopyPaste(max_objects=5, generator=torch.Generator().manual_seed(0))
    seen_paste = False
    for _ in range(10):
        (img_a, img_b), (tgt_a, tgt_b) = cp([a[0], b[0]], [a[1], b[1]])
        assert isinstance(img_a, tv_tensors.Image) and img_a.shape == (3, 64, 64)
        for out_img, tgt, dst, src in ((img_a, tgt_a, a, b), (img_b, tgt_b, b, a)):
            n_pasted = sum(int(lbl) // 10 == src[1]["image_id"] for lbl in tgt["labels"])
            seen_paste |= n_pasted > 0
            pasted = tgt["masks"][len(tgt["masks"]) - n_pasted :].any(0)
            assert torch.equal(out_img[:, pasted], src[0][:, pasted])
            assert torch.equal(out_img[:, ~pasted], dst[0][:, ~pasted])
            assert isinstance(tgt["boxes"], tv_tensors.BoundingBoxes) and tgt["boxes"].canvas_size == (64, 64)
            if len(tgt["masks"]):
                inclusive = masks_to_boxes(tgt["masks"])  # torchvision's box: last pixel included
                assert torch.equal(tgt["boxes"], inclusive + torch.tensor([0, 0, 1, 1]))
            assert tgt["image_id"] == dst[1]["image_id"]
            assert len(tgt["labels"]) == len(tgt["masks"]) == len(tgt["boxes"])
    assert seen_paste


def test_occluded_destination_objects_are_dropped():
    dst = sample(1, [(10, 10, 20, 20)])  # 100 px, fully under the source object
    src = sample(2, [(0, 0, 40, 40)])
    cp = CopyPaste(max_objects=1)
    for seed in range(20):
        cp.generator = torch.Generator().manual_seed(seed)
        image, target = cp.paste_pair(dst[0], dst[1], src[0], src[1])
        if len(target["labels"]) == 1 and int(target["labels"][0]) == 21:
            assert torch.equal(image[:, :40, :40], src[0][:, :40, :40])
            return
    pytest.fail("the source object was never pasted in 20 draws")


def test_crowd_is_not_pasted_and_generator_makes_it_repeatable():
    dst = sample(1, [(0, 0, 10, 10)], crowd=[False])
    src = sample(2, [(20, 20, 30, 30), (40, 40, 60, 60)], crowd=[True, False])
    runs = []
    for _ in range(2):
        cp = CopyPaste(generator=torch.Generator().manual_seed(5))
        labels = [cp.paste_pair(dst[0], dst[1], src[0], src[1])[1]["labels"].tolist() for _ in range(30)]
        runs.append(labels)
    assert runs[0] == runs[1]
    assert all(21 not in labels for labels in runs[0])  # the crowd region (label 21) never moves
    assert any(22 in labels for labels in runs[0])


def test_float_images_and_inputs_that_break_the_contract():
    dst = sample(1, [(0, 0, 10, 10)])
    src = sample(2, [(5, 5, 30, 30)])
    cp = CopyPaste(blend_sigma=1.5, generator=torch.Generator().manual_seed(1))
    image, _ = cp.paste_pair(tv_tensors.Image(dst[0] / 255), dst[1], tv_tensors.Image(src[0] / 255), src[1])
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="differ in shape"):
        cp.paste_pair(dst[0], dst[1], *sample(3, [(0, 0, 4, 4)], size=32))
    # v2 transforms would leave a plain tensor where it was: refused rather than let fall out of step
    with pytest.raises(TypeError, match="tv_tensors.Image"):
        cp.paste_pair(dst[0].as_subclass(torch.Tensor), dst[1], *src)
    with pytest.raises(TypeError, match="BoundingBoxes"):
        cp.paste_pair(dst[0], {**dst[1], "boxes": dst[1]["boxes"].as_subclass(torch.Tensor)}, *src)
    with pytest.raises(ValueError, match="image is 64x64 but its masks are"):
        cp.paste_pair(dst[0], {**dst[1], "masks": tv_tensors.Mask(torch.zeros(1, 32, 32))}, *src)
    with pytest.raises(ValueError, match="object_keys"):
        CopyPaste(object_keys=("labels", "boxes"))
    tracked = CopyPaste(object_keys=("labels", "track_ids"))
    with pytest.raises(ValueError, match="'track_ids' is in the destination's target but not the source's"):
        tracked.paste_pair(dst[0], {**dst[1], "track_ids": torch.tensor([7])}, *src)
    assert "max_objects=100" in repr(cp)


@pytest.mark.parametrize("box_format", ["XYXY", "XYWH", "CXCYWH"])
def test_inside_v2_compose_boxes_masks_pixels_and_object_keys_stay_together(box_format):
    """CopyPaste, then a v2 horizontal flip and a 2x resize on the batch: the boxes v2 moved are
    still the tight boxes of the masks v2 moved, in the input format; the pixels under each mask
    come from the image its object came from; per-object keys still name their objects."""
    rects = {1: [(0, 0, 20, 20), (30, 30, 60, 50), (5, 40, 25, 62)], 2: [(10, 10, 40, 40), (44, 2, 63, 30)]}
    samples = {
        seed: sample(seed, r, box_format=box_format, mask_dtype=torch.uint8) for seed, r in rects.items()
    }
    for _, target in samples.values():
        target["track_ids"] = torch.stack([target["labels"], -target["labels"]], dim=1)  # (N, 2)
    pipeline = v2.Compose(
        [
            CopyPaste(object_keys=("labels", "track_ids"), generator=torch.Generator().manual_seed(0)),
            v2.RandomHorizontalFlip(p=1.0),
            v2.Resize((128, 128), interpolation=v2.InterpolationMode.NEAREST),
        ]
    )
    moved = {
        seed: F.resize(F.horizontal_flip(image), [128, 128], interpolation=v2.InterpolationMode.NEAREST)
        for seed, (image, _) in samples.items()
    }  # the input images as the pipeline moves them
    seen_paste = False
    for _ in range(8):
        images, targets = pipeline([samples[1][0], samples[2][0]], [samples[1][1], samples[2][1]])
        for seed, image, target in zip((1, 2), images, targets, strict=True):
            boxes, masks = target["boxes"], target["masks"]
            assert isinstance(image, tv_tensors.Image) and image.shape == (3, 128, 128)
            assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
            assert boxes.format.name == box_format and boxes.canvas_size == (128, 128)
            assert len(boxes) == len(masks) == len(target["labels"]) > 0
            xyxy = F.convert_bounding_box_format(boxes, new_format="XYXY")
            assert torch.equal(xyxy, masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]))
            assert torch.equal(target["track_ids"], torch.stack([target["labels"], -target["labels"]], dim=1))
            for mask, label in zip(masks.bool(), target["labels"].tolist(), strict=True):
                origin = label // 10  # the sample the object came from
                x0, y0, x1, y1 = rects[origin][label % 10 - 1]
                inside = torch.zeros_like(mask)
                inside[2 * y0 : 2 * y1, 2 * (64 - x1) : 2 * (64 - x0)] = True  # its flipped, resized rect
                assert mask.any() and not (mask & ~inside).any()
                assert torch.equal(image[:, mask], moved[origin][:, mask])
                seen_paste |= origin != seed
    assert seen_paste


def test_objects_with_empty_masks_are_dropped_with_their_rows():
    """An earlier crop can leave a mask empty: it has no box, so it goes, and so do its rows."""
    dst = sample(1, [(0, 0, 10, 10), (20, 20, 20, 20), (30, 30, 40, 44)], crowd=[0, 0, 1])  # middle: empty
    src = sample(2, [(50, 50, 60, 60)], crowd=[0])
    _, target = CopyPaste(max_objects=0).paste_pair(*dst, *src)
    assert target["labels"].tolist() == [11, 13] and target["iscrowd"].tolist() == [0, 1]
    assert target["boxes"].tolist() == [[0, 0, 10, 10], [30, 30, 40, 44]]


def test_real_coco_samples_through_a_v2_pipeline(shared_data):
    """tiny_coco images and masks, scale-jittered and cropped/padded per sample by v2, pasted,
    then flipped as a batch by v2: boxes are their masks' tight boxes and the pixels under each
    mask come from the image its object came from."""
    dataset = load_coco(*find_coco_layout(shared_data / "coco" / "tiny_coco"))
    torch.manual_seed(0)  # v2's random draws come from the global generator
    jitter = v2.Compose([v2.ScaleJitter((256, 256), antialias=True), v2.RandomCrop(256, pad_if_needed=True)])
    images, targets = [], []
    for image_id in [i for i, anns in dataset.annotations.items() if anns][:6]:
        info, anns = dataset.images[image_id], dataset.annotations[image_id]
        masks = np.stack([decode_segmentation(a.segmentation, info.height, info.width) for a in anns])
        masks = torch.from_numpy(masks)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]),
                format="XYXY",
                canvas_size=masks.shape[-2:],
            ),
            "masks": tv_tensors.Mask(masks),
            "labels": torch.tensor([a.category_id for a in anns]),
            "iscrowd": torch.tensor([a.iscrowd for a in anns]),
            "ann_ids": torch.tensor([a.id for a in anns]),
        }
        pixels = torch.from_numpy(load_rgb(dataset.image_path(info)))
        image, target = jitter(tv_tensors.Image(pixels.permute(2, 0, 1)), target)  # (H, W, 3) -> (3, H, W)
        images.append(image)
        targets.append(target)
    copy_paste = CopyPaste(
        object_keys=("labels", "iscrowd", "ann_ids"), generator=torch.Generator().manual_seed(0)
    )
    out_images, out_targets = v2.Compose([copy_paste, v2.RandomHorizontalFlip(p=1.0)])(images, targets)
    owner = {int(ann_id): k for k, t in enumerate(targets) for ann_id in t["ann_ids"]}  # object -> its sample
    pasted = 0
    for k, (image, target) in enumerate(zip(out_images, out_targets, strict=True)):
        masks = target["masks"].bool()
        assert torch.equal(target["boxes"], masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]))
        for mask, ann_id in zip(masks, target["ann_ids"].tolist(), strict=True):
            came_from = F.horizontal_flip(images[owner[ann_id]])
            assert torch.equal(image[:, mask], came_from[:, mask])
            pasted += owner[ann_id] != k
    assert pasted > 0
