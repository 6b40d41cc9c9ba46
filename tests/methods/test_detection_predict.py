"""vvk.methods.detection.predict: detection on image files, on real COCO images with the
registered tiny detectors (random weights, every score kept) and a detector that returns the
ground truth, scored by vvk.eval.detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

import vvk.models as models
from vvk.errors import VvkError
from vvk.methods.detection.outputs import check_outputs, coco_result, drawing_path, results_file
from vvk.methods.detection.predict import (
    ImageFile,
    checkpoint_of,
    find_images,
    image_ids_for,
    load_detector,
    predict_images,
    read_image,
    records_of,
    resolve_vocabulary,
)

FIRST = "000000005802.jpg"  # 640x479
TALL = "000000012448.jpg"  # 427x640


@pytest.fixture(scope="module")
def coco(shared_data) -> Path:
    return shared_data / "coco" / "tiny_coco"


def spread_scores(model: nn.Module) -> nn.Module:
    """Classifier weights as large as a trained detector's: at initialisation they are near zero,
    so every anchor scores the prior (0.01) and ties make the order arbitrary."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(
                ("classifier.weight", "classifier.0.weight", "classifier.1.weight", "cls_score.weight")
            ):
                param.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = spread_scores(models.build("retinanet-spinenet-mobile-tiny"))
    return models.save(model, tmp_path_factory.mktemp("w") / "r.safetensors")


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = spread_scores(models.build("maskrcnn-spinenet-tiny"))
    return models.save(model, tmp_path_factory.mktemp("w") / "m.safetensors")


def _files(coco: Path, *names: str) -> list[ImageFile]:
    return find_images([str(coco / "train2017" / n) for n in names])


# --------------------------------------------------------------------------------------------
# Inputs


