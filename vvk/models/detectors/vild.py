"""ViLD detectors (Gu et al., ICLR 2022): a registered Mask R-CNN with class-agnostic boxes and
masks, a text classifier, region distillation and the ensemble.

As tensorflow/tpu: models/official/detection/projects/vild does it (``modeling/vild_head.py``,
``vild_model.py``, ``ops/postprocess_ops.py``; configs/vild_config.py):

- the box head's features are projected to the teacher's width and normalised: the *region
  embedding*; the classifier is an :class:`~vvk.models.detectors.classifiers.EmbeddingClassifier`
  (cosines with the frozen text embeddings and a learned background, x 100);
- ``vild-text``: softmax cross-entropy over background + the training categories, with a logit
  of 0 for each novel category left out of them (the reference's ``mask_rare``);
- ``vild-image``: no classification loss; the embeddings of the teacher's proposals are pulled to
  the teacher's (:func:`~vvk.models.detectors.vild_scoring.distillation_loss`, x
  ``distill_weight``);
- ``vild``: both, one head: the proposals go through the box head *with* the sampled RoIs (the
  reference concatenates them, so they share its batch norm statistics), then the projection;
- ``vild-ensemble``: the text head learns the classification loss only; a second head (its own
  convs, fcs and projection) learns the distillation only.

Scores at test time (R RoIs, K categories): ``vild-text`` and ``vild`` the text head's softmax
(background dropped); ``vild-image`` the softmax over the K categories of the image embedding's
scaled cosines; ``vild-ensemble`` :func:`~vvk.models.detectors.vild_scoring.ensemble_scores` of
both, with the ``base`` mask of the vocabulary (True: a category trained with boxes).

``vild-r50-fpn`` is the paper's (ResNet-50-FPN, configs/vild_resnet.yaml); ``vild-spinenet-tiny``
the CPU variant on ``maskrcnn-spinenet-tiny``. A model is built with its vocabulary's size
(``categories``) and width (``embedding_dim``); the text embeddings are a buffer of the
checkpoint, set by :func:`set_vocabulary`, which also swaps in another vocabulary at test time
(the box and mask heads are class-agnostic, so any K fits)::

    model = vvk.models.build("vild-spinenet-tiny", method="vild", categories=base, embedding_dim=512)
    set_vocabulary(model, teacher.embed_vocabulary(names), categories=all_categories, base=mask)
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.models.detectors.classifiers import EmbeddingClassifier
from vvk.models.detectors.common import check_categories, register_variants
from vvk.models.detectors.mask_rcnn import VARIANTS, MaskRCNNDetector, mask_rcnn
from vvk.models.detectors.roi_heads import ReferenceRoIHeads
from vvk.models.detectors.vild_scoring import distillation_loss, ensemble_scores
from vvk.models.registry import ARCH_ATTR

Method = Literal["vild-text", "vild-image", "vild", "vild-ensemble"]
METHODS: tuple[Method, ...] = ("vild-text", "vild-image", "vild", "vild-ensemble")
DISTILL_WEIGHT = 0.5  # feat_distill_weight of configs/vild_resnet.yaml (R50; 1.0 / 2.0 for R152)


def fresh_copy(module: nn.Module) -> nn.Module:
    """``module``'s architecture with newly initialised parameters (the ensemble's image head)."""
    clone = copy.deepcopy(module)
    for layer in clone.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return clone


class ViLDRoIHeads(ReferenceRoIHeads):
    """:class:`ReferenceRoIHeads` (class-agnostic boxes and masks) trained and scored as
    ``method`` says (module docstring). ``box_predictor.cls_score`` must be an
    :class:`EmbeddingClassifier`; targets may carry ``region_boxes`` (R, 4) and
    ``region_embeddings`` (R, D), the teacher's (:mod:`vvk.methods.vild.regions`)."""

    def __init__(self, *, method: Method, distill_weight: float = DISTILL_WEIGHT, **roi_heads_kwargs):
        if method not in METHODS:
            raise ValueError(f"method: one of {', '.join(METHODS)}, got {method!r}")
        super().__init__(**roi_heads_kwargs)
        if not (self.class_agnostic_box and self.class_agnostic_mask):
            raise ValueError("ViLD's boxes and masks are class-agnostic: class_agnostic_box/_mask=True")
        self.method, self.distill_weight = method, distill_weight
        self.absent_categories = 0  # set_vocabulary's ``absent``: see training_logits
        self.image_head: nn.Module | None = None
        self.image_project: nn.Module | None = None
        self.register_buffer("base", torch.ones(0, dtype=torch.bool))  # (K,) set with the classifier

    @property
    def classifier(self) -> EmbeddingClassifier:
        return self.box_predictor.cls_score

    def set_text_classifier(self, classifier: EmbeddingClassifier, base: Tensor) -> None:
        """The text classifier of K categories and their (K,) ``base`` mask; the ensemble's image
        head is made on the first call, with a projection to the classifier's width."""
        self.box_predictor.cls_score = classifier
        self.base = base.bool().to(classifier.embeddings.device)
        if self.method == "vild-ensemble" and self.image_head is None:
            self.image_head = fresh_copy(self.box_head)
            self.image_project = fresh_copy(classifier.project)

    def training_logits(self, class_logits: Tensor) -> Tensor:
        """(R, 1 + K) -> (R, 1 + K + A): the ``absent_categories`` A (the novel ones, left out of
        the training vocabulary) stay in the softmax with logit 0, as the reference's
        ``mask_rare`` multiplies their logits by 0 (``modeling/vild_losses.py``,
        ``FastrcnnClassLoss``): the background and base logits must rise above 0, not only above
        each other. Labels never point at them; the columns' order does not change the loss."""
        return F.pad(class_logits, (0, self.absent_categories))

    @property
    def distills(self) -> bool:
        return self.method != "vild-text"

    def _image_embeddings(self, pooled: Tensor, features: Tensor | None = None) -> Tensor:
        """(N, D) unit region embeddings of the image branch: the ensemble's own head, or the
        text head's ``features`` (its box head's output on ``pooled``) and projection."""
        if self.image_head is not None:
            return F.normalize(self.image_project(self.image_head(pooled)), dim=-1)
        return F.normalize(self.classifier.project(features), dim=-1)

    def training_losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        regions = [
            t.get("region_boxes", p.new_zeros((0, 4))) for t, p in zip(targets, proposals, strict=True)
        ]
        shared = self.distills and self.image_head is None  # vild, vild-image: one head for both
        boxes = [torch.cat([p, r]) for p, r in zip(proposals, regions, strict=True)] if shared else proposals
        pooled = self.box_roi_pool(
            features, boxes, image_shapes
        )  # (N, C, 7, 7): per image, RoIs then regions
        box_features = self.box_head(pooled)  # (N, F)
        is_region = torch.cat(
            [
                torch.arange(len(b), device=pooled.device) >= len(p)
                for b, p in zip(boxes, proposals, strict=True)
            ]
        )  # (N,)
        losses = self.box_losses(box_features[~is_region], labels, regression_targets)
        if self.method == "vild-image":
            del losses["loss_classifier"]
        if self.distills:
            if shared:
                embeddings = self._image_embeddings(pooled[is_region], box_features[is_region])
            else:
                embeddings = self._image_embeddings(self.box_roi_pool(features, regions, image_shapes))
            if not all("region_embeddings" in t for t in targets):
                raise VvkError(f"{self.method} distils region embeddings: targets need region_boxes and "
                               "region_embeddings")  # fmt: skip
            teacher = torch.cat([t["region_embeddings"] for t in targets]).to(embeddings)  # (M, D)
            # every region is valid: those a crop cut away left the targets with their embeddings
            valid = torch.ones(len(teacher), dtype=torch.bool, device=teacher.device)
            losses["loss_distill"] = self.distill_weight * distillation_loss(
                embeddings[None].float(), teacher[None], valid[None]
            )
        losses["loss_mask"] = self._mask_loss(
            features, proposals, image_shapes, targets, labels, matched_idxs
        )
        return losses

    def category_scores(self, class_logits: Tensor, *, pooled: Tensor, box_features: Tensor) -> Tensor:
        if self.method in ("vild-text", "vild"):
            return super().category_scores(class_logits, pooled=pooled, box_features=box_features)
        image = self._image_embeddings(pooled, box_features)  # (R, D)
        classes = self.classifier.embeddings.to(image.dtype)  # (K, D), unit rows
        image_logits = self.classifier.temperature * image @ classes.t()  # (R, K)
        if self.method == "vild-image":
            return image_logits.float().softmax(dim=-1)
        return ensemble_scores(class_logits, image_logits, self.base)


