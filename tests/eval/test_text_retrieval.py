"""Zero-shot text-video retrieval: rank metrics by hand (ties against the model), the VATT
towers it embeds with, loading runs, and the command end to end on a tiny action example set
with a few-step VATT run and at random initialisation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vvk.data.samplers import Caption
from vvk.errors import VvkError
from vvk.eval.text_retrieval import _captions_of, match_ranks, rank_metrics, text_video_metrics
from vvk.examples.synthetic import SyntheticSpec, synthesize
from vvk.methods.pretrain import pretrain
from vvk.methods.vatt import PRESETS
from vvk.methods.vatt.retrieval import VideoTextTower, embed_texts, load_vatt, random_vatt, vatt_preset_for
from vvk.models.backbones.vatt_text import tokenize


def test_ranks_count_ties_against_the_model():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.2, 0.7], [0.3, 0.3, 0.3]])
    # Query 0 is first; query 1 ties with item 0 and is beaten by item 2; query 2 ties with all.
    assert match_ranks(similarity, torch.eye(3, dtype=torch.bool)).tolist() == [1, 3, 3]
    # With two matches the better one counts: 0.8 is beaten only by 0.9.
    several = torch.tensor([[False, True, True, False]])
    assert match_ranks(torch.tensor([[0.1, 0.8, 0.6, 0.9]]), several).tolist() == [2]
    with pytest.raises(ValueError, match="at least one match"):
        match_ranks(similarity, torch.zeros(3, 3, dtype=torch.bool))


def test_rank_metrics_and_median_of_an_even_count():
    metrics = rank_metrics(torch.tensor([1, 3, 3, 2]), ks=(1, 2, 10))
    assert metrics == {"recall@1": 0.25, "recall@2": 0.5, "recall@10": 1.0, "median_rank": 2.5}
    assert rank_metrics(torch.tensor([4, 1, 9]), ks=(1,))["median_rank"] == 4.0


def test_both_directions_by_hand():
    # 4 captions of 3 videos: captions 0, 1 describe video 0, captions 2, 3 video 1; video 2 has none.
    similarity = torch.tensor([[0.9, 0.1, 0.95], [0.5, 0.4, 0.1], [0.3, 0.6, 0.6], [0.7, 0.2, 0.1]])  # (C, V)
    metrics = text_video_metrics(similarity, torch.tensor([0, 0, 1, 1]), ks=(1, 2))
    # text -> video ranks: 2 (video 2 beats), 1, 2 (tie with video 2), 2 (video 0 beats).
    # video -> text: video 0's best caption (0.9) and video 1's (0.6) are both first; the
    # uncaptioned video 2 asks nothing.
    assert metrics == {
        "t2v_recall@1": 0.25, "t2v_recall@2": 1.0, "t2v_median_rank": 2.0,
        "v2t_recall@1": 1.0, "v2t_recall@2": 1.0, "v2t_median_rank": 1.0,
    }  # fmt: skip
    # Collapsed embeddings rank every match last (optimistic ties would say recall@1 = 1).
    flat = text_video_metrics(torch.full((5, 5), 0.5), torch.arange(5), ks=(1,))
    assert flat["t2v_recall@1"] == 0 and flat["t2v_median_rank"] == 5 and flat["v2t_median_rank"] == 5


def test_captions_pair_with_their_videos_by_id():
    table = {
        "b": [Caption("two", 0, 1), Caption(" ", 1, 2)],  # an empty caption is dropped
        "elsewhere": [Caption("not in the data", 0, 1)],
        "a": [Caption("one", 0, 1)],
    }
    texts, owner = _captions_of(table, ["a", "b", "c"], "videos/", "c.tsv")
    assert list(zip(texts, owner.tolist(), strict=True)) == [("two", 1), ("one", 0)]
    with pytest.raises(VvkError) as e:
        _captions_of({"x": [Caption("t", 0, 1)]}, ["a", "b"], "v/", "c.tsv")
    assert e.value.message == "captions=c.tsv: no caption of any of the 2 videos of data=v/"
    assert e.value.params == ("captions", "data") and "e.g. a" in e.value.hint
    with pytest.raises(VvkError, match="several videos are named a"):
        _captions_of(table, ["a", "a"], "v/", "c.tsv")


@pytest.mark.parametrize("shared", [False, True])
def test_towers_give_the_fac_heads_video_text_embeddings(shared):
    preset = vatt_preset_for("vatt-ut-tiny" if shared else "vatt-video-tiny")
    assert preset.shared_backbone is shared and preset.backbone == "vatt-video-tiny"
    model = random_vatt(preset, seed=3)
    video = torch.rand(2, 3, preset.frames, preset.crop, preset.crop) * 2 - 1
    texts = ["a cat moves up", "the camera zooms in"]
    audio = torch.zeros(2, 12800)
    with torch.no_grad():
        z = model.head(*model.encode(video, audio, tokenize(texts, context_length=preset.words_per_caption)))
        torch.testing.assert_close(VideoTextTower(model)(video)["pooled"], z.video_to_text)
    torch.testing.assert_close(embed_texts(model, texts, batch_size=1), F.normalize(z.text_to_video, dim=-1))
    # Seeded: the same seed builds the same weights, another seed others.
    again, other = random_vatt(preset, seed=3), random_vatt(preset, seed=4)
    name, weight = next(iter(model.state_dict().items()))
    assert torch.equal(again.state_dict()[name], weight) and not torch.equal(other.state_dict()[name], weight)


def test_backbone_names_a_vatt_preset():
    assert vatt_preset_for("vatt-video-medium") == PRESETS["paper"]
    with pytest.raises(VvkError, match=r"backbone=r3d-tiny: not the video transformer of a VATT preset") as e:
        vatt_preset_for("r3d-tiny")
    assert "vatt-ut-tiny" in e.value.hint and "vatt-video-tiny" in e.value.hint


def test_weights_must_be_a_vatt_run(tmp_path):
    other = tmp_path / "constcl-run"
    other.mkdir()
    (other / "preset.json").write_text(json.dumps({"method": "constcl", "preset": "tiny", "resolved": {}}))
    with pytest.raises(VvkError, match=r"a constcl run, not a VATT run; text retrieval needs a vvk pretrain"):
        load_vatt(other)
    unfinished = tmp_path / "vatt-run"
    unfinished.mkdir()
    (unfinished / "preset.json").write_text(json.dumps({"method": "vatt", "preset": "tiny", "resolved": {}}))
    with pytest.raises(VvkError, match="the run has no checkpoint yet"):
        load_vatt(unfinished)
    with pytest.raises(VvkError, match="not a pretrain run folder"):
        load_vatt(unfinished / "preset.json")
    with pytest.raises(VvkError, match="give weights=RUN"):
        load_vatt(unfinished, backbone="vatt-video-tiny")


@pytest.fixture(scope="module")
def vatt_run(tmp_path_factory):
    """A tiny action set (4 train, 4 val videos) and a 4-step VATT run on its train split."""
    root = synthesize(
        tmp_path_factory.mktemp("set") / "actions",
        SyntheticSpec(videos_per_class=2, frames=16, size=48, actions=True),
    )
    run = tmp_path_factory.mktemp("runs") / "vatt"
    pretrain(
        "vatt", data=root / "train.csv", preset="tiny", steps=4, batch_size=4, out=run,
        captions=root / "captions.tsv", progress=False,
    )  # fmt: skip
    return root, run


def test_loads_the_runs_latest_checkpoint(vatt_run):
    _, run = vatt_run
    model, preset, source = load_vatt(run)
    assert source == str(run) and preset.captions is not None and not model.training
    saved = load_file(str(run / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    start = random_vatt(preset, seed=0).state_dict()  # what the run started from
    assert not torch.equal(start["head.text_to_vat.weight"], saved["head.text_to_vat.weight"])


def test_command_end_to_end_with_random_baselines(cli, vatt_run):
    root, run = vatt_run
    args = ["eval", "text-retrieval", "--data", f"{root}/val.csv", "--captions", f"{root}/captions.tsv"]
    result = cli(*args, "--weights", str(run), "--compare-random", "--num-clips", "2", "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    counts = [record[k] for k in ("videos", "captions", "captioned_videos", "skipped")]
    assert counts == [4, 4, 4, 0]
    assert record["clips"] == {"frames": 8, "stride": 1, "size": 40, "crop": 32, "fps": 10.0, "num_clips": 2}
    for prefix in ("", "random_"):
        for side in ("t2v", "v2t"):
            recalls = [record[f"{prefix}{side}_recall@{k}"] for k in (1, 5, 10)]
            assert recalls[1] == recalls[2] == 1.0  # 4 videos: every match is in the top 5
            assert recalls[0] in (0, 0.25, 0.5, 0.75, 1.0)
            assert 1 <= record[f"{prefix}{side}_median_rank"] <= 4
    # --backbone builds the run's preset at the same seed: the same numbers as --compare-random.
    baseline = cli(*args, "--backbone", "vatt-video-tiny", "--num-clips", "2", "--json")
    assert baseline.code == 0, baseline.stderr
    random_record = json.loads(baseline.stdout)
    assert random_record["weights"] == "random:vatt-video-tiny"
    metrics = [k for k in random_record if k.startswith(("t2v_", "v2t_"))]
    assert {k: random_record[k] for k in metrics} == {k: record[f"random_{k}"] for k in metrics}
    assert all(math.isfinite(random_record[k]) for k in metrics)


def test_command_refuses_captions_of_other_videos_and_other_runs(cli, vatt_run, tmp_path):
    root, run = vatt_run
    strangers = tmp_path / "captions.tsv"
    strangers.write_text("video_id\tstart\tend\tcaption\nnobody\t0\t1\ta cat grows\n")
    result = cli("eval", "text-retrieval", "--data", str(root / "val.csv"), "--captions", str(strangers),
                 "--weights", str(run))  # fmt: skip
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1
    expected = f"vvk: error: --captions {strangers}: no caption of any of the 4 videos of --data"
    assert result.stderr.startswith(expected)
    other = tmp_path / "cvrl-run"
    other.mkdir()
    (other / "preset.json").write_text(json.dumps({"method": "cvrl", "preset": "tiny", "resolved": {}}))
    result = cli("eval", "text-retrieval", "--data", str(root), "--captions", str(root / "captions.tsv"),
                 "--weights", str(other))  # fmt: skip
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1
    assert f"--weights {other}: a cvrl run, not a VATT run" in result.stderr
