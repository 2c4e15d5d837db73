"""Command `classify`: taxonomy (and BINs) for query barcodes against a reference (barcodetool.classify)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import click

from ..classify import (ClassifyOptions, classify_records, exported_model, load_inference_model,
                        write_classification)
from ..errors import UsageError
from ..io import ReadOptions, ReadStats, read_barcodes
from ..io.interrupts import signals_held
from ..model.weights import check_model_outputs
from ..reference import ReferenceIndex, is_reference_file
from ._common import (INPUT_FIX, REFERENCE_FIX, Context, aligned_read_options, check_paths, device_options,
                      handle_errors, inference_model_option, log, log_model, log_reference, open_reference_index,
                      output, read_options, reference_format_option, renamed_option, requested_compute)


@click.command("classify")
@click.argument("queries", metavar="QUERIES")
@click.option("--reference", "-r", required=True,
              help="A built index (`reference build`), or a table/FASTA with taxonomy (indexed once, cached).")
@click.option("--output", "-o", "output_path", required=True, help="Output file; `-` = standard output.")
@inference_model_option
@click.option("--method", type=click.Choice(["identity", "knn", "probe"]), default="identity",
              show_default=True,
              help="identity: sequence identity of k-mer and embedding candidates decides; knn: embedding "
                   "similarity-weighted vote (the papers' protocol); probe: a linear classifier per rank.")
@click.option("--candidates-embedding", type=click.IntRange(min=0), default=20, show_default=True,
              help="identity: reference sequences nearest by embedding that are scored for a query in doubt "
                   "(see --embed-below; 0 = none: no embedding is computed).")  # IDENTITY_CANDIDATES_EMBEDDING
@click.option("--candidates-kmer", type=click.IntRange(min=0), default=10, show_default=True,
              help="identity: reference sequences sharing the most 12-mers that are scored (0 = none).")
@click.option("--embed-below", type=click.FloatRange(min=0), default=0.95, show_default=True,
              help="identity: only queries whose best k-mer candidate scores (identity) below this get "
                   "embedding candidates: known species are classified without the model, distant queries "
                   "with it. `inf` embeds every query (the same accuracy on the shared split, up to 2.5x "
                   "slower on a CPU).")
@click.option("--candidates-wide", type=click.IntRange(min=0), default=None,
              help="identity: k-mer candidates searched for distant queries (best k-mer candidate below 0.95), "
                   "of which the few sharing the most 8-mers with the query are scored and join when nearer than "
                   "those already found (0 = none) [default: the index's calibration; `reference build` makes "
                   "60]. A number other than the index's recalibrates in memory first.")
@click.option("--kmer-only", is_flag=True,
              help="identity with k-mer candidates only (= --candidates-embedding 0): no model, no embedding; "
                   "the same species accuracy, about 2 points less open-world genus accuracy "
                   "(docs/benchmarks.md).")
@renamed_option("--neighbours", "--k", "neighbours", type=click.IntRange(min=1), default=None,
                help="knn/probe: neighbours that vote [default: the index's calibration, 10]; --neighbours 1 is "
                     "1-NN.")
@click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Target precision of the calibrated thresholds: BINs, and knn/probe ranks [default: the "
                   "index's, 0.95].")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="Confidence a rank's label needs: identity: the probability that it is right, calibrated on "
                   "the reference; knn: vote share; probe: probability [default: the index's, 0.5].")
@click.option("--output-format", type=click.Choice(["tsv", "sintax"]), default="tsv", show_default=True,
              help="tsv: one row per query with a header; sintax: VSEARCH --sintax tabbed lines.")
@reference_format_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--chunk-size", type=click.IntRange(min=1), default=4096, show_default=True,  # classify.CHUNK_RECORDS
              help="Queries read, embedded and written at a time (at most --threads + 5 chunks, 9, are in "
                   "work at once).")
@device_options
@read_options
@click.pass_obj
@handle_errors
def classify_command(obj: Context, queries: str, reference: str, output_path: str, model_name: str, kmer_only: bool,
                     output_format: str, reference_format: str, device: str, threads: int, read_options: ReadOptions,
                     **settings):
    """Assign taxonomy (and BINs) to QUERIES (FASTA or table; `-` = stdin): one row per query, in order."""
    check_paths(inputs=[(queries, INPUT_FIX), (reference, REFERENCE_FIX)], outputs=[(output_path, "-o")])
    if kmer_only:
        if settings["method"] != "identity":
            raise UsageError("--kmer-only is a mode of --method identity")
        settings["candidates_embedding"] = 0
    # identity: at most 4 chunks searched at once (as many as cores); knn and probe: one (classify_records)
    search_workers = min(4, threads or os.cpu_count() or 1) if settings["method"] == "identity" else None
    options = ClassifyOptions(**settings, search_workers=search_workers)
    index, model, torch_device = _index_and_model(obj, reference, model_name, options, reference_format,
                                                  device, threads, read_options.skip_invalid)
    check_model_outputs(model, output_path)
    read_options = aligned_read_options(read_options, model.tokenizer.config.k if model is not None else 1)
    stats = ReadStats(path=queries)
    records = obj.read_summary(read_barcodes(queries, read_options, stats=stats), stats)
    with obj.progress(None, "query", "classify") as bar, output(output_path) as handle:
        count = write_classification(classify_records(records, index, model, options, device=torch_device,
                                                      progress=bar.update), handle, output_format)
    log.info(f"classified {count:,} queries" + (f" into {output_path}" if output_path != "-" else ""))


def _index_and_model(obj: Context, reference: str, model_name: str, options: ClassifyOptions, reference_format: str,
                     device: str, threads: int, skip_invalid: bool = False):
    """(index, model, PyTorch device) for the classification, logged. k-mer candidates only against a built
    index need no model (None); the model of a built index may be its exported encoder in ONNX Runtime (device
    None); a table or FASTA reference is indexed with the PyTorch model (once, then cached)."""
    compute = requested_compute()
    if not options.embeds and is_reference_file(reference):
        # k-mer candidates only against a built index: no embedding, so no model to load; the search is numpy:
        # PyTorch is not even imported
        index = ReferenceIndex.load(reference)
        log_reference(index, "; k-mer candidates only (no model)")
        return index, None, None
    if not is_reference_file(reference):
        model, torch_device = load_inference_model(model_name, reference, device=device, threads=threads,
                                                   compute=compute, onnx=False)
        log_model(model, torch_device)
        index = open_reference_index(obj, reference, model, options.batch_size, reference_format, skip_invalid)
        if options.method != "probe":
            # the queries are embedded as against the built index (ONNX Runtime, float32, where it can): the same
            # reference gives the same answers from its table (cached) and from `reference build`'s index
            exported = exported_model(model_name, reference, device, threads, compute)
            if exported is not None and exported.sha256 == model.sha256:
                log_model(exported, "cpu")
                return index, exported, None
        return index, model, torch_device
    # the index is read (h5py, numpy) on a thread while PyTorch is imported on this one
    with signals_held():  # starts a thread
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="barcodetool-index")
    with pool:
        loading = pool.submit(_load_index_for_search, reference, options.method)
        # the probe's linear heads are PyTorch modules: no exported encoder for it
        model, torch_device = load_inference_model(model_name, reference, device=device, threads=threads,
                                                   compute=compute, onnx=options.method != "probe")
        log_model(model, "cpu" if torch_device is None else torch_device)
        index = loading.result()
    index.check_model(model, source=reference)
    log_reference(index)
    return index, model, torch_device


def _load_index_for_search(path: str, method: str) -> ReferenceIndex:
    """A built index, with what the identity search needs loaded (the k-mer postings and their offsets)."""
    index = ReferenceIndex.load(path)
    if method == "identity":
        index.identity.kmer.offsets()
    return index
