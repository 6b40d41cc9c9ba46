"""Query modulation: a detector's feature maps conditioned on an embedding of a per-image query.

Query-modulated detection (Fornoni et al., "Bridging the Gap Between Object Detection and User
Intent via Query-Modulation", arXiv 2106.10258) modulates a mobile detector by an embedding of a
simple query, e.g. a label, so that it finds what the query asks for; the same model without a
query is a standard detector (the paper's multitask model). The paper ships no code and only its
abstract is verified (reference/detection.md §4), so the fusion operators here are two published
ones. Each modulates every pyramid level through the detectors' ``set_feature_modulation`` hook,
after the backbone and before every head:

- :class:`FiLM` (Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI
  2018): a per-channel scale and shift predicted from the query, ``x * (1 + gamma) + beta``.
- :class:`ProductFusion`, the fusion of FindIt (Kuo et al., ECCV 2022; google-research/
  google-research: findit/multitask_model.py, ``ProductFusionModel``): the text vector and each
  level's features are brought to a common width M (32) by a dense + BN + ReLU (text, shared by
  the levels) and a 1×1 conv + BN + ReLU (vision, one per level), both L2-normalised over
  channels (the features before their conv, the text after its dense layer), then multiplied
  element-wise. Here the query is L2-normalised before its dense layer as well, so that the
  modulation ignores the scale of the query embedding. FindIt's task heads read the M-channel
  product; here a 1×1 conv projects it back to the level's C channels and adds it to the
  features, so the detector's own heads (and their trained weights) keep the input they were
  built for.

Both start as the identity exactly, the layer that writes into the features being zero-initialised:
a trained detector with a fresh module attached detects as before, and query training departs
from there. On the first step the gradient therefore reaches only that layer; it reaches the
layers before it and the query encoder from the second step on.

Queries become (B, Q) embeddings through :class:`LabelQueryEncoder` (a learned row per label of a
closed vocabulary) or :class:`TextQueryEncoder` (a frozen teacher's text embedding, e.g. CLIP's,
then a learned projection). :class:`ModulatedFeatures` plugs a module into the hook and holds the
current batch's query::

    adapter = ModulatedFeatures(
        query_modulation("film", channels=model.backbone.out_channels, query_dim=64,
                         levels=model.backbone.levels),
        encoder=LabelQueryEncoder([c["name"] for c in model.categories], 64),
    )
    model.set_feature_modulation(adapter)  # a submodule of the detector from now on
    with adapter.querying(["mug", "cat"]):  # one query per image
        detections = model(images)
    detections = model(images)  # no query: standard detection
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError

Modulation = Literal["film", "product"]
MODULATIONS: tuple[str, ...] = get_args(Modulation)

# FindIt's ProductFusionModel defaults: num_fused_feature 32; BatchNorm momentum 0.997 and epsilon
# 1e-4 in flax terms (torch's momentum is 1 - flax's).
FUSED_DIM = 32
NORM_MOMENTUM, NORM_EPS = 0.003, 1e-4

Features = dict[str, Tensor]


class QueryModulation(nn.Module):
    """The interface of a modulation: ``forward(features, query)`` maps ``{level: (B, C, H, W)}``
    and a (B, Q) query, one row per image, to a dict of the same keys and shapes.

    Args:
        channels: C, the width of every level.
        query_dim: Q, the width of the query embedding.
        levels: the level names of the feature dict (a detector's ``backbone.levels``).
    """

    def __init__(self, *, channels: int, query_dim: int, levels: Sequence[str]):
        super().__init__()
        self.channels, self.query_dim, self.levels = channels, query_dim, tuple(levels)

    def check_inputs(self, features: Features, query: Tensor) -> None:
        if set(features) != set(self.levels):
            raise ValueError(f"features: levels {sorted(features)}, expected {sorted(self.levels)}")
        batch = next(iter(features.values())).shape[0]
        if tuple(query.shape) != (batch, self.query_dim):
            raise ValueError(
                f"query: expected ({batch}, {self.query_dim}), one row per image, got {tuple(query.shape)}"
            )


class FiLM(QueryModulation):
    """``x * (1 + gamma) + beta`` per image and channel, ``(gamma, beta)`` a linear function of
    the query (the first C outputs gamma, the last C beta); zero-initialised: the identity."""

    def __init__(self, *, channels: int, query_dim: int, levels: Sequence[str]):
        super().__init__(channels=channels, query_dim=query_dim, levels=levels)
        # One layer per level, not one shared: the levels are different maps (other blocks, other
        # statistics, objects of other sizes), FindIt's fusion has per-level layers too, and the
        # cost is small (L·Q·2C: 31K parameters for SpineNet-Mobile-49's 5 levels of 48 at Q = 64).
        self.affine = nn.ModuleDict(
            {level: _zero_init(nn.Linear(query_dim, 2 * channels)) for level in self.levels}
        )

    def forward(self, features: Features, query: Tensor) -> Features:
        self.check_inputs(features, query)
        return {level: _film(x, self.affine[level](query)) for level, x in features.items()}


def _film(x: Tensor, params: Tensor) -> Tensor:
    gamma, beta = params[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
    return x * (1 + gamma) + beta  # (B, C, H, W)


class ProductFusion(QueryModulation):
    """FindIt's product fusion (see the module docstring) with a zero-initialised residual
    back-projection: ``x + conv(vision(x / |x|) * text(q / |q|))``.

    A normalised query makes the output independent of the query embedding's scale: a learned
    label table and a teacher's unit embeddings feed it alike. Training on a batch of one query
    uses the text BatchNorm's running statistics, as a single vector has no batch statistics.

    Args:
        fused_dim: M, the width of the product (FindIt: 32).
    """

    def __init__(self, *, channels: int, query_dim: int, levels: Sequence[str], fused_dim: int = FUSED_DIM):
        super().__init__(channels=channels, query_dim=query_dim, levels=levels)
        self.fused_dim = fused_dim
        # no biases before a BatchNorm: its shift stands for them
        self.text = nn.Linear(query_dim, fused_dim, bias=False)
        self.text_norm = nn.BatchNorm1d(fused_dim, momentum=NORM_MOMENTUM, eps=NORM_EPS)
        self.vision = nn.ModuleDict(
            {
                level: nn.Sequential(
                    nn.Conv2d(channels, fused_dim, 1, bias=False),
                    nn.BatchNorm2d(fused_dim, momentum=NORM_MOMENTUM, eps=NORM_EPS),
                    nn.ReLU(),
                )
                for level in self.levels
            }
        )
        self.project = nn.ModuleDict(
            {level: _zero_init(nn.Conv2d(fused_dim, channels, 1)) for level in self.levels}
        )

    def forward(self, features: Features, query: Tensor) -> Features:
        self.check_inputs(features, query)
        text = self.embed_query(query)[:, :, None, None]  # (B, M, 1, 1)
        fused = {}
        for level, x in features.items():
            vision = self.vision[level](F.normalize(x, dim=1))  # (B, M, H, W)
            fused[level] = x + self.project[level](vision * text)  # (B, C, H, W)
        return fused

    def embed_query(self, query: Tensor) -> Tensor:
        """(B, Q) -> (B, M): the text side of the product, a unit vector per image."""
        text = self.text(F.normalize(query, dim=1))  # (B, M)
        return F.normalize(F.relu(self._normalize_text(text)), dim=1)

    def _normalize_text(self, text: Tensor) -> Tensor:
        norm = self.text_norm
        # One vector has no batch statistics: torch refuses it, and flax's BN (FindIt's) would
        # make it zeros, erasing the query. The running statistics stand in.
        if self.training and text.shape[0] == 1:
            return F.batch_norm(
                text,
                norm.running_mean,
                norm.running_var,
                norm.weight,
                norm.bias,
                training=False,
                eps=norm.eps,
            )
        return norm(text)


def _zero_init(layer: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def query_modulation(
    kind: Modulation, *, channels: int, query_dim: int, levels: Sequence[str], fused_dim: int | None = None
) -> QueryModulation:
    """A fresh (identity) modulation of ``levels`` of width ``channels`` by (B, ``query_dim``)
    queries: ``"film"`` (:class:`FiLM`) or ``"product"`` (:class:`ProductFusion`, whose product
    is ``fused_dim`` wide, default 32)."""
    if kind == "film":
        if fused_dim is not None:
            raise VvkError("fused_dim: only kind='product' has a fused width", params=("fused_dim",))
        return FiLM(channels=channels, query_dim=query_dim, levels=levels)
    if kind == "product":
        fused_dim = FUSED_DIM if fused_dim is None else fused_dim
        return ProductFusion(channels=channels, query_dim=query_dim, levels=levels, fused_dim=fused_dim)
    raise VvkError(f"kind={kind}: expected one of {', '.join(MODULATIONS)}", params=("kind",))


class ModulatedFeatures(nn.Module):
    """A :class:`QueryModulation` as the detectors' ``set_feature_modulation`` takes it: a
    callable of the features only, which modulates them by the query set with :meth:`querying`
    and passes them unchanged outside it, so one detector serves query-modulated and standard
    detection. Attached with ``model.set_feature_modulation(adapter)``, it becomes a submodule of
    the detector (the hook's holder is an ``nn.Module``): its parameters, the encoder's included,
    train and are saved with the detector's.

    Args:
        modulation: the module that modulates the features; None: they pass unchanged, the
            adapter only encodes the queries (for a detector that modulates elsewhere).
        encoder: turns what :meth:`querying` is given into (B, Q) embeddings (a
            :class:`LabelQueryEncoder` or :class:`TextQueryEncoder`); None: it is given embeddings.
    """

    def __init__(self, modulation: QueryModulation | None, *, encoder: nn.Module | None = None):
        super().__init__()
        self.modulation, self.encoder = modulation, encoder
        self._query: Tensor | None = None
        self._active: Tensor | None = None

    @contextmanager
    def querying(
        self, queries: Tensor | Sequence[str | int], *, active: Sequence[bool] | Tensor | None = None
    ) -> Iterator[Tensor]:
        """Modulate the detector's forward passes inside the block by ``queries``: one per image,
        or, with ``active`` ((B,) bools), one per active image, the others detecting as without a
        query (a multitask batch). Yields the (B, Q) query embeddings; the previous query (if
        any) is back in place after the block."""
        query = self.encoder(queries) if self.encoder is not None else queries
        if not isinstance(query, Tensor):
            raise TypeError("queries: expected (B, Q) embeddings, as this adapter has no encoder")
        previous = self._query, self._active
        self._query = query
        self._active = None if active is None else torch.as_tensor(active, dtype=torch.bool)
        try:
            yield query
        finally:
            self._query, self._active = previous

    def forward(self, features: Features) -> Features:
        if self._query is None or self.modulation is None:
            return features
        if self._active is None:
            return self.modulation(features, self._query)
        return self._modulate_active(features, self._query, self._active)

    def _modulate_active(self, features: Features, query: Tensor, active: Tensor) -> Features:
        batch = next(iter(features.values())).shape[0]
        if tuple(active.shape) != (batch,):
            raise ValueError(f"active: expected ({batch},), one flag per image, got {tuple(active.shape)}")
        index = active.to(query.device).nonzero().squeeze(1)  # (N,) the queried images
        if not len(index):
            return features
        # only the queried images go through the module: the others stay out of its BN statistics
        modulated = self.modulation({level: x[index] for level, x in features.items()}, query)
        return {level: x.index_copy(0, index, modulated[level]) for level, x in features.items()}


class LabelQueryEncoder(nn.Module):
    """Queries that are labels of a closed vocabulary -> (B, dim) learned embeddings.

    A query is a label's name or its index in ``names`` (a detector's label ``l`` in 1..K is index
    ``l - 1`` of its categories' names); a (B,) integer tensor of indices is a batch too. Anything
    else is a one-line ``VvkError`` that names the query (and the close labels, for a name).
    """

    def __init__(self, names: Sequence[str], dim: int):
        super().__init__()
        self.names = list(names)
        if not self.names:
            raise VvkError("names: expected at least one label", params=("names",))
        self.rows = {name: i for i, name in enumerate(self.names)}
        if len(self.rows) != len(self.names):
            twice = next(n for n in self.names if self.names.count(n) > 1)
            raise VvkError(f"names: '{twice}' appears twice", params=("names",))
        self.embedding = nn.Embedding(len(self.names), dim)
        # rows of norm about 1, the scale of a teacher's unit text embeddings
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)

    def forward(self, queries: Sequence[str | int] | Tensor) -> Tensor:
        if isinstance(queries, Tensor):
            queries = queries.tolist()
        rows = [self.row(q) for q in _batch(queries)]
        index = torch.tensor(rows, dtype=torch.long, device=self.embedding.weight.device)  # (B,)
        return self.embedding(index)  # (B, dim)

    def row(self, query: str | int) -> int:
        """The embedding row of one query: a label's name or index."""
        if isinstance(query, str):
            return self._row_of_name(query)
        if isinstance(query, int) and not isinstance(query, bool) and 0 <= query < len(self.names):
            return query
        raise VvkError(f"query {query!r}: not a label index of this model (0..{len(self.names) - 1})")

    def _row_of_name(self, name: str) -> int:
        if not name.strip():
            raise VvkError(f"query {name!r}: empty, expected a label's name")
        if name in self.rows:
            return self.rows[name]
        close = difflib.get_close_matches(name, self.names)
        hint = f"close: {', '.join(close)}" if close else f"none of its {len(self.names)} labels is close"
        raise VvkError(f"query {name!r}: not a label of this model", hint=hint)


class TextEmbedder(Protocol):
    """What :class:`TextQueryEncoder` needs of a teacher (``vvk.methods.vild.teacher.Teacher``)."""

    dim: int

    def embed_vocabulary(self, vocabulary: Sequence[Sequence[str]]) -> Tensor: ...


class TextQueryEncoder(nn.Module):
    """Free-text queries -> (B, dim): a frozen teacher's text embedding, then a learned linear
    projection. Each distinct string is embedded once and cached, as a detector sees the same
    queries every epoch (and a CLIP teacher encodes each through 63 prompts).

    Args:
        teacher: a text embedder, e.g. a ViLD teacher (``vvk.methods.vild.teacher.load_teacher``);
            it is not a submodule: it stays frozen, on its own device, out of the detector's
            checkpoints and optimiser.
        dim: the width of the query embeddings.
    """

    def __init__(self, teacher: TextEmbedder, dim: int):
        super().__init__()
        object.__setattr__(self, "teacher", teacher)  # bypasses nn.Module's registration (see Args)
        self.project = nn.Linear(teacher.dim, dim)
        self.cache: dict[str, Tensor] = {}

    def forward(self, queries: Sequence[str]) -> Tensor:
        texts = [_text(q) for q in _batch(queries)]
        self._embed_new(texts)
        weight = self.project.weight
        if not texts:
            return weight.new_zeros((0, self.project.out_features))
        embeddings = torch.stack([self.cache[t] for t in texts]).to(weight.device, weight.dtype)  # (B, D)
        return self.project(embeddings)  # (B, dim)

    def _embed_new(self, texts: list[str]) -> None:
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:  # one teacher call for all the batch's new strings
            rows = self.teacher.embed_vocabulary([[t] for t in new]).detach().float()  # (N, D)
            self.cache.update(zip(new, rows.unbind(0), strict=True))


def _batch(queries: Sequence) -> Sequence:
    # a string is a sequence too: read as a batch, "mug" would be three queries
    if isinstance(queries, str):
        raise VvkError(f"queries: expected one query per image (a list), got the string {queries!r}")
    return queries


def _text(query: str) -> str:
    if not isinstance(query, str):
        raise VvkError(f"query {query!r}: expected a text")
    if not query.strip():
        raise VvkError(f"query {query!r}: empty, expected a text")
    return query
