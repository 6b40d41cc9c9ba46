"""RetinaNet over the SpineNet family: torchvision's ``RetinaNet`` with vvk's backbones and head.

torchvision's ``RetinaNet`` does the batching, anchor tiling, matching, per-level top-k, box
decoding, ``batched_nms`` and the mapping back to input pixels. vvk supplies the backbone
(through :class:`FeatureBackbone`), the head of the SpineNet tables
(``vvk.models.heads.retinanet.RetinaNetHead``, so parameter counts are those of docs/models.md)
and the reference's anchors, matching thresholds, losses and post-processing values:

=========================  ================================================================
anchors                    levels 3–7, 3 scales, aspect ratios 0.5/1/2, size 3 (SpineNet up to
                           96 and Mobile: ``retinanet_spinenet_coco`` / ``_mobile_coco`` in
                           tensorflow/models: official/vision/configs/retinanet.py), 4 for 143
                           and 190 (SpineNet paper; reference/detection.md §5.2)
matching                   IoU ≥ 0.5 positive, < 0.5 negative, each box's best anchor forced
                           positive (retinanet.py ``Parser``; official/vision/ops/anchor.py
                           ``AnchorLabeler``: ``force_match_for_each_col``)
box coding                 (dx, dy, dw, dh) with weights 1, 1, 1, 1 (anchor.py:
                           ``FasterRcnnBoxCoder()`` without scale factors; torchvision's
                           RetinaNet uses the same)
losses                     see :mod:`vvk.models.detectors.losses`
post-processing            score > 0.05, top 5000 before NMS, NMS IoU 0.5, 100 detections
                           (retinanet.py ``DetectionGenerator``)
=========================  ================================================================

Differences from the reference: torchvision takes the pre-NMS top-k per level over (anchor,
class) pairs where tf-models takes it per class over all levels; torchvision's ``Matcher``
forces *every* anchor that ties for a box's best IoU positive, tf-models one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection import _utils as det_utils

from vvk.errors import VvkError
from vvk.models.detectors.common import (
    CanvasTransform,
    DetectorHooks,
    FeatureBackbone,
    LevelAnchorGenerator,
    check_categories,
    to_image_list,
)
from vvk.models.detectors.losses import retinanet_losses
from vvk.models.heads.retinanet import HEAD_SPECS, RetinaNetHead
from vvk.models.registry import build, register

ASPECT_RATIOS = (0.5, 1.0, 2.0)  # official/vision/configs/retinanet.py: Anchor
NUM_SCALES = 3  # same
MATCH_THRESHOLD = 0.5  # same: Parser.match_threshold = unmatched_threshold
# same: DetectionGenerator
SCORE_THRESHOLD, NMS_THRESHOLD, DETECTIONS_PER_IMAGE, PRE_NMS_TOP_K = 0.05, 0.5, 100, 5000


class DenseHead(nn.Module):
    """torchvision's head interface over vvk's ``RetinaNetHead`` (``net``): ``forward`` takes the
    list of level maps, returns ``{"cls_logits": (B, N, C), "bbox_regression": (B, N, 4)}``;
    ``compute_loss`` is the reference's (:func:`retinanet_losses`)."""

    def __init__(self, net: RetinaNetHead):
        super().__init__()
        self.net = net
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        outputs = self.net(dict(zip(self.net.levels, features, strict=True)))
        cls_logits, box_deltas = self.net.flatten(outputs)
        # Losses and box decoding in float32 under autocast, as the reference casts its outputs.
        return {"cls_logits": cls_logits.float(), "bbox_regression": box_deltas.float()}

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, Tensor]:
        return retinanet_losses(
            cls_logits=head_outputs["cls_logits"],
            box_deltas=head_outputs["bbox_regression"],
            anchors=anchors,
            targets=targets,
            matched_idxs=matched_idxs,
            box_coder=self.box_coder,
        )


