"""Command `embed`: barcodes into an HDF5 file of embeddings."""

from __future__ import annotations

import click

from ..embedding import embed_file
from ..io import ReadOptions, ReadStats
from ..model.runtime import resolve_device, set_threads
from ..model.weights import check_model_outputs, load_model
from ._common import (INPUT_FIX, Context, check_paths, device_options, handle_errors,
                      inference_model_option, log, log_model, output_name, read_options, refuse_binary_terminal,
                      requested_compute)


@click.command("embed")
@click.argument("input_path", metavar="INPUT")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write; `-` = standard output (made in the temporary folder, then copied).")
@inference_model_option(task="embed")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Barcodes per forward pass (larger is faster on a GPU, needs more memory).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the embeddings in the HDF5 file.")
@device_options
@read_options
@click.pass_obj
@handle_errors
def embed_command(obj: Context, input_path: str, output: str, model_name: str, batch_size: int, dtype: str,
                  device: str, threads: int, read_options: ReadOptions):
    """Embed barcodes from INPUT (FASTA, tables; `-` = stdin) into an HDF5 file, in input order."""
    check_paths(inputs=[(input_path, INPUT_FIX)], outputs=[(output, "-o")])
    refuse_binary_terminal(output)
    set_threads(threads)
    torch_device = resolve_device(device)
    model = load_model(model_name, device=torch_device, compute=requested_compute(), task="embed")
    check_model_outputs(model, output)
    read_options = read_options.replace(min_length=model.tokenizer.config.k)
    log_model(model, torch_device)
    stats = ReadStats(path=input_path)
    with obj.progress(None, "barcode", "embed") as bar:
        summary = embed_file(input_path, output, model, batch_size=batch_size, dtype=dtype,
                             read_options=read_options, stats=stats, progress=bar.update)
    log.info(stats.summary())
    if summary.truncated:
        log.info(f"{summary.truncated} sequences longer than {model.tokenizer.config.max_length} nt were "
                 "truncated")
    log.info(f"wrote {summary.count} embeddings of dimension {summary.dim} to {output_name(output)}")
