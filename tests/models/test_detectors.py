"""The detectors (``retinanet-*``, ``maskrcnn-*``): sizes against the published tables, the
reference's losses against a direct computation, outputs in the input's pixels, the hooks of the
later methods (replaceable classifier, class-agnostic heads, feature modulation), checkpoints,
ImageNet initialisation, and learning on a real COCO image."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision import tv_tensors

from vvk.errors import VvkError
from vvk.models import build, get_entry, list_models, load, save
from vvk.models.detectors import (
    DenseEmbeddingClassifier,
    EmbeddingClassifier,
    coco_categories,
    focal_prior_bias,
    load_backbone_weights,
)
from vvk.models.detectors.common import LevelAnchorGenerator
from vvk.models.detectors.losses import fast_rcnn_losses
from vvk.models.profile import count_macs, count_params, example_input, human_count
from vvk.weights import Source, WeightsEntry, sha256_file

DETECTORS = list_models(task="detection")
TINY = [n for n in DETECTORS if n.endswith("-tiny")]
CATS3 = [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}, {"id": 30, "name": "c"}]
# The reference counts use 91 logits: COCO ids 1..90 plus background (num_classes: 91).
REFERENCE_91 = coco_categories(reference_ids=True)

# (params M, MACs G) with 91 logits. RetinaNet: reference/detection.md §0 (the SpineNet tables,
# also docs/models.md); Mask R-CNN: the published tables of reference/detection.md §5.3
# (tensorflow/tpu MODEL_ZOO.md), FLOPs the lower end of the published range.
REFERENCE = {
    "retinanet-spinenet-49s": (11.27, 30.8),
    "retinanet-spinenet-49": (28.54, 85.3),
    "retinanet-spinenet-96": (42.97, 265.0),
    "retinanet-spinenet-143": (66.96, 523.3),
    "retinanet-spinenet-190": (163.64, 1881.7),
    "retinanet-spinenet-mobile-49": (2.34, 0.98),
    "retinanet-spinenet-mobile-49s": (1.03, 0.50),
    "retinanet-spinenet-mobile-49xs": (0.87, 0.17),
    "maskrcnn-spinenet-49s": (13.9, 60.2),
    "maskrcnn-spinenet-49": (40.8, 215.7),
    "maskrcnn-spinenet-96": (55.2, 314.6),
    "maskrcnn-spinenet-143": (79.2, 498.4),
    "maskrcnn-spinenet-190": (168.2, 1685.7),
}
# All within 0.5%. Mask R-CNN: published to 0.1M; torchvision's heads lack the reference's BN
# after the fc and the deconvolution and the biases of normed convs (about 5K parameters). Its
# MACs count the box head on 1000 RoIs and the mask head on 100 (the test-time sizes) and nothing
# of RoIAlign: within 1% of the published FLOPs (49S: 0.8% under). Mobile MACs are published to
# two decimals and checked to that precision.
MAC_TOLERANCE = {n: {"rel": 0.01} for n in REFERENCE if n.startswith("maskrcnn")} | {
    "retinanet-spinenet-mobile-49s": {"abs": 0.005e9},
    "retinanet-spinenet-mobile-49xs": {"abs": 0.005e9},
}


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return build(name, **kwargs)


@pytest.mark.parametrize("name", REFERENCE)
def test_sizes_match_the_published_tables(name):
    params, gmacs = REFERENCE[name]
    model = _meta(name, categories=REFERENCE_91)
    assert model.num_classes == 91
    assert count_params(model) == pytest.approx(params * 1e6, rel=0.005)
    macs = count_macs(model, example_input(name))
    assert macs == pytest.approx(gmacs * 1e9, **MAC_TOLERANCE.get(name, {"rel": 0.005}))


def _docs_rows() -> dict[str, tuple[str, str]]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| `([a-z0-9-]+)` \| detection \| ([0-9.]+M) \| ([0-9.]+[KMGT]) \| ", text, flags=re.M
    )
    return {name: (params, macs) for name, params, macs in rows}


def test_every_detector_has_its_docs_row():
    """docs/models.md lists every detector with the params and MACs `vvk models list` gives
    (default: the 80 COCO categories, 81 logits)."""
    rows = _docs_rows()
    assert sorted(rows) == DETECTORS
    for name in DETECTORS:
        model = _meta(name)
        expected = (f"{count_params(model) / 1e6:.2f}M", human_count(count_macs(model, example_input(name))))
        assert rows[name] == expected, f"docs/models.md row of {name} is out of date"


def test_models_list_shows_detectors_with_params_and_macs(cli):
    result = cli("models", "list", "retinanet-spinenet-49", "--flops", "--json")
    assert result.code == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["task"] == "detection" and row["default_input"] == [3, 640, 640]
    assert row["params"] == pytest.approx(28.34e6, rel=0.001)  # 81 logits: 28.54M less 10 classes
    assert row["macs"] == pytest.approx(83.5e9, rel=0.002)


# ---------------------------------------------------------------------------------------------
# Training mode: losses of the reference's form


def test_anchors_follow_the_reference_formula():
    """tensorflow/models official/vision/ops/anchor.py: centre (k + 0.5)·2^l, side
    anchor_size·2^l·2^(s/3), width/height = sqrt(ratio) / 1/sqrt(ratio)."""
    gen = LevelAnchorGenerator(levels=[4], anchor_size=3.0, num_scales=3, aspect_ratios=(0.5, 1.0, 2.0))
    (cell,) = gen.cell_anchors  # (9, 4), scale-major
    size = 3.0 * 16 * 2 ** (1 / 3)  # scale 1
    w, h = size * math.sqrt(2.0), size / math.sqrt(2.0)  # ratio 2 = width / height
    assert cell[3 * 1 + 2].tolist() == pytest.approx([8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2], abs=1e-4)


def test_retinanet_losses_are_the_references():
    """Focal loss (α 0.25, γ 1.5) over all classes and anchors and Huber (δ 0.1, mean over the 4
    coordinates, × 50) over the positives, both divided by the batch's positives + 1."""
    torch.manual_seed(0)
    model = build("retinanet-spinenet-tiny", categories=CATS3)
    anchors = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 12], [20, 20, 30, 30], [5, 5, 15, 15]], dtype=torch.float
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 11.0]])
    targets = [
        {"boxes": gt, "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    outputs = {"cls_logits": torch.randn(2, 4, 4), "bbox_regression": torch.randn(2, 4, 4) * 0.2}
    losses = model.compute_loss(targets, outputs, [anchors, anchors])

    p = torch.sigmoid(outputs["cls_logits"])
    target = torch.zeros(2, 4, 4)
    target[0, 0, 2] = target[0, 1, 2] = 1.0  # IoU 0.91 and 0.92 with the box; the others below 0.5
    focal = torch.where(target == 1, -0.25 * (1 - p) ** 1.5 * p.log(), -0.75 * p**1.5 * (1 - p).log())
    normalizer = 2 + 1  # positives in the batch + 1
    assert losses["classification"].item() == pytest.approx(focal.sum().item() / normalizer, rel=1e-5)

    def encode(a: Tensor) -> Tensor:
        aw, ah, ax, ay = a[2] - a[0], a[3] - a[1], (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
        gw, gh, gx, gy = 10.0, 11.0, 5.0, 5.5
        return torch.tensor([(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)])

    def huber(x: Tensor) -> Tensor:
        return torch.where(x.abs() <= 0.1, 0.5 * x**2, 0.1 * x.abs() - 0.5 * 0.1**2)

    box = sum(huber(outputs["bbox_regression"][0, i] - encode(anchors[i])).mean() for i in (0, 1))
    assert losses["bbox_regression"].item() == pytest.approx(50 * box.item() / normalizer, rel=1e-5)


def test_fast_rcnn_box_loss_picks_the_label_or_the_agnostic_column():
    """Huber δ 1 over the positives' 4 coordinates, averaged (SUM_BY_NONZERO_WEIGHTS)."""
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([2, 0, 3])
    per_class = torch.randn(3, 16)
    cls, box = fast_rcnn_losses(
        class_logits=logits, box_regression=per_class, labels=labels, regression_targets=targets
    )
    picked = torch.stack([per_class[0, 8:12], per_class[2, 12:16]])
    expected = torch.nn.functional.huber_loss(picked, targets[[0, 2]], delta=1.0, reduction="sum") / 8
    assert box.item() == pytest.approx(expected.item(), rel=1e-6)
    assert cls.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    agnostic = torch.randn(3, 4)
    _, box = fast_rcnn_losses(
        class_logits=logits, box_regression=agnostic, labels=labels, regression_targets=targets
    )
    expected = torch.nn.functional.huber_loss(agnostic[[0, 2]], targets[[0, 2]], reduction="sum") / 8
    assert box.item() == pytest.approx(expected.item(), rel=1e-6)


def _image_and_target(masks: bool = True) -> tuple[Tensor, dict]:
    torch.manual_seed(1)
    image = torch.rand(3, 200, 300)
    mask = torch.zeros(2, 200, 300, dtype=torch.uint8)
    mask[0, 40:160, 30:140] = 1
    mask[1, 20:90, 180:290] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([[30.0, 40.0, 140.0, 160.0], [180.0, 20.0, 290.0, 90.0]]),
            format="XYXY",
            canvas_size=(200, 300),
        ),
        "labels": torch.tensor([1, 3]),
    }
    if masks:
        target["masks"] = tv_tensors.Mask(mask)
    return image, target


RETINANET_LOSSES = {"classification", "bbox_regression"}
MASK_RCNN_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


@pytest.mark.parametrize("name", TINY)
def test_tiny_detectors_train_and_predict(name):
    # a ViLD model's supervised method (its distilling ones need regions: tests/models/test_vild_model.py);
    # a QMD model multitask, so that it also detects without queries (its queries: tests/models/test_qmd.py)
    options = {"vild": {"method": "vild-text"}, "qmd": {"multitask": True}}.get(name.split("-")[0], {})
    model = build(name, categories=CATS3, **options)
    one_stage = name.startswith(("retinanet", "qmd"))
    image, target = _image_and_target(masks=not one_stage)
    losses = model([image, image.flip(-1)], [target, target])
    assert set(losses) == (RETINANET_LOSSES if one_stage else MASK_RCNN_LOSSES)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        (out,) = model(torch.rand(1, 3, 120, 90))  # a batch tensor works too
    assert out["boxes"].shape[1] == 4 and out["labels"].dtype == torch.int64


def test_xywh_boxes_are_converted_and_bad_targets_named():
    model = build("retinanet-spinenet-tiny", categories=CATS3)
    image, target = _image_and_target(masks=False)
    xywh = torchvision.ops.box_convert(target["boxes"].as_subclass(Tensor), "xyxy", "xywh")
    as_xywh = {**target, "boxes": tv_tensors.BoundingBoxes(xywh, format="XYWH", canvas_size=(200, 300))}
    torch.manual_seed(0)
    a = model([image], [target])
    torch.manual_seed(0)
    b = model([image], [as_xywh])
    assert a["bbox_regression"].item() == pytest.approx(b["bbox_regression"].item(), rel=1e-5)
    with pytest.raises(VvkError, match=r"targets\[0\]\['labels'\]: 0 is outside 1..3"):
        model([image], [{**target, "labels": torch.tensor([0, 1])}])
    with pytest.raises(VvkError, match=r"targets\[0\]: missing 'masks'"):
        build("maskrcnn-spinenet-tiny", categories=CATS3)([image], [target])
    with pytest.raises(VvkError, match=r"categories\[1\]\.name"):
        build("retinanet-spinenet-tiny", categories=[{"id": 1, "name": "a"}, {"id": 2}])
    with pytest.raises(VvkError, match=r"categories\[1\]\.id: 1 appears twice"):
        build("retinanet-spinenet-tiny", categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])


