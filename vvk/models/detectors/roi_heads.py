"""Mask R-CNN's RPN and RoI heads: torchvision's, with the reference's losses, per-level batch norm
in the RPN, and class-agnostic box and mask options.

- :class:`LevelNormRPNHead`: torchvision's ``RPNHead`` (shared 3×3 convs, 1×1 objectness and
  box convs) with a batch norm *per level* after each conv, as the reference's RPN head
  ("The batch normalization layers are not shared between levels", tensorflow/tpu:
  models/official/detection/modeling/architecture/heads.py ``RpnHead``).
- :class:`ReferenceRPN`: torchvision's ``RegionProposalNetwork``; only the loss is replaced
  (:func:`~vvk.models.detectors.losses.rpn_losses`).
- :class:`BoxPredictor`: torchvision's ``FastRCNNPredictor`` whose ``cls_score`` is the
  replaceable classifier and whose ``bbox_pred`` may predict one box for all classes.
- :class:`ReferenceRoIHeads`: torchvision's ``RoIHeads`` (sampling, pooling, decoding, NMS,
  ``maskrcnn_loss`` and ``maskrcnn_inference``) with the reference's Fast R-CNN loss and the
  class-agnostic paths: a class-agnostic box is used for every class, a class-agnostic mask for
  every label (ViLD: ``class_agnostic_bbox_pred``, one 28×28 mask per RoI).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from vvk.errors import VvkError
from vvk.models.detectors.losses import fast_rcnn_losses, rpn_losses


class LevelNormRPNHead(RPNHead):
    """``num_convs`` 3×3 convs (``in_channels -> filters``, shared by the levels), each followed by
    the level's own batch norm and a ReLU; then torchvision's 1×1 objectness and box convs."""

    def __init__(
        self,
        *,
        in_channels: int,
        filters: int,
        num_anchors: int,
        num_convs: int,
        num_levels: int,
        norm_momentum: float,
        norm_eps: float,
    ):
        super().__init__(filters, num_anchors, conv_depth=0)
        self.conv = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else filters, filters, 3, padding=1) for i in range(num_convs)
        )
        norm = partial(nn.BatchNorm2d, filters, momentum=norm_momentum, eps=norm_eps)
        self.norms = nn.ModuleList(nn.ModuleList(norm() for _ in range(num_convs)) for _ in range(num_levels))
        for conv in self.conv:  # the reference's RPN init: N(0, 0.01), zero bias
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature, norms in zip(x, self.norms, strict=True):
            for conv, norm in zip(self.conv, norms, strict=True):
                feature = F.relu(norm(conv(feature)))
            # float32 under autocast: proposals decoded in bf16 would be off by pixels
            logits.append(self.cls_logits(feature).float())  # (B, A, H, W)
            deltas.append(self.bbox_pred(feature).float())  # (B, 4A, H, W)
        return logits, deltas


class ReferenceRPN(RegionProposalNetwork):
    """torchvision's RPN with the reference's loss normalisation and Huber δ 1/9."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        positive, negative = self.fg_bg_sampler(labels)  # per image (N_i,) uint8 masks
        return rpn_losses(
            objectness=objectness.flatten(),
            box_deltas=pred_bbox_deltas,
            labels=torch.cat(labels),
            regression_targets=torch.cat(regression_targets),
            sampled_positive=torch.cat(positive).bool(),
            sampled_negative=torch.cat(negative).bool(),
            num_images=len(labels),
            batch_size_per_image=self.fg_bg_sampler.batch_size_per_image,
        )


class BoxPredictor(FastRCNNPredictor):
    """``cls_score`` (R, F) -> (R, K+1) logits, the replaceable classifier; ``bbox_pred`` -> (R, 4)
    when class-agnostic, else (R, 4·(K+1)). Init as the reference's ``class-predict`` N(0, 0.01)
    and ``box-predict`` N(0, 0.001), zero biases (tensorflow/tpu: heads.py ``FastrcnnHead``)."""

    def __init__(self, in_channels: int, num_classes: int, *, class_agnostic: bool):
        super().__init__(in_channels, num_classes)
        if class_agnostic:
            self.bbox_pred = nn.Linear(in_channels, 4)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


class ReferenceRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` for boxes and masks with the reference's Fast R-CNN loss and the
    class-agnostic options (``RoIHeads``' own ``forward`` indexes boxes and masks by class)."""

    def __init__(self, *, class_agnostic_box: bool, class_agnostic_mask: bool, **roi_heads_kwargs):
        super().__init__(**roi_heads_kwargs)
        self.class_agnostic_box = class_agnostic_box
        self.class_agnostic_mask = class_agnostic_mask

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = (
            t.float() for t in self.box_predictor(box_features)
        )  # (R, C), (R, 4C | 4)
        if self.training:
            loss_classifier, loss_box_reg = fast_rcnn_losses(
                class_logits=class_logits,
                box_regression=box_regression,
                labels=torch.cat(labels),
                regression_targets=torch.cat(regression_targets),
            )
            loss_mask = self._mask_loss(features, proposals, image_shapes, targets, labels, matched_idxs)
            return [], {
                "loss_classifier": loss_classifier,
                "loss_box_reg": loss_box_reg,
                "loss_mask": loss_mask,
            }
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        result = [
            {"boxes": b, "labels": lbl, "scores": s} for b, s, lbl in zip(boxes, scores, labels, strict=True)
        ]
        return self._add_masks(features, result, image_shapes), {}

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        num_classes = class_logits.shape[-1]
        if self.class_agnostic_box:
            # (R, 4) -> (R, 4C): the one box serves every class
            box_regression = box_regression.repeat(1, num_classes)
        elif box_regression.shape[-1] != 4 * num_classes:
            boxes_for = box_regression.shape[-1] // 4
            raise VvkError(
                f"the classifier gives {num_classes} logits but the box regressor {boxes_for} classes; "
                "a classifier with another vocabulary needs class_agnostic_box=True"
            )
        return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)

    def _mask_labels(self, labels: list[Tensor]) -> list[Tensor]:
        """The mask channel of each RoI: its label, or 0 (the only one) when class-agnostic."""
        return [torch.zeros_like(lbl) for lbl in labels] if self.class_agnostic_mask else labels

    def _mask_logits(self, features, boxes: list[Tensor], image_shapes) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))).float()

    def _mask_loss(self, features, proposals, image_shapes, targets, labels, matched_idxs) -> Tensor:
        positive = [torch.where(lbl > 0)[0] for lbl in labels]  # only foreground RoIs get a mask loss
        boxes = [p[i] for p, i in zip(proposals, positive, strict=True)]
        matched = [m[i] for m, i in zip(matched_idxs, positive, strict=True)]
        logits = self._mask_logits(features, boxes, image_shapes)  # (P, 1 or C, M, M)
        gt_labels = self._mask_labels([t["labels"] for t in targets])
        return maskrcnn_loss(logits, boxes, [t["masks"] for t in targets], gt_labels, matched)

    def _add_masks(self, features, result: list[dict[str, Tensor]], image_shapes) -> list[dict[str, Tensor]]:
        logits = self._mask_logits(features, [r["boxes"] for r in result], image_shapes)
        probabilities = maskrcnn_inference(logits, self._mask_labels([r["labels"] for r in result]))
        for r, prob in zip(result, probabilities, strict=True):
            r["masks"] = prob  # (N, 1, M, M), pasted into the image by the transform
        return result
