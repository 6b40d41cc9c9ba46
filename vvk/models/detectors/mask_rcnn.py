"""Mask R-CNN on torchvision's ResNet-50-FPN or a SpineNet: torchvision's ``GeneralizedRCNN``
assembled from its RPN, ``MultiScaleRoIAlign``, ``FastRCNNConvFCHead``, ``MaskRCNNHeads`` and
``MaskRCNNPredictor``, with the reference's values (tensorflow/tpu: models/official/detection):

=========================  ================================================================
anchors                    1 scale, aspect ratios 0.5/1/2 (configs/maskrcnn_config.py), size 8
                           on FPN P2–P6 (same file), 3 on SpineNet P3–P7 and 5 for SpineNet-190
                           (configs/spinenet/spinenet*_mrcnn.yaml)
RPN                        one shared 3×3 conv with a BN per level (architecture/heads.py);
                           IoU 0.7 / 0.3, 256 anchors per image, half positive; 2000 (training)
                           / 1000 (test) boxes per level before NMS 0.7, 1000 after
                           (maskrcnn_config.py: ``rpn_*``, ``roi_proposal``)
RoI sampling               512 per image, 25% foreground, IoU 0.5 (``roi_sampling``)
box coding                 weights 10, 10, 5, 5 (torchvision's default = the reference's)
heads                      conv + BN: per the yaml of each model (below); 7×7 box and 14×14 ->
                           28×28 mask RoIs
losses                     :mod:`vvk.models.detectors.losses` (Huber δ 1/9 RPN, 1.0 box)
post-processing            NMS 0.5, 100 detections (``postprocess``); score > 0.05, where the
                           reference keeps 0.0 but caps the candidates at 1000 (torchvision's
                           ``RoIHeads`` has no cap, and 0.05 bounds the NMS work on a CPU)
=========================  ================================================================

Where torchvision's heads differ from the reference's: no batch norm after the box head's fully
connected layers and the mask head's deconvolution (a few thousand parameters), convs with a
norm have no bias, and FPN P6 is torchvision's max pool of P5 (the reference uses a strided
conv). ``maskrcnn-r50-fpn`` starts from random weights; :func:`load_backbone_weights` copies an
ImageNet ResNet-50 from ``weights.toml`` (``resnet50.tv_in1k``) into it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vvk.errors import VvkError
from vvk.models.detectors.common import (
    CanvasTransform,
    DetectorHooks,
    FeatureBackbone,
    LevelAnchorGenerator,
    check_categories,
    to_image_list,
)
from vvk.models.detectors.roi_heads import BoxPredictor, LevelNormRPNHead, ReferenceRoIHeads, ReferenceRPN
from vvk.models.registry import build, register

ASPECT_RATIOS = (0.5, 1.0, 2.0)  # tensorflow/tpu configs/maskrcnn_config.py: anchor (1 scale)
RESNET50_FPN = "torchvision:resnet50"


class MaskRCNNDetector(DetectorHooks, GeneralizedRCNN):
    """torchvision's ``GeneralizedRCNN`` (transform, backbone, RPN, RoI heads) with vvk's hooks.

    ``forward(images, targets=None)``: training returns ``{"loss_objectness",
    "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}``; eval a list of
    ``{"boxes", "scores", "labels", "masks" (N, 1, H, W) probabilities}`` in the input's pixels.

    Hooks: ``set_classifier`` swaps ``roi_heads.box_predictor.cls_score`` (a module mapping the
    box head's (R, F) features to (R, K+1) logits); ``set_feature_modulation`` runs a callable on
    the feature dict before the RPN and the RoI heads.
    """

    def __init__(
        self,
        *,
        backbone: FeatureBackbone,
        levels: Sequence[int],
        categories: list[dict[str, Any]],
        image_size: int,
        anchor_size: float,
        rpn: nn.Module,
        roi_heads: ReferenceRoIHeads,
    ):
        super().__init__(
            backbone, rpn, roi_heads, CanvasTransform(image_size=image_size, size_divisible=2 ** max(levels))
        )
        self.categories, self.image_size, self.anchor_size = categories, image_size, anchor_size

    def forward(self, images, targets=None):
        return super().forward(to_image_list(images), self.prepare_targets(targets, masks=True))

    def set_classifier(
        self, classifier: nn.Module, *, categories: list[dict[str, Any]] | None = None
    ) -> None:
        """Replace the box head's classifier (``(R, F) -> (R, K+1)``); a new vocabulary
        (``categories``) needs class-agnostic boxes and masks, whose outputs fit any K."""
        heads = self.roi_heads
        if categories is not None:
            categories = check_categories(categories)
            if len(categories) != len(self.categories) and not (
                heads.class_agnostic_box and heads.class_agnostic_mask
            ):
                raise VvkError(
                    "categories: a classifier over another number of categories needs a model built with "
                    "class_agnostic_box=True and class_agnostic_mask=True"
                )
            self.categories = categories
        heads.box_predictor.cls_score = classifier

    def profile_forward(self, images: Tensor | Sequence[Tensor]) -> None:
        """The network at its test-time sizes without the data-dependent steps (what ``vvk models
        list`` counts MACs of): backbone, RPN head, box head on the RPN's 1000 proposals per image,
        mask head on the 100 detections. RoIAlign and NMS have no MACs."""
        image_list, _ = self.transform(to_image_list(images))
        features = self.backbone(image_list.tensors)
        self.rpn.head(list(features.values()))
        heads, batch = self.roi_heads, len(image_list.image_sizes)
        first = next(iter(features.values()))
        rois = first.new_zeros(
            (batch * self.rpn.post_nms_top_n(), first.shape[1], *heads.box_roi_pool.output_size)
        )
        heads.box_predictor(heads.box_head(rois))
        masks = first.new_zeros(
            (batch * heads.detections_per_img, first.shape[1], *heads.mask_roi_pool.output_size)
        )
        heads.mask_predictor(heads.mask_head(masks))


def _resnet50_fpn(norm) -> FeatureBackbone:
    """torchvision's ResNet-50 with an FPN (P2–P5 from layer1–4, P6 by max pool), batch norm in
    both as the reference's ``fpn.use_batch_norm`` (configs/base_config.py)."""
    body = BackboneWithFPN(
        resnet50(weights=None, norm_layer=norm),
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=256,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm,
    )
    return FeatureBackbone(body, levels=("0", "1", "2", "3", "pool"), out_channels=256)


def mask_rcnn(
    *,
    backbone: str,
    image_size: int,
    anchor_size: float,
    categories: list[dict[str, Any]] | None = None,
    class_agnostic_box: bool = False,
    class_agnostic_mask: bool = False,
    head_filters: int = 256,
    rpn_convs: int = 1,
    box_convs: int = 4,
    box_fcs: int = 1,
    fc_dim: int = 1024,
    mask_convs: int = 4,
    roi_samples: int = 512,
    norm_momentum: float = 0.01,
    norm_eps: float = 1e-3,
    backbone_options: dict[str, Any] | None = None,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    detections_per_image: int = 100,
    roi_heads_type: Callable[..., ReferenceRoIHeads] = ReferenceRoIHeads,
) -> MaskRCNNDetector:
    """Mask R-CNN on ``backbone``: ``"torchvision:resnet50"`` (FPN P2–P6) or a registry backbone
    (its P3–P7 maps).

    Args:
        categories: the K categories (None: the 80 of COCO).
        class_agnostic_box / class_agnostic_mask: one box / one mask per RoI for every class.
        head_filters, rpn_convs, box_convs, box_fcs, fc_dim, mask_convs: the heads' widths and
            depths (the reference yaml's ``num_filters``, ``num_convs``, ``num_fcs``, ``fc_dims``).
        roi_samples: RoIs sampled per training image for the box head, a quarter of them
            positive (the yaml's ``roi_sampling.num_samples_per_image: 512``, ``fg_fraction 0.25``).
        norm_momentum, norm_eps: batch norm of the heads (and of ResNet-50 and its FPN), PyTorch's
            convention (TF momentum 0.99 = 0.01 here).
        roi_heads_type: the RoI heads' class (a method's own, ViLD's), given the same arguments.
    """
    categories = check_categories(categories)
    norm = partial(nn.BatchNorm2d, momentum=norm_momentum, eps=norm_eps)
    if backbone == RESNET50_FPN:
        features, levels = _resnet50_fpn(norm), (2, 3, 4, 5, 6)
    else:
        body = build(backbone, **(backbone_options or {}))
        shapes = body.output_shape()
        features = FeatureBackbone(
            body, levels=tuple(shapes), out_channels=next(iter(shapes.values())).channels
        )
        levels = tuple(int(name.lstrip("P")) for name in shapes)
    channels, num_classes = features.out_channels, len(categories) + 1
    anchors = LevelAnchorGenerator(
        levels=levels, anchor_size=anchor_size, num_scales=1, aspect_ratios=ASPECT_RATIOS
    )
    rpn_head = LevelNormRPNHead(
        in_channels=channels,
        filters=head_filters,
        num_anchors=len(ASPECT_RATIOS),
        num_convs=rpn_convs,
        num_levels=len(levels),
        norm_momentum=norm_momentum,
        norm_eps=norm_eps,
    )
    rpn = ReferenceRPN(
        anchors, rpn_head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
        positive_fraction=0.5, pre_nms_top_n={"training": 2000, "testing": 1000},
        post_nms_top_n={"training": 1000, "testing": 1000}, nms_thresh=0.7,
    )  # fmt: skip
    names = list(features.levels)
    box_head = FastRCNNConvFCHead(
        (channels, 7, 7), [head_filters] * box_convs, [fc_dim] * box_fcs, norm_layer=norm
    )
    mask_classes = 1 if class_agnostic_mask else num_classes
    roi_heads = roi_heads_type(
        class_agnostic_box=class_agnostic_box,
        class_agnostic_mask=class_agnostic_mask,
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=BoxPredictor(fc_dim, num_classes, class_agnostic=class_agnostic_box),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=roi_samples, positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=score_threshold, nms_thresh=nms_threshold, detections_per_img=detections_per_image,
        mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [head_filters] * mask_convs, 1, norm_layer=norm),
        mask_predictor=MaskRCNNPredictor(head_filters, head_filters, mask_classes),
    )  # fmt: skip
    return MaskRCNNDetector(
        backbone=features,
        levels=levels,
        categories=categories,
        image_size=image_size,
        anchor_size=anchor_size,
        rpn=rpn,
        roi_heads=roi_heads,
    )


def load_backbone_weights(
    model: MaskRCNNDetector, weights: str = "resnet50.tv_in1k", *, registry: dict | None = None
) -> None:
    """Copy an ImageNet ResNet-50 (a ``torchvision:resnet50`` entry of ``weights.toml``, checked
    against its sha256) into a ``maskrcnn-r50-fpn`` model's backbone, every key strictly.

    Kept out of the builder so that a trained checkpoint rebuilds without fetching the
    initialisation again.
    """
    from vvk.models.checkpoint import load_strictly
    from vvk.models.pretrained import load
    from vvk.weights import get

    entry = get(weights, registry=registry)
    if entry.architecture != RESNET50_FPN:
        raise VvkError(f"weights '{weights}': holds a '{entry.architecture}', not a '{RESNET50_FPN}'")
    body = getattr(model.backbone.body, "body", None)
    if not isinstance(model.backbone.body, BackboneWithFPN) or body is None:
        raise VvkError("load_backbone_weights: the model is not a maskrcnn-r50-fpn (no ResNet-50 backbone)")
    resnet = load(weights, registry=registry)
    state = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    load_strictly(weights, lambda: body.load_state_dict(state, strict=False))


# name -> (backbone, canvas, anchor size, head options). Sources: tensorflow/tpu
# models/official/detection/projects/copy_paste/configs/maskrcnn_resnet50_1024.yaml (R50-FPN:
# box 4 convs + 2 fc, mask 4 convs, BN 0.997 / 1e-4) and
# configs/spinenet/spinenet{49s,49,96,143,190}_mrcnn.yaml (box 4 convs + 1 fc; 49S 128 filters and
# a 512-wide fc; 190 7 convs of 384; BN 0.99 / 1e-3). The RPN has one conv everywhere: the
# reference's ``RpnHead`` (modeling/architecture/heads.py) applies a single conv whatever its
# ``num_convs`` says, and with one conv the published SpineNet counts reproduce (190: 168.2M).
_R50 = {"box_fcs": 2, "norm_momentum": 0.003, "norm_eps": 1e-4}
_SMALL = {"head_filters": 128, "fc_dim": 512}
_WIDE = {"head_filters": 384, "box_convs": 7, "mask_convs": 7}
# vvk's CPU variant: heads of 16 filters and a 64-wide fc named the example's digits poorly (box
# AP50 0.23 at 700 steps); 32 filters and a 256-wide fc reach 0.45 at 650, and sampling 256 RoIs
# per image instead of 512 pays for the width (docs/results.md).
_TINY = {"head_filters": 32, "box_convs": 2, "fc_dim": 256, "mask_convs": 2, "roi_samples": 256}
VARIANTS: dict[str, tuple[str, int, float, dict[str, Any]]] = {
    "maskrcnn-r50-fpn": (RESNET50_FPN, 1024, 8.0, _R50),
    "maskrcnn-spinenet-49s": ("spinenet-49s", 640, 3.0, _SMALL),
    "maskrcnn-spinenet-49": ("spinenet-49", 640, 3.0, {}),
    "maskrcnn-spinenet-96": ("spinenet-96", 1024, 3.0, {}),
    "maskrcnn-spinenet-143": ("spinenet-143", 1280, 3.0, {}),
    "maskrcnn-spinenet-190": ("spinenet-190", 1536, 5.0, _WIDE),
    "maskrcnn-spinenet-tiny": ("spinenet-tiny", 256, 3.0, _TINY),
}
_SOURCE = "torchvision GeneralizedRCNN; values: tensorflow/tpu models/official/detection/"
_YAMLS = {
    RESNET50_FPN: "projects/copy_paste/configs/maskrcnn_resnet50_1024.yaml",
    **{
        f"spinenet-{m}": f"configs/spinenet/spinenet{m}_mrcnn.yaml" for m in ("49s", "49", "96", "143", "190")
    },
    "spinenet-tiny": "configs/spinenet/spinenet49_mrcnn.yaml, scaled down",
}


def _register(name: str, backbone: str, size: int, anchor_size: float, options: dict[str, Any]) -> None:
    fixed = {"backbone": backbone, "image_size": size, "anchor_size": anchor_size, **options}
    note = "; tiny test variant" if name.endswith("-tiny") else ""

    def builder(**overrides: Any) -> MaskRCNNDetector:
        return mask_rcnn(**{**fixed, **overrides})

    builder.__name__ = name.replace("-", "_")
    source = _SOURCE + _YAMLS[backbone] + note
    register(name, task="detection", default_input=(3, size, size), source=source)(builder)


for _name, _spec in VARIANTS.items():
    _register(_name, *_spec)
