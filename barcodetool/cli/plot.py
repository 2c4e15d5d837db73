"""Command group `plot`: `plot embeddings` and `plot benchmark` (barcodetool.plot). Needs matplotlib."""

from __future__ import annotations

import click

from ..plot import (COLOR_BY, DEFAULT_MAX_POINTS, DEFAULT_TOP, MAX_TOP, METHODS, plot_benchmark, plot_embeddings,
                    require_matplotlib)
from ..io.atomic import is_stdout
from ._common import check_paths, handle_errors, log, refuse_binary_terminal


@click.group("plot")
def plot_group():
    """Draw figures: a map of embeddings, a benchmark chart (needs matplotlib: pip install matplotlib)."""


@plot_group.command("embeddings")
@click.argument("h5", metavar="H5")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Figure to write (.png; .svg and .pdf also work).")
@click.option("--color-by", type=click.Choice(COLOR_BY, case_sensitive=False),
              help="A rank carried in H5, bin, or cluster (with --clusters) [default: cluster with --clusters, "
                   "else the first of order, family, genus ... that H5 carries].")
@click.option("--clusters", "clusters_tsv", metavar="TSV",
              help="Cluster labels: the TSV of `barcodetool cluster` (columns id, cluster) on the same input.")
@click.option("--method", type=click.Choice(METHODS), default="pca", show_default=True,
              help="pca (scikit-learn) or umap (needs umap-learn).")
@click.option("--top", type=click.IntRange(1, MAX_TOP), default=DEFAULT_TOP, show_default=True,
              help="Labels with their own colour and legend entry; the rest are grey.")
@click.option("--max-points", type=click.IntRange(min=1), default=DEFAULT_MAX_POINTS, show_default=True,
              help="Draw a random subset of larger files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subset and of UMAP.")
@handle_errors
def plot_embeddings_command(h5, output, color_by, clusters_tsv, method, top, max_points, seed):
    """Map the embeddings in H5 (from `barcodetool embed`) to 2-D and colour them by taxonomy or clusters."""
    require_matplotlib()
    check_paths(inputs=[(h5, "give the HDF5 file of `barcodetool embed`"),
                        (clusters_tsv, "give the TSV of `barcodetool cluster`")], outputs=[(output, "-o")])
    refuse_binary_terminal(output)
    plot_embeddings(h5, output, color_by=color_by.lower() if color_by else None, clusters_tsv=clusters_tsv,
                    method=method, top=top, max_points=max_points, seed=seed)
    log.info(f"wrote {output}" if not is_stdout(output) else "wrote the figure to standard output")


@plot_group.command("benchmark")
@click.argument("json_path", metavar="JSON")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Figure to write (.png; .svg and .pdf also work).")
@handle_errors
def plot_benchmark_command(json_path, output):
    """Bar chart of a `barcodetool benchmark --json` result: barcodetool vs VSEARCH vs BLAST per task."""
    require_matplotlib()
    check_paths(inputs=[(json_path, "give the JSON of `barcodetool benchmark --json`")], outputs=[(output, "-o")])
    refuse_binary_terminal(output)
    plot_benchmark(json_path, output)
    log.info(f"wrote {output}" if not is_stdout(output) else "wrote the figure to standard output")

