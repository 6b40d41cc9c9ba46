"""Fine-tuning: the presets against their reference configs, the loss, freezing, the EMA that is
tested, multi-view scores and the record of the views they were taken with."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vvk.commands.finetune import PRESET_NAMES
from vvk.engine.optim import build_optimizer
from vvk.engine.state import RunDir
from vvk.errors import VvkError
from vvk.methods.finetune import PRESETS, EvalProtocol, evaluate, finetune, load_classifier
from vvk.methods.finetune.evaluate import crop_offsets, scheme_scores, video_views, view_scores
from vvk.methods.finetune.model import VideoClassifier, build_backbone, classification_step, train_augment
from vvk.methods.finetune.preset import RS_SCALING, resolve_finetune_preset
from vvk.models import build, get_entry
from vvk.testing import link_videos

# tensorflow/models: official/vision/configs/experiments/video_classification/k400_resnet3drs_50_tpu.yaml
K400_RS50_YAML = {
    "l2_weight_decay": 0.00004, "label_smoothing": 0.1, "model_id": 50, "stochastic_depth_drop_rate": 0.1,
    "dropout_rate": 0.5, "norm_epsilon": 1.0e-05, "norm_momentum": 0.0, "train_feature_shape": (32, 224, 224),
    "global_batch_size": 1024, "min_image_size": 256, "temporal_stride": 2, "aug_area": (0.08, 1.0),
    "aug_aspect": (0.5, 2.0), "val_feature_shape": (32, 256, 256), "num_test_clips": 10, "num_test_crops": 3,
    "average_decay": 0.9999, "initial_learning_rate": 0.8, "train_steps": 73682, "warmup_steps": 1050,
    "checkpoint_interval": 210, "max_to_keep": 3, "mixed_precision_dtype": "bf16",
    "nesterov": True,  # video_classification.py's add_trainer: the sgd optimizer's default there
    "trainable_weights_only": False,  # the EMA averages every variable, batch-norm statistics too
}  # fmt: skip


def test_rs_preset_is_the_reference_yaml():
    rs, y = PRESETS["rs"], K400_RS50_YAML
    assert rs.backbone == f"r3d-rs-{y['model_id']}"
    assert (rs.label_smoothing, rs.stochastic_depth, rs.dropout) == (
        y["label_smoothing"], y["stochastic_depth_drop_rate"], y["dropout_rate"],
    )  # fmt: skip
    assert (rs.bn_eps, rs.bn_momentum) == (y["norm_epsilon"], 1.0 - y["norm_momentum"])  # Keras -> PyTorch
    assert ((rs.frames, rs.crop, rs.crop), rs.stride, rs.size) == (
        y["train_feature_shape"], y["temporal_stride"], y["min_image_size"],
    )  # fmt: skip
    assert (rs.crop_scale, rs.crop_ratio) == (y["aug_area"], y["aug_aspect"])
    assert (rs.frames, rs.eval_crop, rs.eval_crop) == y["val_feature_shape"] and rs.eval_size == 256
    assert rs.eval_views == (y["num_test_clips"], y["num_test_crops"])
    t = rs.train
    assert (t.weight_decay, t.lr, t.ema_decay) == (
        y["l2_weight_decay"],
        y["initial_learning_rate"],
        y["average_decay"],
    )
    assert (t.steps, t.warmup_steps) == (y["train_steps"], y["warmup_steps"])
    assert t.batch_size * 16 == y["global_batch_size"] and t.replica_grads == "mean"
    assert (t.optimizer, t.momentum, t.schedule, t.precision) == (
        "sgd",
        0.9,
        "cosine",
        y["mixed_precision_dtype"],
    )
    assert (t.checkpoint_every, t.keep_checkpoints) == (y["checkpoint_interval"], y["max_to_keep"])
    assert t.nesterov == y["nesterov"]
    assert t.ema_buffers == ("copy" if y["trainable_weights_only"] else "average")


def test_the_scaling_presets_are_the_model_gardens_depth_and_frames_on_the_rs_recipe():
    # MODEL_GARDEN.md: R3D-RS-101/152/200 at 32 x 2, R3D-RS-200 at 48 x 2
    assert RS_SCALING == {"rs-101-32f": (101, 32), "rs-152-32f": (152, 32), "rs-200-32f": (200, 32),
                          "rs-200-48f": (200, 48)}  # fmt: skip
    for name, (depth, frames) in RS_SCALING.items():
        scaled = PRESETS[name]
        assert (scaled.backbone, scaled.frames) == (f"r3d-rs-{depth}", frames)
        assert scaled == dataclasses.replace(PRESETS["rs"], backbone=scaled.backbone, frames=frames)
        assert get_entry(scaled.backbone).task == "video-backbone"


def test_vatt_ucf101_and_linear_presets_are_their_reference_configs():
    vatt = PRESETS["vatt"]  # vatt/configs/experiment.py::Finetune, dataset.py::Finetune, video.py::ViTBase
    assert (vatt.train.optimizer, vatt.train.momentum, vatt.train.lr, vatt.train.schedule) == (
        "sgd",
        0.9,
        0.005,
        "cosine",
    )
    assert (vatt.train.warmup_steps, vatt.train.steps, vatt.train.grad_clip) == (2500, 100_000, 0.75)
    assert (vatt.label_smoothing, vatt.dropout, vatt.eval_views, vatt.train.weight_decay) == (
        0.1,
        0.5,
        (4, 3),
        0,
    )
    assert (vatt.frames, vatt.stride, vatt.crop, vatt.zero_center) == (32, 2, 224, True)
    ucf = PRESETS["ucf101"]  # video_classification.py::video_classification_ucf101 + add_trainer
    assert (ucf.train.lr, ucf.train.steps, ucf.train.warmup_steps, ucf.train.weight_decay) == (
        0.8,
        14900,
        745,
        1e-4,
    )
    assert (ucf.dropout, ucf.label_smoothing, ucf.crop_scale, ucf.bn_momentum) == (0.2, 0.0, (0.49, 1.0), 0.1)
    linear = PRESETS["linear"]  # cvrl_linear_eval_k600.yaml
    assert linear.freeze and linear.normalize_features and linear.dropout == 0.0
    assert (linear.train.lr, linear.train.steps, linear.train.warmup_steps, linear.train.weight_decay) == (
        32.0, 35_744, 1787, 0.0,
    )  # fmt: skip


def test_the_command_offers_exactly_the_library_presets():
    assert sorted(PRESETS) == sorted(PRESET_NAMES) and len(PRESET_NAMES) == len(set(PRESET_NAMES))


def test_label_smoothing_is_the_references_smoothed_one_hot_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([0, 2])
    batch = {"video": torch.zeros(2, 3, 2, 8, 8, dtype=torch.uint8), "label": labels}
    out = classification_step(
        lambda clips: logits, batch, augment=train_augment(PRESETS["tiny"]), label_smoothing=0.1
    )
    expected = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        target = [0.9 * (k == y) + 0.1 / 3 for k in range(3)]  # y (1 - ε) + ε / K
        expected -= sum(t * (v - log_z) for t, v in zip(target, row, strict=True)) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["accuracy"].item() == 0.5  # row 0 right, row 1 wrong


def test_l2_is_weight_decay_on_kernels_only():
    model = VideoClassifier(backbone=build("r3d-tiny"), num_classes=4)
    decayed, plain = build_optimizer(model, PRESETS["rs"].train).param_groups
    assert decayed["weight_decay"] == 4e-5 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert "head.weight" in {names[id(p)] for p in decayed["params"]}
    assert all(p.ndim >= 2 for p in decayed["params"])  # conv and Dense kernels
    assert {"head.bias", "backbone.stem.0.bn.weight"} <= {names[id(p)] for p in plain["params"]}


def test_freeze_trains_the_classifier_alone_and_keeps_batch_norm_statistics():
    torch.manual_seed(0)
    model = VideoClassifier(backbone=build("r3d-tiny"), num_classes=3, freeze=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert (
        model.training
        and not model.backbone.training
        and not any(m.training for m in model.backbone.modules())
    )
    config = PRESETS["tiny"].train
    optimizer = build_optimizer(model, config)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(model.head.weight), id(model.head.bias)}
    augment = train_augment(PRESETS["tiny"])
    for _ in range(3):
        batch = {
            "video": torch.randint(0, 255, (4, 3, 8, 40, 40), dtype=torch.uint8),
            "label": torch.tensor([0, 1, 2, 0]),
        }
        classification_step(model, batch, augment=augment, label_smoothing=0.1)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN statistics
    assert not torch.equal(before["head.weight"], after["head.weight"])


class _Brightness(nn.Module):
    """A stub classifier: logits (mean pixel, 0), so each view's scores follow its brightness."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3, 4)) * self.scale
        return torch.stack([mean, torch.zeros_like(mean)], dim=1)


