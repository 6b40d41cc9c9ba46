"""`vvk detect --query/--queries` with a (2-step) query-modulated detector on the built-in example,
and `vvk eval detections --queries` on hand-written answers with a hand-computed AP."""

from __future__ import annotations

import json

import pytest
import torch

import vvk.models as models
from vvk.testing import SHORT_DETECTOR_RUN as FAST


@pytest.fixture(scope="module")
def qmd_run(example, tmp_path_factory):
    from vvk.cli import main

    run = tmp_path_factory.mktemp("qmd") / "run"
    code = main(["train", "detector", "--method", "qmd", "--data", str(example / "train"), "--steps", "2",
                 "--out", str(run), "--json", *FAST])  # fmt: skip
    assert code == 0
    return run


@pytest.fixture
def two_images(example):
    images = example / "val" / "images"
    return [str(images / "000001.jpg"), str(images / "000002.jpg")]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_each_image_is_asked_each_query(cli, qmd_run, two_images):
    result = cli("detect", *two_images, "--weights", str(qmd_run), "--query", "3", "--query", "7",
                 "--min-score", "0", "--max-dets", "1", "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    records = _lines(result.stdout)
    asked = [(two_images[0], "3"), (two_images[0], "7"), (two_images[1], "3"), (two_images[1], "7")]
    assert [(r["image"], r["query"]) for r in records] == asked
    # the query names what is found: category "3" is id 4 of the example's digits 0..9
    assert [(r["category"], r["category_id"]) for r in records] == [("3", 4), ("7", 8)] * 2
    assert all(0 <= r["score"] <= 1 and len(r["bbox"]) == 4 for r in records)


def test_a_pair_answered_with_nothing_is_still_one_line(cli, qmd_run, two_images):
    # --min-score 1 keeps nothing: every (image, query) pair is one record of nulls
    result = cli("detect", *two_images, "--weights", str(qmd_run), "--query", "3", "--query", "7",
                 "--min-score", "1", "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    records = _lines(result.stdout)
    assert [(r["image"], r["query"]) for r in records] == [(i, q) for i in two_images for q in ("3", "7")]
    assert all(r["score"] is None and r["bbox"] is None and r["category"] is None for r in records)
    assert "0 detection(s)" in result.stderr


def test_queries_file_and_drawings_labelled_by_query(cli, qmd_run, two_images, tmp_path, monkeypatch):
    import torchvision.utils

    drawn_labels = []
    original = torchvision.utils.draw_bounding_boxes

    def recording(image, boxes, labels=None, **kwargs):
        drawn_labels.append([label.split()[0] for label in labels])
        return original(image, boxes, labels=labels, **kwargs)

    monkeypatch.setattr(torchvision.utils, "draw_bounding_boxes", recording)
    queries = tmp_path / "queries.txt"
    queries.write_text("5\n\n  \n9\n")
    result = cli("detect", two_images[0], "--weights", str(qmd_run), "--query", "1", "--queries",
                 str(queries), "--min-score", "0", "--max-dets", "1", "--json", "--draw",
                 str(tmp_path / "drawn"))  # fmt: skip
    assert result.code == 0, result.stderr
    assert [r["query"] for r in _lines(result.stdout)] == ["1", "5", "9"]
    assert drawn_labels == [["1", "5", "9"]]  # one drawing of the image, each box named by its query
    assert (tmp_path / "drawn" / "000001.jpg").is_file()


def test_query_refusals_are_one_line(cli, qmd_run, two_images, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    torch.manual_seed(0)
    plain = models.save(models.build("retinanet-spinenet-mobile-tiny"), tmp_path / "r.safetensors")
    cases = [
        (["--queries", str(empty)], f"--queries {empty}: no queries in it"),
        (["--query", "3", "--query", ""], "--query '': an empty query (query 2 of 2)"),
        (["--query", "33"], "query '33': not a label of this model (close: 3"),
        (["--weights", str(plain), "--query", "3"], "takes no queries"),
        ([], "finds only what a query asks for"),  # not multitask: a query is needed
    ]
    for extra, message in cases:
        weights = [] if "--weights" in extra else ["--weights", str(qmd_run)]
        result = cli("detect", two_images[0], *weights, *extra, "--json")
        assert result.code == 1 and message in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout, result.stderr


def _ground_truth(path):
    """Three 100² images: 1 holds an "a", 2 a "b", 3 an "a"."""
    objects = [(1, 1, [10, 10, 20, 20]), (2, 2, [50, 50, 20, 20]), (3, 1, [30, 30, 40, 40])]
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": k, "image_id": image, "category_id": c, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for k, (image, c, box) in enumerate(objects, start=1)],
    }))  # fmt: skip
    return path


def test_eval_queries_scores_exactly_the_pairs_answered(cli, tmp_path):
    gt = _ground_truth(tmp_path / "gt.json")
    answers = [
        {"image_id": 1, "query": "a", "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # right
        {"image_id": 2, "query": "b", "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8},  # wrong box
        {"image_id": 1, "query": "b", "category_id": None, "bbox": None, "score": None},  # negative, none
    ]
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(answers))
    result = cli("eval", "detections", "--gt", str(gt), "--dt", str(dt), "--queries", "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    # 2 objects asked for; the 0.9 answer finds one, the 0.8 misses: precision 1 up to recall
    # 0.5, i.e. 51 of COCO's 101 recall points, at every IoU threshold
    assert record["query_AP"] == pytest.approx(51 / 101, abs=1e-6)
    assert record["query_AP50"] == pytest.approx(51 / 101, abs=1e-6)
    assert record["query_pairs"] == 3 and record["negative_pairs"] == 1
    # image 3's "a" asked and answered with nothing: one more object missed, recall up to 1/3 only
    dt.write_text(json.dumps([*answers, {"image_id": 3, "query": "a", "bbox": None, "score": None}]))
    result = cli("eval", "detections", "--gt", str(gt), "--dt", str(dt), "--queries", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["query_AP"] == pytest.approx(34 / 101, abs=1e-6)


def test_eval_queries_refuses_a_record_without_a_known_query(cli, tmp_path):
    gt = _ground_truth(tmp_path / "gt.json")
    dt = tmp_path / "dt.json"
    for records, message in [
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], "[0]: no 'query'"),
        ([{"image_id": 1, "query": "aa", "bbox": [0, 0, 1, 1], "score": 1}], "'aa' is no category"),
        ([{"image_id": 9, "query": "a", "bbox": [0, 0, 1, 1], "score": 1}], "[0].image_id: 9"),
    ]:
        dt.write_text(json.dumps(records))
        result = cli("eval", "detections", "--gt", str(gt), "--dt", str(dt), "--queries")
        assert result.code == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
