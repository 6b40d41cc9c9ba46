"""VATT's FAC head: ``google-research/google-research: vatt/modeling/heads/bridge.py::FACHead``
with ``mlp_lib.ReluDenseBN`` and the sizes of ``configs/head.py::FACBridge`` (fine video-audio
space 512, coarse video-audio-text 256)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


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