def test_find_images_recursive_sorted_and_named_under_the_folder(tmp_path):
    for name in (
        "b.jpg",
        "a.PNG",
        "sub/c.jpeg",
        "sub/deeper/d.webp",
        ".hidden.jpg",
        ".cache/e.jpg",
        "notes.txt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_images([str(tmp_path)])
    assert [f.name for f in found] == ["a.PNG", "b.jpg", "sub/c.jpeg", "sub/deeper/d.webp"]
    assert all(f.folder == str(tmp_path) and f.path == str(tmp_path / f.name) for f in found)
    # images named one by one: relative to the folder they share; a missing one is kept, to fail alone
    named = find_images(
        [str(tmp_path / "sub" / "c.jpeg"), str(tmp_path / "b.jpg"), str(tmp_path / "gone.jpg")]
    )
    assert [(f.name, f.folder) for f in named] == [("sub/c.jpeg", None), ("b.jpg", None), ("gone.jpg", None)]
    listed = find_images([str(tmp_path / "b.jpg")], listed=[str(tmp_path / "sub")])  # a list names images
    assert [(f.path, f.name) for f in listed] == [
        (str(tmp_path / "b.jpg"), "b.jpg"),
        (str(tmp_path / "sub"), "sub"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(VvkError, match=r"images=.*empty: no image files in it"):
        find_images([str(tmp_path / "empty")])


def test_bad_files_each_say_why(coco, tmp_path):
    good = (coco / "train2017" / FIRST).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.jpg").write_text("not an image\n")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    expected = {
        "missing.jpg": "no such file",
        "dangling.jpg": "no such file",
        "text.jpg": "not an image file",
        "folder.jpg": "a folder, not an image file",
        "truncated.jpg": "cannot be decoded (OSError: image file is truncated",
    }
    for name, reason in expected.items():
        with pytest.raises(Exception, match=r".") as caught:
            read_image(tmp_path / name)
        assert str(caught.value).startswith(reason), (name, str(caught.value))
    assert read_image(coco / "train2017" / FIRST).shape == (479, 640, 3)


# --------------------------------------------------------------------------------------------
# The detector's outputs become records in the image's own pixels


def test_records_are_the_detectors_outputs_in_original_pixels(coco, retinanet):
    model = load_detector(retinanet)
    images = _files(coco, FIRST, TALL)
    predictions = list(predict_images(model, images, batch_size=2, min_score=0.0, max_dets=100))
    assert [p.size for p in predictions] == [(640, 479), (427, 640)]
    for image, prediction in zip(images, predictions, strict=True):
        pixels = torch.from_numpy(read_image(image.path)).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            (direct,) = model([pixels])  # alone, not batched: batching must not change the outputs
        records = records_of(prediction, model.categories)
        assert len(records) == 100 == len(direct["boxes"])
        # Boxes of one score (the padding's uniform features score alike) come in any order, and
        # which of them make the 100 may differ: every other one must be the same detection.
        scores = direct["scores"].tolist()
        cut = min(scores) + 1e-4
        x1, y1, x2, y2 = direct["boxes"].T.tolist()
        names = [model.categories[label - 1]["name"] for label in direct["labels"].tolist()]
        expected = [
            (s, n, [a, b, c - a, d - b])
            for s, n, a, b, c, d in zip(scores, names, x1, y1, x2, y2, strict=True)
        ]
        found = [(r["score"], r["category"], r["bbox"]) for r in records]
        for score, name, box in (e for e in expected if e[0] > cut):
            match = [f for f in found if abs(f[0] - score) <= 1e-5 and f[1] == name
                     and np.allclose(f[2], box, atol=0.02)]  # fmt: skip
            assert match, (score, name, box)
            found.remove(match[0])
        assert sum(s > cut for s in scores) > 40  # most are compared one by one
        got = np.array([r["bbox"] for r in records])
        assert {r["image"] for r in records} == {image.path}
        width, height = prediction.size
        assert (got >= 0).all()  # x, y, w, h; a random head makes some boxes empty
        assert (got[:, 0] + got[:, 2] <= width + 1e-6).all() and (
            got[:, 1] + got[:, 3] <= height + 1e-6
        ).all()
        # in the image's pixels, not the 256-pixel canvas the model saw
        assert max((got[:, 0] + got[:, 2]).max(), (got[:, 1] + got[:, 3]).max()) > model.image_size * 1.5


def test_min_score_and_max_dets(coco, retinanet):
    model = load_detector(retinanet)
    (everything,) = predict_images(model, _files(coco, FIRST), min_score=0.0, max_dets=100)
    threshold = float(everything.scores[20])
    (few,) = predict_images(model, _files(coco, FIRST), min_score=threshold, max_dets=100)
    (top,) = predict_images(model, _files(coco, FIRST), min_score=0.0, max_dets=7)
    kept = int((everything.scores >= threshold).sum())  # 21 or more: scores tie (the padding's anchors)
    assert kept >= 21 and len(few.scores) == kept and float(few.scores.min()) == threshold  # kept at it
    assert torch.equal(few.scores, everything.scores[:kept])
    assert torch.equal(top.scores, everything.scores[:7])
    assert (everything.scores[:-1] >= everything.scores[1:]).all()


def test_exif_rotated_image_is_detected_upright(coco, retinanet, tmp_path):
    stored = Image.open(coco / "train2017" / FIRST)  # 640x479
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    stored.save(tmp_path / "rotated.png", exif=exif.tobytes())
    stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")  # the same, turned
    model = load_detector(retinanet)
    rotated, upright = predict_images(model, find_images([str(tmp_path)]), min_score=0.0, batch_size=1)
    assert rotated.size == upright.size == (479, 640)
    assert torch.equal(rotated.boxes, upright.boxes) and len(rotated.boxes) == 100
    assert float(rotated.boxes[:, 3].max()) > 479  # below the stored image's height: the upright frame


def test_odd_image_modes_are_read_as_rgb(coco, retinanet, tmp_path):
    source = Image.open(coco / "train2017" / TALL)
    source.convert("L").save(tmp_path / "grey.png")
    source.convert("RGBA").save(tmp_path / "alpha.png")
    source.convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257).save(tmp_path / "deep.png")
    model = load_detector(retinanet)
    predictions = list(predict_images(model, find_images([str(tmp_path)]), min_score=0.0, max_dets=3))
    assert [Path(p.image.path).name for p in predictions] == ["alpha.png", "cmyk.jpg", "deep.png", "grey.png"]
    assert all(p.problem is None and p.size == (427, 640) and len(p.scores) == 3 for p in predictions)
    deep, grey = predictions[2:]
    assert torch.equal(deep.boxes, grey.boxes)  # 16 bits scaled to the same 8


def test_mask_records_are_rles_of_the_full_image(coco, mask_rcnn):
    model = load_detector(mask_rcnn)
    (prediction,) = predict_images(model, _files(coco, TALL), min_score=0.0, max_dets=5)
    records = records_of(prediction, model.categories)
    assert len(records) == 5 and prediction.masks.shape == (5, 640, 427)
    for record, mask in zip(records, prediction.masks, strict=True):
        rle = record["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [640, 427]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == (640, 427) and np.array_equal(decoded.astype(bool), mask.numpy())
    json.dumps(records)  # JSON-ready as they are


# --------------------------------------------------------------------------------------------
# A detector that returns the ground truth scores AP 1 through records, ids and the evaluator


class _GroundTruthDetector(nn.Module):
    """Returns each image's ground-truth objects (found by its pixels' checksum)."""

    def __init__(self, coco: Path, gt: dict, masks: bool):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # a device to be on
        self.categories = [{"id": c["id"], "name": c["name"]} for c in gt["categories"]]
        self.image_size = 256
        label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.truth = {}
        for image in gt["images"]:
            pixels = read_image(coco / "train2017" / image["file_name"])
            anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
            out = {
                "boxes": torch.tensor(
                    [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
                ).reshape(-1, 4),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([label[a["category_id"]] for a in anns], dtype=torch.int64),
            }
            if masks:
                from vvk.data.coco import decode_segmentation

                shape = (image["height"], image["width"])
                decoded = [decode_segmentation(a["segmentation"], *shape) for a in anns]
                out["masks"] = torch.from_numpy(np.stack(decoded) if decoded else np.zeros((0, *shape)))[
                    :, None
                ].float()
            self.truth[self._key(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)] = out

    @staticmethod
    def _key(image: torch.Tensor) -> tuple:
        return (tuple(image.shape), round(float(image.double().sum()), 2))

    def forward(self, images):
        return [self.truth[self._key(image)] for image in images]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_detections_score_ap_one(coco, iou_type, tmp_path):
    from vvk.eval.detection import evaluate_detections

    gt_path = coco / "annotations" / "instances_train2017.json"
    gt = json.loads(gt_path.read_text())
    gt["images"] = gt["images"][:8]
    model = _GroundTruthDetector(coco, gt, masks=iou_type == "segm")
    images = find_images([str(coco / "train2017" / i["file_name"]) for i in gt["images"]])
    ids = image_ids_for(images, gt=gt_path)
    assert ids == [i["id"] for i in gt["images"]] == image_ids_for(images)  # COCO names are the ids
    out = tmp_path / "results.json"
    with results_file(out, format="coco-results") as write:
        for image_id, prediction in zip(
            ids, predict_images(model, images, min_score=0.5, batch_size=3), strict=True
        ):
            write(records_of(prediction, model.categories, image_id=image_id))
    results = json.loads(out.read_text())
    assert results and set(results[0]) >= {"image_id", "category_id", "bbox", "score"}
    scores = evaluate_detections(gt_path, out, iou_type=iou_type, image_ids=ids)
    assert scores["AP"] == pytest.approx(1.0, abs=1e-6) and scores.detections == len(results)


# --------------------------------------------------------------------------------------------
# Vocabulary, weights, ids, outputs


def test_vocabulary_renames_and_must_match(tmp_path):
    mine = [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]
    assert resolve_vocabulary(None, categories=mine) == mine
    (tmp_path / "two.txt").write_text("kitten\n\npuppy\n")
    assert resolve_vocabulary(tmp_path / "two.txt", categories=mine) == [
        {"id": 1, "name": "kitten"}, {"id": 2, "name": "puppy"},
    ]  # fmt: skip
    (tmp_path / "two.json").write_text(
        json.dumps({"categories": [{"id": 3, "name": "a"}, {"id": 4, "name": "b"}]})
    )
    assert [c["id"] for c in resolve_vocabulary(tmp_path / "two.json", categories=mine)] == [3, 4]
    coco = resolve_vocabulary("coco", categories=[{"id": i, "name": str(i)} for i in range(80)])
    assert coco[0] == {"id": 1, "name": "person"} and coco[-1] == {"id": 90, "name": "toothbrush"}
    with pytest.raises(VvkError, match=r"vocab=coco: 80 categories, but the detector predicts 2"):
        resolve_vocabulary("coco", categories=mine)
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "3", "name": "a"}]))
    with pytest.raises(VvkError, match=r"vocab=.*bad.json: \[0\].id: expected an integer"):
        resolve_vocabulary(tmp_path / "bad.json", categories=mine)


