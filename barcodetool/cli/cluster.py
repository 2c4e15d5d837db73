"""Command `cluster`: BIN-like clusters of barcodes, matched to a reference's BINs (barcodetool.cluster)."""

from __future__ import annotations

import dataclasses

import click

from ..classify import load_inference_model
from ..cluster import FULL_LINKAGE_LIMIT, ClusterOptions, cluster_records, write_clusters
from ..io import ReadOptions, ReadStats, read_barcodes
from ..model.runtime import resolve_device
from ..model.weights import asks_for_default, check_model_outputs, default_model_name
from ._common import (INPUT_FIX, REFERENCE_FIX, Context, aligned_read_options, check_paths, device_options,
                      handle_errors, inference_model_option, log, log_model, open_reference_index, output,
                      read_options, reference_format_option, requested_compute, write_json)


@click.command("cluster")
@click.argument("input_path", metavar="INPUT")
@click.option("--output", "-o", "output_path", required=True, help="Output TSV; `-` = standard output.")
@click.option("--reference", "-r", help="Index or table/FASTA with BINs: calibrates the threshold and names "
              "each cluster's reference BIN.")
@click.option("--method", type=click.Choice(["identity", "cosine"]), default="identity", show_default=True,
              help="identity: average linkage on sequence identity distance over embedding + k-mer neighbours; "
                   "cosine: average linkage on embedding cosine distance (the papers' protocol; without "
                   "--reference, --model auto is the model of `embed`).")
@click.option("--threshold", type=click.FloatRange(min=0), help="Distance cut: identity distance (1 - "
              "identity) for identity, cosine distance for cosine [default: the reference's calibrated one; "
              "identity without a reference: the bridged cut, clusters at 0.02 joined where 2 cross pairs are "
              "within 0.015 (two lone barcodes: within 0.022), never beyond 0.035]. `--threshold 0.035` is the "
              "fixed cut used before.")
@click.option("--n-clusters", type=click.IntRange(min=1), help="--method cosine: cut into exactly this many "
              "clusters (the papers' protocol with the true number of BINs).")
@click.option("--metrics", "metrics_path", help="Write AMI, ARI and match ratio (JSON) when INPUT has BINs "
              "or species; `-` = standard output (with --output a file).")
@inference_model_option
@reference_format_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_options
@read_options
@click.pass_obj
@handle_errors
def cluster_command(obj: Context, input_path: str, output_path: str, reference: str | None, metrics_path: str | None,
                    model_name: str, reference_format: str, device: str, threads: int, read_options: ReadOptions,
                    **settings):
    """Group barcodes of INPUT into BIN-like clusters (average linkage on identity or cosine distance)."""
    options = ClusterOptions(**settings)
    check_paths(inputs=[(input_path, INPUT_FIX), (reference, REFERENCE_FIX)],
                outputs=[(output_path, "--output"), (metrics_path, "--metrics")])
    if options.method == "cosine" and reference is None and asks_for_default(model_name):
        # clusters of the embeddings alone: the embedding model's space (as `embed`), not the candidate generator
        model_name = default_model_name(resolve_device(device), "embed")
    model, torch_device = load_inference_model(model_name, reference, device=device, threads=threads,
                                               compute=requested_compute(), onnx=False)
    check_model_outputs(model, output_path, metrics_path)
    log_model(model, torch_device)
    index = (open_reference_index(obj, reference, model, options.batch_size, reference_format,
                                  read_options.skip_invalid) if reference else None)
    read_options = aligned_read_options(read_options, model.tokenizer.config.k)
    stats = ReadStats(path=input_path)
    records = list(read_barcodes(input_path, read_options, stats=stats))
    log.info(stats.summary())
    with obj.progress(None, "barcode", "embed") as bar:
        result = cluster_records(records, model, options, reference=index, device=torch_device, progress=bar.update)
    _log_clustering(result, options, len(records))
    with output(output_path) as handle:
        write_clusters(result, handle)
        if metrics_path:   # inside: where the metrics cannot be written, the clusters are not left either
            write_json(metrics_path, {"method": options.method, "threshold": result.threshold,
                                      "bridged_cut": None if result.cut is None else dataclasses.asdict(result.cut),
                                      "n_clusters": result.n_clusters, "barcodes": len(records),
                                      "distinct_sequences": result.distinct_sequences,
                                      "metrics": result.metrics, "model": model.fingerprint})
    if result.reference_bin is not None and any(result.reference_bin):
        matched = {c for c, b in zip(result.clusters.tolist(), result.reference_bin) if b != "new"}
        log.info(f"{len(matched):,} clusters matched to reference BINs, {result.n_clusters - len(matched):,} new")
    for name, m in result.metrics.items():
        log.info(f"against the input's {name} labels ({m['n']:,} barcodes, {m['true_groups']:,} groups): "
                 f"AMI {m['ami']:.4f}, ARI {m['ari']:.4f}, match ratio {m['match_ratio']:.4f}")


def _log_clustering(result, options: ClusterOptions, barcodes: int) -> None:
    """The log line saying how many clusters were made, from what, and how."""
    if options.n_clusters is not None:
        how = f"{options.n_clusters} clusters asked"
    elif result.cut is not None:
        how = f"identity distance {result.cut.describe()}"
    else:
        how = f"{'identity' if options.method == 'identity' else 'cosine'} distance threshold {result.threshold:.4g}"
    distinct = result.distinct_sequences
    if options.method == "identity":
        linkage = "average linkage on identity over embedding + k-mer neighbours"
    else:
        linkage = "full average linkage" if distinct <= FULL_LINKAGE_LIMIT else "k-NN graph + average linkage"
    log.info(f"{result.n_clusters:,} clusters from {barcodes:,} barcodes ({distinct:,} distinct), {how}, {linkage}")
