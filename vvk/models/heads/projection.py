"""Projection heads shared by the contrastive methods."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionMLP(nn.Module):
    """``layers`` x [Linear (no bias) -> BatchNorm -> ReLU] then Linear to ``out_dim``.

    The CVRL / ConST-CL global head: 3 hidden layers of 2048 and a 128-d output. Its batch norm
    differs between the two references (``tensorflow/models: official/projects/``), so it is an
    argument: CVRL keeps Keras momentum 0.997 (``video_ssl/configs/video_ssl.py::VideoSSLModel.
    hidden_norm_activation``; ``norm_momentum=0.003``), ConST-CL sets 0.9 (``const_cl/configs/
    const_cl.py::ConstCLModel.global_head``; ``norm_momentum=0.1``); both use eps 1e-5.
    ``layers=0`` is a single linear projection.

    Args:
        in_dim: input width (the backbone's pooled channels).
        hidden_dim: width of the hidden layers.
        out_dim: embedding width.
        layers: number of hidden layers.
        norm_momentum: batch-norm momentum in PyTorch's convention, the weight of the new batch
            statistics in the running estimates (1 - Keras' ``momentum``).
        norm_eps: batch-norm epsilon.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        layers: int = 3,
        norm_momentum: float = 0.1,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [
                nn.Linear(width, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim, eps=norm_eps, momentum=norm_momentum),
                nn.ReLU(),
            ]
            width = hidden_dim
        blocks.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim); extra leading axes are folded into the batch for BN."""
        lead = x.shape[:-1]
        # (..., in_dim) -> (prod(...), in_dim) -> (prod(...), out_dim) -> (..., out_dim)
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)