def test_multi_view_scores_average_the_softmax_of_every_view():
    levels = [255, 0, 51, 102, 153, 204, 255]  # the centre view, then 2 clips x 3 crops
    views = torch.stack([torch.full((3, 2, 4, 4), v, dtype=torch.uint8) for v in levels])
    protocol = EvalProtocol(frames=2, stride=1, size=4, crop=4, views=(2, 3), zero_center=False, batch_size=3)
    scores = scheme_scores(view_scores(_Brightness(), views, protocol), (2, 3))

    def p(level):  # softmax of (level / 255, 0), by hand
        a = math.exp(level / 255)
        return [a / (a + 1), 1 / (a + 1)]

    assert scores["1x1"].tolist() == pytest.approx(p(255))
    mean = [sum(p(v)[k] for v in levels[1:]) / 6 for k in range(2)]
    assert scores["2x3"].tolist() == pytest.approx(mean)
    assert set(scores) == {"1x1", "2x3"}
    assert set(scheme_scores(scores["1x1"][None], (1, 1))) == {"1x1"}


def test_crops_are_the_references_three_along_the_longer_side():
    # preprocess_ops_3d.crop_image(num_crops=3): offsets 0, round(L / 2 - crop // 2), L - crop
    assert crop_offsets(256, 340, 256, 3) == [(0, 0), (0, 42), (0, 84)]
    assert crop_offsets(340, 256, 256, 3) == [(0, 0), (42, 0), (84, 0)]
    assert crop_offsets(256, 256, 224, 3) == [(0, 16), (16, 16), (32, 16)]  # square: down the height
    assert crop_offsets(256, 340, 224, 1) == [(16, 58)]


