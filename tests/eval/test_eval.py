"""Evaluation protocols: retrieval maths, linear probe, and both commands on real videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vvk.errors import VvkError
from vvk.eval.features import ClipReader, ClipSpec, clip_spec_for, embedding, load_backbone
from vvk.eval.linear_probe import linear_probe, stratified_split, topk_accuracy
from vvk.eval.retrieval import recall_at_k, retrieval
from vvk.examples.synthetic import write_mp4

TINY = ClipSpec(frames=4, stride=2, size=40, crop=32)


def test_recall_at_k_counts_rank_of_own_item():
    q = F.normalize(torch.eye(4), dim=1)
    g = q[[0, 2, 1, 3]]  # videos 1 and 2 swapped in the gallery
    assert recall_at_k(q, q, (1,)) == {1: 1.0}
    # Queries 1 and 2 find the other's clip first and their own second.
    assert recall_at_k(q, g, (1, 2)) == {1: 0.5, 2: 1.0}


def test_topk_and_split():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    assert topk_accuracy(logits, torch.tensor([1, 1, 0]), (1, 2)) == pytest.approx({1: 1 / 3, 2: 2 / 3})
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    train, val = stratified_split(labels, 0.5, seed=0)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(7))
    assert sorted(labels[val].tolist()) == [0, 0, 1]  # half of each class; a singleton stays in train


def test_embedding_prefers_aggregation_token_then_res5():
    x = torch.randn(2, 5, 3, 4, 4)
    assert embedding({"pooled": torch.ones(2, 7), "res5": x}).shape == (2, 7)
    torch.testing.assert_close(
        embedding({"res4": torch.zeros(2, 1), "res5": x, "res5_1": -x}), x.flatten(2).mean(2)
    )


def test_clip_spec_from_given_then_preset_then_defaults():
    info = {"preset": {"frames": 8, "size": 64, "crop": 48, "backbone": "r3d-tiny"}}
    assert clip_spec_for(info, frames=None, stride=None, size=96, crop=None) == ClipSpec(8, 2, 96, 48)
    assert clip_spec_for({}, frames=None) == ClipSpec()


def test_backbone_choice_errors():
    with pytest.raises(VvkError, match="give weights=PATH .* or backbone=NAME"):  # the library's names
        load_backbone()
    with pytest.raises(VvkError, match="not both"):
        load_backbone("x", backbone="r3d-tiny")


def _colour_videos(root, per_class=3):
    """Two classes a linear probe must separate even on random features: red vs blue, faint noise."""
    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            video = rng.integers(0, 30, size=(12, 40, 40, 3), dtype=np.uint8)
            video[..., channel] += 200
            write_mp4(root / label / f"{label}{i}.mp4", video, fps=6)
    return root


def test_linear_probe_separates_separable_classes(tmp_path):
    data = _colour_videos(tmp_path / "colours")
    backbone, _ = load_backbone(backbone="r3d-tiny")
    result = linear_probe(backbone, data, reader=ClipReader(TINY, cache_dir=tmp_path / "cache"), num_clips=2)
    assert result["top1"] == 1.0 and result["val_videos"] == 4 and result["train_videos"] == 2
    assert result["classes"] == 2


def test_retrieval_on_real_videos_is_reproducible(shared_data, tmp_path):
    backbone, _ = load_backbone(backbone="r3d-tiny")
    kwargs = dict(reader=ClipReader(TINY, cache_dir=tmp_path), seed=3)
    first = retrieval(backbone, shared_data / "video" / "ucf24", **kwargs)
    again = retrieval(backbone, shared_data / "video" / "ucf24", **kwargs)
    assert first == again
    assert first["videos"] == 9 and 0.0 <= first["recall@1"] <= first["recall@5"] <= 1.0
    assert first["chance@1"] == pytest.approx(1 / 9)


def test_eval_commands_on_real_videos(cli, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    videos = shared_data / "video"
    common = ["--backbone", "r3d-tiny", "--frames", "4", "--size", "40", "--crop", "32", "--json"]
    result = cli("eval", "retrieval", "--data", str(videos), *common)
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    # 16 decodable videos; test.wav (audio only) is skipped and counted.
    assert record["videos"] == 16 and record["skipped"] == 1 and record["weights"] == "random:r3d-tiny"
    probe = cli("eval", "linear-probe", "--data", str(videos), *common)
    assert probe.code == 0, probe.stderr
    record = json.loads(probe.stdout)
    assert record["classes"] == 4 and 0.0 <= record["top1"] <= record["top5"] <= 1.0
