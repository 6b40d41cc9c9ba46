"""How commands print: results on stdout (a table, or JSON lines with --json); everything
human (progress, warnings, notes) on stderr, so ``vvk ... --json | jq`` always parses."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def _to_jsonable(value: Any) -> Any:
    return str(value)


class Output:
    """One per command invocation.

    Args:
        json_mode: emit records as JSON lines instead of a rich table.
    """

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self._stderr = None

    @property
    def stderr(self):
        """A rich console on stderr, for progress bars and notes."""
        if self._stderr is None:
            from rich.console import Console

            self._stderr = Console(stderr=True, soft_wrap=True)  # long lines (paths, JSON) stay whole
        return self._stderr

    def record(self, obj: dict[str, Any]) -> None:
        """One JSON line on stdout (in --json mode); ignored otherwise."""
        if self.json_mode:
            sys.stdout.write(json.dumps(obj, default=_to_jsonable, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def table(
        self, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, title: str = ""
    ) -> None:
        """``rows`` as JSON lines with --json, else a table of ``columns`` ((key, header) pairs) on stdout."""
        if self.json_mode:
            for row in rows:
                self.record(row)
            return
        if not rows:
            return
        from rich.console import Console
        from rich.table import Table

        console = Console()
        if not console.is_terminal:  # piped or redirected: never truncate cells to 80 columns
            console = Console(width=100_000)
        table = Table(title=title or None, show_edge=False, header_style="bold")
        for _, header in columns:
            table.add_column(header)
        for row in rows:
            table.add_row(*(_cell(row.get(key)) for key, _ in columns))
        console.print(table)

    def note(self, text: str) -> None:
        self.stderr.print(text, highlight=False)

    def warn(self, text: str) -> None:
        self.stderr.print(f"[yellow]warning:[/] {text}", highlight=False)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return (
            "×".join(map(str, value))
            if all(isinstance(v, int) for v in value)
            else ", ".join(map(str, value))
        )
    return str(value)


class ProgressBar:
    """A rich progress bar on stderr, fed by the library's ``(done, total)`` callback; ``with``
    gives that callback (None when ``show`` is false). It appears with the first update, so an
    error before that stays a single line."""

    def __init__(self, out: Output, label: str, *, show: bool = True):
        self.out, self.label, self.show = out, label, show
        self.bar = None
        self.task = None

    def __enter__(self):
        return self.update if self.show else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = Progress(self.label, *columns, console=self.out.stderr)
            self.bar.start()
            self.task = self.bar.add_task("images", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_ended(result: Any, *, loss: bool = True) -> str:
    """How a training run ended, for its last line: ``finished after 300 steps in 42 s, loss
    0.1234`` (``result``: a method's run result with status, step, seconds and losses)."""
    done = f"{result.status} after {result.step} steps in {result.seconds:.0f} s"
    if not loss:
        return done
    return done + (f", loss {result.losses['loss']:.4f}" if "loss" in result.losses else ", no loss logged")
