"""The published methods vvk implements, by name: what the commands list and mount.

Torch-free on purpose: ``vvk --help`` and ``vvk <group> --help`` read it to build their
command lists without importing any method. ``load(name)`` imports the method's package
(``vvk.methods.<name>``), which provides ``PRESETS``, ``sampler``, ``dataset_options`` and
``build`` (see ``vvk.methods.base``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from vvk.errors import VvkError

Task = Literal["pretrain"]


@dataclass(frozen=True)
class MethodInfo:
    """One method: its command name, the task (the command group that runs it), a one-line
    summary for help texts and the paper it implements; then what it reads, from which each
    command is generated with only the options its method uses (``vvk.commands.pretrain``).

    Attributes:
        reads_captions: trains on captions (``--captions``).
        shared_backbone: has a modality-agnostic variant (``--shared-backbone``).
        contrastive: its loss takes negatives from the batch, so it needs two clips or more
            per step.
    """

    name: str
    task: Task
    summary: str
    paper: str
    reads_captions: bool = False
    shared_backbone: bool = False
    contrastive: bool = True


_METHODS = (
    MethodInfo(
        "constcl", "pretrain",
        "ConST-CL: contextualized spatio-temporal contrastive learning (global + local branch).",
        "Yuan et al., CVPR 2022",
    ),
    MethodInfo(
        "teg", "pretrain",
        "TeG: temporal granularity (long/short clips, fine-grained + persistent losses).",
        "Qian et al., arXiv 2112.04480",
    ),
    MethodInfo(
        "vatt", "pretrain",
        "VATT: video-audio-text transformers (NCE + MIL-NCE, DropToken).",
        "Akbari et al., NeurIPS 2021", reads_captions=True, shared_backbone=True,
    ),
    MethodInfo(
        "cvrl", "pretrain",
        "CVRL: contrastive video representation learning (the baseline).",
        "Qian et al., CVPR 2021",
    ),
)  # fmt: skip
METHODS: dict[str, MethodInfo] = {m.name: m for m in _METHODS}


def methods_for(task: Task) -> list[MethodInfo]:
    """The methods a command group runs, in the order they are listed."""
    return [m for m in _METHODS if m.task == task]


def load(name: str) -> ModuleType:
    """The method's package ``vvk.methods.<name>``; an unknown name is a ``VvkError``."""
    if name not in METHODS:
        raise VvkError(f"unknown method '{name}'", hint=f"one of {', '.join(METHODS)}")
    return importlib.import_module(f"vvk.methods.{name}")
