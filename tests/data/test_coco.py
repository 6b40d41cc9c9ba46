"""COCO reading, validation, mask decoding and image conversion (vvk.data.coco)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vvk.data.coco import (
    check_instances,
    decode_segmentation,
    find_coco_layout,
    load_coco,
    read_json,
    rle_area_and_box,
    tight_box,
)
from vvk.data.images import ImageReadError, load_rgb, probe_image
from vvk.errors import VvkError

SQUARE = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]


def write_dataset(root, images, annotations, categories=None, split="train2017"):
    """A COCO layout under ``root``: annotations/instances_<split>.json and <split>/."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    data = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


def image_entry(image_id, name, width=64, height=48):
    return {"id": image_id, "file_name": name, "width": width, "height": height}


def ann(ann_id, image_id, segmentation=SQUARE, category_id=1, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "iscrowd": iscrowd,
        "bbox": [0, 0, 1, 1],
        "area": 1,
    }


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_text('{\n  "images": [\n    {"id": 1,}\n  ]\n}\n')
    with pytest.raises(VvkError) as info:
        read_json(path)
    message = info.value.one_line()
    assert message.startswith(f"{path}:3:14: malformed JSON")
    assert "\n" not in message


@pytest.mark.parametrize(
    "data,expected",
    [
        ([], "expected a JSON object at the top level"),
        ({"annotations": [], "categories": []}, "missing top-level field 'images'"),
        ({"images": {}, "annotations": [], "categories": []}, "field 'images' must be a list"),
        (
            {"images": [{"id": 1, "width": 4, "height": 4}], "annotations": [], "categories": []},
            "images[0]: missing field 'file_name'",
        ),
        (
            {"images": [image_entry("7", "a.jpg")], "annotations": [], "categories": []},
            'images[0].id: expected int, got "7"',
        ),
        (
            {
                "images": [image_entry(1, "a.jpg"), image_entry(1, "b.jpg")],
                "annotations": [],
                "categories": [],
            },
            "images[1].id: duplicate image id 1",
        ),
        (
            {"images": [], "annotations": [{"id": 1}], "categories": []},
            "annotations[0]: missing field 'image_id'",
        ),
        ({"images": [], "annotations": [], "categories": [{"id": 1}]}, "categories[0]: missing field 'name'"),
    ],
)
def test_structural_errors_name_the_field(tmp_path, data, expected):
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(VvkError) as info:
        load_coco(path, tmp_path)
    assert expected in info.value.one_line()
    assert str(path) in info.value.one_line()


def test_bad_records_are_skipped_and_counted(tmp_path):
    images = [image_entry(1, "a.jpg"), image_entry(2, "b.jpg")]
    annotations = [
        ann(1, 1),
        ann(2, 99),  # unknown image
        ann(3, 1, category_id=42),  # unknown category
        ann(4, 1, segmentation=[[5, 5, 20, 5, 35, 5]]),  # collinear: zero area
        ann(5, 1, segmentation=[[100, 100, 120, 100, 120, 120]]),  # entirely right of a 64-px image
        ann(6, 1, segmentation=[]),  # no mask
        ann(7, 1, segmentation=[[1, 2, 3]]),  # odd coordinate count
        ann(8, 1, segmentation={"size": [10, 10], "counts": "abc"}),  # RLE of another size
    ]
    path = write_dataset(tmp_path, images, annotations)
    dataset = load_coco(path, tmp_path / "train2017")
    assert [a.id for a in dataset.annotations[1]] == [1]
    assert dataset.annotations[2] == []
    assert dict(dataset.issues) == {
        "annotation_unknown_image": 1,
        "annotation_unknown_category": 1,
        "annotation_zero_area": 1,
        "annotation_outside_image": 1,
        "annotation_without_mask": 1,
        "annotation_bad_segmentation": 2,
        "images_without_objects": 1,
    }
    assert dataset.split == "train2017"