class RetinaNetDetector(DetectorHooks, RetinaNet):
    """torchvision's ``RetinaNet`` on a vvk backbone and head (see the module docstring).

    ``forward(images, targets=None)``: images are (3, H, W) floats in 0..1 of any size (a list,
    or a (B, 3, H, W) batch); training returns ``{"classification", "bbox_regression"}``, eval a
    list of ``{"boxes" (N, 4) XYXY in the input's pixels, "scores", "labels" in 1..K}``.

    Hooks: ``set_classifier`` swaps the class subnet's last conv (e.g. for a
    :class:`~vvk.models.detectors.classifiers.DenseEmbeddingClassifier`); ``set_feature_modulation``
    runs a callable on the feature dict before the head.
    """

    def __init__(
        self,
        *,
        backbone: FeatureBackbone,
        head: RetinaNetHead,
        categories: list[dict[str, Any]],
        image_size: int,
        anchor_size: float,
        score_threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
        detections_per_image: int = DETECTIONS_PER_IMAGE,
        pre_nms_top_k: int = PRE_NMS_TOP_K,
    ):
        levels = [int(name.lstrip("P")) for name in backbone.levels]
        anchors = LevelAnchorGenerator(
            levels=levels, anchor_size=anchor_size, num_scales=NUM_SCALES, aspect_ratios=ASPECT_RATIOS
        )
        super().__init__(
            backbone,
            num_classes=len(categories) + 1,
            anchor_generator=anchors,
            head=DenseHead(head),
            proposal_matcher=det_utils.Matcher(
                MATCH_THRESHOLD, MATCH_THRESHOLD, allow_low_quality_matches=True
            ),
            score_thresh=score_threshold,
            nms_thresh=nms_threshold,
            detections_per_img=detections_per_image,
            topk_candidates=pre_nms_top_k,
        )
        self.transform = CanvasTransform(image_size=image_size, size_divisible=2 ** max(levels))
        self.categories, self.image_size = categories, image_size

    def forward(self, images, targets=None):
        return super().forward(to_image_list(images), self.prepare_targets(targets, masks=False))

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        # Column 0 is background: never a target, so never a detection (torchvision's RetinaNet
        # would report it as label 0).
        logits = []
        for level in head_outputs["cls_logits"]:  # (B, N_l, C) each
            level = level.clone()
            level[..., 0] = float("-inf")
            logits.append(level)
        return super().postprocess_detections({**head_outputs, "cls_logits": logits}, anchors, image_shapes)

    def set_classifier(
        self, classifier: nn.Module, *, categories: list[dict[str, Any]] | None = None
    ) -> None:
        """Replace the class subnet's classifier: a module mapping the class tower's (B, C, H, W)
        to (B, A·(K+1), H, W). ``categories`` (the K it predicts) replaces ``self.categories``."""
        categories = check_categories(categories) if categories is not None else self.categories
        self.head.net.classifier = classifier
        self.head.net.num_classes = len(categories) + 1
        self.categories = categories

    def profile_forward(self, images: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """The network without its data-dependent post-processing (what ``vvk models list``
        counts MACs of): transform, backbone and head."""
        image_list, _ = self.transform(to_image_list(images))
        return self.head(list(self.backbone(image_list.tensors).values()))


def retinanet(
    *,
    backbone: str,
    image_size: int,
    anchor_size: float,
    categories: list[dict[str, Any]] | None = None,
    head: Sequence[Any] | None = None,
    backbone_options: dict[str, Any] | None = None,
    score_threshold: float = SCORE_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
    detections_per_image: int = DETECTIONS_PER_IMAGE,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
) -> RetinaNetDetector:
    """RetinaNet on registry backbone ``backbone`` (its P3–P7 maps).

    Args:
        categories: the K categories (None: the 80 of COCO; see ``coco_categories``).
        image_size: the square canvas images are resized (long side) and padded to.
        anchor_size: anchor side in units of the level's stride, at the first scale.
        head: ``(num_convs, num_filters, separable)``; default ``HEAD_SPECS[backbone]``.
        backbone_options: keyword arguments of the backbone (``{"stochastic_depth_rate": 0.2}``).
    """
    categories = check_categories(categories)
    if head is None:
        if backbone not in HEAD_SPECS:
            raise VvkError(
                f"backbone '{backbone}': no reference RetinaNet head; pass head=[convs, filters, sep]"
            )
        head = HEAD_SPECS[backbone]
    num_convs, num_filters, separable = head
    body = build(backbone, **(backbone_options or {}))
    shapes = body.output_shape()
    width = next(iter(shapes.values())).channels
    net = RetinaNetHead(
        in_channels=width,
        num_classes=len(categories) + 1,
        num_anchors=NUM_SCALES * len(ASPECT_RATIOS),
        levels=tuple(shapes),
        num_convs=num_convs,
        num_filters=num_filters,
        separable=bool(separable),
    )
    return RetinaNetDetector(
        backbone=FeatureBackbone(body, levels=tuple(shapes), out_channels=width),
        head=net,
        categories=categories,
        image_size=image_size,
        anchor_size=anchor_size,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        detections_per_image=detections_per_image,
        pre_nms_top_k=pre_nms_top_k,
    )


def focal_prior_bias(prior_prob: float = 0.01) -> float:
    """The classifier bias RetinaNet starts from, ``-log((1 - p) / p)`` (for an
    ``EmbeddingClassifier`` that replaces a sigmoid classifier)."""
    return -math.log((1 - prior_prob) / prior_prob)


# (backbone, canvas, anchor size, head or None for HEAD_SPECS). Canvases: the backbones' reference
# inputs (configs/spinenet/*_retinanet.yaml, coco_spinenet49{,s,xs}_mobile_tpu.yaml); Eff-SpineNet
# has no reference detection config: its head follows SpineNet-Mobile's rule (separable convs as
# wide as the endpoints) and its canvases are the backbone registry's assumed defaults.
_EFF_ENDPOINTS = {"m0": 24, "m1": 40, "m2": 64, "d0": 64, "d1": 88, "d2": 112, "d3": 160, "d4": 224}
VARIANTS: dict[str, tuple[str, int, float, tuple[int, int, bool] | None]] = {
    "retinanet-spinenet-49s": ("spinenet-49s", 640, 3.0, None),
    "retinanet-spinenet-49": ("spinenet-49", 640, 3.0, None),
    "retinanet-spinenet-96": ("spinenet-96", 1024, 3.0, None),
    "retinanet-spinenet-143": ("spinenet-143", 1280, 4.0, None),
    "retinanet-spinenet-190": ("spinenet-190", 1280, 4.0, None),
    "retinanet-spinenet-mobile-49": ("spinenet-mobile-49", 384, 3.0, None),
    "retinanet-spinenet-mobile-49s": ("spinenet-mobile-49s", 384, 3.0, None),
    "retinanet-spinenet-mobile-49xs": ("spinenet-mobile-49xs", 256, 3.0, None),
    **{
        f"retinanet-eff-spinenet-{m}": (f"eff-spinenet-{m}", 384 if m[0] == "m" else 640, 3.0, (4, e, True))
        for m, e in _EFF_ENDPOINTS.items()
    },
    "retinanet-spinenet-tiny": ("spinenet-tiny", 256, 3.0, None),
    "retinanet-spinenet-mobile-tiny": ("spinenet-mobile-tiny", 256, 3.0, None),
}
_SOURCE = (
    "torchvision RetinaNet; anchors, losses, NMS: tensorflow/models official/vision/configs/retinanet.py"
)


def _register(name: str, backbone: str, size: int, anchor_size: float, head) -> None:
    fixed = {"backbone": backbone, "image_size": size, "anchor_size": anchor_size}
    if head is not None:
        fixed["head"] = list(head)
    note = "; head: vvk.models.heads.retinanet.HEAD_SPECS" if head is None else ""
    note += "; head: SpineNet-Mobile's rule, no reference config" if head is not None else ""
    note += "; tiny test variant" if name.endswith("-tiny") else ""

    def builder(**overrides: Any) -> RetinaNetDetector:
        return retinanet(**{**fixed, **overrides})

    builder.__name__ = name.replace("-", "_")
    register(name, task="detection", default_input=(3, size, size), source=_SOURCE + note)(builder)


for _name, _spec in VARIANTS.items():
    _register(_name, *_spec)
