"""CVRL's objective: the reference's global NT-Xent and its contrastive accuracy
(``tensorflow/models: official/projects/video_ssl/losses/losses.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.methods.losses import nt_xent


def global_loss(z_a: Tensor, z_b: Tensor, temperature: float) -> Tensor:
    """The reference's global loss: NT-Xent of a against [b, a] plus that of b against [b, a]
    (losses.py: ``loss_a + loss_b``, each a mean over the batch), i.e. twice ``nt_xent``,
    which averages over all 2N rows. Kept as a sum so that loss values and the learning rate
    mean what they mean in the reference."""
    return 2.0 * nt_xent(z_a, z_b, temperature)


@torch.no_grad()
def contrastive_accuracy(z_a: Tensor, z_b: Tensor) -> Tensor:
    """How often clip i's view a is most similar to its own view b among this batch's b views
    (the reference's ``contrast_acc``; on one process's batch, not gathered)."""
    similarity = F.normalize(z_a.float(), dim=-1) @ F.normalize(z_b.float(), dim=-1).T  # (N, N)
    return (similarity.argmax(dim=1) == torch.arange(len(z_a), device=z_a.device)).float().mean()
