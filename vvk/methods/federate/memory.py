"""What a block of work cost: its wall seconds and the peak of the tensor memory it allocated
(``measure``), what a DualAdapt round records per client."""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class _Usage:
    seconds: float = 0.0
    peak_bytes: int = 0


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[_Usage]:
    """Wall seconds and peak memory of the block: the most tensor bytes it held at once of
    those it allocated (its inputs, such as the client's data, not counted).

    On CUDA, ``torch.cuda.max_memory_allocated`` over what was allocated before. On the CPU,
    ``_TensorPeak``, which follows the storages the block's operators create. Not tracemalloc,
    which does not see torch's allocator, nor ``resource``'s ru_maxrss, which cannot be reset
    between clients; nor the resident set, which misses memory the allocator reuses (measured:
    0 bytes for a whole local training run after an earlier one in the same process). The CPU
    tracker runs a little Python per operator: about 10% more seconds for the digit CNN here.
    """
    usage, cuda = _Usage(), device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with contextlib.nullcontext() if cuda else _TensorPeak() as tracker:
        yield usage
    if cuda:
        torch.cuda.synchronize(device)
        usage.peak_bytes = torch.cuda.max_memory_allocated(device) - base
    else:
        usage.peak_bytes = tracker.peak
    usage.seconds = time.perf_counter() - start


class _TensorPeak(TorchDispatchMode):
    """The peak of live bytes of the CPU tensor storages that operators create inside the mode.

    An output whose storage is an input's (a view, an in-place op) is not a new allocation. A
    storage's Python object lives as long as the storage itself (PyTorch keeps the two
    together), so a finalizer on it sees the free. Storages made outside the operators (a
    ``deepcopy`` of a model) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in inputs and key not in self._live:
                    self._add(storage, key)
        return out

    def _add(self, storage, key: int) -> None:
        nbytes = storage.nbytes()
        self._live.add(key)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes
