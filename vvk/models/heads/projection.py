"""Projection heads shared by the contrastive methods."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionMLP(nn.Module):
    """``layers`` x [Linear (no bias) -> BatchNorm -> ReLU] then Linear to ``out_dim``.

    The CVRL / ConST-CL global head (``const_cl/modeling/heads/simple.py::MLP``): 3 hidden layers
    of 2048 and a 128-d output, BN momentum 0.9 in Keras terms (0.1 in PyTorch's), eps 1e-5.
    ``layers=0`` is a single linear projection.

    Args:
        in_dim: input width (the backbone's pooled channels).
        hidden_dim: width of the hidden layers.
        out_dim: embedding width.
        layers: number of hidden layers.
    """

    def __init__(self, *, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [
                nn.Linear(width, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim, eps=1e-5),
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
