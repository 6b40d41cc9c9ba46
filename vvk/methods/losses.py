"""Loss helpers shared by the methods; all go through ``vvk.kernels.contrastive_loss`` so that
large global batches never build an N × N similarity matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from vvk.kernels import contrastive_loss
from vvk.methods.base import process_group


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float | Tensor) -> Tensor:
    """SimCLR / CVRL NT-Xent over the 2N views of the global batch.

    Every view's positive is the other view of its clip; its negatives are all other views of
    all clips on all ranks (both views, as in CVRL's ``ab``/``aa`` logits), itself excluded.
    With several processes each rank scores its rows against the gathered keys, so the loss
    averaged over ranks equals the single-process loss on the concatenated batch.

    Args:
        z_a, z_b: (N, D) embeddings of the two views (normalised inside).
    """
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b])  # (2N, D)
    positives = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return contrastive_loss(
        z, z, temperature, positives=positives, exclude_self=True, process_group=process_group()
    )
