"""The ``vvk`` command line. This module only assembles command groups and formats errors.

Exit codes: 0 success; 1 a ``VvkError`` (bad input or environment); 2 a usage error (unknown
option, bad option value); 130 interrupted (SIGINT or SIGTERM); 70 an internal error (a bug:
please report it). Under torchrun every rank exits with the code and rank 0 prints the error
(``_fail``).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Annotated

import click
import typer

from vvk import __version__
from vvk.commands import (
    augment,
    data,
    detect,
    eval,
    federate,
    finetune,
    info,
    models,
    pretrain,
    texture,
    track,
    train,
    weights,
)
from vvk.commands._log import log_to_stderr
from vvk.errors import VvkError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for Ctrl-C
RANK_GRACE_S = 15.0  # how long another rank leaves rank 0 to report an error (``_fail``)

app = typer.Typer(
    name="vvk",
    help="Video and image understanding research toolkit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click 8.4 suggests close command names itself; Typer's own suggestion would say it twice.
    suggest_commands=not hasattr(click.exceptions, "NoSuchCommand"),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"vvk {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on errors (or VVK_DEBUG=1).")
    ] = False,
) -> None:
    """vvk: self-supervised video pretraining, model zoo and weights, Copy-Paste, kernels."""
    log_to_stderr()  # the library warns through logging; here each record is one stderr line


class CommandWithSubcommands(typer.core.TyperCommand):
    """A command whose first argument may name a subcommand instead: ``vvk track VIDEO`` runs
    ``track``, ``vvk track run ...`` the subcommand (a click group cannot take positional
    arguments of its own). ``of`` makes one whose subcommands are a Typer app's commands."""

    subcommands: dict[str, click.Command] = {}

    @classmethod
    def of(cls, subcommands: typer.Typer) -> type[CommandWithSubcommands]:
        """This class with the commands of the Typer app ``subcommands`` as its subcommands:
        ``app.command("track", cls=CommandWithSubcommands.of(track.subcommands))(track.track)``
        (``vvk track``, ``vvk track run``, ``vvk track eval``). They are made from the app when
        first looked up, once per command object."""

        class Command(cls):  # type: ignore[misc, valid-type]
            @cached_property
            def subcommands(self) -> dict[str, click.Command]:
                command = typer.main.get_command(subcommands)
                if isinstance(command, click.Group):
                    return dict(command.commands)
                return {command.name: command}  # Typer makes an app of one command that command

        return Command

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] in self.subcommands:
            name = args[0]
            return self.subcommands[name].make_context(
                f"{info_name} {name}", args[1:], parent=parent, **extra
            )
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context):
        return ctx.command.invoke(ctx) if ctx.command is not self else super().invoke(ctx)


_embed_regions_app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})
_embed_regions_app.command("embed-regions")(detect.embed_regions)
app.command("info")(info.info)
app.command("detect", cls=CommandWithSubcommands.of(_embed_regions_app))(detect.detect)
app.command("track", cls=CommandWithSubcommands.of(track.subcommands))(track.track)
app.command("translate-texture")(texture.translate_texture)
app.command("federate", cls=CommandWithSubcommands.of(federate.subcommands))(federate.federate)
app.command("finetune")(finetune.finetune)
app.add_typer(models.app, name="models")
app.add_typer(weights.app, name="weights")
app.add_typer(augment.app, name="augment")
app.add_typer(data.app, name="data")
app.add_typer(eval.app, name="eval")
app.add_typer(pretrain.app, name="pretrain")
app.add_typer(train.app, name="train")


def _debug_enabled(args: list[str]) -> bool:
    return "--debug" in args or os.environ.get("VVK_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> int:
    rank = os.environ.get("RANK", "0")  # set by torchrun
    if rank not in ("", "0"):
        if code == EXIT_INTERRUPTED:  # every rank was stopped: rank 0 says so
            return code
        # Every rank meets the same bad option or input; rank 0 reports it. The first rank to
        # exit makes torchrun stop the others, so this one waits: rank 0 reports and exits, and
        # torchrun stops this one in its sleep. An error of this rank's own is reported after.
        time.sleep(RANK_GRACE_S)
        message = f"(rank {rank}) {message}"
    sys.stderr.write(f"vvk: error: {message}\n")
    sys.stderr.flush()
    return code


def _reflow(text: str) -> str:
    """A docstring as help text: each paragraph's lines joined, so the terminal wraps sentences
    at its own width instead of at the source's; indented lines (the examples under EXAMPLES:)
    keep a line of their own."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        first, *rest = paragraph.splitlines() or [""]
        lines = [first]
        for line in rest:
            if line[:1].isspace():
                lines.append(line)
            else:
                lines[-1] += " " + line.strip()
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _command() -> click.Command:
    """The click command tree of ``app``, its help texts reflowed."""
    root = typer.main.get_command(app)
    todo = [root]
    while todo:
        command = todo.pop()
        if command.help:
            command.help = _reflow(command.help)
        if isinstance(command, click.Group):
            todo.extend(command.commands.values())
        todo.extend(getattr(command, "subcommands", {}).values())
    return root


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a scheduler) unwinds like Ctrl-C: clean-ups run (staging
    folders are removed, workers stopped) instead of the process dying where it stands. The
    training loop installs its own handlers (a checkpoint, then a stop) while it runs."""
    if threading.current_thread() is not threading.main_thread():  # handlers only work there
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _quiet_interrupted_finalisers() -> Iterator[None]:
    """A Ctrl-C whose handler runs inside an object's finaliser (llvmlite frees LLVM objects in
    ``__del__`` while Copy-Paste's numba kernels render) cannot propagate from there: Python
    prints it as an "Exception ignored" traceback. The command reports the interrupt in one
    line; that print is dropped, every other unraisable exception still shown."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vvk`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled(args)
    try:
        with _sigterm_as_interrupt(), _quiet_interrupted_finalisers():
            # Not standalone, Typer returns instead of exiting: the command's return value (None),
            # or the code of an Exit, which is also what it makes of a KeyboardInterrupt (130).
            code = _command().main(args=args, prog_name="vvk", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError:
        return 0  # Typer has already printed the help
    except click.ClickException as e:  # usage errors: unknown option, bad value, missing argument
        if debug:
            raise
        where = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
        return _fail(" ".join(e.format_message().split()) + where, e.exit_code)
    except click.exceptions.Abort:  # end of input at a prompt
        return _fail("aborted", EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # outside Typer's reach: while importing the commands
        return _fail("interrupted", EXIT_INTERRUPTED)
    except VvkError as e:
        if debug:
            raise
        return _fail(e.one_line(), e.exit_code)
    except BrokenPipeError:
        # The reader of our stdout went away (`vvk ... | head`): not an error worth a message.
        sys.stderr.close()
        return 0
    except Exception as e:
        if debug:
            raise
        sys.stderr.write(  # on every rank: a bug may show on one only
            f"vvk: error: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
            "(this is a bug in vvk; rerun with --debug for the traceback)\n"
        )
        return EXIT_INTERNAL
    if code == EXIT_INTERRUPTED:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
