"""Query-modulated detection's training samples, synthesised from ordinary detection annotations.

::

    from vvk.data.detection import DetectionDataset, open_coco
    from vvk.data.queries import QueryDetectionDataset, QueryMix, QuerySchedule

    coco = open_coco("coco/")
    schedule = QuerySchedule(coco, QueryMix(positive=0.6, negative=0.3, none=0.1), seed=0)
    data = QueryDetectionDataset(DetectionDataset(coco, size=640), schedule)
    image, target, query = data[0]  # query: {"kind", "category_id", "name", "text"}

Query-modulated detection (Fornoni et al., arXiv 2106.10258) feeds a detector an image and a
query, e.g. a label, and asks for the boxes of that query only. Each image of an epoch gets one
query (``QuerySchedule``), a pure function of ``(seed, epoch, position)``, so every worker, rank and
resumed run asks the same:

- ``positive``: a category the image holds (a non-crowd object of it): the target keeps that
  category's objects, all labelled 1, the one "queried thing" class;
- ``negative``: a category absent from the image (crowd regions count as present): no boxes;
- ``none``: no query, the full multi-class target; only a multitask model trains on these.

An epoch is planned as a whole. First (when the mix has positives) each category that has an
object gets one of its images as a positive query: a maximum matching of categories to distinct
images, so all of them whenever the data allow; where images are too few (real COCO subsets:
50 tiny_coco images hold 49 categories, at most 43 on distinct images) the ones left out change
from epoch to epoch. Then the other images are dealt the kinds in the ``QueryMix`` proportions
and a category at random. An image dealt a kind it cannot take (a positive without objects, a
negative holding every category) trades it with one that can, so the proportions hold; with no
partner left it falls back to the other kind, counted in ``EpochPlan.fallbacks``.

The target of a query (``query_target``) is read from the sample as the augmentation left it,
not from the annotation file: a crop may cut the queried objects away (a positive with no boxes,
as plain detection trains on an emptied crop), and a Copy-Paste may bring a negative query's
category in (then its pasted objects are the target: the answer is what the image shows).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vvk.data.coco import CocoDataset
from vvk.data.detection import Target, collate_detection
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError

Kind = Literal["positive", "negative", "none"]
KINDS: tuple[Kind, ...] = ("positive", "negative", "none")
POSITIVE, NEGATIVE = KINDS.index("positive"), KINDS.index("negative")  # as an EpochPlan stores kinds

# The per-object entries a detection target may carry (torchvision's references add "area" and
# "iscrowd"); everything else (image_id, skipped, regions) is about the image and stays.
OBJECT_KEYS = ("boxes", "labels", "masks", "area", "iscrowd")

# Appended to the seed so that the query plan and the query texts are streams of their own, not
# the sampler's permutation (``ShardedSampler`` seeds with ``[seed, epoch]``) under a shared seed.
_PLAN_STREAM, _TEXT_STREAM, _MORE_STREAM = 0x9E3779B1, 0x7F4A7C15, 0x2545F491


@dataclass(frozen=True)
class QueryMix:
    """Proportions of positive, negative and no-query samples (weights: need not sum to 1).

    ``none`` stays 0 unless the model is multitask (query localisation and standard detection).
    The defaults are a starting point, not the paper's (its ratios are not verified here).
    """

    positive: float = 0.7
    negative: float = 0.3
    none: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, {">= 0": ("positive", "negative", "none")})
        for name in ("positive", "negative", "none"):
            check(self, name, math.isfinite(getattr(self, name)), "finite")
        check(self, "positive", self.positive + self.negative + self.none > 0, "> 0 when the others are 0")

    def weights(self) -> np.ndarray:
        """(3,) the proportions in ``KINDS`` order, summing to 1."""
        weights = np.array([self.positive, self.negative, self.none], dtype=np.float64)
        return weights / weights.sum()


@dataclass(frozen=True)
class Query:
    """One sample's query: its kind and the queried category's id (None for ``"none"``)."""

    kind: Kind
    category_id: int | None


@dataclass(frozen=True)
class EpochPlan:
    """The queries of one epoch by position: ``kinds`` (n,) int8 indices into ``KINDS``,
    ``category_ids`` (n,) int64 (-1 for ``"none"``), and ``fallbacks``: how many images could
    not take the kind they were dealt (``"positive_to_negative"``, ``"negative_to_positive"``)."""

    kinds: np.ndarray
    category_ids: np.ndarray
    fallbacks: dict[str, int]

    def query(self, position: int) -> Query:
        if not 0 <= position < len(self.kinds):
            raise IndexError(f"position {position} is outside the epoch's {len(self.kinds)} samples")
        kind = KINDS[int(self.kinds[position])]
        return Query(kind, None if kind == "none" else int(self.category_ids[position]))

    def counts(self) -> dict[str, int]:
        """How many samples of each kind."""
        return {kind: int(n) for kind, n in zip(KINDS, np.bincount(self.kinds, minlength=3), strict=True)}


@dataclass(frozen=True)
class _Ragged:
    """Rows of sorted ints in one array: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray  # (total,) int64
    offsets: np.ndarray  # (rows + 1,) int64

    @classmethod
    def from_rows(cls, rows: Sequence[Iterable[int]]) -> _Ragged:
        sorted_rows = [sorted(set(row)) for row in rows]
        lengths = np.array([len(row) for row in sorted_rows], dtype=np.int64)
        values = np.fromiter(
            (v for row in sorted_rows for v in row), dtype=np.int64, count=int(lengths.sum())
        )
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (rows,)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def pick(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One value of each of ``rows`` (non-empty), chosen by ``u`` in [0, 1): (m,)."""
        return self.values[self.offsets[rows] + (u * self.lengths()[rows]).astype(np.int64)]

    def transposed(self, columns: int) -> _Ragged:
        """Row ``c`` of the result lists the rows that hold ``c``."""
        rows = np.repeat(np.arange(len(self.offsets) - 1), self.lengths())  # (total,)
        order = np.lexsort((rows, self.values))  # by value, then row: every new row sorted
        counts = np.bincount(self.values, minlength=columns)
        return _Ragged(rows[order], np.concatenate([[0], np.cumsum(counts)]))


class QuerySchedule:
    """Which query each position (image) of the data gets in each epoch (module docstring).

    Args:
        data: a ``CocoDataset`` (positions are its images in file order, as ``DetectionDataset``
            indexes them; crowd objects make a category present but cannot be its positive), or
            one set of category ids per position.
        mix: the proportions of the kinds.
        seed: with the epoch, seeds the epoch's plan (>= 0).
        category_ids: the categories that may be queried; default: the file's categories, or
            for label sets every id they hold. Give a ``DetectionDataset``'s when it excludes
            some (``[c["id"] for c in dataset.categories]``).
    """

    def __init__(
        self,
        data: CocoDataset | Sequence[Iterable[int]],
        mix: QueryMix,
        *,
        seed: int = 0,
        category_ids: Sequence[int] | None = None,
    ):
        if seed < 0:
            raise ValueError(f"seed={seed}: must be >= 0")
        objects, present = _label_sets(data)
        if category_ids is None:
            category_ids = (
                [int(c["id"]) for c in data.categories]
                if isinstance(data, CocoDataset)
                else sorted(set().union(*present))
            )
        if not category_ids or len(set(category_ids)) != len(category_ids):
            raise VvkError(
                f"category_ids={list(category_ids)}: must be distinct and not empty", params=("category_ids",)
            )
        self.mix, self.seed = mix, seed
        self.category_ids = np.array(category_ids, dtype=np.int64)  # (K,)
        index = {int(c): k for k, c in enumerate(self.category_ids)}
        # Categories as their index k in 0..K-1, so that "absent" is a complement in a range.
        self._objects = _Ragged.from_rows([[index[c] for c in row if c in index] for row in objects])
        self._present = _Ragged.from_rows([[index[c] for c in row if c in index] for row in present])
        self._images_of = self._objects.transposed(len(self.category_ids))
        # What a positive query is drawn from: the categories with objects, or, for an image that
        # holds every category but all as crowd (nothing else is possible there), any present one.
        self._positive_pool = _Ragged.from_rows(
            [
                self._objects.row(i) if len(self._objects.row(i)) else self._present.row(i)
                for i in range(len(self))
            ]
        )
        self._cached: tuple[int, EpochPlan] | None = None

    def __len__(self) -> int:
        return len(self._present.offsets) - 1

    def query(self, epoch: int, position: int) -> Query:
        return self.plan(epoch).query(position)

    def queries(self, epoch: int, position: int, count: int) -> list[Query]:
        """The position's planned query, then ``count - 1`` more categories drawn at random from
        those not asked yet (fewer when the categories run out), each positive when the image
        holds it, negative otherwise; a function of ``(seed, epoch, position)``. A ``"none"``
        query stays alone: its sample is plain detection over every category.

        Asking an image several things at once is vvk's: one query per image gives the class
        subnet one category's verdict where a standard detector's gets all K of them, and on
        the built-in example a one-query QMD trails a filtered detector by far at equal steps
        (docs/results.md); ``count = K`` asks everything.
        """
        if count < 1:
            raise ValueError(f"count={count}: must be >= 1")
        first = self.query(epoch, position)
        if first.kind == "none" or count == 1:
            return [first]
        rng = np.random.default_rng([self.seed, epoch, position, _MORE_STREAM])
        first_index = int(np.flatnonzero(self.category_ids == first.category_id)[0])
        others = np.delete(np.arange(len(self.category_ids)), first_index)  # (K - 1,)
        drawn = rng.permutation(others)[: count - 1]
        present = set(self._present.row(position).tolist())
        return [first] + [
            Query("positive" if k in present else "negative", int(self.category_ids[k]))
            for k in drawn.tolist()
        ]

    def plan(self, epoch: int) -> EpochPlan:
        """Every position's query in ``epoch``; a function of ``(seed, epoch)`` only."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._make_plan(np.random.default_rng([self.seed, epoch, _PLAN_STREAM])))
        return self._cached[1]

    def _make_plan(self, rng: np.random.Generator) -> EpochPlan:
        n = len(self)
        owner = _cover(self._images_of, n, rng) if self.mix.positive > 0 else np.full(n, -1)  # (n,)
        kinds, fallbacks = self._deal_kinds(owner >= 0, rng)
        chosen = self._choose_categories(kinds, owner, rng)  # (n,) category indices, -1 for none
        category_ids = np.where(chosen >= 0, self.category_ids[np.maximum(chosen, 0)], -1)
        return EpochPlan(kinds, category_ids, fallbacks)

    def _deal_kinds(self, covered: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, int]]:
        """(n,) the kind of each position: the covering ones positive, the others dealt at random
        in the mix's proportions; then images dealt a kind they cannot take trade it with one that
        can, and those left without a partner fall back (counted)."""
        kinds = np.full(len(covered), POSITIVE, dtype=np.int8)
        dealt = _deal_counts(len(covered), int(covered.sum()), self.mix.weights())
        kinds[~covered] = rng.permutation(np.repeat(np.arange(3, dtype=np.int8), dealt))
        has_objects = self._objects.lengths() > 0  # (n,)
        has_absent = self._present.lengths() < len(self.category_ids)  # (n,)
        _trade(kinds, (kinds == POSITIVE) & ~has_objects & has_absent, (kinds == NEGATIVE) & has_objects, rng)
        _trade(kinds, (kinds == NEGATIVE) & ~has_absent, (kinds == POSITIVE) & ~covered & has_absent, rng)
        no_object = (kinds == POSITIVE) & ~has_objects & has_absent
        no_absent = (kinds == NEGATIVE) & ~has_absent
        kinds[no_object], kinds[no_absent] = NEGATIVE, POSITIVE
        fallbacks = {
            "positive_to_negative": int(no_object.sum()),
            "negative_to_positive": int(no_absent.sum()),
        }
        return kinds, fallbacks

    def _choose_categories(
        self, kinds: np.ndarray, owner: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """(n,) the queried category index of each position (-1 for ``"none"``): a covering one's,
        else one drawn from the image's positive pool or from the categories it lacks."""
        u = rng.random(len(kinds))  # (n,) one draw per position, whatever its kind
        chosen = owner.copy()  # -1 where no category is covered
        drawn = np.flatnonzero((kinds == POSITIVE) & (owner < 0))
        chosen[drawn] = self._positive_pool.pick(drawn, u[drawn])
        negative = np.flatnonzero(kinds == NEGATIVE)
        absent = len(self.category_ids) - self._present.lengths()[negative]  # (m,)
        rank = (u[negative] * absent).astype(np.int64)  # which absent category, 0-based
        chosen[negative] = _kth_absent(self._present, negative, rank, len(self.category_ids))
        return chosen


def _label_sets(data: CocoDataset | Sequence[Iterable[int]]) -> tuple[list[set[int]], list[set[int]]]:
    """Per position: the categories with a (non-crowd) object, and all categories present."""
    if not isinstance(data, CocoDataset):
        sets = [{int(c) for c in labels} for labels in data]
        return sets, sets
    annotations = [data.annotations.get(image_id, []) for image_id in data.images]
    objects = [{a.category_id for a in anns if not a.iscrowd} for anns in annotations]
    return objects, [{a.category_id for a in anns} for anns in annotations]


def _cover(images_of: _Ragged, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) the category whose covering positive query each image is, -1 for none: a maximum
    matching of categories to distinct images holding them. Greedy, a random free image each,
    then augmenting paths for the categories it left out (Kuhn).

    When images are too few to cover every category, which ones miss out depends on the order
    (a matched category stays matched): a new random order each epoch, not rarest first, so
    that no category misses out every epoch.
    """
    owner = np.full(n, -1, dtype=np.int64)
    left_out = []
    for k in rng.permutation(len(images_of.offsets) - 1):
        candidates = images_of.row(k)
        free = candidates[owner[candidates] < 0]
        if len(free):
            owner[free[rng.integers(len(free))]] = k
        elif len(candidates):
            left_out.append(int(k))
    for k in left_out:
        _augment(k, images_of, owner)
    return owner


def _augment(start: int, images_of: _Ragged, owner: np.ndarray) -> None:
    """Give category ``start`` an image if a chain of reassignments frees one (breadth first):
    each category on the chain moves to the next image, the last one to a free image."""
    reached_by: dict[int, tuple[int, int]] = {start: (-1, -1)}  # category -> (category, its image)
    queue, seen = [start], set()
    for category in queue:
        for image in images_of.row(category).tolist():
            if image in seen:
                continue
            seen.add(image)
            holder = int(owner[image])
            if holder < 0:
                while category >= 0:  # hand every image on the chain one step back
                    owner[image] = category
                    category, image = reached_by[category]
                return
            if holder not in reached_by:
                reached_by[holder] = (category, image)
                queue.append(holder)


def _trade(kinds: np.ndarray, stuck: np.ndarray, takers: np.ndarray, rng: np.random.Generator) -> None:
    """Swap the kinds of as many ``stuck`` and ``takers`` positions (boolean (n,)) as pair up,
    chosen at random: the epoch's counts stay those dealt."""
    stuck, takers = np.flatnonzero(stuck), np.flatnonzero(takers)
    pairs = min(len(stuck), len(takers))
    stuck, takers = rng.choice(stuck, pairs, replace=False), rng.choice(takers, pairs, replace=False)
    kinds[stuck], kinds[takers] = kinds[takers], kinds[stuck]


def _deal_counts(n: int, covered: int, weights: np.ndarray) -> np.ndarray:
    """(3,) how many of the ``n - covered`` images not covering a category get each kind, so
    that the epoch's counts, the ``covered`` positives included, come closest to ``weights``."""
    quota = _apportion(n, weights)
    positives = max(int(quota[POSITIVE]) - covered, 0)
    others = (
        _apportion(n - covered - positives, weights[1:]) if weights[1:].sum() > 0 else np.zeros(2, np.int64)
    )
    return np.array([positives, *others], dtype=np.int64)


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers summing to ``total`` in the proportions of ``weights`` (largest remainders)."""
    shares = total * weights / weights.sum()
    counts = np.floor(shares).astype(np.int64)
    counts[np.argsort(counts - shares, kind="stable")[: total - counts.sum()]] += 1
    return counts


def _kth_absent(present: _Ragged, rows: np.ndarray, rank: np.ndarray, num_categories: int) -> np.ndarray:
    """(m,) the ``rank``-th category (0-based) of 0..K-1 absent from each of ``rows``.

    In a row of sorted ``p_0 < p_1 < ...``, ``q_j = p_j - j`` counts the absent categories below
    ``p_j``; the ``r``-th absent one is ``r`` plus the number of ``q_j <= r``. Offsetting each row's
    ``q`` by ``row * (K + 1)`` keeps the rows apart, so one ``searchsorted`` answers for all rows.
    """
    lengths = present.lengths()
    within = np.arange(len(present.values)) - np.repeat(present.offsets[:-1], lengths)  # j in its row
    stride = num_categories + 1
    keys = np.repeat(np.arange(len(lengths)), lengths) * stride + present.values - within  # sorted
    below = np.searchsorted(keys, rows * stride + rank, side="right") - present.offsets[rows]
    return rank + below


def query_target(target: Target, query: Query, *, category_ids: Sequence[int]) -> Target:
    """The target of ``query`` from a full detection target (labels ``l`` in 1..K naming
    ``category_ids[l - 1]``): for a positive or negative query, the queried category's objects
    (none, for a negative, unless an augmentation brought some in), labelled 1; for ``"none"``,
    the target as it is. Boxes stay ``BoundingBoxes`` (format, canvas) and masks ``Mask``."""
    if query.kind == "none":
        return dict(target)
    if query.category_id not in category_ids:
        raise ValueError(
            f"queried category {query.category_id} is not among the target's {list(category_ids)}"
        )
    keep = target["labels"] == list(category_ids).index(query.category_id) + 1  # (N,) bool
    out = dict(target)
    for key in OBJECT_KEYS:
        if key in target:
            out[key] = _select(target[key], keep)
    out["labels"] = torch.ones_like(out["labels"])  # (M,) the one "queried thing" class
    return out


def _select(value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # Indexing a tv_tensor returns a plain tensor; wrap it back with the format and canvas size.
    chosen = value[keep]  # (N, ...) -> (M, ...)
    return tv_tensors.wrap(chosen, like=value) if isinstance(value, tv_tensors.TVTensor) else chosen


def query_text(category: Mapping[str, Any], *, synonyms: bool = True, rng: np.random.Generator) -> str:
    """The words a text encoder reads for ``category``: its name or, with ``synonyms``, one of
    its ``"synonyms"`` (LVIS has them, COCO does not), ``_`` read as a space."""
    names = _texts(category) if synonyms else _texts({"name": category["name"]})
    return names[int(rng.integers(len(names)))]


def query_texts(categories: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every text :func:`query_text` can draw for ``categories`` (names and synonyms), once each."""
    return list(dict.fromkeys(text for category in categories for text in _texts(category)))


def _texts(category: Mapping[str, Any]) -> list[str]:
    names = [category["name"], *category.get("synonyms", ())]
    # LVIS lists the name among the synonyms: one entry each, or the name would come up twice as often.
    return list(dict.fromkeys(str(name).replace("_", " ") for name in names))


class QueryDetectionDataset(Dataset):
    """``(image, targets, records)`` around a detection dataset: the image's queries' targets
    and records, one each per query (``QuerySchedule.queries``).

    Args:
        dataset: ``index -> (image, target)`` with labels 1..K in ``categories``' order
            (``DetectionDataset``, or any with ``categories``).
        schedule: the query of each index; one position per sample of ``dataset``.
        categories: the records (``"id"``, ``"name"``, maybe ``"synonyms"``) of the labels, in
            label order; default: ``dataset.categories``, with a ``DetectionDataset``'s taken
            whole from its annotation file (its own keep only id and name: LVIS synonyms).
        synonyms: draw the query text among the category's synonyms.
        world_size: ranks sharing the data, to find the epoch of a training-loop key.
        queries_per_image: how many queries each image asks (a ``"none"`` one asks one).

    A record is ``{"kind", "category_id", "name", "text"}`` (the last three None for
    ``"none"``). The epoch: a key ``(index, draw)`` of the training loop's ``ShardedSampler``
    carries it (``draw`` numbers the samples of all epochs, each padded to a multiple of
    ``world_size``); an int index takes the one ``set_epoch`` set. The loop keeps its workers
    across epochs and never calls ``set_epoch``: only the key reaches them.
    """

    def __init__(
        self,
        dataset: Any,
        schedule: QuerySchedule,
        *,
        categories: Sequence[Mapping[str, Any]] | None = None,
        synonyms: bool = True,
        world_size: int = 1,
        queries_per_image: int = 1,
    ):
        if queries_per_image < 1:
            raise VvkError(
                f"queries_per_image={queries_per_image}: must be >= 1", params=("queries_per_image",)
            )
        self.queries_per_image = queries_per_image
        if len(schedule) != len(dataset):
            raise VvkError(
                f"schedule: {len(schedule)} positions for a dataset of {len(dataset)}", params=("schedule",)
            )
        self.dataset, self.schedule, self.synonyms = dataset, schedule, synonyms
        self.categories = list(categories) if categories is not None else _records_of(dataset)
        self.category_ids = [int(c["id"]) for c in self.categories]
        unknown = sorted(set(schedule.category_ids.tolist()) - set(self.category_ids))
        if unknown:
            raise VvkError(
                f"schedule: queries categories {unknown} that the dataset does not label",
                params=("schedule",),
            )
        self._records = dict(zip(self.category_ids, self.categories, strict=True))
        self.epoch_length = math.ceil(len(dataset) / world_size) * world_size  # ShardedSampler's padded epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def bad_files(self) -> Any:
        """The wrapped dataset's record of skipped images, which the training loop reports."""
        return getattr(self.dataset, "bad_files", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(
        self, key: int | tuple[int, int]
    ) -> tuple[torch.Tensor, list[Target], list[dict[str, Any]]]:
        if isinstance(key, int | np.integer):
            index, epoch = int(key), self.epoch
        else:
            index, epoch = int(key[0]), int(key[1]) // self.epoch_length
        image, target = self.dataset[key]
        queries = self.schedule.queries(epoch, index, self.queries_per_image)
        rng = np.random.default_rng([self.schedule.seed, epoch, index, _TEXT_STREAM])
        targets = [query_target(target, query, category_ids=self.category_ids) for query in queries]
        return image, targets, [self._record(query, rng) for query in queries]

    def _record(self, query: Query, rng: np.random.Generator) -> dict[str, Any]:
        if query.category_id is None:
            return {"kind": query.kind, "category_id": None, "name": None, "text": None}
        category = self._records[query.category_id]
        text = query_text(category, synonyms=self.synonyms, rng=rng)
        return {"kind": query.kind, "category_id": query.category_id, "name": category["name"], "text": text}


def _records_of(dataset: Any) -> list[dict[str, Any]]:
    full = {c["id"]: c for c in dataset.coco.categories} if hasattr(dataset, "coco") else {}
    return [dict(full.get(c["id"], c)) for c in dataset.categories]


def collate_queries(
    samples: Sequence[tuple[torch.Tensor, list[Target], list[dict[str, Any]]]],
) -> dict[str, Any]:
    """``collate_detection``'s batch (``"images"``, ``"skipped"``) with ``"targets"`` and
    ``"queries"`` as B lists: each image's targets and records, one per query."""
    batch = collate_detection([(image, targets[0]) for image, targets, _ in samples])
    batch["targets"] = [[_without_skipped(t) for t in targets] for _, targets, _ in samples]
    batch["queries"] = [records for _, _, records in samples]
    return batch


def _without_skipped(target: Target) -> Target:
    # the image's skipped-file records ride on each target: collate_detection collects them once
    return {k: v for k, v in target.items() if k != "skipped"}
