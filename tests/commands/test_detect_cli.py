"""`vvk detect` end to end on real COCO images with registered tiny detectors (random weights,
every score kept): records, stdin paths, bad files, drawings, vocabularies, a COCO results file
scored by `vvk eval detections`, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import vvk.models as models

FIRST, TALL, THIRD = "000000005802.jpg", "000000012448.jpg", "000000051191.jpg"
KEYS = ["image", "category", "category_id", "score", "bbox"]


@pytest.fixture(scope="module")
def coco(shared_data) -> Path:
    return shared_data / "coco" / "tiny_coco"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return models.save(
        models.build("retinanet-spinenet-mobile-tiny"), tmp_path_factory.mktemp("w") / "r.safetensors"
    )


@pytest.fixture
def photos(coco, tmp_path) -> Path:
    """An input folder: a.jpg and sub/b.jpg (links to real images)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").symlink_to(coco / "train2017" / FIRST)
    (folder / "sub" / "b.jpg").symlink_to(coco / "train2017" / TALL)
    return folder


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_folder_gives_json_records_in_each_images_pixels(cli, photos, weights):
    result = cli(
        "detect", str(photos), "--weights", str(weights), "--min-score", "0", "--max-dets", "3", "--json"
    )
    assert result.code == 0, result.stderr
    records = _lines(result.stdout)
    assert [r["image"] for r in records] == [str(photos / "a.jpg")] * 3 + [str(photos / "sub" / "b.jpg")] * 3
    sizes = {str(photos / "a.jpg"): (640, 479), str(photos / "sub" / "b.jpg"): (427, 640)}
    for record in records:
        assert list(record) == KEYS and isinstance(record["category"], str) and 0 <= record["score"] <= 1
        x, y, w, h = record["bbox"]
        width, height = sizes[record["image"]]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= width and y + h <= height
    assert "2 image(s), 6 detection(s)" in result.stderr and "images/s on cpu" in result.stderr
    table = cli(
        "detect", str(photos / "a.jpg"), "--weights", str(weights), "--min-score", "0", "--max-dets", "2"
    )
    assert table.code == 0 and records[0]["category"] in table.stdout and "box x,y,w,h" in table.stdout


def test_stdin_paths_with_bad_files(cli, coco, weights, tmp_path):
    good = coco / "train2017" / FIRST
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:20000])
    (tmp_path / "text.jpg").write_text("hello\n")
    (tmp_path / "folder.jpg").mkdir()
    bad = [tmp_path / n for n in ("missing.jpg", "text.jpg", "truncated.jpg", "folder.jpg")]
    paths = [good, *bad, coco / "train2017" / THIRD]
    stdin = "\n".join(map(str, paths)) + "\n"
    result = cli(
        "detect", "-", "--weights", str(weights), "--min-score", "0", "--max-dets", "2", "--json", stdin=stdin
    )
    assert result.code == 1, result.stderr
    assert {r["image"] for r in _lines(result.stdout)} == {str(good), str(coco / "train2017" / THIRD)}
    lines = [line for line in result.stderr.splitlines() if line.startswith("bad image: ")]
    assert [line.split(": ")[1] for line in lines] == [str(p) for p in bad]  # one line each, in order
    assert "truncated" in lines[2] and "a folder" in lines[3] and "not an image" in lines[1]
    assert "6 image(s) (4 could not be read), 4 detection(s)" in result.stderr


def test_draw_writes_each_image_at_its_size_and_never_into_the_input(cli, photos, weights, tmp_path):
    drawn = tmp_path / "drawn"
    args = ("detect", str(photos), "--weights", str(weights), "--min-score", "0", "--max-dets", "5")
    result = cli(*args, "--draw", str(drawn))
    assert result.code == 0, result.stderr
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.jpg")) == ["a.jpg", "sub/b.jpg"]
    for name in ("a.jpg", "sub/b.jpg"):
        with Image.open(drawn / name) as out, Image.open(photos / name) as source:
            assert out.size == source.size
            assert np.abs(np.asarray(out, dtype=np.int16) - np.asarray(source, dtype=np.int16)).max() > 100
    for inside in (photos, photos / "drawn"):
        refused = cli(*args, "--draw", str(inside))
        assert refused.code == 1 and "inside the input folder" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in photos.rglob("*")) == ["a.jpg", "b.jpg", "sub"]  # nothing written


