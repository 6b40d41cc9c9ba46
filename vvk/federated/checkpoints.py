"""The federated server's run folder: a checkpoint after every round, and resuming from it.

::

    OUT/
      run.json          what run this is (method, seed, preset, clients...): a restart must match
      records.json      every RoundRecord so far, for people and plots (rewritten each round)
      checkpoints/
        latest          the name of the newest complete checkpoint
        step-00000003/  model.safetensors (the global model after round 3) + trainer.pt
                        ({"round": 3, "records": [...]}, loadable with weights_only=True)

The checkpoints are ``vvk.engine.state.RunDir``'s, so the same guarantees hold: a checkpoint is
written into a hidden folder and renamed into place before ``latest`` names it (atomically), so
a server killed at any moment restarts from the last whole round. "step" is the round here.
Every seed of a round derives from (run seed, round), and the choice of clients from the run
seed alone, so a resumed run goes on exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vvk
from vvk.atomic import atomic_write_text
from vvk.engine.state import RunDir
from vvk.errors import VvkError
from vvk.methods.federate.rounds import RoundRecord

logger = logging.getLogger("vvk.federate")

RUN_KIND = "vvk-federate"


class RoundCheckpoints:
    """Checkpoints of one federated run in ``out``; ``identity`` (JSON values) is what a restart
    must share with the run it resumes (the method, seed, preset, clients: not the round count,
    so a finished run can be given more rounds)."""

    def __init__(self, out: str | os.PathLike, identity: dict[str, Any]):
        self.run = RunDir(out)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from run.json

    @property
    def path(self) -> Path:
        return self.run.path

    def check(self) -> bool:
        """True when ``out`` holds a checkpoint of this run to resume; ``VvkError`` when it holds
        another run (or something else), writing nothing."""
        record = self.run.record()
        if record is None:
            if self.run.latest() is not None:
                raise VvkError(f"{self.path}: checkpoints without run.json; choose a new folder")
            return False
        if record.get("kind") != RUN_KIND:
            raise VvkError(f"{self.path}: holds a run of '{record.get('method')}', not a federated one",
                           hint="choose a new run folder")  # fmt: skip
        old = record.get("identity", {})
        changed = sorted(k for k in self.identity.keys() | old.keys() if old.get(k) != self.identity.get(k))
        if changed:
            raise VvkError(
                f"{self.path}: holds a federated run with other settings ({', '.join(changed)})",
                hint="restart with that run's settings to resume it, or choose a new run folder",
            )
        return self.run.latest() is not None

    def start(self) -> None:
        """Record the run in ``out`` (run.json), once."""
        if self.run.record() is None:
            record = {"kind": RUN_KIND, "method": f"federate-{self.identity.get('method')}",
                      "identity": self.identity, "vvk_version": vvk.__version__}  # fmt: skip
            atomic_write_text(self.path / "run.json", json.dumps(record, indent=2) + "\n")

    def save(self, model: nn.Module, records: list[RoundRecord]) -> Path:
        """Checkpoint the global ``model`` after the last of ``records``, then the records file."""
        dicts = [asdict(r) for r in records]
        folder = self.run.save(
            records[-1].round, model=model, trainer={"round": records[-1].round, "records": dicts}
        )
        text = json.dumps([r.to_dict() for r in records], indent=2) + "\n"
        atomic_write_text(self.path / "records.json", text)
        return folder

    def load(self, model: nn.Module, device: torch.device) -> list[RoundRecord]:
        """Load the newest checkpoint into ``model``; its records."""
        folder = self.run.latest()
        if folder is None:
            raise VvkError(f"{self.path}: no checkpoint to resume")
        trainer = self.run.load(folder, model=model, ema=None, device=device)
        try:
            records = [RoundRecord(**d) for d in trainer["records"]]
        except (KeyError, TypeError) as e:
            raise VvkError(f"{folder / 'trainer.pt'}: not a federated checkpoint ({e})") from e
        if not records or records[-1].round != trainer["round"]:
            raise VvkError(f"{folder / 'trainer.pt'}: its records do not end at round {trainer.get('round')}")
        logger.info(f"{self.path}: resuming after round {trainer['round']} ({folder.name})")
        return records
