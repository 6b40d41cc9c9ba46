"""vvk.augment.CopyPaste over torchvision tv_tensors."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from vvk.augment import CopyPaste


def sample(seed, rects, size=64, crowd=None):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
    masks = torch.zeros((len(rects), size, size), dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        masks[k, y0:y1, x0:x1] = True
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(rects, dtype=torch.float32), format="XYXY", canvas_size=(size, size)
        ),
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


def test_float_images_and_shape_mismatch():
    dst = sample(1, [(0, 0, 10, 10)])
    src = sample(2, [(5, 5, 30, 30)])
    cp = CopyPaste(blend_sigma=1.5, generator=torch.Generator().manual_seed(1))
    image, _ = cp.paste_pair(dst[0].float() / 255, dst[1], src[0].float() / 255, src[1])
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="differ in shape"):
        cp.paste_pair(dst[0], dst[1], sample(3, [(0, 0, 4, 4)], size=32)[0], src[1])
    assert "max_objects=100" in repr(cp)
