"""Kernel tests run the Triton kernels under the interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` kernel is defined, so it is set here, before
any test imports ``vvk.kernels.*.triton`` (``op.py`` imports those modules lazily).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
