"""`vvk train detector --method qmd` end to end on the built-in example: queries synthesised from
its annotations, query-conditioned AP on its val split, and the one-line refusals."""

from __future__ import annotations

import json

from vvk.testing import SHORT_DETECTOR_RUN as FAST


def _train(cli, example, run, *extra):
    return cli("train", "detector", "--method", "qmd", "--data", str(example / "train"), "--val",
               str(example / "val"), "--steps", "2", "--out", str(run), "--json", *FAST, *extra)  # fmt: skip


def test_qmd_trains_on_queries_and_reports_query_ap(cli, example, tmp_path, monkeypatch):
    from vvk.methods.qmd import train

    seeds = []

    class Recorded(train.QuerySchedule):
        def __init__(self, *args, seed, **kwargs):
            seeds.append(seed)
            super().__init__(*args, seed=seed, **kwargs)

    monkeypatch.setattr(train, "QuerySchedule", Recorded)
    run = tmp_path / "run"
    result = _train(cli, example, run, "--set", "qmd.negative_ratio=0.5", "--set", "qmd.modulation=product",
                    "--set", "train.seed=3")  # fmt: skip
    assert result.code == 0, result.stderr
    assert seeds == [3]  # the queries follow the run's seed
    record = json.loads(result.stdout)
    assert record["preset"]["model"] == "qmd-spinenet-mobile-tiny"
    assert (
        record["preset"]["qmd"]["negative_ratio"] == 0.5
        and record["preset"]["qmd"]["modulation"] == "product"
    )
    scores = record["evaluation"]
    assert 0 <= scores["query_AP50"] <= 1 and "query_AP" in scores and scores["images"] == 4
    assert scores["query_pairs"] > scores["negative_pairs"] == 4  # one negative per val image
    assert "bbox_AP50" not in scores  # not multitask: no detection without a query
    exported = json.loads((run / "detector.json").read_text())["kwargs"]
    assert exported["modulation"] == "product" and exported["multitask"] is False
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("hook") == "val" and "query_AP50" in line for line in lines)


def test_multitask_qmd_is_also_scored_without_queries(cli, example, tmp_path):
    result = _train(cli, example, tmp_path / "run", "--multitask")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    # its standard head learns from the unqueried images only: --multitask leaves some
    assert record["preset"]["qmd"]["multitask"] is True and record["preset"]["qmd"]["none_ratio"] == 0.3
    assert {"query_AP50", "bbox_AP50", "bbox_AP"} <= record["evaluation"].keys()


def test_qmd_refusals_are_one_line_and_write_nothing(cli, example, tmp_path):
    cases = [
        (["--set", "qmd.modulation=sum"], "qmd.modulation"),
        (["--set", "qmd.none_ratio=0.2"], "> 0 with multitask"),
        (["--multitask", "--set", "qmd.none_ratio=0"], "> 0 with multitask"),
        (["--set", "qmd.negative_ratio=-1"], "qmd.negative_ratio"),
        (["--model", "retinanet-spinenet-mobile-tiny"], "trains a qmd-* detector"),
    ]
    for extra, message in cases:
        result = _train(cli, example, tmp_path / "run", *extra)
        assert result.code == 1 and message in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_without_data_qmd_trains_on_the_built_in_example(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "detector", "--method", "qmd", "--steps", "2", "--out", str(run), "--json",
                 "--set", "eval_images=4", *FAST)  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["preset"]["qmd"] is not None and record["preset"]["flip_prob"] == 0
    assert 0 <= record["evaluation"]["query_AP50"] <= 1


def test_text_queries_train_through_a_teacher_and_answer_free_text(cli, example, tmp_path):
    """--query-encoder TEACHER: the queries are texts the teacher embeds (a stand-in's table
    here, which can hold any phrase; a CLIP embeds every phrase), each image asking several."""
    from vvk.data.detection import open_coco
    from vvk.methods.vild.teacher import StandInTeacher, save_stand_in

    names = [c["name"] for c in open_coco(example / "train").categories]
    teacher = save_stand_in(
        StandInTeacher([*names, "red mug"], dim=8, image_size=8, width=4), tmp_path / "t.safetensors"
    )
    run = tmp_path / "run"
    result = _train(cli, example, run, "--query-encoder", str(teacher), "--set", "qmd.queries_per_image=3")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["preset"]["qmd"]["query_encoder"] == str(teacher)
    exported = json.loads((run / "detector.json").read_text())["kwargs"]
    assert (exported["query_encoder"], exported["teacher"], exported["teacher_dim"]) == (
        "text",
        str(teacher),
        8,
    )
    image = str(next((example / "val" / "images").iterdir()))
    asked = cli("detect", image, "--weights", str(run), "--query", "red mug", "--query", names[0], "--json")
    assert asked.code == 0, asked.stderr
    assert {json.loads(line)["query"] for line in asked.stdout.splitlines()} == {"red mug", names[0]}
    unknown = cli("detect", image, "--weights", str(run), "--query", "zebra", "--json")
    assert unknown.code == 1 and "does not know 'zebra'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr


def test_a_teacher_that_cannot_embed_a_category_is_refused_before_training(cli, example, tmp_path):
    from vvk.data.detection import open_coco
    from vvk.methods.vild.teacher import StandInTeacher, save_stand_in

    names = [c["name"] for c in open_coco(example / "train").categories]
    teacher = save_stand_in(
        StandInTeacher(names[1:], dim=8, image_size=8, width=4), tmp_path / "t.safetensors"
    )
    result = _train(cli, example, tmp_path / "run", "--query-encoder", str(teacher))
    assert result.code == 1 and f"does not know '{names[0]}'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()
    missing = _train(cli, example, tmp_path / "run", "--query-encoder", str(tmp_path / "none.safetensors"))
    assert missing.code == 1 and "no such file" in missing.stderr and not (tmp_path / "run").exists()
