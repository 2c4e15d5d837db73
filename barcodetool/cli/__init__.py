"""The `barcodetool` command line: parses and validates options, calls the library, maps errors to exit codes.

The group `main` (the console script) is defined here; each command lives in a module of its own (models, train,
embed, reference, classify, cluster, benchmark, plot) that imports only `_common` and the library. A command's
module is imported when that command runs (Click's lazily loaded subcommands), so that `barcodetool classify` does
not pay for the imports of `benchmark` or `plot`, and `--version` for none of them.

Exit status: 0 success; 1 a problem with the input, a model or an output (one line on stderr); 2 a usage error;
130 / 143 interrupted by SIGINT / SIGTERM (no partial outputs are left). `--debug` shows tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from .._version import __version__
from ._common import Context

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


class LazyGroup(click.Group):
    """A group whose commands are imported from their modules when asked for (COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, callback=_print_version, expose_value=False, is_eager=True,
              help="Print the version (first line) and the citation, then exit.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr; no progress bars.")
@click.pass_context
def main(ctx, debug, quiet):
    """barcodetool: BarcodeMAE embeddings for DNA barcodes: train, embed, classify and cluster."""
    # Under torchrun only rank 0 talks; the other ranks keep warnings and errors.
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0
    _configure_logging(quiet)
    ctx.obj = Context(debug=debug, quiet=quiet)


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
    """Writes to whatever sys.stderr is at the time of each record (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


if __name__ == "__main__":  # pragma: no cover
    main()
