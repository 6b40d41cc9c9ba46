"""The one error type users see.

A ``VvkError`` is expected bad input or environment (a missing file, a wrong option value, a
checksum mismatch, no network). The CLI prints it as one line and exits non-zero; a traceback
only appears with ``--debug``. Anything else that escapes is a bug in vvk.

The library names its own parameters, spelled ``name=`` as a Python call would (``data=videos/:
no such folder or file``) and listed in ``params``; a command that passed the value from a flag
rewrites them with ``as_flags`` (``--data videos/: no such folder or file``), so a Python user
never reads about flags and a shell user never about keyword arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


class VvkError(Exception):
    """An error caused by input or environment, explained in one line.

    Args:
        message: what is wrong, naming the file, field or parameter at fault.
        hint: optional next step for the user (e.g. the command that would fix it).
        exit_code: process exit code used by the CLI.
        params: the library parameters that ``message`` and ``hint`` spell ``name=`` (followed by
            the value when there is one: ``data=videos/``, ``give weights=PATH``).
    """

    def __init__(
        self, message: str, *, hint: str | None = None, exit_code: int = 1, params: Sequence[str] = ()
    ):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.params = tuple(params)

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} ({' '.join(self.hint.split())})" if self.hint else text

    def as_flags(self, flags: Mapping[str, str]) -> VvkError:
        """This error (changed in place, and returned) with each of its ``params`` that ``flags``
        maps spelled as the command line does: ``{"data": "--data"}`` turns ``data=videos/`` into
        ``--data videos/``; a positional argument maps to its metavar (``{"data": "SOURCES"}``),
        which leaves the value alone (``videos/``) or, without a value, the metavar."""
        for name in self.params:
            if name in flags:
                self.message = _respell(self.message, name, flags[name])
                self.hint = _respell(self.hint, name, flags[name]) if self.hint else self.hint
        return self


def _respell(text: str, name: str, flag: str) -> str:
    def replace(match: re.Match) -> str:
        has_value = match.group(1) != ""
        if not flag.startswith("-"):  # a positional argument: its value says it all
            return match.group(1) if has_value else flag
        return f"{flag} {match.group(1)}" if has_value else flag

    # ``name=`` not inside another word (``val=`` is not the end of ``interval=``), and its value:
    # everything up to a space, or up to a ':' / ',' / ';' / ')' that ends the value.
    return re.sub(rf"(?<![\w.-]){re.escape(name)}=((?:[^\s:,;)]|[:,;)](?=\S))*)", replace, text)
