"""CVRL: the global loss against the reference's formula, identical views, the head and
backbone shapes, the head's batch norm (apart from the backbone's and from ConST-CL's), and the
tiny preset on real clips."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vvk.data.video_transforms import VideoAugment, cvrl_view_augments
from vvk.errors import VvkError
from vvk.methods import constcl, cvrl
from vvk.methods.cvrl import CvrlPreset
from vvk.methods.cvrl.loss import contrastive_accuracy, global_loss
from vvk.methods.cvrl.preset import view_augments
from vvk.testing import link_videos, twelve_real_videos


def _reference_global_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """video_ssl/losses/losses.py::contrastive_loss, one replica: CE of a over [ab, aa] (aa's
    diagonal masked) plus CE of b over [ba, bb]."""
    a, b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    n = len(a)
    mask = torch.eye(n, dtype=torch.bool)
    labels = torch.arange(n)
    ab, ba = a @ b.T / temperature, b @ a.T / temperature
    aa = (a @ a.T / temperature).masked_fill(mask, -1e9)
    bb = (b @ b.T / temperature).masked_fill(mask, -1e9)
    return F.cross_entropy(torch.cat([ab, aa], 1), labels) + F.cross_entropy(torch.cat([ba, bb], 1), labels)


def test_global_loss_is_the_references_sum_of_both_directions():
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64)
    for temperature in (0.1, 0.5):
        torch.testing.assert_close(
            global_loss(z_a, z_b, temperature), _reference_global_loss(z_a, z_b, temperature)
        )


def _identity_augment(side: int) -> VideoAugment:
    # A full-frame "crop" and nothing else: both views of a clip are then the same tensor.
    return VideoAugment(size=side, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, jitter=0.0,
                        grayscale=0.0, blur=0.0)  # fmt: skip


def test_identical_views_reach_full_accuracy_and_the_loss_vanishes_as_temperature_falls():
    torch.manual_seed(0)
    # r3d-y-tiny has no stochastic depth: equal inputs give equal outputs in training mode.
    model = cvrl.build(dataclasses.replace(cvrl.PRESETS["tiny"], backbone="r3d-y-tiny")).train()
    model.augment_a = model.augment_b = _identity_augment(32)
    clips = torch.randint(0, 256, (6, 3, 8, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        z_a, z_b = model.embed(model.backbone(model.views({"video": clips, "video_b": clips}))).chunk(2)
        torch.testing.assert_close(z_a, z_b)
        similarity = F.normalize(z_a, dim=-1) @ F.normalize(z_b, dim=-1).T  # (6, 6)
        accuracy = (similarity.argmax(dim=1) == torch.arange(6)).float().mean()
        assert accuracy == 1.0
        assert contrastive_accuracy(z_a, z_b) == accuracy
        # float64: at small τ the float32 rounding of logits ~1/τ exceeds the loss itself.
        losses = [float(global_loss(z_a.double(), z_b.double(), t)) for t in (1.0, 0.1, 0.01)]
    assert losses[0] > losses[1] > losses[2], losses
    assert abs(losses[2]) < 1e-9, losses  # zero up to float64 rounding (it can come out as -5e-15)


def test_paper_views_are_the_reference_views_and_strength_zero_turns_colour_off():
    paper = view_augments(CvrlPreset())
    for ours, reference in zip(paper, cvrl_view_augments(224), strict=True):
        assert repr(ours) == repr(reference)
    # A flat colour stays exactly that colour through crop, flip and resize; jitter changes it.
    clip = torch.full((8, 3, 2, 32, 32), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    plain = view_augments(CvrlPreset(crop=16, color_strength=0.0, blur=(0.0, 0.0), solarize=(0.0, 0.0)))
    torch.testing.assert_close(plain[0](clip), torch.full((8, 3, 2, 16, 16), 100 / 255 * 2 - 1))
    jittered = view_augments(CvrlPreset(crop=16, color_strength=0.5))[0](clip)
    assert (jittered - (100 / 255 * 2 - 1)).abs().amax(dim=(1, 2, 3, 4)).gt(0.01).sum() >= 4


def test_contrastive_accuracy_counts_rows_whose_own_view_wins():
    z_b = torch.eye(4)
    z_a = torch.stack([z_b[0], z_b[1], z_b[0], z_b[2]])  # rows 0, 1 right; 2 and 3 pick another clip
    assert contrastive_accuracy(z_a, z_b) == 0.5


def test_reference_shapes_and_head_size():
    with torch.device("meta"):
        model = cvrl.build(CvrlPreset())
        features = model.backbone(torch.empty(4, 3, 16, 224, 224))  # B = 2 clips x 2 views
        embedding = model.embed(features)
    assert tuple(features["res5"].shape) == (4, 2048, 8, 7, 7)
    assert tuple(embedding.chunk(2)[0].shape) == (2, 128)
    assert sum(p.numel() for p in model.head.parameters()) == 12_857_472
    assert sum(p.numel() for p in model.backbone.parameters()) == 31_672_128  # README: 31.7M


def _norms(module: nn.Module) -> set[tuple[float, float]]:
    kinds = (nn.BatchNorm1d, nn.BatchNorm3d)
    return {(m.momentum, m.eps) for m in module.modules() if isinstance(m, kinds)}


def test_head_batch_norm_is_the_references_not_the_backbones_nor_constcls():
    with torch.device("meta"):
        model = cvrl.build(CvrlPreset())
        constcl_model = constcl.build(constcl.PRESETS["paper"])
    # video_ssl.py::VideoSSLModel.hidden_norm_activation: Keras momentum 0.997, eps 1e-5 ...
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.head.modules()) == 3
    assert _norms(model.head) == {(0.003, 1e-5)}
    # ... while the backbone keeps video_classification_kinetics600's 0.9 (0.1 here) ...
    assert _norms(model.backbone) == {(0.1, 1e-5)}
    # ... and ConST-CL's head its own 0.9 (const_cl.py::ConstCLModel.global_head).
    assert _norms(constcl_model.head) == {(0.1, 1e-5)}


def test_one_training_step_moves_the_head_running_mean_by_the_references_momentum():
    torch.manual_seed(0)
    model = cvrl.build(cvrl.PRESETS["tiny"]).train()
    norm = model.head.net[1]
    seen = []
    model.head.net[0].register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    clips = torch.randint(0, 256, (4, 3, 8, 80, 80), dtype=torch.uint8)
    model({"video": clips, "video_b": clips})
    # Running statistics start at 0: one step leaves 0.003 x the batch mean of the BN input.
    torch.testing.assert_close(norm.running_mean, 0.003 * seen[0].mean(dim=0))


@pytest.mark.parametrize("backbone", ["r3d-rs-50", "r3d-tiny", "r3d-y-tiny"])
def test_any_3d_resnet_serves(backbone):
    with torch.device("meta"):
        model = cvrl.build(CvrlPreset(backbone=backbone, hidden_dim=64, embed_dim=16))
        z = model.embed(model.backbone(torch.empty(2, 3, 8, 64, 64)))
    assert tuple(z.shape) == (2, 16)
    norm = model.backbone.stages["res2"][0].spatial.bn
    assert (norm.eps, norm.momentum) == (1e-5, 0.1)  # the reference's batch norm (Keras 0.9)


def test_a_backbone_without_res5_is_refused():
    with pytest.raises(VvkError, match="no res5"):
        cvrl.build(CvrlPreset(backbone="vatt-video-tiny"))


def _real_videos(shared_data, folder):
    return link_videos(folder, twelve_real_videos(shared_data))


BATCH = 6


def check_tiny_run(method: str, tmp_path, shared_data, *, parts: tuple[str, ...], steps: int):
    """Train ``method``'s tiny preset on real clips; return the logged curves after checking
    they are finite and that the global loss fell; check the export loads and resume goes on."""
    from vvk.methods.pretrain import pretrain
    from vvk.models import load

    data = _real_videos(shared_data, tmp_path / "videos")
    run = tmp_path / "run"
    first = pretrain(method, data=data, preset="tiny", overrides=["train.log_every=1"], steps=steps,
                     batch_size=BATCH, out=run, progress=False)  # fmt: skip
    assert first.step == steps
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves = {name: [line[name] for line in lines] for name in ("loss", *parts)}
    assert all(math.isfinite(v) for curve in curves.values() for v in curve), curves
    early, late = (
        {k: float(np.mean(v[sl])) for k, v in curves.items()} for sl in (slice(0, 30), slice(-30, None))
    )
    # Means of 30 steps each: one batch's loss swings by ±0.5 with its clips and augmentations.
    assert late["loss"] < early["loss"] - 0.3, curves["loss"]
    backbone = load(first.backbone_path)
    assert "res5" in backbone.output_shape()
    resumed = pretrain(method, data=data, preset="tiny", out=run, resume=True, steps=steps + 2,
                       batch_size=BATCH, progress=False)  # fmt: skip
    assert resumed.step == steps + 2
    return curves, early, late


def test_tiny_preset_learns_on_real_clips(tmp_path, shared_data):
    _, _, late = check_tiny_run("cvrl", tmp_path, shared_data, parts=("accuracy",), steps=150)
    # Below chance, 2·log(2B - 1): the embeddings tell the batch's videos apart.
    assert late["loss"] < 2 * math.log(2 * BATCH - 1)
