"""Where vvk keeps things on disk: its user cache and the default run folder.

Torch-free and side-effect free: nothing here creates a folder. ``VVK_CACHE`` moves the whole
cache (weights, video indexes, decoded frames, example sets); otherwise it follows
``XDG_CACHE_HOME`` like huggingface_hub and torch do.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def cache_dir() -> Path:
    """vvk's user cache: ``$VVK_CACHE``, else ``$XDG_CACHE_HOME/vvk`` (``~/.cache/vvk``)."""
    env = os.environ.get("VVK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vvk"


def torch_hub_checkpoints() -> Path:
    """``torch.hub.get_dir() / "checkpoints"``, computed without importing torch (same rule)."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(home).expanduser() / "hub" / "checkpoints"


def default_run_dir(name: str) -> Path:
    """A new run folder under ``./runs``: ``runs/<name>-<YYYYmmdd-HHMMSS>``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
