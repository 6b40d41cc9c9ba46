"""`vvk eval detections`: parity with pycocotools and lvis run directly, checked inputs, ids.

Ground truth is tiny_coco's real annotations (50 images, 470 objects); results are its boxes
and masks perturbed with a fixed seed, plus false positives, so that every stat is non-trivial.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vvk.errors import VvkError
from vvk.eval.detection import (
    COCO_STATS,
    DetectionScores,
    GroundTruth,
    evaluate_detections,
    load_ground_truth,
)
from vvk.eval.detection_inputs import rle_counts

TINY = "coco/tiny_coco/annotations/instances_train2017.json"


@pytest.fixture(scope="module")
def gt_path(shared_data) -> Path:
    return shared_data / TINY


@pytest.fixture(scope="module")
def gt_data(gt_path) -> dict:
    return json.loads(gt_path.read_text())


@pytest.fixture(scope="module")
def gt_index(gt_path) -> COCO:
    with redirect_stdout(io.StringIO()):
        return COCO(str(gt_path))


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _perturbed(gt: COCO, *, seed: int, masks: bool) -> list[dict]:
    """Each object found with probability 0.9, its box jittered (or its mask shifted), a random
    score; plus 60 false positives of random categories on random images."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.1:
            continue
        record = {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "score": float(rng.random()),
        }
        if masks:
            shift = rng.integers(-4, 5, size=2)
            record["segmentation"] = _rle(np.roll(gt.annToMask(ann), tuple(shift), axis=(0, 1)))
        else:
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.08, size=4)
            record["bbox"] = [
                x + jitter[0] * w,
                y + jitter[1] * h,
                w * math.exp(jitter[2]),
                h * math.exp(jitter[3]),
            ]
        out.append(record)
    images, categories = list(gt.imgs.values()), gt.getCatIds()
    for _ in range(60):
        image = images[rng.integers(len(images))]
        record = {
            "image_id": image["id"],
            "category_id": int(rng.choice(categories)),
            "score": float(rng.random()),
        }
        x0, y0 = rng.random(2) * [image["width"] * 0.7, image["height"] * 0.7]
        w, h = rng.random(2) * [image["width"] * 0.3, image["height"] * 0.3] + 2
        if masks:
            mask = np.zeros((image["height"], image["width"]), np.uint8)
            mask[int(y0) : int(y0 + h), int(x0) : int(x0 + w)] = 1
            record["segmentation"] = _rle(mask)
        else:
            record["bbox"] = [float(x0), float(y0), float(w), float(h)]
        out.append(record)
    return out


def _pycocotools(gt_path: Path, dt_path: Path, iou_type: str) -> np.ndarray:
    with redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(dt_path)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


# --------------------------------------------------------------------------------------------
# (a) parity with pycocotools


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equals_pycocotools_stats(gt_path, gt_index, tmp_path, cli, iou_type, capsys):
    # A segm results file in COCO's own format: masks, no boxes.
    dt = _write(tmp_path / "results.json", _perturbed(gt_index, seed=7, masks=iou_type == "segm"))
    reference = _pycocotools(gt_path, dt, iou_type)
    assert 0.2 < reference[0] < 0.95 and (reference > 0).all()  # no stat trivially 0 or 1

    scores = evaluate_detections(gt_path, dt, iou_type=iou_type)
    assert capsys.readouterr().out == ""  # cocoapi's printing stays off stdout
    assert list(scores.stats) == list(COCO_STATS)
    np.testing.assert_allclose([scores[k] for k in COCO_STATS], reference, rtol=0, atol=1e-9)
    assert (scores.format, scores.images) == ("coco", 50)

    result = cli(
        "eval", "detections", "--gt", str(gt_path), "--dt", str(dt), "--iou-type", iou_type, "--json"
    )
    assert result.code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    np.testing.assert_allclose([record[k] for k in COCO_STATS], reference, rtol=0, atol=1e-9)
    assert record["detections"] == scores.detections and record["iou_type"] == iou_type


def test_mask_ap_sizes_objects_by_mask_area(gt_path, gt_index, tmp_path):
    """cocoapi takes a result's area from its box when it has one; mask AP drops the box, so
    small/medium/large mean the same for results and ground truth (detectron2's fix)."""
    masks_only = _perturbed(gt_index, seed=3, masks=True)
    with_boxes = copy.deepcopy(masks_only)
    for record in with_boxes:
        record["bbox"] = [float(v) for v in mask_utils.toBbox(record["segmentation"])]
    plain = evaluate_detections(gt_path, masks_only, iou_type="segm")
    boxed = evaluate_detections(gt_path, with_boxes, iou_type="segm")
    assert boxed.stats == plain.stats
    raw = _pycocotools(gt_path, _write(tmp_path / "boxed.json", with_boxes), "segm")
    assert not np.allclose(raw, [plain[k] for k in COCO_STATS])  # what the box area changes