def test_vocab_renames_or_is_refused(cli, photos, weights, tmp_path):
    args = ("detect", str(photos / "a.jpg"), "--weights", str(weights), "--min-score", "0", "--max-dets", "3")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(80)))
    renamed = cli(*args, "--vocab", str(names), "--json")
    plain = cli(*args, "--json")
    assert renamed.code == 0 == plain.code, renamed.stderr
    for new, old in zip(_lines(renamed.stdout), _lines(plain.stdout), strict=True):
        assert new["bbox"] == old["bbox"] and new["category"] == f"thing{new['category_id'] - 1}"
    coco_names = cli(*args, "--vocab", "coco", "--json")
    assert _lines(coco_names.stdout) == _lines(plain.stdout)  # the tiny detector's are COCO's
    names.write_text("cat\ndog\nbird\n")
    refused = cli(*args, "--vocab", str(names))
    assert refused.code == 1 and refused.stdout == ""
    assert (
        refused.stderr.strip() == f"vvk: error: --vocab {names}: 3 categories, but the detector predicts 80"
    )


def test_coco_results_file_scores_in_vvk_eval(cli, coco, weights, tmp_path):
    gt = coco / "annotations" / "instances_train2017.json"
    listed = "\n".join(str(coco / "train2017" / n) for n in (FIRST, TALL, THIRD))
    out = tmp_path / "dt.json"
    made = cli(
        "detect", "-", "--weights", str(weights), "--min-score", "0", "--max-dets", "5",
        "--format", "coco-results", "--out", str(out), stdin=listed,
    )  # fmt: skip
    assert made.code == 0, made.stderr
    results = json.loads(out.read_text())
    assert len(results) == 15 and {r["image_id"] for r in results} == {5802, 12448, 51191}
    assert all(list(r) == ["image_id", "category_id", "bbox", "score"] for r in results)
    by_gt = tmp_path / "dt_gt.json"  # ids looked up in the annotation file: the same
    again = cli("detect", "-", "--weights", str(weights), "--min-score", "0", "--max-dets", "5",
                "--format", "coco-results", "--out", str(by_gt), "--gt", str(gt), stdin=listed)  # fmt: skip
    assert again.code == 0 and json.loads(by_gt.read_text()) == results
    scored = cli("eval", "detections", "--gt", str(gt), "--dt", str(out), "--json")
    assert scored.code == 0, scored.stderr
    record = json.loads(scored.stdout)
    assert record["detections"] == 15 and 0.0 <= record["AP"] <= 1.0
    unnamed = tmp_path / "photo.jpg"
    shutil.copy(coco / "train2017" / FIRST, unnamed)
    refused = cli(
        "detect", str(unnamed), "--weights", str(weights), "--format", "coco-results", "--out", str(out)
    )
    assert refused.code == 1 and "no image id (its file name is not a number)" in refused.stderr
    no_file = cli("detect", str(unnamed), "--weights", str(weights), "--format", "coco-results")
    assert no_file.code == 1 and "--format coco-results is a file's format: give --out FILE" in no_file.stderr


def test_mask_model_records_carry_full_size_rles(cli, coco, tmp_path):
    torch.manual_seed(0)
    weights = models.save(models.build("maskrcnn-spinenet-tiny"), tmp_path / "m.safetensors")
    image = coco / "train2017" / TALL
    result = cli(
        "detect", str(image), "--weights", str(weights), "--min-score", "0", "--max-dets", "2", "--json"
    )
    assert result.code == 0, result.stderr
    records = _lines(result.stdout)
    assert len(records) == 2 and all(list(r) == [*KEYS, "segmentation"] for r in records)
    for record in records:
        rle = record["segmentation"]
        assert mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).shape == (640, 427)


def test_weights_run_folder_or_refusals(cli, photos, weights, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(weights.with_suffix(suffix), run / f"detector{suffix}")
    args = ("detect", str(photos / "a.jpg"), "--min-score", "0", "--max-dets", "1", "--json")
    assert _lines(cli(*args, "--weights", str(run)).stdout) == _lines(
        cli(*args, "--weights", str(weights)).stdout
    )
    random = cli(*args, "--weights", "retinanet-spinenet-49")
    assert (
        random.code == 1
        and "--weights retinanet-spinenet-49: a model architecture, not trained weights" in random.stderr
    )
    empty = cli(*args, "--weights", str(tmp_path))
    assert empty.code == 1 and "neither detector.safetensors nor a checkpoint" in empty.stderr


def test_interrupt_leaves_no_output_file(cli, photos, weights, tmp_path, monkeypatch):
    import vvk.methods.detection.predict as predict

    real, calls = predict.records_of, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "records_of", interrupted)
    out = tmp_path / "out" / "dets.jsonl"
    result = cli("detect", str(photos), "--weights", str(weights), "--min-score", "0", "--out", str(out))
    assert result.code == 130 and "interrupted" in result.stderr
    assert len(calls) == 2 and os.listdir(out.parent) == []  # neither the file nor its temporary


def test_the_command_module_does_not_import_torch():
    probe = "import sys, vvk.cli, vvk.commands.detect; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
