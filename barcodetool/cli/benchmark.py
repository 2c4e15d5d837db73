"""Command `benchmark`: the papers' protocol on a split file (barcodetool.evaluation)."""

from __future__ import annotations

import click

from ..classify import load_inference_model
from ..evaluation import format_table, run_benchmark
from ..io import ReadOptions
from ..errors import UsageError
from ..io.atomic import is_stdout
from ..model.weights import DEFAULT_CPU_EMBED_MODEL, check_model_outputs, default_model_name
from ._common import (INPUT_FIX, Context, check_paths, device_options, handle_errors,
                      inference_model_option, log, log_model, read_options, renamed_option, requested_compute,
                      write_json)


@click.command("benchmark")
@click.argument("split_file", metavar="SPLIT_FILE")
@inference_model_option
@click.option("--compare", is_flag=True,
              help="Also run VSEARCH (top hit, SINTAX at cutoffs 0.8 and 0.5, cluster_fast) and BLAST (top hit), "
                   "where installed, on the same tasks.")
@click.option("--sample", type=click.IntRange(min=1), help="Draw this many queries per task (fixed seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@renamed_option("--neighbours", "--k", "neighbours", type=click.IntRange(min=1), default=10, show_default=True,
                help="Neighbours of the embedding k-NN vote.")
@click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--json", "json_path", help="Write every figure as JSON.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_options
@read_options
@click.pass_obj
@handle_errors
def benchmark_command(obj: Context, split_file: str, model_name: str, json_path: str | None, device: str,
                      threads: int, read_options: ReadOptions, **settings):
    """The papers' protocol on SPLIT_FILE (a BIOSCAN-5M-style table with a `split` column): species
    (closed world), genus (open world), BIN reconstruction, optionally against VSEARCH and BLAST. Besides top
    hits it scores the labels a user gets, from `classify`'s default output and from SINTAX: the share of queries
    named right, the share named, and the precision of the named."""
    if is_stdout(json_path):
        raise UsageError("--json -: the table goes to standard output; give --json a file name")
    check_paths(inputs=[(split_file, INPUT_FIX)], outputs=[(json_path, "--json")])
    model, torch_device = load_inference_model(model_name, None, device=device, threads=threads,
                                                    compute=requested_compute(), onnx=False)
    check_model_outputs(model, json_path)
    log_model(model, torch_device)
    if model_name in ("", "auto") and default_model_name(torch_device, "embed") == DEFAULT_CPU_EMBED_MODEL:
        log.info(f"the embedding rows are {model.name}'s, the model of reference indexes; `embed` uses "
                 f"{DEFAULT_CPU_EMBED_MODEL} on a CPU (--model {DEFAULT_CPU_EMBED_MODEL} for its rows)")
    result = run_benchmark(split_file, model, compare=settings["compare"], sample=settings["sample"],
                           threads=threads, neighbours=settings["neighbours"], precision=settings["precision"],
                           seed=settings["seed"], batch_size=settings["batch_size"], device=torch_device,
                           read_options=read_options)
    click.echo(format_table(result))
    if json_path:
        write_json(json_path, result)
