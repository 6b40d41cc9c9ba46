"""The library's log records on the command line: one ``vvk: ...`` line each.

The library reports through ``logging`` (the ``vvk`` loggers: warnings, and at INFO the end of
a training run) so that Python users can filter or capture it; the CLI shows those records the
way it shows its errors: ``vvk: warning: ...``, and ``vvk: ...`` for information.
"""

from __future__ import annotations

import logging
import sys


class _OneLine(logging.Handler):
    """Each record as ``vvk: [<level>: ]<message>`` on one line of the current ``sys.stderr``
    (looked up at each record, so output captured or redirected after set-up still gets it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
            level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
            sys.stderr.write(f"vvk: {level}{text}\n")
        except Exception:
            self.handleError(record)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show the ``vvk`` loggers' records from ``level`` up on stderr (once, however often called).

    The records still propagate, so a handler on the root logger (pytest's ``caplog``) sees them.
    """
    logger = logging.getLogger("vvk")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine(level))
        logger.setLevel(level)  # else the root logger's WARNING drops the INFO records first