def test_views_are_the_centre_clips_centre_crop_then_each_clips_crops():
    clips = torch.zeros(3, 1, 1, 8, 12, dtype=torch.uint8)  # centre clip + 2 clips, on an 8 x 12 canvas
    clips[:, 0, 0] = torch.arange(12, dtype=torch.uint8)  # every pixel holds its column
    clips += (torch.arange(3, dtype=torch.uint8) * 100).view(3, 1, 1, 1, 1)  # and its clip
    views = video_views(clips, (6, 10), crop=6, crops=3)  # a 6 x 10 frame padded to 8 x 12
    assert views.shape == (7, 1, 1, 6, 6)
    assert [int(v[0, 0, 0, 0]) for v in views] == [2, 100, 102, 104, 200, 202, 204]


def _two_classes(shared_data, root):
    ucf = sorted((shared_data / "video" / "ucf24").glob("*.mp4"))
    link_videos(root / "a", ucf[:2])
    link_videos(root / "b", ucf[2:4])
    return root


QUICK = ["train.num_workers=0", "train.batch_size=2", "train.log_every=1", "size=40", "crop=32",
         "eval_size=40", "eval_crop=40"]  # fmt: skip


def test_the_ema_weights_are_the_exported_and_tested_ones(shared_data, tmp_path):
    data = _two_classes(shared_data, tmp_path / "videos")
    run = tmp_path / "run"
    result = finetune(data=data, val=data, preset="tiny", steps=3, views=(2, 3), out=run, progress=False,
                      overrides=[*QUICK, "train.ema_decay=0.5"])  # fmt: skip
    assert result.evaluation["weights"] == "ema"
    checkpoint = RunDir(run).latest()
    ema, live = load_file(checkpoint / "ema.safetensors"), load_file(checkpoint / "model.safetensors")
    exported = load_file(run / "classifier.safetensors")
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert not torch.equal(ema["head.weight"], live["head.weight"])
    # The test scored those weights: scoring the exported file again gives the same predictions.
    model, classes = load_classifier(run / "classifier.safetensors")
    assert classes == ["a", "b"]
    protocol = EvalProtocol.of(resolve_finetune_preset("tiny", overrides=QUICK, views=(2, 3)))
    again = evaluate(model, data, protocol=protocol, classes=classes, out=tmp_path / "again", weights="ema")
    assert (tmp_path / "again" / "predictions.jsonl").read_text() == (run / "predictions.jsonl").read_text()
    assert again["schemes"] == result.evaluation["schemes"]
    model.load_state_dict(live)  # the live weights score otherwise
    evaluate(model, data, protocol=protocol, classes=classes, out=tmp_path / "live")
    assert (tmp_path / "live" / "predictions.jsonl").read_text() != (run / "predictions.jsonl").read_text()