def test_stdin_results_match_the_file(gt_path, gt_index, tmp_path, cli):
    results = _perturbed(gt_index, seed=1, masks=False)
    expected = evaluate_detections(gt_path, results)
    result = cli("eval", "detections", "--gt", str(gt_path), "--dt", "-", "--json", stdin=json.dumps(results))
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert {k: record[k] for k in COCO_STATS} == expected.stats
    table = cli("eval", "detections", "--gt", str(gt_path), "--dt", "-", stdin=json.dumps(results))
    assert table.code == 0 and "AP50" in table.stdout and f"{expected['AP50']:.4f}" in table.stdout
    bad = cli("eval", "detections", "--gt", str(gt_path), "--dt", "-", stdin="[{")
    assert bad.code == 1 and bad.stderr.startswith("vvk: error: <stdin>:1:")


def test_every_ground_truth_form_scores_the_same(gt_path, gt_data, gt_index, shared_data):
    from vvk.data.coco import load_coco

    results = _perturbed(gt_index, seed=2, masks=False)
    before = copy.deepcopy(results)
    expected = evaluate_detections(gt_path, results).stats
    dataset = load_coco(gt_path, shared_data / "coco/tiny_coco/train2017")
    for form in (str(gt_path), dataset, copy.deepcopy(gt_data), gt_index, load_ground_truth(gt_path)):
        assert evaluate_detections(form, results).stats == expected, type(form)
    assert results == before  # the caller's records are never annotated by cocoapi
    numpy_records = [
        {**r, "image_id": np.int64(r["image_id"]), "score": np.float32(r["score"])} for r in results
    ]
    assert evaluate_detections(gt_path, numpy_records).stats["AP"] == pytest.approx(expected["AP"], abs=1e-6)


# --------------------------------------------------------------------------------------------
# (b) LVIS


@pytest.fixture(scope="module")
def lvis_files(gt_data, gt_index, tmp_path_factory):
    """tiny_coco as an LVIS file: crowds dropped, frequency bins by image count (scaled to 50
    images: r 1, c 2-4, f 5+), negative and not-exhaustive lists per image; and results."""
    rng = np.random.default_rng(0)
    data = copy.deepcopy(gt_data)
    data["annotations"] = [a for a in data["annotations"] if not a["iscrowd"]]
    for a in data["annotations"]:
        del a["iscrowd"]
    present: dict[int, set[int]] = {im["id"]: set() for im in data["images"]}
    for a in data["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    counts = {c["id"]: sum(c["id"] in cats for cats in present.values()) for c in data["categories"]}
    for c in data["categories"]:
        c["frequency"] = "f" if counts[c["id"]] >= 5 else "c" if counts[c["id"]] >= 2 else "r"
    all_ids = [c["id"] for c in data["categories"]]
    for im in data["images"]:
        absent = [c for c in all_ids if c not in present[im["id"]]]
        im["neg_category_ids"] = [int(c) for c in rng.choice(absent, size=8, replace=False)]
        im["not_exhaustive_category_ids"] = [c for c in sorted(present[im["id"]]) if rng.random() < 0.3]
    folder = tmp_path_factory.mktemp("lvis")
    results = {
        "bbox": _perturbed(gt_index, seed=11, masks=False),
        "segm": _perturbed(gt_index, seed=12, masks=True),
    }
    return _write(folder / "lvis.json", data), {
        k: _write(folder / f"{k}.json", v) for k, v in results.items()
    }


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")  # lvis, run directly
def test_lvis_equals_lvis_eval(lvis_files, iou_type, monkeypatch, cli):
    from lvis import LVISEval

    gt, dts = lvis_files
    with monkeypatch.context() as m:  # lvis 0.5.3 needs np.float, gone since NumPy 1.24
        m.setattr(np, "float", float, raising=False)
        reference = LVISEval(str(gt), str(dts[iou_type]), iou_type)
        reference.run()
    expected = {
        "AP": reference.results["AP"], "APr": reference.results["APr"], "APc": reference.results["APc"],
        "APf": reference.results["APf"], "AP50": reference.results["AP50"], "APs": reference.results["APs"],
        "AR300": reference.results["AR@300"], "ARl": reference.results["ARl@300"],
    }  # fmt: skip
    assert all(v > 0 for v in expected.values())

    scores = evaluate_detections(gt, dts[iou_type], iou_type=iou_type)
    assert scores.format == "lvis" and "float" not in np.__dict__  # the alias is gone again
    assert len(scores.stats) == 13
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-9), name

    result = cli(
        "eval", "detections", "--gt", str(gt), "--dt", str(dts[iou_type]), "--iou-type", iou_type, "--json"
    )
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["format"] == "lvis" and record["APr"] == pytest.approx(expected["APr"], abs=1e-9)


