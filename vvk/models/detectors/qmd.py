"""Query-modulated RetinaNets (Fornoni et al., arXiv 2106.10258): a mobile detector whose pyramid
features are modulated by an embedding of a query, e.g. a label, so that it finds what the query
asks for; the multitask model is also a standard detector when given no query.

``qmd-spinenet-mobile-49`` (a mobile detector, as the paper's; which one it used is not verified)
and the CPU variant ``qmd-spinenet-mobile-tiny`` are ``retinanet-*`` variants with three additions:

- a :class:`~vvk.models.detectors.query_modulation.ModulatedFeatures` in the backbone's
  ``feature_modulation`` hook, with a ``modulation`` (``"film"`` or ``"product"``, both the
  identity when fresh) and a ``query_encoder``: ``"label"`` (a learned row per category) or
  ``"text"`` (a frozen teacher's text embedding and a learned projection); ``modulate`` says
  where the modulation acts: on every pyramid level (``"features"``), on the class subnet's
  output, the one-class layer's input (``"class_tower"``), or both;
- a one-class classifier (``head.query_classifier``): the class subnet's last layer for "the
  queried thing", on the same class tower. The classifier knows no labels: what to find comes
  from the modulated features only. It keeps the background column of the K-class layer
  (2 logits), so RetinaNet's losses and post-processing apply unchanged: the targets of a
  queried image are its queried objects labelled 1 (none for a negative query) and its
  detections are labelled 1;
- ``multitask``: the K-class classifier stays, for images without a query, on unmodulated
  features; without ``multitask`` it is dropped and every image needs a query.

The box subnet is shared by both paths (RetinaNet's boxes are class-agnostic). In training an
image may ask several queries, a list of them with the list of their targets: its backbone runs
once and its features are repeated for each query, modulated, and through the heads (a batch of
its copies, minus their backbone passes)::

    model = vvk.models.build("qmd-spinenet-mobile-tiny", categories=cats, multitask=True)
    losses = model(images, targets, queries=["mug", "cat", None])  # None: standard detection
    losses = model(images[:1], [[mug_target, cat_target]], queries=[["mug", "cat"]])
    model.eval()
    (mugs,) = model([image], queries=["mug"])  # boxes, scores, labels (all 1)

Queries are an argument of ``forward``, one per image, rather than a context around it: a batch
mixes queried and unqueried images, and nothing outlives the call. A batch that mixes them runs
as two sub-batches, the queried and the unqueried images, each through torchvision's own
RetinaNet forward; the losses are averaged weighted by the images of each. One backbone pass
with ``ModulatedFeatures``' ``active`` mask would instead need one loss over two classifiers of
different widths, i.e. RetinaNet's loss and post-processing rewritten; the sub-batches reuse them
as they are, at the cost of batch norm statistics taken over each sub-batch.

The paper ships no code (reference/detection.md §4): the fusion operators, the one-class head and
the handling of mixed batches are vvk's choices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.models.detectors.common import Categories, plain_target, register_variants, to_image_list
from vvk.models.detectors.query_modulation import (
    MODULATIONS,
    LabelQueryEncoder,
    ModulatedFeatures,
    Modulation,
    QueryModulation,
    TextQueryEncoder,
    query_modulation,
)
from vvk.models.detectors.retinanet import VARIANTS, DenseHead, RetinaNetDetector, retinanet
from vvk.models.detectors.vild import CLIP_DIM
from vvk.models.heads.retinanet import HEAD_SPECS, RetinaNetHead

QueryEncoderKind = Literal["label", "text"]
QUERY_ENCODERS: tuple[str, ...] = get_args(QueryEncoderKind)
ModulationSite = Literal["features", "class_tower", "both"]
MODULATION_SITES: tuple[str, ...] = get_args(ModulationSite)
QUERY_DIM = 64
QUERY_LOGITS = 2  # background (never a target) and "the queried thing", label 1
Query = str | int  # a label's name or index in categories (label encoder), a text (text encoder)
Asked = Query | list[Query] | None  # what one image asks: a query, several (training), or nothing


class QueryDenseHead(DenseHead):
    """:class:`DenseHead` with a second last layer for the class subnet: ``query_classifier``
    (one class), used inside :meth:`answering_queries`; outside it ``net.classifier``, the K-class
    one, which is None when the model is not multitask. Towers and box regressor are shared.

    ``tower_modulation`` (None: none) modulates the class tower's output, the one-class layer's
    input, by the query: one module for every level, as the tower's convolutions are shared.
    """

    def __init__(
        self,
        net: RetinaNetHead,
        *,
        query_classifier: nn.Module,
        multitask: bool,
        tower_modulation: QueryModulation | None = None,
    ):
        super().__init__(net)
        self.query_classifier = query_classifier
        self.tower_modulation = tower_modulation
        if not multitask:
            net.classifier = None  # never run: its parameters would only weigh and never train

    @contextmanager
    def answering_queries(self, query: Tensor | None = None) -> Iterator[None]:
        """The class subnet ends in the one-class classifier inside the block, its input
        modulated by ``query`` ((B, Q) embeddings) when the head has a ``tower_modulation``
        (None: unmodulated)."""
        net = self.net
        standard = net.classifier, net.num_classes
        classifier = self.query_classifier
        if self.tower_modulation is not None and query is not None:
            classifier = _ModulatedInput(self.tower_modulation, classifier, query)
        # RetinaNetHead reads its classifier and logit count from these two attributes
        # (``forward``, ``flatten``): the same hook as the detector's ``set_classifier``
        net.classifier, net.num_classes = classifier, QUERY_LOGITS
        try:
            yield
        finally:
            net.classifier, net.num_classes = standard


class _ModulatedInput(nn.Module):
    """``layer(modulation(x, query))`` for one (B, C, H, W) map ``x`` (the modulation's one level)."""

    def __init__(self, modulation: QueryModulation, layer: nn.Module, query: Tensor):
        super().__init__()
        self.modulation, self.layer, self.query = modulation, layer, query

    def forward(self, x: Tensor) -> Tensor:
        (level,) = self.modulation.levels
        return self.layer(self.modulation({level: x}, self.query)[level])


class QueryModulatedRetinaNet(RetinaNetDetector):
    """A RetinaNet that detects what a query asks for (module docstring).

    ``forward(images, targets=None, *, queries=None)``: ``queries`` one per image, each a
    :data:`Query` or None (no query: standard detection, multitask models only). Training returns
    RetinaNet's ``{"classification", "bbox_regression"}``; eval a list of ``{"boxes", "scores",
    "labels"}`` per image, labels 1 for a queried image, 1..K for an unqueried one.

    Args:
        adapter: the query modulation and its encoder, set as the backbone's feature modulation.
        query_classifier: the class subnet's one-class last layer (``QUERY_LOGITS`` per anchor).
        multitask: keep the K-class classifier for images without a query.
        detector_options: :class:`RetinaNetDetector`'s arguments.
    """

    def __init__(
        self,
        *,
        adapter: ModulatedFeatures,
        query_classifier: nn.Module,
        multitask: bool,
        tower_modulation: QueryModulation | None = None,
        **detector_options: Any,
    ):
        super().__init__(**detector_options)
        self.head = QueryDenseHead(
            self.head.net,
            query_classifier=query_classifier,
            multitask=multitask,
            tower_modulation=tower_modulation,
        )
        self.set_feature_modulation(adapter)
        self.multitask = multitask

    @property
    def adapter(self) -> ModulatedFeatures:
        # held by the backbone's hook only: a second reference would save every tensor twice
        return self.backbone.feature_modulation

    def forward(self, images, targets=None, *, queries: Sequence[Asked] | None = None):
        images = to_image_list(images)
        queries = self._check_queries(queries, len(images))
        if not self.training:
            groups = _groups(queries)
            outputs = [
                self._detect_group(
                    [images[i] for i in index], [queries[i] for i in index] if queried else None
                )
                for queried, index in groups
            ]
            return _in_input_order(outputs, [index for _, index in groups])
        sources, asked, answers = self._pairs(queries, targets)
        unqueried = [i for i, q in enumerate(queries) if q is None]
        parts, images_of_part = [], []
        if sources:
            parts.append(self._query_losses(images, sources, asked, answers))
            images_of_part.append(len(set(sources)))
        if unqueried:
            parts.append(super().forward([images[i] for i in unqueried], [targets[i] for i in unqueried]))
            images_of_part.append(len(unqueried))
        losses = _weighted_losses(parts, images_of_part, len(images))
        return self._touch_idle_parameters(losses, queried=bool(sources), unqueried=bool(unqueried))

    def _detect_group(self, images: list[Tensor], queries: list[Query] | None):
        if queries is None:
            return super().forward(images)
        with self._answering(queries):
            return super().forward(images)

    def _query_losses(
        self, images: list[Tensor], sources: list[int], queries: list[Query], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """RetinaNet's training forward (torchvision's ``RetinaNet.forward``) over (image, query)
        pairs, ``sources[p]`` the image of pair ``p``: one backbone pass per image, then its
        features, repeated for each of its queries, modulated and through the heads."""
        # each copy of an image is transformed alike, its targets with it
        image_list, targets = self.transform([images[i] for i in sources], targets)
        slot = {i: k for k, i in enumerate(dict.fromkeys(sources))}  # image -> its row in the backbone batch
        first = [sources.index(i) for i in slot]  # the pair whose transformed copy each image runs as
        position = torch.tensor([slot[i] for i in sources], device=image_list.tensors.device)
        features = self.backbone(image_list.tensors[first])  # {level: (I, C, H, W)}, no query set
        repeated = {level: x[position] for level, x in features.items()}  # (P, C, H, W) each
        with self._answering(queries):
            modulated = list(self.adapter(repeated).values())
            head_outputs = self.head(modulated)
        anchors = self.anchor_generator(image_list, modulated)
        return self.compute_loss(targets, head_outputs, anchors)

    @contextmanager
    def _answering(self, queries: Sequence[Query]) -> Iterator[Tensor]:
        """Forward passes inside the block modulate by ``queries`` (one per image) and classify
        with the one-class head; yields the (B, Q) query embeddings."""
        with self.adapter.querying(queries) as embeddings, self.head.answering_queries(embeddings):
            yield embeddings

    def _check_queries(self, queries, batch: int) -> list[Asked]:
        if queries is None:
            queries = [None] * batch
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise VvkError(f"queries: expected a list, one query (or None) per image, got {queries!r}")
        if len(queries) != batch:
            raise VvkError(f"queries: {len(queries)} for {batch} images, expected one (or None) per image")
        if not self.multitask and any(q is None for q in queries):
            raise VvkError(
                "queries: every image needs one, as this model detects only what a query asks for "
                "(build it with multitask=True for standard detection too)"
            )
        for i, query in enumerate(queries):
            if isinstance(query, list | tuple) and not (self.training and query and None not in query):
                raise VvkError(
                    f"queries[{i}]: a list of queries (none of them None) is for training; "
                    "detection asks one query per image"
                )
        return list(queries)

    def _pairs(self, queries: list[Asked], targets) -> tuple[list[int], list[Query], list[dict[str, Tensor]]]:
        """The batch's (image, query, target) pairs, as three lists, the targets plain and checked
        (named by their place in the batch)."""
        if targets is None or len(targets) != len(queries):
            got = "none" if targets is None else len(targets)
            raise VvkError(f"targets: {got} for {len(queries)} images, expected one per image")
        sources, asked, answers = [], [], []
        for i, (query, target) in enumerate(zip(queries, targets, strict=True)):
            if query is None:
                continue
            if not isinstance(query, list | tuple):
                query, target, where = [query], [target], [f"targets[{i}]"]
            elif not isinstance(target, list | tuple) or len(target) != len(query):
                raise VvkError(
                    f"targets[{i}]: image {i} asks {len(query)} queries, expected a list of as many targets"
                )
            else:
                where = [f"targets[{i}][{j}]" for j in range(len(query))]
            for q, t, name in zip(query, target, where, strict=True):
                t = plain_target(name, t, num_categories=len(self.categories), masks=False)
                if bool((t["labels"] != 1).any()):
                    raise VvkError(
                        f"{name}['labels']: a query's objects are labelled 1 (the queried thing), "
                        f"got {sorted(set(t['labels'].tolist()))}"
                    )
                sources.append(i)
                asked.append(q)
                answers.append(t)
        return sources, asked, answers

    def _touch_idle_parameters(
        self, losses: dict[str, Tensor], *, queried: bool, unqueried: bool
    ) -> dict[str, Tensor]:
        """``losses`` plus 0 × the parameters of the path (queried, unqueried) no image of this
        batch took: the training loop's DistributedDataParallel (no ``find_unused_parameters``)
        needs a gradient of every parameter on every rank and step, and a multitask batch of a few
        images is often of one kind."""
        idle = []
        if self.multitask and not queried:
            idle += [*self.adapter.parameters(), *self.head.query_classifier.parameters()]
            idle += (
                [] if self.head.tower_modulation is None else list(self.head.tower_modulation.parameters())
            )
        if self.multitask and not unqueried:
            idle += list(self.head.net.classifier.parameters())
        if not idle:
            return losses
        zero = 0.0 * sum(p.sum() for p in idle)
        return {**losses, "classification": losses["classification"] + zero}

    def profile_forward(self, images: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """The query path, what the model is for (its first category the query of every image):
        transform, backbone, modulation and head."""
        images = to_image_list(images)
        with self._answering([self.categories[0]["name"]] * len(images)):
            return super().profile_forward(images)


def _groups(queries: list[Query | None]) -> list[tuple[bool, list[int]]]:
    """The batch's non-empty groups: ``(True, queried images)``, ``(False, unqueried images)``."""
    queried = [i for i, q in enumerate(queries) if q is not None]
    unqueried = [i for i, q in enumerate(queries) if q is None]
    return [(key, index) for key, index in ((True, queried), (False, unqueried)) if index]


def _weighted_losses(parts: list[dict[str, Tensor]], sizes: list[int], batch: int) -> dict[str, Tensor]:
    # each group's losses are per positive anchor of the group; weighting by images makes a mixed
    # batch the average of its images' kinds, whatever their objects
    return {
        key: sum(n / batch * losses[key] for losses, n in zip(parts, sizes, strict=True)) for key in parts[0]
    }


def _in_input_order(parts: list[list[dict]], indices: list[list[int]]) -> list[dict]:
    results: list[dict | None] = [None] * sum(len(index) for index in indices)
    for detections, index in zip(parts, indices, strict=True):
        for i, detection in zip(index, detections, strict=True):
            results[i] = detection
    return results


class LazyTeacher:
    """A teacher named by ``spec`` (anything ``vvk.methods.vild.teacher.load_teacher`` takes), read
    (once per process) on the first text it embeds: building or loading a model reads no teacher,
    and vvk.models imports vvk.methods only then. ``dim``: the teacher's width, for the encoder's
    projection."""

    def __init__(self, spec: str, dim: int):
        self.spec, self.dim = spec, dim
        self._teacher = None

    def embed_vocabulary(self, vocabulary: Sequence[Sequence[str]]) -> Tensor:
        return self.loaded().embed_vocabulary(vocabulary)

    def loaded(self):
        if self._teacher is None:
            from vvk.methods.vild.teacher import shared_teacher

            teacher = shared_teacher(self.spec)  # the training plan's copy, when it read one
            if teacher.dim != self.dim:
                raise VvkError(
                    f"teacher={self.spec}: embeds to width {teacher.dim}, the model was built with "
                    f"teacher_dim={self.dim}",
                    params=("teacher", "teacher_dim"),
                )
            self._teacher = teacher
        return self._teacher


def make_query_encoder(
    kind: QueryEncoderKind, *, categories: Categories, dim: int, teacher: str | None, teacher_dim: int
) -> nn.Module:
    """The module that turns a batch of queries into (B, ``dim``) embeddings."""
    if kind not in QUERY_ENCODERS:
        raise VvkError(
            f"query_encoder={kind}: expected one of {', '.join(QUERY_ENCODERS)}", params=("query_encoder",)
        )
    if kind == "label":
        if teacher is not None:
            raise VvkError("teacher: only query_encoder='text' reads a teacher", params=("teacher",))
        return LabelQueryEncoder([c["name"] for c in categories], dim)
    if teacher is None:
        raise VvkError(
            "query_encoder=text: needs teacher= (stand-in, a stand-in file or a CLIP weights name)",
            params=("query_encoder", "teacher"),
        )
    return TextQueryEncoder(LazyTeacher(str(teacher), teacher_dim), dim)


def one_class_classifier(net: RetinaNetHead, *, num_filters: int, separable: bool) -> nn.Module:
    """The class subnet's last layer for ``QUERY_LOGITS`` logits, made and initialised (focal-loss
    prior bias) by :class:`RetinaNetHead` itself: a head with no tower is just that layer."""
    bare = RetinaNetHead(
        in_channels=num_filters,
        num_classes=QUERY_LOGITS,
        num_anchors=net.num_anchors,
        levels=net.levels,
        num_convs=0,
        num_filters=num_filters,
        separable=separable,
    )
    return bare.classifier


def qmd(
    *,
    detector: str,
    categories: Categories | None = None,
    modulation: Modulation = "film",
    modulate: ModulationSite = "features",
    query_encoder: QueryEncoderKind = "label",
    query_dim: int = QUERY_DIM,
    multitask: bool = False,
    teacher: str | None = None,
    teacher_dim: int = CLIP_DIM,
    **retinanet_options: Any,
) -> QueryModulatedRetinaNet:
    """A query-modulated RetinaNet on the ``retinanet-*`` variant ``detector``.

    Args:
        categories: the K categories (None: COCO's 80): the standard head's classes and the label
            encoder's vocabulary.
        modulation: ``"film"`` or ``"product"`` (:func:`query_modulation`).
        modulate: where: ``"features"`` (every pyramid level, before both subnets),
            ``"class_tower"`` (the class subnet's output, before the one-class layer) or ``"both"``.
        query_encoder: ``"label"`` or ``"text"`` (:func:`make_query_encoder`).
        query_dim: Q, the width of the query embeddings.
        multitask: also a standard K-class detector for images without a query.
        teacher: the text encoder's teacher, loaded on first use (``load_teacher``'s ``spec``).
        teacher_dim: that teacher's embedding width (CLIP ViT-B/32's by default).
        retinanet_options: the variant's options to change (``image_size``, ``score_threshold``, ...).
    """
    if modulation not in MODULATIONS:
        raise VvkError(
            f"modulation={modulation}: expected one of {', '.join(MODULATIONS)}", params=("modulation",)
        )
    backbone, size, anchor_size, head = VARIANTS[detector]
    options = {"backbone": backbone, "image_size": size, "anchor_size": anchor_size, **retinanet_options}
    num_convs, num_filters, separable = options.setdefault("head", head or HEAD_SPECS[backbone])
    base = retinanet(categories=categories, **options)
    net = base.head.net
    encoder = make_query_encoder(
        query_encoder, categories=base.categories, dim=query_dim, teacher=teacher, teacher_dim=teacher_dim
    )
    if modulate not in MODULATION_SITES:
        raise VvkError(
            f"modulate={modulate}: expected one of {', '.join(MODULATION_SITES)}", params=("modulate",)
        )
    features = tower = None
    if modulate in ("features", "both"):
        features = query_modulation(
            modulation, channels=base.backbone.out_channels, query_dim=query_dim, levels=base.backbone.levels
        )
    if modulate in ("class_tower", "both"):
        tower = query_modulation(
            modulation, channels=num_filters, query_dim=query_dim, levels=("class_tower",)
        )
    return QueryModulatedRetinaNet(
        adapter=ModulatedFeatures(features, encoder=encoder),
        query_classifier=one_class_classifier(net, num_filters=num_filters, separable=bool(separable)),
        multitask=multitask,
        tower_modulation=tower,
        backbone=base.backbone,
        head=net,
        categories=base.categories,
        image_size=base.image_size,
        anchor_size=options["anchor_size"],
        score_threshold=base.score_thresh,
        nms_threshold=base.nms_thresh,
        detections_per_image=base.detections_per_img,
        pre_nms_top_k=base.topk_candidates,
    )


_VARIANTS = {
    "qmd-spinenet-mobile-49": "retinanet-spinenet-mobile-49",
    "qmd-spinenet-mobile-tiny": "retinanet-spinenet-mobile-tiny",
}
_SOURCE = "Fornoni et al. arXiv 2106.10258 (no code); FiLM / FindIt's product fusion; on "


register_variants(_VARIANTS, qmd, image_size=lambda detector: VARIANTS[detector][1], source=_SOURCE)
