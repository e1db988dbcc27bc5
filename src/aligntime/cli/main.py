"""The ``aligntime`` command: thin commands over the Aligner.

Errors that aligntime raises on purpose print one line (and a hint) on stderr
and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys

import typer

from aligntime import __version__
from aligntime.cli import audit, chat, models, policies, run, score, serve
from aligntime.cli import eval as eval_cmd
from aligntime.cli.console import state
from aligntime.errors import AligntimeError

app = typer.Typer(
    name="aligntime",
    help="Align a frozen language model at inference time: prompting, sampling N answers, "
    "scoring them for safety and helpfulness, and returning the best.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aligntime {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show info logs on stderr."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state.debug = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


app.command("run")(run.run)
app.command("score")(score.score)
app.command("chat")(chat.chat)
app.command("serve")(serve.serve)
app.command("audit")(audit.audit)
app.command("eval")(eval_cmd.evaluate)
app.command("eval-scorer")(eval_cmd.evaluate_scorer)
app.add_typer(models.app, name="models")
app.add_typer(policies.app, name="policies")


def main() -> None:
    """Entry point of the ``aligntime`` script."""
    try:
        app(standalone_mode=False)
    except AligntimeError as exc:
        if state.debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if state.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback, and report it", file=sys.stderr)
        sys.exit(1)