def test_lvis_empty_results_score_zero(lvis_files):
    gt, _ = lvis_files
    scores = evaluate_detections(gt, [])
    assert scores.detections == 0 and scores["AP"] == 0.0 and scores["APr"] == 0.0


# --------------------------------------------------------------------------------------------
# (d) perfect results: a check that ids are not mis-mapped anywhere


def _perfect(gt: COCO, *, masks: bool, limit: int | None = None) -> list[dict]:
    out = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        if limit is not None and len(out) == limit:
            break
        record = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
        if masks:
            record["segmentation"] = _rle(gt.annToMask(ann))
        else:
            record["bbox"] = list(ann["bbox"])
        out.append(record)
    return out


@pytest.mark.parametrize("masks", [False, True], ids=["bbox", "segm"])
def test_ground_truth_as_results_scores_one(gt_path, gt_index, masks):
    iou_type = "segm" if masks else "bbox"
    perfect = _perfect(gt_index, masks=masks)
    scores = evaluate_detections(gt_path, perfect[::-1], iou_type=iou_type)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert scores[name] == 1.0, name
    assert len(scores.per_category) == 49  # tiny_coco has objects of 49 of its 80 categories
    assert min(scores.per_category.values()) == pytest.approx(1.0, abs=1e-12)

    # Every category id moved to the next one in the file: the same boxes, all wrong.
    ids = sorted(gt_index.getCatIds())
    shifted = [{**r, "category_id": ids[(ids.index(r["category_id"]) + 1) % len(ids)]} for r in perfect]
    assert evaluate_detections(gt_path, shifted, iou_type=iou_type)["AP"] < 0.05


def test_image_and_category_subsets(gt_path, gt_index):
    perfect = _perfect(gt_index, masks=False)
    some = sorted(gt_index.getImgIds())[:10]
    on_some = [r for r in perfect if r["image_id"] in some]
    assert evaluate_detections(gt_path, on_some)["AP"] < 0.5  # the other 40 images' objects missed
    scores = evaluate_detections(gt_path, on_some, image_ids=some)
    assert scores["AP"] == 1.0 and scores.images == 10
    people = [r for r in perfect if r["category_id"] == 1]
    assert evaluate_detections(gt_path, people, category_ids=[1])["AP"] == 1.0
    with pytest.raises(VvkError, match="image_ids: 7 is not an image of"):
        evaluate_detections(gt_path, perfect, image_ids=[7])


def test_per_category_ap_averages_to_ap(gt_path, gt_index):
    scores = evaluate_detections(gt_path, _perturbed(gt_index, seed=5, masks=False))
    assert len(scores.per_category) == 49  # tiny_coco has objects of 49 of its 80 categories
    assert np.mean(list(scores.per_category.values())) == pytest.approx(scores["AP"], abs=1e-12)
    assert isinstance(scores, DetectionScores) and scores.as_dict()["AP"] == scores["AP"]


def test_empty_results_are_zero_not_a_crash(gt_path, cli, tmp_path):
    scores = evaluate_detections(gt_path, [])
    assert scores.stats == dict.fromkeys(COCO_STATS, 0.0) and scores.detections == 0
    result = cli(
        "eval", "detections", "--gt", str(gt_path), "--dt", str(_write(tmp_path / "e.json", [])), "--json"
    )
    assert result.code == 0 and json.loads(result.stdout)["AP"] == 0.0


# --------------------------------------------------------------------------------------------
# (c) bad results and bad ground truth: one line naming the file, the record and the field


def _set(key, value):
    def change(records):
        records[2][key] = value
        return records

    return change


def _box(index, value):
    def change(records):
        records[2]["bbox"][index] = value
        return records

    return change


