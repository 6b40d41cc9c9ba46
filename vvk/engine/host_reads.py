"""Counting device-to-host reads: the points where the host waits for the device.

On a GPU, ``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)`` and the like of a device tensor
block the host until the device has caught up, which stalls a launch-bound training loop.
``torch.cuda.set_sync_debug_mode`` reports them, on a GPU only; ``HostReads`` counts the same
reads on any device, the CPU included, so that tests and benchmarks can hold the training loop
to its budget (``vvk.engine.loop``: one read per optimizer step, one more on a logging step)::

    with HostReads(torch.device("cpu"), on_read=lambda: counts.append(step)) as reads:
        train(...)
    reads.count

Counted: the tensor methods that copy to the host (``tolist``, ``cpu``, ``numpy``) and every
scalar read (``item``, ``bool``, ``int``, ``float``, use as an index), which all dispatch
``aten::_local_scalar_dense``; a read inside another (``tolist`` of a 0-d tensor) counts once.
Only tensors on ``device`` count: on a CPU run that is every tensor, host-side counters such as
Adam's step included (on a GPU those stay on the host and cost nothing), so hold CPU tests to
optimizers without them (SGD, LARS). Not seen: raw memory access (``data_ptr``, the buffer
protocol), which a training loop has no reason to use. This module imports only torch, so a
benchmark can load it by path to count the reads of another version of vvk.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_COPY_METHODS = ("tolist", "cpu", "numpy")


class HostReads(TorchDispatchMode):
    """Context manager: ``count`` device-to-host reads of tensors on ``device`` in this thread;
    ``on_read()`` is called at each one."""

    def __init__(self, device: torch.device | str, *, on_read: Callable[[], None] | None = None):
        super().__init__()
        self.device_type = torch.device(device).type
        self.on_read = on_read
        self.count = 0
        self._depth = 0  # > 0 inside a counted method: its own scalar reads are part of it
        self._originals: dict[str, Any] = {}

    def _record(self, tensor: torch.Tensor) -> None:
        if self._depth == 0 and tensor.device.type == self.device_type:
            self.count += 1
            if self.on_read is not None:
                self.on_read()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self._record(args[0])
        return func(*args, **(kwargs or {}))

    def _counting(self, original):
        @functools.wraps(original)
        def method(tensor, *args, **kwargs):
            self._record(tensor)
            self._depth += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._depth -= 1

        return method

    def __enter__(self) -> HostReads:
        for name in _COPY_METHODS:
            self._originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(self._originals[name]))
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals = {}
        super().__exit__(*exc)
