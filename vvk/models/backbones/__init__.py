"""Backbone families, one module each; importing a module registers its variants."""

from vvk.models.backbones import eff_spinenet, resnet3d, spinenet, spinenet_mobile, vatt, vatt_text  # noqa: F401
from vvk.models.backbones.base import Backbone, FeatureSpec

__all__ = ["Backbone", "FeatureSpec"]