# ---------------------------------------------------------------------------------------------
# Eval mode: outputs in the input's pixels, through the classifier hook


class _OneAnchor(nn.Module):
    """Class-subnet stub: logit +20 for one (level grid, y, x, channel), -20 everywhere else."""

    def __init__(self, channels: int, grid: int, y: int, x: int, channel: int):
        super().__init__()
        self.channels, self.grid, self.y, self.x, self.channel = channels, grid, y, x, channel

    def forward(self, t: Tensor) -> Tensor:
        out = t.new_full((t.shape[0], self.channels, *t.shape[-2:]), -20.0)
        if t.shape[-1] == self.grid:
            out[:, self.channel, self.y, self.x] = 20.0
        return out


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_retinanet_boxes_land_in_the_input_pixels(bf16):
    """One anchor fires (P4, cell (3, 5), scale 1, ratio 2, class 2): the detection is that
    anchor, computed from the reference formula on the 256 canvas, scaled to the 200×300 input.
    Under bf16 autocast too: anchors and decoding stay float32."""
    model = build("retinanet-spinenet-tiny", categories=CATS3, image_size=256).eval()
    num_classes = 4
    model.set_classifier(
        _OneAnchor(9 * num_classes, grid=16, y=3, x=5, channel=(3 * 1 + 2) * num_classes + 2)
    )
    for p in model.head.net.box_regressor.parameters():
        nn.init.zeros_(p)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        (out,) = model([torch.rand(3, 200, 300)])
    assert out["boxes"].dtype == torch.float32
    size = 3.0 * 16 * 2 ** (1 / 3)
    w, h, cx, cy = size * math.sqrt(2), size / math.sqrt(2), 5.5 * 16, 3.5 * 16
    scale_x, scale_y = 300 / 256, 200 / 170  # the input is resized to 256 × 170 on the canvas
    expected = [
        (cx - w / 2) * scale_x,
        (cy - h / 2) * scale_y,
        (cx + w / 2) * scale_x,
        (cy + h / 2) * scale_y,
    ]
    assert out["labels"].tolist() == [2]
    assert out["boxes"][0].tolist() == pytest.approx(expected, abs=1e-3)


