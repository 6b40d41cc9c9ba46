"""ConST-CL's local branch: region features, the context memory and the instance reconstructor
(``tensorflow/models: official/projects/const_cl/modeling/heads/{instance_reconstructor,
transformer_decoder}.py``; reference/video_ssl.md §5.1-5.2; its loss is ``loss.py``)::

    res5_1 (2B, C, T', H', W'), L2-normalised over C
      ├─ key frame T'//2, boxes ─ RoIAlign 4×4, mean ──────────► u (2B, N, C)
      └─ L frames around the key + (t, y, x) features ──────────► memory (2B, L·H'·W', C + 16)
    u_a ─ decoder(memory_b) ─ Dense(C) ─► ẑ_a→b;  u_b ─ decoder(memory_a) ─ Dense(C) ─► ẑ_b→a (shared)

    L_local = ½ (InfoNCE(ẑ_a→b vs u_b) + InfoNCE(ẑ_b→a vs u_a)), τ = 0.2: the positive of ẑ_a→b,i is
    u_b,j with j = argmax_j ⟨u_a,i, u_b,j⟩; the negatives are the instances of all other videos.

Boxes are normalised ``[x1, y1, x2, y2]`` in each view's own frame. Pixel j of an axis of n
pixels covers ``[j / n, (j + 1) / n)`` (``roi_align_3d`` with ``aligned=True``); the reference's
TF crop-and-resize puts feature j's centre at ``j / n``, half a cell (16 px at res5) off. With
random boxes the two agree in distribution; with detected boxes this one lands where the box is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.kernels import roi_align_3d, roi_align_tube

POSITION_CHANNELS = 16  # 8 temporal + 8 spatial position features on every memory token


# ---- where the branch looks: key frame, context frames, region features ------------------


def context_steps(steps: int, count: int) -> list[int]:
    """The ``count`` feature steps around the key step ``steps // 2``, ``steps // count`` apart
    (instance_reconstructor.py::_get_memory_embeddings: steps 2..6 of 8 for 5)."""
    if count % 2 == 0 or count < 1:
        raise ValueError(f"the context needs an odd number of frames, got {count}")
    spacing = steps // count
    if spacing < 1:
        raise ValueError(f"{count} context frames do not fit in {steps} feature steps")
    key = steps // 2
    return [key + (i - count // 2) * spacing for i in range(count)]


def region_features(features: Tensor, boxes: Tensor, steps: list[int], *, size: int) -> Tensor:
    """RoIAlign of every instance's boxes on feature ``steps`` (``size``² bins, one bilinear
    sample per bin, as the reference's crop-and-resize), averaged over bins and steps.

    One step (the key frame) goes through ``roi_align_3d``; several (a tube over the context
    frames, a box per step) through ``roi_align_tube``.

    Args:
        features: (B, C, T', H', W').
        boxes: (B, N, S, 4) normalised boxes, one per instance and step.

    Returns:
        (B, N, C).
    """
    b, c, _, h, w = features.shape
    n, s = boxes.shape[1:3]
    if s != len(steps):
        raise ValueError(
            f"{len(steps)} pooled steps need a box each, got boxes of shape {tuple(boxes.shape)}"
        )
    selected = features[:, :, steps]  # (B, C, S, H', W')
    xyxy = boxes.reshape(b * n, s, 4) * boxes.new_tensor([w, h, w, h])  # (B, N, S, 4) -> (B*N, S, 4) cells
    index = torch.arange(b, device=boxes.device).repeat_interleave(n)  # (B*N,) clip of each instance
    if s == 1:
        column = index[:, None].to(boxes.dtype)
        start, end = torch.zeros_like(column), torch.ones_like(column)  # the one selected step, [0, 1)
        rois = torch.cat([column, start, xyxy[:, 0, :2], end, xyxy[:, 0, 2:]], dim=1)  # (B*N, 7)
        pooled = roi_align_3d(selected, rois, (1, size, size), sampling_ratio=1)  # (B*N, C, 1, s, s)
    else:
        pooled = roi_align_tube(selected, xyxy, index, size, sampling_ratio=1)  # (B*N, C, S, s, s)
    return pooled.flatten(2).mean(dim=2).reshape(b, n, c)  # (B*N, C, ...) -> (B, N, C)


class PositionFeatures(nn.Module):
    """Learned features of each memory token's centred (t, y, x): a temporal MLP 1→4→8 and a
    spatial MLP 2→4→8, concatenated (instance_reconstructor.py::_add_positional_embedding)."""

    def __init__(self):
        super().__init__()
        self.temporal = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, POSITION_CHANNELS // 2))
        self.spatial = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, POSITION_CHANNELS // 2))

    def forward(self, steps: int, height: int, width: int, *, device, dtype) -> Tensor:
        """-> (steps·height·width, 16), tokens in (t, y, x) order."""
        axes = [torch.arange(n, device=device, dtype=dtype) for n in (steps, height, width)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (L*H*W, 3)
        grid = grid - grid.mean(dim=0)  # relative to the centre of the memory
        return torch.cat([self.temporal(grid[:, :1]), self.spatial(grid[:, 1:])], dim=-1)


# ---- the decoder ----------------------------------------------------------------------------


class DecoderUnit(nn.Module):
    """One of a layer's independent "heads" (transformer_decoder.py::DecoderUnit)::

    q, k, v = Dense(query), Dense(memory), Dense(memory)      (each ``channels`` wide)
    h = LayerNorm(softmax(q kᵀ / √channels) v + q)            (residual on the projected query)
    out = Dense(GELU(Dense(h)))
    """

    def __init__(self, *, query_dim: int, memory_dim: int, channels: int, eps: float = 1e-12):
        super().__init__()
        self.query = nn.Linear(query_dim, channels)
        self.key = nn.Linear(memory_dim, channels)
        self.value = nn.Linear(memory_dim, channels)
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        """(B, N, query_dim), (B, M, memory_dim) -> (B, N, channels)."""
        q = self.query(query)
        # The reference's dropout rate is 0; scaled_dot_product_attention applies no mask.
        attended = F.scaled_dot_product_attention(q, self.key(memory), self.value(memory))
        return self.ffn(self.norm(attended + q))


class ContextDecoder(nn.Module):
    """``layers`` × ``heads`` decoder units; a layer's unit outputs are concatenated
    (``heads · channels`` wide) and feed the next layer; no residual across layers."""

    def __init__(self, *, query_dim: int, memory_dim: int, channels: int, layers: int, heads: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(layers):
            width = query_dim if i == 0 else heads * channels
            units = [
                DecoderUnit(query_dim=width, memory_dim=memory_dim, channels=channels) for _ in range(heads)
            ]
            self.layers.append(nn.ModuleList(units))

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        """(B, N, query_dim), (B, M, memory_dim) -> (B, N, heads·channels)."""
        h = query
        for units in self.layers:
            h = torch.cat([unit(h, memory) for unit in units], dim=-1)
        return h


class InstanceReconstructor(nn.Module):
    """Region features of both views and their translation into the other view's context.

    Args:
        channels: C, the width of ``res5_1`` (2048 for R3D-50-Y); also the output width, since
            translated instances are compared with raw region features.
        decoder_dim, decoder_layers, decoder_heads: 128, 3, 3 in the reference.
        context_frames: L, the memory's frames around the key frame (5).
        roi_size: RoIAlign bins per side (4).
        tube: pool each region over the L context frames (a tube) instead of the key frame.
    """

    def __init__(
        self,
        *,
        channels: int,
        decoder_dim: int = 128,
        decoder_layers: int = 3,
        decoder_heads: int = 3,
        context_frames: int = 5,
        roi_size: int = 4,
        tube: bool = False,
    ):
        super().__init__()
        self.context_frames, self.roi_size, self.tube = context_frames, roi_size, tube
        self.positions = PositionFeatures()
        memory_dim = channels + POSITION_CHANNELS
        self.decoder = ContextDecoder(
            query_dim=channels, memory_dim=memory_dim, channels=decoder_dim, layers=decoder_layers,
            heads=decoder_heads,
        )  # fmt: skip
        self.projection = nn.Linear(decoder_heads * decoder_dim, channels)
        for module in self.modules():  # Keras Dense initialisation: Glorot-uniform kernels, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def pooled_steps(self, steps: int) -> list[int]:
        """The feature steps the regions are pooled on: the key step, or the context (tube)."""
        return context_steps(steps, self.context_frames) if self.tube else [steps // 2]

    def memory(self, features: Tensor) -> Tensor:
        """(B, C, T', H', W') normalised -> (B, L·H'·W', C + 16) context tokens."""
        steps = context_steps(features.shape[2], self.context_frames)
        context = features[:, :, steps]  # (B, C, L, H', W')
        b, _, length, h, w = context.shape
        tokens = context.flatten(2).transpose(1, 2)  # (B, C, L, H', W') -> (B, L*H'*W', C)
        where = self.positions(length, h, w, device=tokens.device, dtype=tokens.dtype)  # (L*H'*W', 16)
        return torch.cat([tokens, where.expand(b, -1, -1)], dim=-1)

    def forward(self, features: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """Both views at once: the first half of the batch is view a, the second view b.

        Args:
            features: (2B, C, T', H', W') ``res5_1``.
            boxes: (2B, N, S, 4) normalised boxes on the S pooled steps (``pooled_steps``).

        Returns:
            ``regions`` (2B, N, C): raw region features u; ``translated`` (2B, N, C): ẑ, where
            rows of view a were decoded in view b's memory (a→b) and rows of b in a's (b→a);
            ``hidden`` (2B, N, heads·decoder_dim): the decoder output before the projection.
        """
        features = F.normalize(features, dim=1)
        regions = region_features(features, boxes, self.pooled_steps(features.shape[2]), size=self.roi_size)
        memory = self.memory(features)
        other = memory.roll(memory.shape[0] // 2, dims=0)  # view a's rows meet view b's memory and back
        hidden = self.decoder(regions, other)
        return {"regions": regions, "translated": self.projection(hidden), "hidden": hidden}
