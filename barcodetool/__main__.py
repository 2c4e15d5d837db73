"""`python -m barcodetool`: the command line (barcodetool.cli), with the same early signal handling and exit as
the `barcodetool` program (installed by barcodetool.cli as its first step)."""

from .cli import run

run()
