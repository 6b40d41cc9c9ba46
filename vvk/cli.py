"""The ``vvk`` command line. This module only assembles command groups and formats errors.

Exit codes: 0 success; 1 a ``VvkError`` (bad input or environment); 2 a usage error (unknown
option, bad option value); 130 interrupted; 70 an internal error (a bug: please report it).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import click
import typer

from vvk import __version__
from vvk.commands import augment, data, eval, info, models, pretrain, weights
from vvk.errors import VvkError

EXIT_INTERNAL = 70

app = typer.Typer(
    name="vvk",
    help="Video and image understanding research toolkit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    """vvk: self-supervised video pretraining, open-vocabulary detection, copy-paste, tracking."""


app.command("info")(info.info)
app.add_typer(models.app, name="models")
app.add_typer(weights.app, name="weights")
app.add_typer(augment.app, name="augment")
app.add_typer(data.app, name="data")
app.add_typer(eval.app, name="eval")
app.add_typer(pretrain.app, name="pretrain")


def _debug_enabled(args: list[str]) -> bool:
    return "--debug" in args or os.environ.get("VVK_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"vvk: error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vvk`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled(args)
    try:
        app(args=args, prog_name="vvk", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError:
        return 0  # Typer has already printed the help
    except click.ClickException as e:  # usage errors: unknown option, bad value, missing argument
        if debug:
            raise
        where = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
        return _fail(" ".join(e.format_message().split()) + where, e.exit_code)
    except click.exceptions.Abort:
        return _fail("aborted", 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
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
        return _fail(
            f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
            "(this is a bug in vvk; rerun with --debug for the traceback)",
            EXIT_INTERNAL,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
