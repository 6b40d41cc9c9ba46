"""VATT's FAC head and its NCE / MIL-NCE objective.

Both follow ``google-research/google-research: vatt/``:

- ``FACHead``: ``modeling/heads/bridge.py::FACHead`` with ``mlp_lib.ReluDenseBN`` and the sizes
  of ``configs/head.py::FACBridge`` (fine video-audio space 512, coarse video-audio-text 256);
- ``asymmetric_nce``: ``utils/train/objectives.py::AsymmetricNCE._calculate_nce``, the loss of
  the default ``TxFACModel`` (``configs/multimodal.py``, ``configs/loss.py``: τ = 0.07).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.kernels import contrastive_loss
from vvk.methods.base import process_group

# Logit offset of a masked candidate: the reference subtracts 1e9 from such logits; here it
# is carried as an extra embedding coordinate (see ``asymmetric_nce``). 1e4 / τ is far below
# any real logit (|cos| / τ <= 1 / τ), so exp() of it is exactly 0 in float32.
MASK_OFFSET = 1e4
_EXCLUDED = -1e4  # logit of an empty candidate slot in the per-clip log-sum-exps


class FACEmbeddings(NamedTuple):
    video_to_audio: Tensor  # z_va (B, va_dim)
    video_to_text: Tensor  # z_vt (B, vat_dim)
    audio_to_video: Tensor  # z_av (B, va_dim)
    text_to_video: Tensor  # z_tv (B*L, vat_dim)


def _batch_norm(width: int) -> nn.BatchNorm1d:
    # Keras BatchNormalization(momentum=0.9, epsilon=1e-5) (configs/head.py::BatchNormConfig);
    # PyTorch's momentum is the weight of the new statistics, 1 - 0.9.
    return nn.BatchNorm1d(width, eps=1e-5, momentum=0.1)


class FACHead(nn.Module):
    """Fine-and-coarse projections of the pooled video, audio and text features::

        video ─► Dense(va, no bias) ─► BN ─► ReLU ─► Dense(va, no bias) ─► BN ══► z_va
                                                    z_va ─► ReLU ─► Dense(vat, no bias) ─► BN ══► z_vt
        audio ─► Dense(va) ══► z_av            text ─► Dense(vat) ══► z_tv

    Video meets audio in the fine 512-d space and text in the coarse 256-d one, which is
    derived from the fine one ("fine and coarse"). The reference uses cross-replica BN; with
    several processes convert the module with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    """

    def __init__(
        self, *, video_dim: int, audio_dim: int, text_dim: int, va_dim: int = 512, vat_dim: int = 256
    ):
        super().__init__()
        self.video_to_va = nn.Sequential(
            nn.Linear(video_dim, va_dim, bias=False),  # FACHead.vid_to_hid
            _batch_norm(va_dim),  # hid_to_va = ReluDenseBN(pre_bn=True): BN, ReLU, Dense, BN
            nn.ReLU(),
            nn.Linear(va_dim, va_dim, bias=False),
            _batch_norm(va_dim),
        )
        # va_to_vat = ReluDenseBN: ReLU, Dense (no bias), BN. Not in-place: z_va is an output too.
        self.va_to_vat = nn.Sequential(
            nn.ReLU(), nn.Linear(va_dim, vat_dim, bias=False), _batch_norm(vat_dim)
        )
        self.audio_to_va = nn.Linear(audio_dim, va_dim)
        self.text_to_vat = nn.Linear(text_dim, vat_dim)

    def forward(self, video: Tensor, audio: Tensor, text: Tensor) -> FACEmbeddings:
        """Pooled features (B, Dv), (B, Da), (B*L, Dt) -> the four embeddings."""
        z_va = self.video_to_va(video)
        return FACEmbeddings(z_va, self.va_to_vat(z_va), self.audio_to_va(audio), self.text_to_vat(text))


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