def test_weights_run_folder_checkpoint_or_refused_architecture(retinanet, tmp_path):
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-00000003"
    step.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        (step / f"model{suffix}").write_bytes(retinanet.with_suffix(suffix).read_bytes())
    (step / "trainer.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step-00000003\n")
    assert checkpoint_of(run) == str(step / "model.safetensors")  # a run that did not finish
    (run / "detector.safetensors").write_bytes(b"")
    assert checkpoint_of(run) == str(run / "detector.safetensors")  # the exported detector wins
    assert load_detector(step / "model.safetensors").image_size == 256
    with pytest.raises(VvkError, match=r"a model architecture, not trained weights"):
        checkpoint_of("retinanet-spinenet-49")
    with pytest.raises(VvkError, match=r"neither detector.safetensors nor a checkpoint"):
        checkpoint_of(tmp_path / "run" / "checkpoints" / "step-00000003")


def test_image_ids_from_names_or_the_ground_truth(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps({"images": [{"id": 4, "file_name": "a/x.jpg"}, {"id": 5, "file_name": "y.jpg"}]})
    )
    images = [ImageFile("d/a/x.jpg", "a/x.jpg", "d"), ImageFile("elsewhere/y.jpg", "y.jpg")]
    assert image_ids_for(images, gt=gt) == [4, 5]
    assert image_ids_for([ImageFile("000000000042.png", "000000000042.png")]) == [42]
    with pytest.raises(VvkError, match=r"x.jpg: no image id \(its file name is not a number\)"):
        image_ids_for(images)
    with pytest.raises(VvkError, match=r"gt=.*gt.json: no image file_name matches z.jpg"):
        image_ids_for([ImageFile("z.jpg", "z.jpg")], gt=gt)


