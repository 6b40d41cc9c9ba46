"""What a run tells the user: a progress bar, metrics.jsonl, TensorBoard, the final summary.

Only the main rank reports; on other ranks every method here does nothing. The loop decides
when a line is written (it reads the device for it; ``vvk.engine.loop``). Throughput is
measured between two metric lines: steps/s, and clips/s = steps/s × the clips one optimizer
step sees across all ranks.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from vvk.atomic import atomic_write_text
from vvk.engine.config import TrainConfig
from vvk.engine.state import RunDir
from vvk.errors import VvkError

logger = logging.getLogger("vvk.engine")


class TrainLog:
    def __init__(self, run: RunDir, config: TrainConfig, *, active: bool, world_size: int, start_step: int):
        self.run, self.config, self.active = run, config, active
        self.clips_per_step = config.clips_per_step(world_size)
        self.started = time.perf_counter()
        self._mark = (start_step, self.started)
        self._start_step = start_step
        self._file = open(run.metrics, "a", encoding="utf-8") if active else None  # noqa: SIM115
        self._tb = _tensorboard(run) if active and config.tensorboard else None
        self._bar = _progress_bar(config.steps, start_step) if active and config.progress else None

    def advance(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): move the progress bar."""
        if self._bar is not None:
            self._bar[0].update(self._bar[1], completed=step)

    def line(self, step: int, losses: dict[str, float], **scalars: float | None) -> None:
        """Write the metrics line of step ``step``: ``losses`` (means since the previous line),
        ``scalars`` of this step (None: left out), and the throughput since the previous line."""
        if not self.active:
            return
        now = time.perf_counter()
        steps_per_s = (step - self._mark[0]) / max(now - self._mark[1], 1e-9)
        self._mark = (step, now)
        line = {"step": step, **losses, **{k: v for k, v in scalars.items() if v is not None}}
        line.update(
            steps_per_s=round(steps_per_s, 4), clips_per_s=round(steps_per_s * self.clips_per_step, 2)
        )
        line["time"] = round(now - self.started, 3)
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        if self._bar is not None:
            rate = f"{steps_per_s:.2f} steps/s {line['clips_per_s']:.1f} clips/s"
            self._bar[0].update(self._bar[1], loss=f"{losses.get('loss', 0.0):.4g}", rate=rate)
        if self._tb is not None:
            for key, value in line.items():
                if key != "step":
                    self._tb.add_scalar(key, value, step)

    def record(self, step: int, values: dict[str, Any], *, seconds: float) -> None:
        """A line of its own for work done after step ``step`` (an evaluation: ``values``) that
        took ``seconds``, which the throughput of the next metrics line leaves out."""
        self._mark = (self._mark[0], self._mark[1] + seconds)
        if not self.active:
            return
        line = {"step": step, **values, "seconds": round(seconds, 3)}
        line["time"] = round(time.perf_counter() - self.started, 3)
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def finish(
        self,
        *,
        status: str,
        step: int,
        losses: dict[str, float],
        bad_files: dict[str, Any],
        hooks: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Write summary.json and one summary line on stderr; return the summary."""
        elapsed = time.perf_counter() - self.started
        done = step - self._start_step
        summary = {
            "status": status,
            "step": step,
            "steps_this_session": done,
            "seconds": round(elapsed, 3),
            "clips_per_s": round(done * self.clips_per_step / max(elapsed, 1e-9), 2),
            "losses": losses,
            "bad_files": bad_files,
            **({"hooks": hooks} if hooks else {}),
            "checkpoint": str(self.run.latest()) if self.run.latest() else None,
        }
        self.close()
        if self.active:
            atomic_write_text(self.run.path / "summary.json", json.dumps(summary, indent=2) + "\n")
            skipped = ", ".join(f"{n} {k}" for k, n in sorted(bad_files.get("by_problem", {}).items()))
            speed = f"{done} steps in {elapsed:.1f} s, {summary['clips_per_s']} clips/s"
            bad = f"{bad_files.get('count', 0)} bad file(s) skipped" + (f": {skipped}" if skipped else "")
            logger.info("%s at step %d (%s); %s; run folder %s", status, step, speed, bad, self.run.path)
        return summary

    def close(self) -> None:
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _progress_bar(total: int, start: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("train", total=total, completed=start, loss="-", rate="")
    bar.start()
    return bar, task


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise VvkError(
            "tensorboard logging needs the tensorboard package", hint="pip install tensorboard"
        ) from e
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
