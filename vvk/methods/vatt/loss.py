"""VATT's NCE / MIL-NCE objective: ``google-research/google-research: vatt/utils/train/
objectives.py::AsymmetricNCE._calculate_nce``, the loss of the default ``TxFACModel``
(``configs/multimodal.py``, ``configs/loss.py``: τ = 0.07)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.kernels import contrastive_loss
from vvk.methods.base import process_group

# Logit offset of a masked candidate: the reference subtracts 1e9 from such logits; here it
# is carried as an extra embedding coordinate (see ``asymmetric_nce``). 1e4 / τ is far below
# any real logit (|cos| / τ <= 1 / τ), so exp() of it is exactly 0 in float32.
MASK_OFFSET = 1e4
_EXCLUDED = -1e4  # logit of an empty candidate slot in the per-clip log-sum-exps


def asymmetric_nce(anchors: Tensor, candidates: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """The reference's NCE (L = 1) / MIL-NCE (L > 1) between clips and their candidates.

    For clip b with anchor v_b (video) and candidates c_{b,1..L} (its audio, or the captions
    overlapping it), with s(x, y) = cos(x, y) / τ::

        loss_b = log(Σ_{c,l} e^{s(v_b, c_{c,l})} + Σ_{c,l} e^{s(v_c, c_{b,l})}) - log Σ_l e^{s(v_b, c_{b,l})}

    The denominator is two-sided: the local anchor against all candidates of the global batch,
    and all anchors against the local candidates (``sim_sp_local2all`` and ``sim_sp_all2local``
    concatenated); the positives are counted in both halves, exactly as the reference does.
    With per-row losses L1_b (anchor rows) and L2_{b,l} (candidate rows) of the symmetric
    ``contrastive_loss``, ``loss_b = logaddexp(L1_b, lse_l(L2_{b,l} + s_{b,l}) - lse_l s_{b,l})``;
    for L = 1 that is ``logaddexp(L1_b, L2_b)``.

    Masks: an invalid candidate (no audio, or an empty caption slot) leaves every denominator
    and numerator, as the reference's -1e9 logits do; clips without any valid candidate are
    dropped and the loss is rescaled by #clips / #valid clips (the reference's
    ``loss * mask * size / sum(mask)`` then mean, 0 when nothing is valid), on each process.

    Args:
        anchors: (B, D) video embeddings.
        candidates: (B, L, D) audio (L = 1) or caption embeddings.
        valid: (B, L) bool, which candidates exist.
    """
    b, slots, _ = candidates.shape
    valid = valid.to(device=anchors.device, dtype=torch.bool)
    v = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    # An extra coordinate carries the mask through the gathered, tiled loss: anchors get 1,
    # invalid candidates -MASK_OFFSET, so every logit with an invalid candidate drops by
    # MASK_OFFSET / τ on every process, without an N × N mask.
    v_ext = torch.cat([v, v.new_ones(b, 1)], dim=1)  # (B, D) -> (B, D+1)
    offset = (~valid).float().unsqueeze(-1) * -MASK_OFFSET  # (B, L, 1)
    c_ext = torch.cat([c, offset], dim=-1).flatten(0, 1)  # (B, L, D+1) -> (B*L, D+1)
    rows = contrastive_loss(
        v_ext,
        c_ext,
        temperature,
        positives=torch.arange(b * slots, device=v.device).view(b, slots),
        symmetric=True,
        normalize=False,
        reduction="none",
        process_group=process_group(),
    )
    local_to_all, all_to_local = rows[:b], rows[b:].view(b, slots)  # L1 (B,), L2 (B, L)
    s_pos = (torch.einsum("bd,bld->bl", v, c) / temperature).masked_fill(~valid, _EXCLUDED)
    all_to_local = torch.logsumexp(all_to_local + s_pos, dim=1) - torch.logsumexp(s_pos, dim=1)
    per_clip = torch.logaddexp(local_to_all, all_to_local)
    clip_valid = valid.any(dim=1)
    # Invalid clips hold large finite values: multiplying by 0 keeps their gradients at 0.
    return (per_clip * clip_valid).sum() / clip_valid.sum().clamp(min=1)
