"""Detectors assembled from torchvision.models.detection on vvk's backbones; importing this
package registers them (task ``"detection"``): ``retinanet-*``, ``maskrcnn-*``, ``vild-*`` and ``qmd-*``."""

from vvk.models.detectors import mask_rcnn, qmd, retinanet, vild  # noqa: F401  (register the variants)
from vvk.models.detectors.classifiers import DenseEmbeddingClassifier, EmbeddingClassifier
from vvk.models.detectors.common import FeatureBackbone, check_categories, coco_categories
from vvk.models.detectors.mask_rcnn import MaskRCNNDetector, load_backbone_weights
from vvk.models.detectors.retinanet import RetinaNetDetector, focal_prior_bias

__all__ = [
    "DenseEmbeddingClassifier",
    "EmbeddingClassifier",
    "FeatureBackbone",
    "MaskRCNNDetector",
    "RetinaNetDetector",
    "check_categories",
    "coco_categories",
    "focal_prior_bias",
    "load_backbone_weights",
]
