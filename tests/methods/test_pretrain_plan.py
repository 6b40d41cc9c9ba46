"""Planning a pretraining run, before anything is written: presets checked field by field, a
user's run length, the warm-up of a short run, presets read back from preset.json."""

from __future__ import annotations

import logging

import pytest

from vvk.errors import VvkError
from vvk.methods.base import LAPTOP_STEPS
from vvk.methods.overrides import from_dict, to_dict
from vvk.methods.pretrain import plan_pretrain, resolve_preset
from vvk.methods.registry import load, methods_for

METHODS = [m.name for m in methods_for("pretrain")]


def test_every_preset_passes_its_checks_and_tiny_runs_last_a_useful_length():
    for method in METHODS:
        presets = load(method).PRESETS
        for name, preset in presets.items():
            assert from_dict(presets[name], to_dict(preset), what="test") == preset, (method, name)
        # 40 steps (the tests' size) left the backbone worse than random initialisation.
        assert presets["tiny"].train.steps == LAPTOP_STEPS == 1000, method


@pytest.mark.parametrize(
    ("method", "assignment", "message"),
    [
        ("cvrl", "temperature=0", "--set temperature=0.0: must be > 0"),
        ("cvrl", "blur=0.5,1.5", "--set blur=0.5,1.5: must be in [0, 1]"),
        ("cvrl", "size=32", "--set: the preset's crop = 64 must be <= size = 32 (the crop is cut from the "
                            "frame)"),
        ("constcl", "local_weight=-1", "--set local_weight=-1.0: must be >= 0"),
        ("constcl", "num_boxes=0", "--set num_boxes=0: must be >= 1"),
        ("teg", "short_frames=32", "--set short_frames=32: must be such that the short clip (63 frames) fits "
                                   "in the long one (29)"),
        ("vatt", "drop_token_rate=1", "--set drop_token_rate=1.0: must be in [0, 1)"),
        ("vatt", "crop_scale=0.9,0.5", "--set crop_scale=0.9,0.5: must be a (low, high) range"),
        ("teg", "train.lr=-1", "--set train.lr=-1.0: must be >= 0"),
        ("vatt", "train.momentum=1", "--set train.momentum=1.0: must be in [0, 1)"),
        ("cvrl", "train.warmup_steps=2000", "--set train.warmup_steps=2000: must be in [0, steps = 1000]"),
    ],
)  # fmt: skip
def test_set_refuses_values_out_of_range_naming_the_field(method, assignment, message):
    with pytest.raises(VvkError) as refused:
        resolve_preset(method, overrides=[assignment])
    assert str(refused.value) == message


def test_fields_checked_together_may_be_set_in_any_order():
    assignments = ["train.steps=10", "train.warmup_steps=5"]
    for order in (assignments, assignments[::-1]):
        train = resolve_preset("cvrl", "paper", overrides=order).train
        assert (train.steps, train.warmup_steps) == (10, 5)


def test_a_run_shorter_than_the_warm_up_gets_a_warm_up_in_proportion(caplog):
    with caplog.at_level(logging.WARNING, logger="vvk.methods"):
        train = resolve_preset("constcl", "paper", steps=400).train
    assert (train.steps, train.warmup_steps) == (400, 5)  # 2500 of 200,000 steps: 1.25 %
    assert "warm-up shortened in proportion, to 5" in caplog.text and "set train.warmup_steps" in caplog.text
    # A warm-up asked for explicitly is the user's: too long, it is an error naming the option.
    with pytest.raises(VvkError, match=r"--set train.warmup_steps=2500: must be in \[0, steps = 400\]"):
        resolve_preset("constcl", "paper", steps=400, overrides=["train.warmup_steps=2500"])


def test_a_users_run_lasts_the_presets_length_and_planning_writes_nothing(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    plan = plan_pretrain("constcl", data=videos, out=tmp_path / "run")
    assert plan.config.train.steps == 1000 and plan.preset == "tiny" and plan.data == videos
    assert not plan.demo and not (tmp_path / "run").exists()
    with pytest.raises(VvkError, match=r"^data=.*gone: no such folder or file$"):
        plan_pretrain("constcl", data=tmp_path / "gone", out=tmp_path / "run")
    with pytest.raises(VvkError, match=r"^captions=.*: cvrl reads no captions \(only vatt\)$"):
        plan_pretrain("cvrl", data=videos, captions=tmp_path / "c.tsv", out=tmp_path / "run")
