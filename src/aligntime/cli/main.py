"""The ``aligntime`` command: thin commands over the Aligner.

Exit codes (the README has the same table):

- 0: success;
- 1: an unexpected error, i.e. a bug (one line on stderr; ``--debug`` shows the traceback);
- 2: a usage error (click's own message: unknown command or option, missing
  argument) or an error aligntime raises on purpose (``error:`` and ``hint:``
  lines): bad input, a malformed policy, a missing model, extra or backend;
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import sys

import typer

from aligntime import __version__
from aligntime.cli import audit, batch, chat, export, models, policies, run, score, serve, train
from aligntime.cli import eval as eval_cmd
from aligntime.cli.console import state
from aligntime.errors import AligntimeError

app = typer.Typer(
    name="aligntime",
    help="Align a frozen language model at inference time: prompting, sampling N answers, "
    "scoring them for safety and helpfulness, and returning the best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # -h as well as --help, on every command (subcommands inherit the setting).
    context_settings={"help_option_names": ["-h", "--help"]},
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
app.command("train-scorer")(train.train_scorer)
app.command("batch")(batch.batch)
app.command("export")(export.export)
app.add_typer(models.app, name="models")
app.add_typer(policies.app, name="policies")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``aligntime`` script.

    Click runs in standalone mode, so usage errors, ``--help`` and shell completion
    behave as in any click program (typer bundles its own click, so its exceptions
    are handled by typer itself, not matched here). What reaches this function is
    an error aligntime raised on purpose, or a bug.
    """
    try:
        app(args=args, prog_name="aligntime", standalone_mode=True)
    except AligntimeError as exc:
        if state.debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if state.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback, and report it", file=sys.stderr)
        sys.exit(1)
