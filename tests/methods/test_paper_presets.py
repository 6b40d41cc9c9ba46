"""Every method's paper preset trains on the CPU: the paper's architecture, losses, optimizer and
bf16 autocast, through ``pretrain``, on small clips (VVK_TEST_FULL=1: the paper's clip sizes)."""

from __future__ import annotations

import json
import logging
import math

import pytest

from vvk.methods.pretrain import pretrain
from vvk.models import load
from vvk.testing import link_videos, twelve_real_videos

# Clip sizes only, so that a step takes seconds; everything else is the paper preset's.
SMALL = {
    "cvrl": ["size=40", "crop=32", "frames=8", "stride=2"],
    # res5_1 keeps every other frame: 10 frames give the 5 steps its 5 context frames need.
    "constcl": ["size=40", "crop=32", "frames=10", "stride=1", "num_boxes=2"],
    "teg": ["size=40", "crop=32", "long_frames=8", "long_stride=2", "short_frames=8", "short_stride=1"],
    "vatt": ["size=40", "crop=32", "frames=4"],  # 4 x 32²: one token, at VATT's 4 x 16² patches
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SMALL))
def test_paper_preset_trains_on_the_cpu_in_bf16(method, tmp_path, shared_data, full_scale, caplog):
    video = shared_data / "video"
    if method == "vatt":  # the videos with audio and captions, so that both of its losses count
        data = link_videos(tmp_path / "videos", sorted((video / "activitynet").glob("*.mp4")))
        extra = {"captions": video / "activitynet" / "captions.tsv"}
    else:
        data, extra = link_videos(tmp_path / "videos", twelve_real_videos(shared_data)), {}
    # VATT's 285 M parameters make its CPU step the slowest: one step in the small form.
    steps = 1 if method == "vatt" and not full_scale else 2
    overrides = [*([] if full_scale else SMALL[method]), "train.num_workers=0", "train.log_every=1"]
    with caplog.at_level(logging.WARNING, logger="vvk.methods"):
        result = pretrain(method, data=data, preset="paper", steps=steps, batch_size=2, overrides=overrides,
                          out=tmp_path / "run", progress=False, **extra)  # fmt: skip
    assert result.status == "finished" and result.step == steps
    assert all(math.isfinite(v) for v in result.losses.values()), result.losses
    assert result.losses["loss"] > 0  # two clips per step: a contrastive loss with a negative
    train = json.loads((tmp_path / "run" / "preset.json").read_text())["resolved"]["train"]
    assert train["precision"] == "bf16" and train["warmup_steps"] == 0
    # The paper's warm-up (thousands of steps) does not fit in the run: shortened, with a word.
    assert "warm-up shortened in proportion, to 0" in caplog.text
    load(result.backbone_path)