class _FixedProposals(nn.Module):
    def __init__(self, box: Tensor):
        super().__init__()
        self.box = box

    def forward(self, images, features, targets=None):
        return [self.box.clone() for _ in images.image_sizes], {}


class _ConstantLogits(nn.Module):
    def __init__(self, columns: int, hot: int | None = None, value: float = 20.0):
        super().__init__()
        self.columns, self.hot, self.value = columns, hot, value

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:  # mask logits (R, C, 28, 28)
            return x.new_full((x.shape[0], self.columns, 28, 28), self.value)
        out = x.new_full((x.shape[0], self.columns), -self.value)
        out[:, self.hot] = self.value
        return out


def test_mask_rcnn_boxes_and_masks_land_in_the_input_pixels():
    model = build("maskrcnn-spinenet-tiny", categories=CATS3, image_size=256).eval()
    proposal = torch.tensor([[40.0, 30.0, 120.0, 100.0]])  # canvas pixels
    model.rpn = _FixedProposals(proposal)
    model.set_classifier(_ConstantLogits(4, hot=2))
    for p in model.roi_heads.box_predictor.bbox_pred.parameters():
        nn.init.zeros_(p)
    model.roi_heads.mask_predictor = _ConstantLogits(4)
    with torch.no_grad():
        (out,) = model([torch.rand(3, 200, 300)])
    expected = proposal[0] * torch.tensor([300 / 256, 200 / 170, 300 / 256, 200 / 170])
    assert out["labels"].tolist() == [2]
    assert out["boxes"][0].tolist() == pytest.approx(expected.tolist(), abs=1e-3)
    assert out["masks"].shape == (1, 1, 200, 300)
    ys, xs = torch.nonzero(out["masks"][0, 0] > 0.5, as_tuple=True)
    painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert [float(v) for v in painted] == pytest.approx(expected.tolist(), abs=2.0)


