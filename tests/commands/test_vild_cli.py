"""ViLD end to end on the command line: `vvk detect embed-regions` on real COCO images and on the
built-in example, `vvk train detector --method ...` on the example with three digits novel,
`vvk detect --vocab` with new names and `vvk eval detections --novel`, and the refusals."""

from __future__ import annotations

import json

import torch

from vvk.data.coco import read_json
from vvk.methods.vild.teacher import StandInTeacher, save_stand_in
from vvk.testing import SHORT_DETECTOR_RUN as FAST


def _teacher(path, seed=0):
    torch.manual_seed(seed)
    return save_stand_in(StandInTeacher([str(d) for d in range(10)], dim=8, image_size=16, width=4), path)


def _gt_proposals(split, out):
    """The ground-truth boxes of a split as a COCO results file: proposals that cover the objects."""
    data = read_json(next(split.rglob("instances_*.json")) if split.is_dir() else split)
    rows = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0} for a in data["annotations"]]
    out.write_text(json.dumps(rows))
    return out


def _embed(cli, split, teacher, tmp_path, regions):
    proposals = _gt_proposals(split, tmp_path / f"{split.name}-proposals.json")
    return cli("detect", "embed-regions", "--data", str(split), "--teacher", str(teacher),
               "--proposals", str(proposals), "--out", str(regions))  # fmt: skip


def test_embed_regions_on_real_coco_images_continues_and_reports_its_speed(cli, shared_data, tmp_path):
    tiny = shared_data / "coco" / "tiny_coco"
    annotations = tiny / "annotations" / "instances_train2017.json"
    proposals = _gt_proposals(annotations, tmp_path / "p.json")
    teacher = _teacher(tmp_path / "t.safetensors")
    args = ["detect", "embed-regions", "--data", str(tiny), "--teacher", str(teacher),
            "--proposals", str(proposals), "--out", str(tmp_path / "r"), "--device", "cpu"]  # fmt: skip
    first = cli(*args, "--json")
    assert first.code == 0, first.stderr
    record = json.loads(first.stdout)
    images = len(read_json(annotations)["images"])
    boxes = len(read_json(annotations)["annotations"])
    assert record["images"] == images and record["resumed_from"] == 0 and record["regions_per_s"] > 0
    assert record["regions"] == boxes  # every ground-truth box (none of these images has 300)
    again = cli(*args)
    assert again.code == 0 and f"0 image(s) (continued after {images})" in again.stderr


def test_vild_trains_on_the_example_with_novel_digits_and_detects_new_names(cli, example, tmp_path):
    teacher = _teacher(tmp_path / "t.safetensors")
    regions = tmp_path / "regions"
    made = _embed(cli, example / "train", teacher, tmp_path, regions)
    assert made.code == 0, made.stderr
    run = tmp_path / "run"
    trained = cli("train", "detector", "--method", "vild-ensemble", "--data", str(example / "train"),
                  "--val", str(example / "val"), "--regions", str(regions), "--teacher", str(teacher),
                  "--novel", "7,8,9", "--steps", "2", "--out", str(run), "--json", *FAST)  # fmt: skip
    assert trained.code == 0, trained.stderr
    record = json.loads(trained.stdout)
    assert record["preset"]["model"] == "vild-spinenet-tiny"
    assert record["preset"]["vild"]["method"] == "vild-ensemble"
    assert {"novel_bbox_AP50", "base_bbox_AP50", "novel_segm_AP50"} <= record["evaluation"].keys()
    assert "loss_distill" in record["losses"]
    exported = json.loads((run / "detector.json").read_text())["kwargs"]
    assert [c["name"] for c in exported["categories"]] == [str(d) for d in range(10)]
    assert exported["base"] == [True] * 7 + [False] * 3 and exported["teacher"] == str(teacher)

    image = next((example / "val").rglob("*.jpg"))
    found = cli("detect", str(image), "--weights", str(run), "--vocab", "7,8", "--min-score", "0", "--json")
    assert found.code == 0, found.stderr
    names = {json.loads(line)["category"] for line in found.stdout.splitlines()}
    assert names and names <= {"7", "8"}
    unknown = cli("detect", str(image), "--weights", str(run), "--vocab", "mug")
    assert unknown.code == 1 and "the stand-in teacher does not know 'mug'" in unknown.stderr

    results, truth = tmp_path / "dt.json", str(next((example / "val").rglob("instances_*.json")))
    scored = cli("detect", str(example / "val"), "--weights", str(run), "--out", str(results),
                 "--format", "coco-results", "--gt", truth)  # fmt: skip
    assert scored.code == 0, scored.stderr
    split = cli("eval", "detections", "--gt", truth, "--dt", str(results), "--novel", "7,8,9", "--json")
    assert split.code == 0, split.stderr
    values = json.loads(split.stdout)
    assert {"novel_AP50", "base_AP50", "AP50"} <= values.keys()


def test_vild_refuses_regions_of_other_images_or_teachers_and_distilling_without_them(cli, example, tmp_path):
    teacher, other = _teacher(tmp_path / "t.safetensors"), _teacher(tmp_path / "u.safetensors", seed=1)
    regions = tmp_path / "val-regions"
    made = _embed(cli, example / "val", teacher, tmp_path, regions)
    assert made.code == 0, made.stderr
    base = ["train", "detector", "--data", str(example / "train"), "--steps", "1", "--novel", "9",
            "--out", str(tmp_path / "run"), *FAST]  # fmt: skip
    vild, from_val = ["--method", "vild", "--teacher"], ["--regions", str(regions)]
    cases = [
        ([*vild, str(teacher), *from_val], "made from another dataset"),
        ([*vild, str(other), *from_val], "embedded by teacher stand-in-"),
        (["--method", "vild-image", "--teacher", str(teacher)], "no regions were given"),
        (["--method", "vild-magic"], "vild.method"),
        ([*vild, "no-such-clip"], "--teacher no-such-clip: not a teacher vvk knows"),
        ([*vild, str(teacher), "--novel", "7,eleven"], "--novel 7,eleven: the dataset"),
    ]
    for extra, message in cases:
        result = cli(*base, *extra)
        assert result.code == 1 and message in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_without_data_the_whole_pipeline_runs_on_the_built_in_example(cli, tmp_path, monkeypatch):
    """Stand-in teacher trained, base-only proposal network trained, regions embedded, ViLD
    trained and scored on base and novel digits: every stage real, each cut short."""
    from vvk.methods.vild import demo, stand_in
    from vvk.paths import cache_dir

    monkeypatch.setattr(stand_in, "RECIPE", stand_in.StandInRecipe(steps=3, draws=1, batch_size=16))
    monkeypatch.setattr(demo, "PROPOSAL_STEPS", 1)
    monkeypatch.setattr(demo, "REGIONS_PER_IMAGE", 2)
    run = tmp_path / "run"
    result = cli("train", "detector", "--method", "vild", "--steps", "1", "--out", str(run), "--json",
                 "--set", "eval_images=8", *FAST)  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["preset"]["vild"]["novel"] == "7,8,9" and record["preset"]["vild"]["teacher"] == "stand-in"
    assert "loss_distill" in record["losses"] and "novel_bbox_AP50" in record["evaluation"]
    manifests = [
        json.loads(p.read_text()) for p in (cache_dir() / "vild").glob("demo-*/regions/regions.json")
    ]
    assert [m["max_regions"] for m in manifests if m["proposals"] == "built-in vild-text RPN"] == [2]
