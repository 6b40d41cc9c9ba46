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
from torchvision.ops import boxes as box_ops

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
            return [], self.training_losses(features, proposals, image_shapes, targets)
        pooled = self.box_roi_pool(features, proposals, image_shapes)  # (R, C, 7, 7)
        box_features = self.box_head(pooled)  # (R, F)
        class_logits, box_regression = (
            t.float() for t in self.box_predictor(box_features)
        )  # (R, C), (R, 4C | 4)
        scores = self.category_scores(class_logits, pooled=pooled, box_features=box_features)
        boxes, scores, labels = self.detect(scores, box_regression, proposals, image_shapes)
        result = [
            {"boxes": b, "labels": lbl, "scores": s} for b, s, lbl in zip(boxes, scores, labels, strict=True)
        ]
        return self._add_masks(features, result, image_shapes), {}

    def training_losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        """Sample RoIs against the targets; the Fast R-CNN and mask losses of the samples."""
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        losses = self.box_losses(box_features, labels, regression_targets)
        losses["loss_mask"] = self._mask_loss(
            features, proposals, image_shapes, targets, labels, matched_idxs
        )
        return losses

    def box_losses(self, box_features: Tensor, labels, regression_targets) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` of the sampled RoIs' (R, F) box features."""
        class_logits, box_regression = (t.float() for t in self.box_predictor(box_features))
        loss_classifier, loss_box_reg = fast_rcnn_losses(
            class_logits=self.training_logits(class_logits),
            box_regression=box_regression,
            labels=torch.cat(labels),
            regression_targets=torch.cat(regression_targets),
        )
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def training_logits(self, class_logits: Tensor) -> Tensor:
        """The (R, C') logits the class loss sees, from the (R, C) of the predictor: the same."""
        return class_logits

    def category_scores(self, class_logits: Tensor, *, pooled: Tensor, box_features: Tensor) -> Tensor:
        """(R, K) scores of the categories from the RoIs' (R, K+1) logits (and, for heads that
        score otherwise, their pooled (R, C, h, w) and box-head (R, F) features): the softmax
        without its background column."""
        return class_logits.softmax(dim=-1)[:, 1:]

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """torchvision's signature: detections from (R, K+1) logits (:meth:`detect`)."""
        return self.detect(class_logits.softmax(dim=-1)[:, 1:], box_regression, proposals, image_shapes)

    def detect(
        self, scores: Tensor, box_regression: Tensor, proposals: list[Tensor], image_shapes
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image ``(boxes, scores, labels in 1..K)`` from (R, K) category scores of the RoIs
        (background left out): torchvision's post-processing (decode, clip, score threshold,
        tiny boxes out, NMS per class, the best ``detections_per_img``) for any score, so that
        ViLD's ensemble can score boxes by more than one softmax."""
        num_categories = scores.shape[-1]
        # (R, 1 | K+1, 4); reshaped here, as torchvision leaves it flat when there is no RoI
        per_roi = box_regression.shape[-1] // 4
        boxes = self.box_coder.decode(box_regression, proposals).reshape(len(box_regression), per_roi, 4)
        if self.class_agnostic_box:
            boxes = boxes.expand(-1, num_categories, -1)  # the one box serves every category
        elif boxes.shape[1] != num_categories + 1:
            raise VvkError(
                f"the classifier scores {num_categories} categories but the box regressor "
                f"{boxes.shape[1] - 1}; a classifier with another vocabulary needs class_agnostic_box=True"
            )
        else:
            boxes = boxes[:, 1:]  # (R, K, 4) without the background's
        labels = torch.arange(1, num_categories + 1, device=scores.device).expand_as(scores)  # (R, K)
        per_image = [len(p) for p in proposals]
        results: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
        split = (t.split(per_image) for t in (boxes, scores, labels))
        for b, s, lbl, shape in zip(*split, image_shapes, strict=True):
            b, s, lbl = box_ops.clip_boxes_to_image(b, shape).reshape(-1, 4), s.reshape(-1), lbl.reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            b, s, lbl = b[keep], s[keep], lbl[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, lbl = b[keep], s[keep], lbl[keep]
            keep = box_ops.batched_nms(b, s, lbl, self.nms_thresh)[: self.detections_per_img]
            for out, value in zip(results, (b[keep], s[keep], lbl[keep]), strict=True):
                out.append(value)
        return results

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