# ---------------------------------------------------------------------------------------------
# Hooks: class-agnostic heads, embedding classifiers, feature modulation


def test_postprocess_picks_each_class_box_or_the_agnostic_one():
    model = build("maskrcnn-spinenet-tiny", categories=CATS3)
    heads = model.roi_heads
    logits = torch.tensor([[0.0, 1.0, 1.0, 3.0]])  # softmax: background 0.04, classes 0.10, 0.10, 0.76
    proposal = [torch.tensor([[10.0, 10.0, 50.0, 50.0]])]
    per_class = torch.zeros(1, 16)
    per_class[0, 12] = 1.0  # class 3: dx = 1 (÷ weight 10 × width 40 = 4 px)
    boxes, scores, labels = heads.postprocess_detections(logits, per_class, proposal, [(100, 100)])
    by_label = dict(zip(labels[0].tolist(), boxes[0].tolist(), strict=True))
    assert by_label == {1: [10, 10, 50, 50], 2: [10, 10, 50, 50], 3: pytest.approx([14, 10, 54, 50])}
    heads.class_agnostic_box = True
    boxes, _, labels = heads.postprocess_detections(
        logits, torch.tensor([[1.0, 0, 0, 0]]), proposal, [(100, 100)]
    )
    assert sorted(labels[0].tolist()) == [1, 2, 3]
    assert all(b == pytest.approx([14, 10, 54, 50]) for b in boxes[0].tolist())


