"""Tiled contrastive (InfoNCE) loss that never materialises the N × M similarities; see ``op.py``."""

from vvk.kernels.contrastive.op import ContrastiveLoss, contrastive_loss, transpose_positives

__all__ = ["ContrastiveLoss", "contrastive_loss", "transpose_positives"]
