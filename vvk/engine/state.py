"""The run folder and its checkpoints.

::

    RUN/
      run.json          which method made this run, its id, when, which vvk
      config.json       the resolved TrainConfig
      metrics.jsonl     one JSON object per logged step (resuming drops those after the checkpoint)
      summary.json      written at the end: status, steps, throughput, skipped files
      checkpoints/
        latest          the name of the newest complete checkpoint
        step-00000500/  model.safetensors + model.json, ema.safetensors (+ .json), trainer.pt

A checkpoint is written into a hidden temporary folder, renamed into place, and only then named
in ``latest`` (an atomic write): a crash at any moment leaves ``latest`` naming a complete one,
and the next save removes the temporary folder the crash left.
``model.safetensors`` is a ``vvk.models`` checkpoint when the model was built by
``vvk.models.build`` (``vvk.models.load`` rebuilds it), plain safetensors otherwise.
``trainer.pt`` holds the step, the optimizer, the loss scaler, and every rank's RNG states and
sample position, as plain tensors and lists (it loads with ``weights_only=True``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn

import vvk
from vvk.atomic import atomic_path, atomic_write_text
from vvk.engine.config import TrainConfig
from vvk.errors import VvkError
from vvk.models.checkpoint import load_weights, unwrap
from vvk.models.checkpoint import save as save_vvk_checkpoint
from vvk.models.registry import ARCH_ATTR

logger = logging.getLogger("vvk.engine")

# Fields that may differ when a run is resumed without a warning.
_RESUMABLE_CHANGES = {
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "num_workers",
    "frame_cache",  # the same frames either way
    "progress",
    "tensorboard",
}


class RunDir:
    """One training run's folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"

    @classmethod
    def prepare(
        cls, path: str | os.PathLike, *, method: str, config: TrainConfig, resume: bool, is_main: bool
    ) -> RunDir:
        """Check the folder against ``resume`` and, on the main rank, record the run."""
        run = cls(path)
        record = run.check(method=method, resume=resume)
        if resume:
            run._warn_config_changes(config, is_main)
        if is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            if not resume or record is None:
                record = {
                    "method": method,
                    "run_id": uuid.uuid4().hex,
                    "created": _now(),
                    "vvk_version": vvk.__version__,
                    "command": " ".join(sys.argv),
                }
                atomic_write_text(run.path / "run.json", json.dumps(record, indent=2) + "\n")
            atomic_write_text(
                run.path / "config.json", json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"
            )
        return run

    def check(self, *, method: str, resume: bool) -> dict[str, Any] | None:
        """Refuse a folder that this run cannot use, writing nothing; returns its run record.

        Callers that write into the run folder before training (``vvk pretrain`` writes its
        preset) call this first, so that a refused ``--resume`` leaves the folder as it was.
        """
        record = self.record()
        if resume:
            if record is None:
                raise VvkError(f"--resume: {self.path} holds no run (no run.json)")
            if record.get("method") != method:
                raise VvkError(
                    f"--resume: {self.path} was trained by '{record.get('method')}', not '{method}'",
                    hint="resume with the same method, or start a new run folder",
                )
        elif record is not None and self.latest() is not None:
            raise VvkError(
                f"{self.path} already holds a run",
                hint="pass --resume to continue it, or choose a new folder",
            )
        return record

    def record(self) -> dict[str, Any] | None:
        path = self.path / "run.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VvkError(f"{path}: malformed JSON at line {e.lineno}") from e

    def _warn_config_changes(self, config: TrainConfig, is_main: bool) -> None:
        path = self.path / "config.json"
        if not path.is_file() or not is_main:
            return
        old = json.loads(path.read_text(encoding="utf-8"))
        defaults = TrainConfig().to_json()  # a field newer than the run's config had its default
        changed = sorted(
            k
            for k, v in config.to_json().items()
            if k not in _RESUMABLE_CHANGES and old.get(k, defaults[k]) != v
        )
        if changed:
            logger.warning("resuming %s with changed settings: %s", self.path, ", ".join(changed))

    def trim_metrics(self, step: int) -> None:
        """Drop metric lines after ``step``: a resumed run redoes those steps and logs them again."""
        if not self.metrics.is_file():
            return
        lines = self.metrics.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.metrics, "".join(kept))

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None.

        ``latest`` names it; when that one is gone or incomplete (deleted by hand, a disk
        restored in part), the newest complete ``step-*`` folder stands in, with a warning,
        rather than a resumed run silently starting again from step 0.
        """
        pointer = self.checkpoints / "latest"
        named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
        if named and _complete(self.checkpoints / named):
            return self.checkpoints / named
        complete = [f for f in sorted(self.checkpoints.glob("step-*"), reverse=True) if _complete(f)]
        if not complete:
            return None
        if named:
            logger.warning(
                "%s names %s, which is missing or incomplete; using the newest complete checkpoint, %s",
                pointer, named, complete[0].name,
            )  # fmt: skip
        return complete[0]

    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        trainer: dict[str, Any],
        ema: nn.Module | None = None,
        arch: dict[str, Any] | None = None,
        keep: int = 2,
    ) -> Path:
        """Write checkpoint ``step`` (main rank only) and drop all but the ``keep`` newest."""
        name = f"step-{step:08d}"
        final = self.checkpoints / name
        # Folders of writes that were killed: only rank 0 writes, one save at a time, so every
        # temporary folder here is a dead one, this process's included.
        for stale in self.checkpoints.glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.checkpoints / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        _save_weights(model, tmp / "model.safetensors", arch=arch, step=step)
        if ema is not None:
            _save_weights(ema, tmp / "ema.safetensors", arch=arch, step=step)
        with atomic_path(tmp / "trainer.pt") as f:
            torch.save(trainer, f)
        if final.exists():  # the same step saved again (e.g. a signal right after resuming)
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.checkpoints / "latest", name + "\n")
        for old in sorted(self.checkpoints.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(
        self, folder: Path, *, model: nn.Module, ema: nn.Module | None, device: torch.device
    ) -> dict[str, Any]:
        """Load weights into ``model`` (and ``ema``); return the trainer state."""
        load_weights(model, folder / "model.safetensors", device=device)
        if ema is not None:
            ema_file = folder / "ema.safetensors"
            load_weights(ema, ema_file if ema_file.is_file() else folder / "model.safetensors", device=device)
        try:
            return torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise VvkError(f"{folder / 'trainer.pt'}: cannot load the trainer state ({e})") from e


def _complete(folder: Path) -> bool:
    # What ``load`` reads; a checkpoint folder appears only whole (renamed into place).
    return (folder / "model.safetensors").is_file() and (folder / "trainer.pt").is_file()


def _save_weights(model: nn.Module, path: Path, *, arch: dict[str, Any] | None, step: int) -> None:
    model = unwrap(model)
    arch = arch or getattr(model, ARCH_ATTR, None)
    if arch is not None:
        save_vvk_checkpoint(model, path, arch=arch, step=step)
        return
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata={"format": "vvk-train-weights", "step": str(step)})


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and lists (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
