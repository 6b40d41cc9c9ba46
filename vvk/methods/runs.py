"""What every training command checks before it writes a run folder, and how it resumes one.

Shared by ``vvk.methods.pretrain`` and ``vvk.methods.detection``: a new run needs an empty
folder; a resumed run reads its recorded preset file, keeps its model and data fields, and goes
on with its own data unless told otherwise; a preset's warm-up shrinks with a shorter run.
Library errors name the parameters (``data=``, ``out=``), which the commands respell as flags.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vvk.errors import VvkError
from vvk.methods.overrides import to_dict

logger = logging.getLogger("vvk.methods")

Data = str | os.PathLike | Sequence[str | os.PathLike]


def fit_warmup(train: Any, changes: dict[str, Any]) -> None:
    """A ``train.steps`` below the preset's warm-up, with no ``train.warmup_steps`` in
    ``changes``, shortens the warm-up in proportion (with a warning)."""
    steps = changes.get("train.steps", train.steps)
    if "train.warmup_steps" in changes or steps >= train.warmup_steps:
        return
    warmup = round(train.warmup_steps * steps / train.steps)
    changes["train.warmup_steps"] = warmup
    logger.warning(
        "train.steps=%d is shorter than the preset's warm-up of %d steps: warm-up shortened in "
        "proportion, to %d (the preset warms up for %d of its %d steps); set train.warmup_steps to choose",
        steps, train.warmup_steps, warmup, train.warmup_steps, train.steps,
    )  # fmt: skip


def check_new_run_dir(run_dir: Path) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 checks; the others may find its files
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise VvkError(
            f"out={run_dir}: the folder is not empty",
            hint="pass resume=True to continue the run there, or choose a new folder", params=("out",),
        )  # fmt: skip


def recorded_run(run_dir: Path, method: str, preset_file: str, *, command: str) -> dict[str, Any]:
    """The preset file of the run to resume, after ``RunDir.check`` accepted the folder;
    ``command`` names what writes such runs, for the error when the file is missing."""
    from vvk.engine.state import RunDir

    RunDir(run_dir).check(method=method, resume=True)
    path = run_dir / preset_file
    if not path.is_file():
        raise VvkError(f"resume: {run_dir} has no {preset_file} (not a run of {command})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VvkError(f"{path}: malformed JSON at line {e.lineno}") from e
    missing = [key for key in ("preset", "data", "resolved") if key not in record]
    if missing:
        raise VvkError(f"{path}: missing field(s) {', '.join(missing)}")
    return record


def recorded_preset(
    record: dict[str, Any], preset: str | None, run_dir: Path, *, presets: Sequence[str], what: str
) -> str:
    """The preset name a resumed run was trained with (``record``: its ``recorded_run``), which a
    given ``preset`` must equal and ``presets`` (of ``what``: "detection", ...) must still hold."""
    if preset is not None and preset != record["preset"]:
        raise VvkError(
            f"preset={preset}: {run_dir} was trained with preset {record['preset']}",
            hint="leave preset= out to resume it", params=("preset",),
        )  # fmt: skip
    if record["preset"] not in presets:
        raise VvkError(f"{run_dir}: its preset '{record['preset']}' is not a {what} preset any more")
    return record["preset"]


def check_unchanged(base: Any, config: Any, run_dir: Path, *, allowed: Sequence[str]) -> None:
    """A resumed run keeps its model and data fields: its checkpoint and its samples follow them."""
    old, new = to_dict(base), to_dict(config)
    changed = [key for key in new if key != "train" and key not in allowed and new[key] != old.get(key)]
    if changed:
        was = ", ".join(f"{key}={old.get(key)}" for key in changed)
        raise VvkError(
            f"resume: {run_dir} was trained with {was}; a resumed run keeps its model and data fields",
            hint="start a new run folder (out=) to change them", params=("out",),
        )  # fmt: skip


def check_exists(data: Data, *, what: str = "data") -> None:
    for path in [data] if isinstance(data, str | os.PathLike) else data:
        if not os.path.lexists(path):
            raise VvkError(f"{what}={os.fspath(path)}: no such folder or file", params=(what,))


def absolute(data: Data) -> Path | tuple[Path, ...]:
    if isinstance(data, str | os.PathLike):
        return Path(data).absolute()
    return tuple(Path(p).absolute() for p in data)


def resumed_data(
    recorded: str | list[str],
    data: Data | None,
    run_dir: Path,
    allow_new_data: bool,
    *,
    what: str = "data",
    items: str = "videos",
):
    """The data a resumed run reads (``what``: its parameter, ``items``: what it holds): its
    own, unless other data is given and allowed."""
    own = Path(recorded) if isinstance(recorded, str) else tuple(Path(p) for p in recorded)
    if data is None:
        gone = [str(p) for p in ((own,) if isinstance(own, Path) else own) if not os.path.lexists(p)]
        if gone:
            raise VvkError(
                f"resume: {run_dir} was trained on {gone[0]}, which is gone",
                hint=f"pass {what}=NEW with allow_new_data=True to go on with other {items}", params=(what,),
            )  # fmt: skip
        return own
    new = absolute(data)
    if allow_new_data or _real(new) == _real(own):
        return new
    shown = recorded if isinstance(recorded, str) else f"{len(recorded)} paths ({recorded[0]}, ...)"
    raise VvkError(
        f"{what}={data}: {run_dir} was trained on {shown}",
        hint=f"leave {what}= out to continue on the run's own data, or pass allow_new_data=True to switch",
        params=(what,),
    )


def _real(data: Path | tuple[Path, ...]) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in ((data,) if isinstance(data, Path) else data))


def check_device(config: Any) -> None:
    import torch

    if config.train.precision == "fp16" and not torch.cuda.is_available():
        raise VvkError("train.precision=fp16 needs a GPU (use bf16 or fp32 on the CPU)")
