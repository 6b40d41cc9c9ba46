"""Holding Ctrl-C and SIGTERM back while work that must not be cut in half runs.

Python runs a signal's handler between two bytecodes of the main thread, wherever they are: in a
callback that compiled code makes into Python (LLVM reporting an object file to numba), in a
finaliser, half-way through writing a worker's start-up data. A ``KeyboardInterrupt`` raised
there is either swallowed (ctypes callbacks and ``__del__`` cannot propagate it: the interrupt is
lost and the state left half-made) or leaves a pickle truncated. ``HeldStopSignals`` records a
stop signal that arrives inside it and delivers it when the block ends, to the handler that was
in place before.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HeldStopSignals:
    """Context manager: SIGINT and SIGTERM wait until the block ends (in the main thread, where
    Python's handlers run, and when their handlers are Python's to change; otherwise it does
    nothing).

    ``block=True`` also blocks them in this thread's signal mask, which the processes it spawns
    inherit: they start with both blocked and unblock once their own handlers are in place.
    Nested holds pass a held signal outwards, to the enclosing hold. A hold can be entered again
    once it has ended.
    """

    def __init__(self, *, block: bool = False) -> None:
        self.block = block
        self._held: list[int] = []
        self._previous: dict[int, object] = {}

    def _hold(self, signum: int, _frame: FrameType | None) -> None:
        self._held.append(signum)

    def __enter__(self) -> HeldStopSignals:
        self._held = []
        # Handlers only run in the main thread; one installed from C (an embedding application)
        # reads as None and could not be put back.
        if threading.current_thread() is threading.main_thread() and None not in map(
            signal.getsignal, STOP_SIGNALS
        ):
            self._previous = {s: signal.signal(s, self._hold) for s in STOP_SIGNALS}
            if self.block and hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if not self._previous:
            return
        if self.block and hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending one reaches _hold
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self._held:
            signal.raise_signal(self._held[0])