def _drop(key):
    def change(records):
        del records[2][key]
        return records

    return change


def _mask(size=None, counts=None):
    def change(records):
        height, width = records[2]["_size"]
        rle = {"size": size or [height, width], "counts": counts}
        records[2]["segmentation"] = rle
        return records

    return change


BAD_RESULTS = [
    ("object", lambda r: {"annotations": r}, "bbox", "expected a JSON list of detections, got an object"),
    ("image", _set("image_id", 12345), "bbox", "record 2: image_id 12345 is not an image of"),
    ("category", _set("category_id", 999), "bbox", "record 2: category_id 999 is not a category of"),
    ("string-image", _set("image_id", "391895"), "bbox", 'record 2: image_id "391895" is a string'),
    ("string-category", _set("category_id", "1"), "bbox", 'record 2: category_id "1" is a string'),
    ("negative-w", _box(2, -5.0), "bbox", "record 2: bbox width -5 is negative"),
    ("nan-h", _box(3, float("nan")), "bbox", "record 2: bbox height is nan"),
    ("inf-w", _box(2, float("inf")), "bbox", "record 2: bbox width is inf"),
    ("nan-x", _box(0, float("nan")), "bbox", "record 2: bbox x is nan"),
    ("short-box", _set("bbox", [1, 2, 3]), "bbox", "record 2: bbox: expected [x, y, width, height]"),
    ("nan-score", _set("score", float("nan")), "bbox", "record 2: score is nan"),
    ("inf-score", _set("score", float("-inf")), "bbox", "record 2: score is -inf"),
    ("text-score", _set("score", "high"), "bbox", "record 2: score: expected a number"),
    ("no-score", _drop("score"), "bbox", "record 2: missing field 'score'"),
    ("no-image", _drop("image_id"), "bbox", "record 2: missing field 'image_id'"),
    ("no-box", _drop("bbox"), "bbox", "record 2: missing field 'bbox'"),
    ("not-object", lambda r: r[:2] + [[1, 2]] + r[3:], "bbox", "record 2: expected an object"),
    ("segm-no-mask", _drop("segmentation"), "segm", "record 2: missing field 'segmentation'"),
    ("mask-size", _mask(size=[10, 10], counts="0"), "segm", "record 2: segmentation: RLE size [10, 10]"),
    # Runs that cover more than the image: pycocotools' mask.iou never returns on these.
    ("mask-runs", _mask(counts=[5, 10**7]), "segm", "record 2: segmentation: RLE counts cover 10000005"),
    ("mask-string", _mask(counts="1`"), "segm", "record 2: segmentation: RLE counts: malformed"),
]


@pytest.mark.parametrize("case,change,iou_type,expected", BAD_RESULTS, ids=[c[0] for c in BAD_RESULTS])
def test_bad_results_are_one_line_naming_the_record(
    gt_path, gt_index, tmp_path, cli, case, change, iou_type, expected
):
    records = _perfect(gt_index, masks=iou_type == "segm", limit=5)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt_index.dataset["images"]}
    records[2]["_size"] = sizes[records[2]["image_id"]]
    records = change(records)
    if isinstance(records, list) and isinstance(records[2], dict):
        records[2].pop("_size", None)
    dt = tmp_path / "results.json"
    dt.write_text(json.dumps(records))  # NaN and Infinity as Python's json writes them
    with pytest.raises(VvkError) as error:
        evaluate_detections(gt_path, dt, iou_type=iou_type)
    assert str(error.value).startswith(f"{dt}: ") and expected in str(error.value)

    result = cli("eval", "detections", "--gt", str(gt_path), "--dt", str(dt), "--iou-type", iou_type)
    assert result.code == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and expected in result.stderr and str(dt) in result.stderr


def test_in_memory_results_are_named_as_given(gt_path):
    with pytest.raises(VvkError, match=r"^results: record 0: category_id 999 is not a category of "):
        evaluate_detections(
            gt_path, [{"image_id": 391895, "category_id": 999, "bbox": [0, 0, 1, 1], "score": 1}]
        )
    with pytest.raises(VvkError, match=r"^val: record 0: missing field"):
        evaluate_detections(gt_path, [{}], results_name="val")


