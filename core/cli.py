"""What every ``responders`` verb shares: the error handling of the command group and quiet telemetry.

The verbs themselves live with their layer (``training.cli``: simulate, validate,
train, report cohort; ``serving.cli``: predict, serve, bento, report patient);
the ``responders`` console script (:mod:`responders.cli`) puts them together.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from core.errors import ConfigError


class Commands(TyperGroup):
    """Turns a bad config or spec into one line per problem (exit 2) and Ctrl-C into a message (exit 130).

    Typer itself converts an interrupt into a silent exit 130 before any
    handler around ``app()`` could speak.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            for line in err.lines():
                typer.echo(line, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None


HELP = "Responder-subgroup models for randomised trials (default spec: low-dose naltrexone in fibromyalgia)."
REPORT_HELP = "Write SHAP explanation reports (self-contained HTML)."

SpecOption = Annotated[
    str | None, typer.Option("--spec", help="dataset spec YAML, or the name of a packaged spec (default: fibromyalgia-ldn)")
]


def quiet_telemetry() -> None:
    """Switch off usage reporting of MLflow and BentoML before they are imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def new_app(help: str = HELP) -> tuple[typer.Typer, typer.Typer]:
    """A command group and its ``report`` sub-group, with the shared error handling and quiet telemetry."""
    app = typer.Typer(
        name="responders", help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=Commands
    )
    report_app = typer.Typer(help=REPORT_HELP, no_args_is_help=True)
    app.add_typer(report_app, name="report")

    @app.callback()
    def _root() -> None:
        quiet_telemetry()

    return app, report_app


_CONSOLE_SCRIPT = False  # set by run(): this process is a console script, not a caller of the app (tests)
_END_AFTER_EXIT_HANDLERS = False  # set by skip_teardown(): the command finished; end once every exit handler has run
_LAST_EXIT_HANDLER = False  # end_after_exit_handlers() is registered (first, so that it runs last)


def end_process(code: int = 0) -> None:
    """End a console-script process now, its output written: without the interpreter's teardown.

    For commands whose last act is writing a file and that hold no state another
    library must save at exit (``responders predict``, not ``train``, whose MLflow
    flushes at exit): the teardown frees a scored file's arrays and every module
    one object at a time, which for 10^5 patients takes a noticeable part of the
    command's time. In process (a test's runner) it does nothing.
    """
    if _CONSOLE_SCRIPT:
        _flush_and_exit(code)


def _flush_and_exit(code: int) -> None:
    """Flush the log handlers and both streams, then end the process without the interpreter's teardown."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (a closed pipe) or a closed stream: nothing left to say
            pass
    os._exit(code)


def end_after_exit_handlers() -> None:
    """Register, before any library registers its own, the exit handler that :func:`skip_teardown` arms.

    Exit handlers run last-registered first, so this one runs after all the
    others (MLflow's flush, the executor's shutdown); threads were joined before
    any of them. Called at the start of a console script (:func:`run`) and of a
    benchmark's child that measures a command.
    """
    global _LAST_EXIT_HANDLER
    if not _LAST_EXIT_HANDLER:
        import atexit

        atexit.register(_end_now_if_armed)
        _LAST_EXIT_HANDLER = True


def skip_teardown() -> None:
    """The command finished and said so: end the process after the exit handlers, without the interpreter's teardown.

    For ``responders train``, whose libraries save state at exit (so it cannot
    use :func:`end_process`): after the last exit handler nothing remains but
    freeing every module and object one at a time, over a second for a training
    job's process (a few hundred MB of models, MLflow, pandas and shap). Does
    nothing unless :func:`end_after_exit_handlers` was called (a test's runner).
    """
    global _END_AFTER_EXIT_HANDLERS
    _END_AFTER_EXIT_HANDLERS = _LAST_EXIT_HANDLER


def _end_now_if_armed() -> None:
    if _END_AFTER_EXIT_HANDLERS:
        _flush_and_exit(0)  # armed only by a command that returned normally: its status is 0


def run(app: typer.Typer) -> None:
    """Run a command group as a console script (Ctrl-C outside a command: one line, exit 130)."""
    import sys

    global _CONSOLE_SCRIPT
    _CONSOLE_SCRIPT = True
    end_after_exit_handlers()
    quiet_telemetry()
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
