"""Heads that sit on a backbone's feature dict."""

from vvk.models.heads.retinanet import RetinaNet, RetinaNetHead, build_retinanet

__all__ = ["RetinaNet", "RetinaNetHead", "build_retinanet"]