def test_zero_size_box_is_a_false_positive(gt_path, gt_index):
    """A box clipped to zero width at the border is scored (it matches nothing), not refused."""
    perfect = _perfect(gt_index, masks=False)
    extra = {"image_id": perfect[0]["image_id"], "category_id": perfect[0]["category_id"], "score": 2.0}
    scores = evaluate_detections(gt_path, [*perfect, {**extra, "bbox": [10, 10, 0, 5]}])
    assert 0.9 < scores["AP"] < 1.0


def _gt_edit(part, index, edit):
    def change(data):
        edit(data[part][index])
        return data

    return change


BAD_GROUND_TRUTH = [
    ("top-list", lambda d: d["annotations"], "expected a JSON object at the top level"),
    (
        "no-images",
        lambda d: {k: v for k, v in d.items() if k != "images"},
        "missing top-level field 'images'",
    ),
    ("no-height", _gt_edit("images", 3, lambda im: im.pop("height")), "images[3]: missing field 'height'"),
    ("no-area", _gt_edit("annotations", 4, lambda a: a.pop("area")), "annotations[4]: missing field 'area'"),
    ("id-zero", _gt_edit("annotations", 4, lambda a: a.update(id=0)), "annotations[4]: id 0: annotation ids"),
    (
        "no-iscrowd",
        _gt_edit("annotations", 4, lambda a: a.pop("iscrowd")),
        "annotations[4]: iscrowd: expected",
    ),
    (
        "nan-box",
        _gt_edit("annotations", 4, lambda a: a["bbox"].__setitem__(2, float("nan"))),
        "annotations[4]: bbox width is nan",
    ),
    (
        "string-id",
        _gt_edit("images", 0, lambda im: im.update(id="391895")),
        'images[0]: id "391895" is a string',
    ),
    (
        "half-lvis",
        _gt_edit("categories", 0, lambda c: c.update(frequency="f")),
        "images[0]: neg_category_ids: expected a list of category ids (an LVIS file",
    ),
]


@pytest.mark.parametrize("case,change,expected", BAD_GROUND_TRUTH, ids=[c[0] for c in BAD_GROUND_TRUTH])
def test_bad_ground_truth_is_one_line_naming_the_file(gt_data, tmp_path, cli, case, change, expected):
    gt = _write(tmp_path / "instances.json", change(copy.deepcopy(gt_data)))
    with pytest.raises(VvkError, match=f"^{re.escape(str(gt))}: .*{re.escape(expected)}"):
        evaluate_detections(gt, [])
    result = cli("eval", "detections", "--gt", str(gt), "--dt", str(_write(tmp_path / "r.json", [])))
    assert result.code == 1 and result.stderr.count("\n") == 1 and expected in result.stderr


def test_malformed_files_name_the_file(tmp_path, gt_path):
    broken = tmp_path / "instances.json"
    broken.write_text('{"images": [')
    with pytest.raises(VvkError, match=r"instances.json:1:\d+: malformed JSON"):
        evaluate_detections(broken, [])
    with pytest.raises(VvkError, match="ground_truth: expected an instances file"):
        evaluate_detections(42, [])
    with pytest.raises(VvkError, match="iou_type=keypoints: expected bbox or segm"):
        evaluate_detections(gt_path, [], iou_type="keypoints")


def test_bad_ground_truth_mask_is_found_before_mask_evaluation(gt_data, tmp_path):
    data = copy.deepcopy(gt_data)
    data["annotations"][6]["segmentation"] = [[1, 2, 3, 4]]  # pycocotools would read it as a box
    gt = load_ground_truth(_write(tmp_path / "instances.json", data))
    assert isinstance(gt, GroundTruth) and evaluate_detections(gt, []).format == "coco"  # boxes: fine
    with pytest.raises(VvkError, match=r"annotations\[6\]: segmentation: expected polygons"):
        evaluate_detections(gt, [], iou_type="segm")


# --------------------------------------------------------------------------------------------
# RLE strings


def test_rle_counts_decodes_what_pycocotools_encodes():
    rng = np.random.default_rng(0)
    for _ in range(100):
        height, width = rng.integers(1, 50, size=2)
        mask = rng.random((height, width)) < rng.random()
        flat = mask.T.reshape(-1)  # RLE runs go down columns, starting with a run of zeros
        changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        edges = np.concatenate(([0], changes, [flat.size]))
        expected = np.diff(edges).tolist()
        if flat[0]:
            expected = [0, *expected]
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        assert rle_counts(counts).tolist() == expected
        assert rle_counts(counts.decode()).tolist() == expected
    assert rle_counts("1`") is None and rle_counts("") is None and rle_counts("é") is None