def test_the_record_names_the_views_of_each_score(shared_data, tmp_path):
    data = _two_classes(shared_data, tmp_path / "videos")
    torch.manual_seed(0)
    model = VideoClassifier(backbone=build("r3d-tiny"), num_classes=2)
    protocol = EvalProtocol(frames=4, stride=2, size=40, crop=32, views=(2, 3), zero_center=True)
    record = evaluate(model, data, protocol=protocol, classes=["a", "b"], out=tmp_path / "run")
    assert record["main"] == "2x3" and record["views"] == {"clips": 2, "crops": 3}
    assert {name: (s["clips"], s["crops"]) for name, s in record["schemes"].items()} == {
        "1x1": (1, 1),
        "2x3": (2, 3),
    }
    assert (record["top1"], record["top5"]) == (
        record["schemes"]["2x3"]["top1"],
        record["schemes"]["2x3"]["top5"],
    )
    assert record["clip"] == {"frames": 4, "stride": 2, "size": 40, "crop": 32, "fps": None}
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text()) == record
    lines = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == record["videos"] == 4 and {line["label"] for line in lines} == {"a", "b"}
    assert all(len(line["top5"]) == 2 and line["scheme"] == "2x3" for line in lines)  # two classes: a top-2
    rows = (tmp_path / "run" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "true\\predicted,a,b"
    counts = [[int(v) for v in row.split(",")[1:]] for row in rows[1:]]
    assert [sum(row) for row in counts] == [2, 2]
    correct = sum(line["top5"][0]["class"] == line["label"] for line in lines)
    assert counts[0][0] + counts[1][1] == correct == round(record["top1"] * 4)
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000


def test_a_backbone_without_the_presets_options_is_named_with_the_fields_to_unset():
    with pytest.raises(VvkError) as error:
        build_backbone(PRESETS["rs"], {"name": "vatt-video-tiny", "kwargs": {}})
    assert "set stochastic_depth=none and bn_eps=none" in str(error.value)
    # A pretrained backbone keeps its own epsilon: only stochastic depth is asked for.
    with pytest.raises(VvkError) as error:
        build_backbone(PRESETS["rs"], {"name": "vatt-video-tiny", "kwargs": {}}, pretrained=True)
    assert str(error.value).endswith("(for a backbone without them, set stochastic_depth=none)")
    with pytest.raises(VvkError, match="backbone=spinenet-tiny: task image-backbone, not a video backbone"):
        build_backbone(PRESETS["tiny"], {"name": "spinenet-tiny", "kwargs": {}})
    rs = build_backbone(PRESETS["rs"], {"name": "r3d-tiny", "kwargs": {}})
    norms = [m for m in rs.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and all((m.momentum, m.eps) == (1.0, 1e-5) for m in norms)
