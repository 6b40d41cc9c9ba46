"""SIGINT / SIGTERM as a request to stop after the current step, with a checkpoint.

A cluster scheduler sends SIGTERM before it kills a job, Ctrl-C sends SIGINT: both set a flag
the loop reads between steps (the loop then saves and returns). A second signal while the
first is handled restores the handlers from before, so a stuck run can still be interrupted
(under the ``vvk`` command both then raise KeyboardInterrupt: clean-ups run, the exit is 130).
The command turns a run that returned "interrupted" into exit code 130 too, after its checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from vvk.interrupts import STOP_SIGNALS


class StopRequest:
    """Context manager: ``requested`` becomes the signal number once one arrives."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested is not None:  # the second one: give up on a clean stop
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
