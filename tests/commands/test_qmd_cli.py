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
