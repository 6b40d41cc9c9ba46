"""Feeding a dataset to training: a sharded, resumable sample order and the DataLoader around it.

``ShardedSampler`` is pure arithmetic: the n-th key a rank gets is a function of (seed, rank,
world size, n) alone. Each epoch is a seeded permutation of the dataset, padded by wrapping to
a multiple of the world size and dealt out round-robin, so ranks see different videos (a
known failure of other video toolkits, pytorchvideo#186), and resuming is starting at n. Keys
are ``(item, draw)``: ``draw`` numbers the sample across epochs and ranks and seeds its clip
sampling, which keeps it deterministic in any worker (no generator objects are pickled, cf.
pytorchvideo#21).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vvk.data.datasets import collate


class ShardedSampler(Sampler):
    """Endless stream of ``(item, draw)`` keys for one rank.

    Args:
        size: dataset length.
        rank, world_size: this process and how many share the data.
        seed: seeds every epoch's permutation.
        shuffle: permute each epoch (False: dataset order).
        start: keys already consumed by this rank (a resumed run starts there).
    """

    def __init__(
        self,
        size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
    ):
        if size < 1:
            raise ValueError("ShardedSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.start = seed, shuffle, start
        self.per_rank = math.ceil(size / world_size)
        self._cached: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The dataset's order in ``epoch`` (all ranks together, before padding)."""
        if self._cached is None or self._cached[0] != epoch:
            perm = (
                np.random.default_rng([self.seed, epoch]).permutation(self.size)
                if self.shuffle
                else np.arange(self.size)
            )
            self._cached = (epoch, perm)
        return self._cached[1]

    def key(self, count: int) -> tuple[int, int]:
        """The ``count``-th key of this rank."""
        epoch, position = divmod(count, self.per_rank)
        slot = position * self.world_size + self.rank  # round-robin over the padded epoch
        item = int(self.order(epoch)[slot % self.size])
        return item, epoch * self.per_rank * self.world_size + slot

    def __iter__(self) -> Iterator[tuple[int, int]]:
        count = self.start
        while True:
            yield self.key(count)
            count += 1


def _worker_init(_worker_id: int) -> None:
    # Workers are the parallelism: one intra-op thread each. Ctrl-C, `timeout` and schedulers
    # (SIGTERM) signal the whole process group; the main process handles it (checkpoint, clean
    # exit), workers must not die first: a dead worker is an error in the main process.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    start: int = 0,
    shuffle: bool = True,
    collate_fn: Callable[[list[Any]], Any] = collate,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless DataLoader of full batches for one rank, starting after ``start`` samples."""
    sampler = ShardedSampler(
        len(dataset), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle, start=start
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=num_workers > 0,
        # Its own generator: starting the loader must not draw from the global RNG, or a resumed
        # run's augmentation stream would be shifted from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
