"""The `barcodetool` command line: parses and validates options, calls the library, maps errors to exit codes.

The group `main` is defined here, and `run`, the program (the console script and `python -m barcodetool`); each
command lives in a module of its own (models, train, embed, reference, classify, cluster, benchmark, plot) that
imports only `_common` and the library. A command's module is imported when that command runs (Click's lazily
loaded subcommands), so that `barcodetool classify` does not pay for the imports of `benchmark` or `plot`, and
`--version` for none of them.

Exit status: 0 success (also when the reader of standard output stops early, as `| head` does); 1 a problem with
the input, a model or an output (one line on stderr); 2 a usage error; 130 / 143 interrupted by SIGINT / SIGTERM
(no partial outputs are left). `--debug` shows tracebacks. The global options (--quiet, --debug) are accepted
before or after the command's name.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import sys

import click

from .._version import __version__
from ..errors import Interrupted
from ..io.interrupts import install_early_handlers, interruption_message, launched_as_program, reported
from ._common import Context


def _exit_on_signal(signal_number, frame):  # pragma: no cover - runs in the barcodetool program only
    """SIGINT/SIGTERM before a command runs or after it ended: nothing is being written, so end now, in one line."""
    if reported():  # the command has reported its interruption and is exiting
        return
    with contextlib.suppress(Exception):  # a closed or busy stdout must not stop the exit
        sys.stdout.flush()
    try:
        os.write(2, f"barcodetool: {interruption_message(signal_number)}\n".encode())
    finally:
        os._exit(128 + signal_number)


# barcodetool._startup covered the imports; from here this handler says what an interruption left behind
if launched_as_program():
    install_early_handlers(_exit_on_signal)

# command name -> (module of this package, the Click command in it); `--help` lists them alphabetically
COMMANDS = {"train": ("train", "train_command"), "finetune": ("train", "finetune_command"),
            "distill": ("train", "distill_command"), "embed": ("embed", "embed_command"),
            "reference": ("reference", "reference_group"), "classify": ("classify", "classify_command"),
            "cluster": ("cluster", "cluster_command"), "benchmark": ("benchmark", "benchmark_command"),
            "plot": ("plot", "plot_group"), "models": ("models", "models_command")}

CITATION = (
    "If you use barcodetool, please cite BarcodeMAE: Safari et al., 'Enhancing DNA Foundation Models to Address "
    "Masking Inefficiencies', arXiv:2502.18405 (2025), and BOLD (Ratnasingham & Hebert 2007, Mol. Ecol. Notes "
    "7:355) for the reference data."
)


def _print_version(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    click.echo(__version__)
    click.echo(CITATION)
    ctx.exit()


def _set_quiet(ctx, param, value):
    if value and not ctx.resilient_parsing:
        state = ctx.find_object(Context)
        if state is not None:
            state.quiet = True
        _configure_logging(True)
    return value


def _set_debug(ctx, param, value):
    if value and not ctx.resilient_parsing:
        state = ctx.find_object(Context)
        if state is not None:
            state.debug = True
    return value


def _global_options() -> list[click.Option]:
    """--quiet and --debug as a command accepts them after its name (the group's own come before it)."""
    return [click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set_debug, is_eager=True,
                         help="Show Python tracebacks for errors (global option, also accepted before the command)."),
            click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_set_quiet, is_eager=True,
                         help="Only warnings and errors on stderr; no progress bars (global option, also accepted "
                              "before the command).")]


def _accept_global_options(command: click.Command) -> click.Command:
    """Give `command` (and the commands of a group) the global options, once."""
    names = {name for param in command.params for name in getattr(param, "opts", [])}
    if "--quiet" not in names and "--debug" not in names:
        command.params.extend(_global_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_global_options(sub)
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported from their modules when asked for (COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        return _accept_global_options(getattr(importlib.import_module(f".{module}", __name__), attribute))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", "-V", is_flag=True, callback=_print_version, expose_value=False, is_eager=True,
              help="Print the version (first line) and the citation, then exit.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr; no progress bars.")
@click.pass_context
def main(ctx, debug, quiet):
    """barcodetool: BarcodeMAE embeddings for DNA barcodes: train, embed, classify and cluster."""
    # Under torchrun only rank 0 talks; the other ranks keep warnings and errors.
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0
    _configure_logging(quiet)
    _collect_less()
    ctx.obj = Context(debug=debug, quiet=quiet)


# The cyclic garbage collector's first generation: a collection every GC_YOUNG_OBJECTS new container objects instead
# of every 700. A command makes millions of short-lived ones that are never cycles (records, assignments, labels);
# py-spy found 2-4% of a `classify` run's time in the collector, which also holds the interpreter's lock against the
# search workers (test_unseen: 3.55 against 3.69 s, 9 runs each in turn).
GC_YOUNG_OBJECTS = 100_000


def _collect_less() -> None:
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_OBJECTS, young), older, oldest)


def _configure_logging(quiet: bool) -> None:
    """Log lines on stderr through barcodetool's own logger only (other libraries' loggers are left alone)."""
    logger = logging.getLogger("barcodetool")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("barcodetool: %(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (test runners swap it), above any progress bar
    on the screen (the bar is cleared, the line written, the bar drawn again)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record):
        tqdm_module = sys.modules.get("tqdm")  # a bar exists only once tqdm is imported (never import it here)
        if tqdm_module is None or not getattr(tqdm_module.tqdm, "_instances", None):
            super().emit(record)
            return
        with tqdm_module.tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)

    def handleError(self, record):
        # a signal whose handler raises Interrupted while a message is being written must end the command, not be
        # printed as a logging error with a traceback and swallowed (logging.Handler.emit catches every Exception)
        if isinstance(sys.exc_info()[1], Interrupted):
            raise
        super().handleError(record)


def run() -> None:  # pragma: no cover - the program's entry point (the tests run it as a process)
    """The `barcodetool` program (console script and `python -m barcodetool`): the command line, then an exit
    without the interpreter's teardown. Every output is complete, closed and published when a command returns;
    what the teardown would add is 0.4-0.7 s of freeing PyTorch and scikit-learn modules (a third of a 2-second
    `classify`), and, once it has restored the default signal handlers, a window in which SIGTERM killed the
    finished program without a word (status -15). An exception that escapes the command line (a bug) still
    takes Python's own way out: its traceback and status 1."""
    try:
        main(prog_name="barcodetool")
        status = 0
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            status = code or 0
        else:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"{code}\n")
            status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):   # a reader gone (| head) was reported by the command already
            stream.flush()
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