def test_find_layout_usual_and_flat_and_overrides(tmp_path):
    usual = tmp_path / "usual"
    ann_path = write_dataset(usual, [image_entry(1, "a.jpg")], [])
    (usual / "train2017" / "a.jpg").write_bytes(b"x")
    assert find_coco_layout(usual) == (ann_path, usual / "train2017")
    assert find_coco_layout(ann_path) == (ann_path, usual / "train2017")

    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "images" / "a.jpg").write_bytes(b"x")
    (flat / "instances_val.json").write_text("{}")
    assert find_coco_layout(flat) == (flat / "instances_val.json", flat / "images")
    assert find_coco_layout(flat, images=usual / "train2017")[1] == usual / "train2017"

    with pytest.raises(VvkError, match="no instances_.*json found"):
        find_coco_layout(tmp_path / "usual" / "train2017")
    with pytest.raises(VvkError, match="no such file or folder"):
        find_coco_layout(tmp_path / "absent")
    (flat / "instances_train.json").write_text("{}")
    with pytest.raises(VvkError, match="several annotation files"):
        find_coco_layout(flat)


def test_decode_polygon_rle_and_uncompressed_agree():
    full = decode_segmentation(SQUARE, 40, 50)
    assert full.shape == (40, 50) and full.dtype == bool
    assert tight_box(full) == (10, 10, 30, 30)  # pixel edges: the polygon covers [10, 30)
    rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    assert np.array_equal(decode_segmentation(rle, 40, 50), full)
    # Column-major runs: 10 empty columns and 10 rows, then 20 columns of (20 on, 20 off)...
    counts = [10 * 40 + 10] + [20, 20] * 19 + [20, 10 + 20 * 40]
    uncompressed = {"size": [40, 50], "counts": counts}
    assert np.array_equal(decode_segmentation(uncompressed, 40, 50), full)
    assert tight_box(np.zeros((3, 3), bool)) is None


def test_rle_area_and_box_of_a_json_rle():
    coded = mask_utils.frPyObjects({"counts": [3, 2, 5, 2], "size": [4, 3]}, 4, 3)
    rle = {"size": [4, 3], "counts": coded["counts"].decode("ascii")}  # as JSON holds it
    assert rle_area_and_box(rle) == (4, [0, 0, 3, 4])
    decoded = decode_segmentation(rle, 4, 3)
    assert decoded.T.ravel().tolist() == [0] * 3 + [1] * 2 + [0] * 5 + [1] * 2


# --------------------------------------------------------------------------------------------
# Images in every storage the issue names


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)


def test_rgb_passes_through(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    probe = probe_image(tmp_path / "a.png")
    assert probe.size == (16, 12) and probe.conversion is None and probe.exif_orientation == 1
    out = load_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.writeable and np.array_equal(out, rgb)


def test_greyscale_is_replicated(tmp_path, rgb):
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "g.png")
    assert probe_image(tmp_path / "g.png").conversion == "greyscale"
    out = load_rgb(tmp_path / "g.png")
    assert out.shape == (12, 16, 3) and all(np.array_equal(out[:, :, c], rgb[:, :, 0]) for c in range(3))


def test_16bit_is_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 25700, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert probe_image(tmp_path / "d.png").conversion == "16bit"
    out = load_rgb(tmp_path / "d.png")
    assert out[0, :, 0].tolist() == [0, 1, 100, 255]


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red
    assert probe_image(tmp_path / "c.jpg").conversion == "cmyk"
    out = load_rgb(tmp_path / "c.jpg")
    assert out.shape == (6, 8, 3)
    assert out[..., 0].min() > 230 and out[..., 1].max() < 25 and out[..., 2].max() < 25