def test_results_file_is_whole_or_absent(tmp_path):
    record = {
        "image": "x.jpg",
        "image_id": 1,
        "category": "cat",
        "category_id": 7,
        "score": 0.5,
        "bbox": [1, 2, 3, 4],
    }
    with results_file(tmp_path / "r.json", format="coco-results") as write:
        write([record, record])
    assert json.loads((tmp_path / "r.json").read_text()) == [coco_result(record)] * 2
    with results_file(tmp_path / "empty.json", format="coco-results"):
        pass
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    with pytest.raises(KeyboardInterrupt), results_file(tmp_path / "r.jsonl") as write:
        write([record])
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["empty.json", "r.json"]  # no half file, no temporary


def test_outputs_never_go_into_the_input(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "a.jpg").write_bytes(b"")
    images = find_images([str(photos)])
    assert drawing_path(tmp_path / "drawn", images[0]) == tmp_path / "drawn" / "sub" / "a.jpg"
    assert drawing_path("o", ImageFile("x.webp", "x.webp")) == Path("o/x.webp.jpg")
    for bad in (photos, photos / "drawn", photos / "sub"):
        with pytest.raises(VvkError, match=r"draw=.*: inside the input folder"):
            check_outputs(images, draw=bad)
    with pytest.raises(VvkError, match=r"out=.*: inside the input folder"):
        check_outputs(images, out=photos / "results.jsonl")
    single = find_images([str(photos / "sub" / "a.jpg")])
    check_outputs(single, draw=photos / "drawn", out=photos / "r.jsonl")  # beside a file given: fine
    with pytest.raises(VvkError, match=r"would replace an input image"):
        check_outputs(single, draw=photos / "sub")
    with pytest.raises(VvkError, match=r"out=.*a.jpg: is one of the input images"):
        check_outputs(single, out=photos / "sub" / "a.jpg")