@pytest.mark.parametrize("agnostic", [False, True])
def test_masks_are_the_labels_channel_or_the_agnostic_one(agnostic):
    model = build("maskrcnn-spinenet-tiny", categories=CATS3, class_agnostic_mask=agnostic).eval()

    class ChannelIndex(nn.Module):  # logit of channel c is c (agnostic: one channel, 0.7)
        def forward(self, x: Tensor) -> Tensor:
            if agnostic:
                return x.new_full((x.shape[0], 1, 28, 28), 0.7)
            return torch.arange(4.0).view(1, 4, 1, 1).expand(x.shape[0], 4, 28, 28).clone()

    model.roi_heads.mask_predictor = ChannelIndex()
    features = model.backbone(torch.rand(1, 3, 256, 256))
    result = [{"boxes": torch.tensor([[10.0, 10.0, 80.0, 90.0]] * 2), "labels": torch.tensor([3, 1])}]
    with torch.no_grad():
        (masks,) = [r["masks"] for r in model.roi_heads._add_masks(features, result, [(256, 256)])]
    expected = [torch.sigmoid(torch.tensor(v)) for v in ((0.7, 0.7) if agnostic else (3.0, 1.0))]
    assert masks.shape == (2, 1, 28, 28)
    assert masks[:, 0, 0, 0].tolist() == pytest.approx([e.item() for e in expected])


def test_class_agnostic_heads_train_with_one_box_and_one_mask():
    model = build(
        "maskrcnn-spinenet-tiny", categories=CATS3, class_agnostic_box=True, class_agnostic_mask=True
    )
    image, target = _image_and_target()
    losses = model([image], [target])
    sum(losses.values()).backward()
    box, mask = model.roi_heads.box_predictor.bbox_pred, model.roi_heads.mask_predictor.mask_fcn_logits
    assert box.weight.shape[0] == 4 and mask.weight.shape[0] == 1
    assert box.weight.grad.abs().sum() > 0 and mask.weight.grad.abs().sum() > 0
    assert losses["loss_box_reg"] > 0 and losses["loss_mask"] > 0


def test_embedding_classifier_is_cosine_times_temperature_with_background_first():
    torch.manual_seed(0)
    emb = torch.randn(5, 8)
    clf = EmbeddingClassifier(embeddings=emb, in_features=12, temperature=100.0)
    x = torch.randn(3, 12)
    region = torch.nn.functional.normalize(clf.project(x), dim=-1)
    classes = torch.nn.functional.normalize(torch.cat([clf.background.detach(), emb]), dim=-1)
    assert torch.allclose(clf(x), 100.0 * region @ classes.t(), atol=1e-4)
    assert clf(x).shape == (3, 6) and "embeddings" in dict(clf.named_buffers())
    assert "embeddings" not in dict(clf.named_parameters())  # fixed, never trained


def test_a_new_vocabulary_keeps_the_projection_and_background_and_is_normalised():
    torch.manual_seed(0)
    clf = EmbeddingClassifier(embeddings=torch.randn(5, 8), in_features=12)
    project, background = clf.project.weight.clone(), clf.background.detach().clone()
    clf.set_embeddings(3 * torch.eye(8)[:2])
    assert torch.equal(clf.embeddings, torch.eye(8)[:2]) and clf.num_classes == 3
    assert torch.equal(clf.project.weight, project) and torch.equal(clf.background, background)
    assert background.std().item() == pytest.approx(0.01, rel=0.5)  # N(0, 0.01) as the reference's
    with pytest.raises(ValueError, match=r"expected \(K, 8\), got \(2, 4\)"):
        clf.set_embeddings(torch.randn(2, 4))