CLIP_DIM = 512  # CLIP ViT-B/32's embedding width: the reference's "project-to-clip" dense(512)


def vild(
    *,
    detector: str,
    method: Method = "vild",
    categories: list[dict[str, Any]] | None = None,
    base: list[bool] | None = None,
    embedding_dim: int = CLIP_DIM,
    distill_weight: float = DISTILL_WEIGHT,
    teacher: str | None = None,
    **mask_rcnn_options: Any,
) -> MaskRCNNDetector:
    """ViLD on the Mask R-CNN variant ``detector`` (a ``maskrcnn-*`` registry name).

    Args:
        method: ``vild-text``, ``vild-image``, ``vild`` or ``vild-ensemble``.
        categories: the K categories of the vocabulary (None: COCO's 80).
        base: (K,) True for the categories trained with boxes (None: all); the ensemble weighs
            its two heads by it.
        embedding_dim: the teacher's embedding width D.
        teacher: the teacher whose text embeddings the classifier holds (``--teacher``), kept as
            ``model.teacher`` so that a new vocabulary is embedded by the same one.
        mask_rcnn_options: the variant's options to change (``image_size``, ``anchor_size``, ...).
    """
    if method not in METHODS:
        raise VvkError(f"method={method}: one of {', '.join(METHODS)}", params=("method",))
    backbone, size, anchor_size, options = VARIANTS[detector]
    categories = check_categories(categories)
    base_mask = torch.ones(len(categories), dtype=torch.bool) if base is None else torch.tensor(base)
    if base_mask.shape != (len(categories),):
        raise VvkError(f"base: {len(base_mask)} flags for {len(categories)} categories")
    model = mask_rcnn(
        **{
            "backbone": backbone,
            "image_size": size,
            "anchor_size": anchor_size,
            **options,
            **mask_rcnn_options,
        },
        categories=categories,
        class_agnostic_box=True,
        class_agnostic_mask=True,
        roi_heads_type=partial(ViLDRoIHeads, method=method, distill_weight=distill_weight),
    )
    features = model.roi_heads.box_predictor.cls_score.in_features
    classifier = EmbeddingClassifier(
        embeddings=torch.zeros(len(categories), embedding_dim), in_features=features
    )
    # the reference's class-predict layer is frozen whole (train.frozen_variable_prefix), its bias
    # at 0; a learned offset would lift every trained logit above the absent categories' zeros
    classifier.bias.requires_grad_(False)
    model.roi_heads.set_text_classifier(classifier, base_mask)
    model.teacher = teacher
    return model


