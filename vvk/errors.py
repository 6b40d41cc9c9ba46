"""The one error type users see.

A ``VvkError`` is expected bad input or environment (a missing file, a wrong option value, a
checksum mismatch, no network). The CLI prints it as one line and exits non-zero; a traceback
only appears with ``--debug``. Anything else that escapes is a bug in vvk.
"""

from __future__ import annotations


class VvkError(Exception):
    """An error caused by input or environment, explained in one line.

    Args:
        message: what is wrong, naming the file, field or option at fault.
        hint: optional next step for the user (e.g. the command that would fix it).
        exit_code: process exit code used by the CLI.
    """

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} ({self.hint})" if self.hint else text