def test_alpha_is_composited_on_black(tmp_path, rgb):
    alpha = np.zeros((12, 16), np.uint8)
    alpha[:, 8:] = 255
    alpha[0, 0] = 128
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    assert probe_image(tmp_path / "a.png").conversion == "alpha"
    out = load_rgb(tmp_path / "a.png")
    assert np.array_equal(out[:, 8:], rgb[:, 8:])
    assert out[1:, :8].max() == 0
    assert np.array_equal(out[0, 0], (rgb[0, 0].astype(int) * 128 + 127) // 255)


def _exif_rotated_jpeg(path, raw):
    """A JPEG whose stored pixels are ``raw`` and whose EXIF says: rotate 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(raw).save(path, quality=100, exif=exif.tobytes())


def test_exif_rotation_applied_when_json_size_is_upright(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :20] = 255  # left half white in storage -> top half white once upright
    _exif_rotated_jpeg(tmp_path / "r.jpg", raw)
    probe = probe_image(tmp_path / "r.jpg", expected_size=(20, 40))
    assert probe.exif_orientation == 6 and probe.size == (20, 40)
    out = load_rgb(tmp_path / "r.jpg", exif_orientation=probe.exif_orientation)
    assert out.shape == (40, 20, 3)
    assert out[:18].min() > 200 and out[22:].max() < 50


def test_exif_rotation_ignored_when_json_size_is_stored(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    _exif_rotated_jpeg(tmp_path / "r.jpg", raw)
    probe = probe_image(tmp_path / "r.jpg", expected_size=(40, 20))
    assert probe.exif_orientation == 1 and probe.size == (40, 20)
    assert load_rgb(tmp_path / "r.jpg", exif_orientation=1).shape == (20, 40, 3)


def test_missing_and_corrupt_images_raise(tmp_path):
    with pytest.raises(ImageReadError, match="missing"):
        probe_image(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="unreadable"):
        probe_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageReadError, match="unreadable"):
        load_rgb(tmp_path / "bad.jpg")


# --------------------------------------------------------------------------------------------
# Real data and the consistency checker


def test_tiny_coco_loads_fully(shared_data):
    dataset = load_coco(*find_coco_layout(shared_data / "coco" / "tiny_coco"))
    assert len(dataset.images) == 50
    anns = [a for group in dataset.annotations.values() for a in group]
    assert len(anns) == 470 and sum(a.iscrowd for a in anns) == 5
    assert len(dataset.categories) == 80
    assert dict(dataset.issues) == {"images_without_objects": 1}
    for image in list(dataset.images.values())[:5]:
        probe = probe_image(dataset.image_path(image), expected_size=(image.width, image.height))
        assert probe.size == (image.width, image.height)


def test_check_instances_finds_planted_problems(tmp_path):
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "a.png")
    full = decode_segmentation(SQUARE, 48, 64)
    rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    good = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "segmentation": rle,
        "area": 400,
        "bbox": [10, 10, 20, 20],
    }
    data = {
        "images": [image_entry(1, "a.png")],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            good,
            {**good, "id": 2, "bbox": [10, 10, 21, 20]},
            {**good, "id": 3, "area": 399},
            {**good, "id": 4, "segmentation": {"size": [4, 4], "counts": "04"}},
            {**good, "id": 5, "image_id": 9},
            {**good, "id": 6, "segmentation": [[70, 50, 80, 50, 80, 60]], "area": 0, "bbox": [0, 0, 0, 0]},
        ],
    }
    path = tmp_path / "instances_t.json"
    path.write_text(json.dumps(data))
    problems = check_instances(path, tmp_path)
    assert len(problems) == 5, problems
    assert problems[0].startswith("annotation 2: bbox")
    assert problems[1].startswith("annotation 3: area 399")
    assert "mask size [4, 4]" in problems[2]
    assert "unknown image 9" in problems[3]
    assert problems[4] == "annotation 6: zero area"


def test_file_names_outside_the_images_folder_are_skipped_with_their_annotations(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"not for the dataset")
    images = [
        image_entry(1, "a.jpg"),
        image_entry(2, "../../secret.jpg"),  # from <root>/data/train2017 up to <root>
        image_entry(3, str(tmp_path / "secret.jpg")),
        image_entry(4, "sub/../b.jpg"),  # '..' that stays inside is fine
    ]
    path = write_dataset(tmp_path / "data", images, [ann(1, 1), ann(2, 2), ann(3, 3), ann(4, 4)])
    dataset = load_coco(path, tmp_path / "data" / "train2017")
    assert sorted(dataset.images) == [1, 4] and sorted(dataset.annotations) == [1, 4]
    # The skipped images' annotations go with them: not counted as pointing at unknown images.
    assert dict(dataset.issues) == {"image_outside_folder": 2}
    problems = check_instances(path, tmp_path / "data" / "train2017")
    assert any(p.startswith("image 2: ../../secret.jpg is outside") for p in problems)
    assert any(p.startswith(f"image 3: {tmp_path / 'secret.jpg'} is outside") for p in problems)