def test_retinanet_with_a_text_embedding_classifier_over_a_new_vocabulary():
    model = build("retinanet-spinenet-tiny", categories=CATS3)
    vocab = [{"id": i, "name": f"word{i}"} for i in range(1, 6)]
    clf = DenseEmbeddingClassifier(
        in_channels=16,
        num_anchors=9,
        classifier=EmbeddingClassifier(embeddings=torch.randn(5, 8), bias=focal_prior_bias()),
    )
    model.set_classifier(clf, categories=vocab)
    image, target = _image_and_target(masks=False)
    target["labels"] = torch.tensor([5, 4])  # only valid in the new vocabulary
    losses = model([image], [target])
    sum(losses.values()).backward()
    assert clf.conv.weight.grad.abs().sum() > 0 and clf.classifier.background.grad is not None
    model.eval()
    outputs = model.profile_forward([image])
    assert outputs["cls_logits"].shape[-1] == 6 and model.categories == vocab


def test_mask_rcnn_with_an_embedding_classifier_needs_class_agnostic_heads():
    vocab = [{"id": i, "name": f"word{i}"} for i in range(1, 8)]
    class_aware = build("maskrcnn-spinenet-tiny", categories=CATS3)
    fc_width = class_aware.roi_heads.box_predictor.cls_score.in_features
    clf = EmbeddingClassifier(embeddings=torch.randn(7, 8), in_features=fc_width)
    with pytest.raises(VvkError, match="class_agnostic_box=True and class_agnostic_mask=True"):
        class_aware.set_classifier(clf, categories=vocab)
    model = build(
        "maskrcnn-spinenet-tiny", categories=CATS3, class_agnostic_box=True, class_agnostic_mask=True,
        score_threshold=0.0,
    )  # fmt: skip
    model.set_classifier(clf, categories=vocab)
    image, target = _image_and_target()
    target["labels"] = torch.tensor([7, 6])
    sum(model([image], [target]).values()).backward()
    assert clf.project.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([image])
    assert len(out["labels"]) and int(out["labels"].max()) <= 7 and out["masks"].shape[1:] == (1, 200, 300)


@pytest.mark.parametrize("name", ["retinanet-spinenet-tiny", "maskrcnn-spinenet-tiny"])
def test_feature_modulation_sees_the_features_before_the_heads(name):
    model = build(name, categories=CATS3)
    image, target = _image_and_target(masks=not name.startswith("retinanet"))
    seen = []

    def silence(features: dict[str, Tensor]) -> dict[str, Tensor]:
        seen.append({k: tuple(v.shape) for k, v in features.items()})
        return {k: torch.zeros_like(v) for k, v in features.items()}

    def losses() -> dict[str, float]:
        torch.manual_seed(0)  # the RPN and RoI samplers draw at random
        return {k: v.item() for k, v in model([image], [target]).items()}

    plain = losses()
    model.set_feature_modulation(torch.nn.Identity())  # a module first: registered as a child
    model.set_feature_modulation(silence)  # then a plain function takes its place
    silenced = losses()
    model.set_feature_modulation(None)
    assert [list(s) for s in seen] == [["P3", "P4", "P5", "P6", "P7"]]
    assert seen[0]["P3"] == (1, 16, 32, 32)
    assert silenced != plain and losses() == pytest.approx(plain)


def test_backbone_runs_channels_last_with_the_contiguous_features():
    model = build("retinanet-spinenet-mobile-tiny", categories=CATS3).eval()
    layouts = []
    model.backbone.body.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    x = torch.randn(2, 3, 128, 128)  # (B, 3, H, W), contiguous
    with torch.no_grad():
        fast = model.backbone(x)
        plain = model.backbone.body(x)  # the body alone keeps the caller's layout
    assert layouts == [True, False]
    for level, features in fast.items():
        torch.testing.assert_close(features, plain[level], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoints and initialisation


@pytest.mark.parametrize("name", ["retinanet-spinenet-tiny", "maskrcnn-spinenet-tiny"])
def test_checkpoint_round_trip_keeps_categories_and_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = build(name, categories=CATS3, score_threshold=0.0, image_size=256)
    image, target = _image_and_target(masks=not name.startswith("retinanet"))
    model([image], [target])  # move the BN statistics off their defaults
    model.eval()
    with torch.no_grad():
        (before,) = model([image])
    path = save(model, tmp_path / "detector.safetensors")
    loaded = load(path).eval()
    assert loaded.categories == CATS3 and loaded.image_size == 256
    with torch.no_grad():
        (after,) = loaded([image])
    assert len(before["boxes"]) > 0
    for key in before:
        assert torch.allclose(before[key].float(), after[key].float()), key


@pytest.fixture
def fake_imagenet_resnet50(tmp_path, monkeypatch):
    """A torchvision resnet50 state dict in torch hub's cache, named as torchvision names it."""
    from vvk.paths import torch_hub_checkpoints

    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "vvk-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VVK_OFFLINE", "1")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    resnet.bn1.running_mean.uniform_()
    staged = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), staged)
    target = torch_hub_checkpoints() / f"resnet50-{sha256_file(staged)[:8]}.pth"
    target.parent.mkdir(parents=True)
    staged.rename(target)
    entry = WeightsEntry(
        name="resnet50.test",
        architecture="torchvision:resnet50",
        task="image-backbone",
        source=Source(kind="torchvision", torchvision="ResNet50_Weights.IMAGENET1K_V1"),
        file=target.name,
        sha256=sha256_file(target)[:8],
        license="BSD-3-Clause",
        paper="https://example.org",
        metrics={},
    )
    return resnet, entry