def set_vocabulary(
    model: MaskRCNNDetector,
    embeddings: Tensor,
    *,
    categories: list[dict[str, Any]],
    base: Tensor | None = None,
    absent: int = 0,
) -> None:
    """Give a ViLD ``model`` the (K, D) text embeddings of ``categories`` and their (K,) ``base``
    mask (None: all base), keeping its projection and background; the recorded architecture
    follows, so that a saved checkpoint rebuilds with this vocabulary. ``absent``: how many
    categories of the data this (training) vocabulary leaves out (``ViLDRoIHeads.training_logits``)."""
    heads = model.roi_heads
    if not isinstance(heads, ViLDRoIHeads):
        raise VvkError("set_vocabulary: not a ViLD model (vvk models list 'vild-*')")
    categories = check_categories(categories)
    classifier: EmbeddingClassifier = heads.classifier
    if embeddings.shape != (len(categories), classifier.embeddings.shape[1]):
        raise VvkError(
            f"vocabulary: embeddings {tuple(embeddings.shape)} for {len(categories)} categories of width "
            f"{classifier.embeddings.shape[1]}"
        )
    base = torch.ones(len(categories), dtype=torch.bool, device="cpu") if base is None else base.bool().cpu()
    classifier.set_embeddings(embeddings)
    heads.set_text_classifier(classifier, base)
    heads.absent_categories = absent
    model.categories = categories
    arch = getattr(model, ARCH_ATTR, None)
    if arch is not None:
        arch["kwargs"].update(categories=categories, base=base.tolist())


_VARIANTS = {"vild-r50-fpn": "maskrcnn-r50-fpn", "vild-spinenet-tiny": "maskrcnn-spinenet-tiny"}
_SOURCE = "tensorflow/tpu models/official/detection/projects/vild (configs/vild_resnet.yaml) on "


register_variants(_VARIANTS, vild, image_size=lambda detector: VARIANTS[detector][1], source=_SOURCE)