def test_imagenet_initialisation_of_the_resnet50_fpn(fake_imagenet_resnet50):
    resnet, entry = fake_imagenet_resnet50
    model = build("maskrcnn-r50-fpn", categories=CATS3)
    load_backbone_weights(model, entry.name, registry={entry.name: entry})
    body = model.backbone.body.body
    for key in ("conv1.weight", "bn1.running_mean", "layer4.2.conv3.weight"):
        assert torch.equal(body.state_dict()[key], resnet.state_dict()[key]), key
    wrong = WeightsEntry(**{**entry.__dict__, "name": "r18.test", "architecture": "torchvision:resnet18"})
    with pytest.raises(VvkError, match="not a 'torchvision:resnet50'"):
        load_backbone_weights(model, wrong.name, registry={wrong.name: wrong})
    with pytest.raises(VvkError, match="not a maskrcnn-r50-fpn"):
        load_backbone_weights(build("maskrcnn-spinenet-tiny"), entry.name, registry={entry.name: entry})


# ---------------------------------------------------------------------------------------------
# Learning: one real COCO image


def _coco_sample(shared_data: Path) -> tuple[Tensor, dict, list[dict]]:
    """The first tiny_coco image with 1–4 objects, none crowd, each at least 60 px across."""
    from vvk.data.coco import decode_segmentation, load_coco
    from vvk.data.images import load_rgb

    root = shared_data / "coco" / "tiny_coco"
    ds = load_coco(root / "annotations" / "instances_train2017.json", root / "train2017")
    for img in ds.images.values():
        anns = [a for a in ds.annotations[img.id] if not a.iscrowd]
        masks = [decode_segmentation(a.segmentation, img.height, img.width) for a in anns]
        if 1 <= len(anns) <= 4 and min(m.sum() for m in masks) > 60**2:
            break
    label = {c["id"]: i + 1 for i, c in enumerate(ds.categories)}
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    image = torch.from_numpy(load_rgb(ds.image_path(img))).permute(2, 0, 1).float() / 255
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float), format="XYXY", canvas_size=image.shape[-2:]
        ),
        "labels": torch.tensor([label[a.category_id] for a in anns]),
        "masks": tv_tensors.Mask(torch.from_numpy(np.stack(masks)).to(torch.uint8)),
    }
    return image, target, ds.categories


@pytest.mark.parametrize("name", ["retinanet-spinenet-mobile-tiny", "maskrcnn-spinenet-tiny"])
def test_tiny_detectors_fit_one_coco_image(shared_data, name):
    image, target, categories = _coco_sample(shared_data)
    if name.startswith("retinanet"):
        target.pop("masks")
    torch.manual_seed(0)
    model = build(name, categories=categories, image_size=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    history = []
    for _ in range(25):
        losses = model([image], [target])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    total = [sum(h.values()) for h in history]
    assert total[0] / total[-1] > 2.5, total
    for key in ("bbox_regression",) if name.startswith("retinanet") else ("loss_objectness", "loss_mask"):
        assert history[-1][key] < 0.8 * history[0][key], (key, history[0][key], history[-1][key])


def test_registry_entries():
    for name in DETECTORS:
        entry = get_entry(name)
        assert entry.task == "detection" and entry.default_input[0] == 3 and entry.source
    assert {"retinanet-spinenet-49", "maskrcnn-r50-fpn", "maskrcnn-spinenet-49"} <= set(DETECTORS)
