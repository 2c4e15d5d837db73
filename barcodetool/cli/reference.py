"""Commands `reference build`, `reference info`, `classify`, `cluster` and `benchmark` (added by `register`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys

import click

from ..io.readers import ReadOptions
from ..cli import (device_options, gather_read_options, handle_errors, inference_model_option, log, log_model,
                  read_options, requested_compute)


def _load_model_for(model_name: str, reference: str | None, device: str, threads: int):
    from ..reference.index import resolve_model_for_reference
    from ..model.runtime import resolve_device, set_threads
    from ..model.weights import load_model

    from ..errors import ModelError
    from ..reference.index import index_model_name

    set_threads(threads)
    torch_device = resolve_device(device)
    try:
        pretrained = load_model(resolve_model_for_reference(model_name, reference), device=torch_device,
                                compute=requested_compute())
    except ModelError as error:
        built_with = index_model_name(reference) if reference and model_name in (None, "", "auto") else None
        if built_with is None:
            raise
        raise ModelError(f"{reference} was built with model {built_with!r}, which is not installed here, and the "
                         f"default model cannot be loaded ({error}); pass --model with that model's folder") from None
    log_model(pretrained, torch_device)
    return pretrained, torch_device


def _onnx_model_for(model_name: str, reference: str | None, device: str, threads: int):
    """The model's exported encoder in ONNX Runtime (onnx_encoder) where `classify` can use it, so that PyTorch is
    never imported: on the CPU, in float32 (`--compute auto` or `float32`), with onnxruntime installed and an
    `encoder.onnx` in the model folder. Else None (PyTorch runs the model)."""
    from ..errors import ModelError
    from ..model.onnx import load_onnx_model
    from ..reference.index import resolve_model_for_reference
    from ..model.runtime import cuda_impossible
    from ..model.weights import locate_model

    if requested_compute() == "bfloat16" or not cuda_impossible(device):
        return None
    try:
        path, name = locate_model(resolve_model_for_reference(model_name, reference), "cpu")
    except ModelError:
        return None   # loading through PyTorch says why, as without the graph
    model = load_onnx_model(path, name=name, threads=threads)
    if model is not None:
        log_model(model, "cpu")
    return model


@contextlib.contextmanager
def _output(path: str):
    """A text handle: stdout for `-`, else an atomic file."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
    else:
        from ..io.atomic import atomic_text

        with atomic_text(path) as handle:
            yield handle


def _open_reference(obj, reference: str, pretrained, batch_size: int, reference_format: str):
    from ..reference.index import open_reference

    options = ReadOptions(format=reference_format)
    with obj.progress(None, "barcode", "reference") as bar:
        index = open_reference(reference, pretrained, read_options=options, batch_size=batch_size,
                               progress=bar.update)
    _log_reference(index)
    return index


def _log_reference(index, note: str = "") -> None:
    log.info(f"reference: {len(index):,} barcodes, ranks {', '.join(index.ranks) or 'none'}"
             f"{', BINs' if index.bin_codes is not None else ''}{note}")


def _load_index_for_search(path: str, method: str):
    """A built index, with what the identity search needs loaded (the k-mer postings as a sparse matrix)."""
    from ..reference.index import ReferenceIndex

    index = ReferenceIndex.load(path)
    if method == "identity":
        index.identity.kmer.matrix()
    return index


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _clean_json(value):
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _write_json(path: str, data: dict) -> None:
    with _output(path) as handle:
        json.dump(_clean_json(data), handle, indent=2, default=_json_default)
        handle.write("\n")


def _threshold_text(value: float) -> str:
    if math.isnan(value):
        return "none"
    if math.isinf(value):
        return "never"
    return f"{value:.4f}"


reference_format_option = click.option(
    "--reference-format", type=click.Choice(["auto", "fasta", "bioscan", "bold-v3", "bold-bcdm"]), default="auto",
    show_default=True, help="Format of a --reference that is a table or FASTA (a built index is recognised).")


def register(main: click.Group) -> None:
    """Add the reference, classify, cluster and benchmark commands to the main group."""

    # ======================================================================================== reference
    @main.group("reference")
    def reference_group():
        """Build and inspect reference indexes for `classify` and `cluster`."""

    @reference_group.command("build")
    @click.argument("ref", metavar="REF")
    @click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Index file (HDF5).")
    @inference_model_option
    @click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
                  help="Calibrate each rank's threshold (identity score, and cosine similarity for --method knn) "
                       "so calls are right this often.")
    @click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
                  help="Neighbours that vote in `classify --method knn` (calibrated for this k).")
    @click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                  help="Share of the tied-best candidates (knn: vote share) a label needs (calibrated with this "
                       "value).")
    @click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
                  help="Stored embeddings; float16 halves the size of very large references.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
    @device_options
    @read_options
    @click.pass_obj
    @handle_errors
    def reference_build(obj, ref, output, model_name, precision, k, min_confidence, dtype, batch_size, device,
                        threads, **kwargs):
        """Embed REF (a table with taxonomy and/or BINs, or FASTA with SINTAX headers) into a calibrated index."""
        from ..io.atomic import check_outputs_distinct
        from ..io.readers import ReadStats, read_barcodes
        from ..reference.index import build_reference

        read_opts = gather_read_options(kwargs)
        check_outputs_distinct([output], [ref])
        pretrained, torch_device = _load_model_for(model_name, None, device, threads)
        read_opts = read_opts.replace(min_length=pretrained.tokenizer.config.k)
        stats = ReadStats(path=ref)
        with obj.progress(None, "barcode", "embed") as bar:
            index = build_reference(read_barcodes(ref, read_opts, stats=stats), pretrained, precision=precision,
                                    k=k, min_confidence=min_confidence, dtype=dtype, batch_size=batch_size,
                                    source=os.path.basename(ref), progress=bar.update, display=ref)
        log.info(stats.summary())
        index.save(output, source=os.path.basename(ref))
        t = index.identity_thresholds
        ranks = ", ".join(f"{r} {_threshold_text(t.ranks[r])}" for r in index.ranks)
        log.info(f"thresholds (identity score, precision {precision}): {ranks}; BIN {_threshold_text(t.bin)}; "
                 f"cluster identity distance {_threshold_text(t.cluster_distance)}")
        t = index.thresholds
        ranks = ", ".join(f"{r} {_threshold_text(t.ranks[r])}" for r in index.ranks)
        log.info(f"--method knn thresholds (cosine similarity): {ranks}; BIN {_threshold_text(t.bin)}; "
                 f"cluster cosine distance {_threshold_text(t.cluster_distance)}")
        log.info(f"wrote {len(index):,} reference barcodes to {output}")

    @reference_group.command("info")
    @click.argument("index_path", metavar="INDEX")
    @handle_errors
    def reference_info(index_path):
        """Print an index's model, size, labels and calibrated thresholds."""
        from ..reference.index import RANKS, ReferenceIndex

        index = ReferenceIndex.load(index_path)
        attrs = index.attrs
        click.echo(f"format\t{attrs.get('format')} v{attrs.get('format_version')}")
        click.echo(f"model\t{index.model_name}\t{index.model_sha256}")
        click.echo(f"barcodes\t{len(index)}\tdim {index.embedding_dim}\t{attrs.get('dtype')}")
        click.echo(f"source\t{attrs.get('source', '')}\tcreated {attrs.get('created', '')}")
        for name in list(RANKS) + ["bin"]:
            if name in index.codes:
                click.echo(f"labels\t{name}\t{len(index.label_names[name])}")
        t = index.identity_thresholds
        if t is not None:  # the default classifier and clusterer: identity scores and identity distance
            click.echo(f"calibration\tidentity\tprecision {t.precision}\tcandidates {t.candidates[0]} embedding + "
                       f"{t.candidates[1]} k-mer\tembedding below {t.embed_below:g}\tmin confidence "
                       f"{t.min_confidence}")
            for rank in index.ranks:
                click.echo(f"threshold\t{rank}\t{_threshold_text(t.ranks.get(rank, math.nan))}")
            click.echo(f"threshold\tbin\t{_threshold_text(t.bin)}")
            click.echo(f"threshold\tcluster_distance\t{_threshold_text(t.cluster_distance)}")
        t = index.thresholds
        if t is not None:  # --method knn / probe and cluster --method cosine: cosine similarity and distance
            click.echo(f"calibration\tknn\tprecision {t.precision}\tk {t.k}\tmin confidence {t.min_confidence}")
            for rank in index.ranks:
                click.echo(f"knn_threshold\t{rank}\t{_threshold_text(t.ranks.get(rank, math.nan))}")
            click.echo(f"knn_threshold\tbin\t{_threshold_text(t.bin)}")
            click.echo(f"knn_threshold\tcluster_distance\t{_threshold_text(t.cluster_distance)}")

    # ======================================================================================== classify
    @main.command("classify")
    @click.argument("queries", metavar="QUERIES")
    @click.option("--reference", "-r", required=True,
                  help="A built index (`reference build`), or a table/FASTA with taxonomy (indexed once, cached).")
    @click.option("--output", "-o", required=True, help="Output file; `-` = standard output.")
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
    @click.option("--kmer-only", is_flag=True,
                  help="identity with k-mer candidates only (= --candidates-embedding 0): no model, no embedding; "
                       "the same species accuracy, about 2 points less open-world genus accuracy "
                       "(docs/benchmarks.md).")
    @click.option("--k", type=click.IntRange(min=1), default=None, help="knn/probe: neighbours that vote "
                  "[default: the index's calibration k, 10]; --k 1 is 1-NN.")
    @click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=None,
                  help="Target precision of the thresholds [default: the index's, 0.95].")
    @click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
                  help="Share of the tied-best candidates (knn: vote share; probe: probability) a label needs "
                       "[default: the index's, 0.5].")
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
    def classify_command(obj, queries, reference, output, model_name, method, candidates_embedding, candidates_kmer,
                         embed_below, kmer_only, k, precision, min_confidence, output_format, reference_format,
                         batch_size, chunk_size, device, threads, **kwargs):
        """Assign taxonomy (and BINs) to QUERIES (FASTA or table; `-` = stdin): one row per query, in order."""
        from ..io.atomic import check_outputs_distinct
        from ..classify import classify_records, write_classification
        from ..errors import UsageError
        from ..io.readers import ReadStats, read_barcodes
        from ..reference.index import is_reference_file

        read_opts = gather_read_options(kwargs)
        check_outputs_distinct([output], [queries, reference])
        if kmer_only:
            if method != "identity":
                raise UsageError("--kmer-only is a mode of --method identity")
            candidates_embedding = 0
        if method == "identity" and candidates_embedding + candidates_kmer == 0:
            raise UsageError("--candidates-embedding and --candidates-kmer cannot both be 0")
        if method == "identity" and candidates_embedding == 0 and is_reference_file(reference):
            # k-mer candidates only against a built index: no embedding, so no model to load
            from ..reference.index import ReferenceIndex

            torch_device = None  # the search is numpy: PyTorch is not even imported
            pretrained = None
            index = ReferenceIndex.load(reference)
            _log_reference(index, "; k-mer candidates only (no model)")
            min_length = 1
        elif is_reference_file(reference):
            # the index is read (h5py, numpy) on a thread while PyTorch is imported on this one
            from concurrent.futures import ThreadPoolExecutor

            from ..io.interrupts import signals_held

            with signals_held():  # starts a thread
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="barcodetool-index")
            with pool:
                loading = pool.submit(_load_index_for_search, reference, method)
                pretrained, torch_device = None, None
                if method != "probe":   # the probe's linear heads are PyTorch modules
                    pretrained = _onnx_model_for(model_name, reference, device, threads)
                if pretrained is None:
                    pretrained, torch_device = _load_model_for(model_name, reference, device, threads)
                index = loading.result()
            index.check_model(pretrained, source=reference)
            _log_reference(index)
            min_length = pretrained.tokenizer.config.k
        else:
            pretrained, torch_device = _load_model_for(model_name, reference, device, threads)
            index = _open_reference(obj, reference, pretrained, batch_size, reference_format)
            min_length = pretrained.tokenizer.config.k
        read_opts = read_opts.replace(min_length=min_length)
        search_workers = min(4, threads or os.cpu_count() or 1) if method == "identity" else None
        stats = ReadStats(path=queries)
        records = read_barcodes(queries, read_opts, stats=stats)
        with obj.progress(None, "query", "classify") as bar, _output(output) as handle:
            count = write_classification(
                classify_records(records, index, pretrained, k=k, method=method, precision=precision,
                                 min_confidence=min_confidence, candidates_embedding=candidates_embedding,
                                 candidates_kmer=candidates_kmer, embed_below=embed_below, chunk_size=chunk_size,
                                 batch_size=batch_size,
                                 device=torch_device, progress=bar.update, search_workers=search_workers),
                handle, output_format)
        log.info(stats.summary())
        log.info(f"classified {count:,} queries" + (f" into {output}" if output != "-" else ""))

    # ======================================================================================== cluster
    @main.command("cluster")
    @click.argument("input_path", metavar="INPUT")
    @click.option("--output", "-o", required=True, help="Output TSV; `-` = standard output.")
    @click.option("--reference", "-r", help="Index or table/FASTA with BINs: calibrates the threshold and names "
                  "each cluster's reference BIN.")
    @click.option("--method", type=click.Choice(["identity", "cosine"]), default="identity", show_default=True,
                  help="identity: average linkage on sequence identity distance over embedding + k-mer neighbours; "
                       "cosine: average linkage on embedding cosine distance (the papers' protocol).")
    @click.option("--threshold", type=click.FloatRange(min=0), help="Distance cut: identity distance (1 - "
                  "identity) for identity, cosine distance for cosine [default: the reference's calibrated one; "
                  "identity without a reference: 0.035].")
    @click.option("--n-clusters", type=click.IntRange(min=1), help="--method cosine: cut into exactly this many "
                  "clusters (the papers' protocol with the true number of BINs).")
    @click.option("--metrics", "metrics_path", help="Write AMI, ARI and match ratio (JSON) when INPUT has BINs "
                  "or species.")
    @inference_model_option
    @reference_format_option
    @click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
    @device_options
    @read_options
    @click.pass_obj
    @handle_errors
    def cluster_command(obj, input_path, output, reference, method, threshold, n_clusters, metrics_path, model_name,
                        reference_format, batch_size, device, threads, **kwargs):
        """Group barcodes of INPUT into BIN-like clusters (average linkage on identity or cosine distance)."""
        from ..io.atomic import check_outputs_distinct
        from ..cluster import FULL_LINKAGE_LIMIT, cluster_records
        from ..errors import UsageError
        from ..io.readers import ReadStats, read_barcodes

        if threshold is not None and n_clusters is not None:
            raise UsageError("give --threshold or --n-clusters, not both")
        if n_clusters is not None and method != "cosine":
            raise UsageError("--n-clusters needs --method cosine (identity clusters are cut at an identity "
                             "distance: give --threshold)")
        if method == "identity" and threshold is not None and threshold > 1:
            raise UsageError(f"an identity distance is at most 1, got --threshold {threshold}")
        read_opts = gather_read_options(kwargs)
        check_outputs_distinct([output, metrics_path], [input_path, reference])
        if output != "-" and metrics_path and os.path.realpath(output) == os.path.realpath(metrics_path):
            raise UsageError("--output and --metrics name the same file")
        pretrained, torch_device = _load_model_for(model_name, reference, device, threads)
        index = _open_reference(obj, reference, pretrained, batch_size, reference_format) if reference else None
        read_opts = read_opts.replace(min_length=pretrained.tokenizer.config.k)
        stats = ReadStats(path=input_path)
        records = list(read_barcodes(input_path, read_opts, stats=stats))
        log.info(stats.summary())
        with obj.progress(None, "barcode", "embed") as bar:
            result = cluster_records(records, pretrained, reference=index, threshold=threshold,
                                     n_clusters=n_clusters, method=method, batch_size=batch_size,
                                     device=torch_device, progress=bar.update)
        how = (f"{n_clusters} clusters asked" if n_clusters is not None
               else f"{'identity' if method == 'identity' else 'cosine'} distance threshold {result.threshold:.4g}")
        unique = len(set(r.sequence for r in records))
        if method == "identity":
            linkage = "average linkage on identity over embedding + k-mer neighbours"
        else:
            linkage = "full average linkage" if unique <= FULL_LINKAGE_LIMIT else "k-NN graph + average linkage"
        log.info(f"{result.n_clusters:,} clusters from {len(records):,} barcodes ({unique:,} distinct), {how}, "
                 f"{linkage}")
        with _output(output) as handle:
            handle.write("id\tcluster\treference_bin\tsimilarity\n")
            for row, record_id in enumerate(result.ids):
                ref_bin = result.reference_bin[row] if result.reference_bin is not None else ""
                sim = (f"{result.similarity[row]:.4f}" if result.similarity is not None
                       and math.isfinite(result.similarity[row]) else "")
                handle.write(f"{record_id}\t{int(result.clusters[row]) + 1}\t{ref_bin}\t{sim}\n")
        if result.reference_bin is not None:
            matched = {c for c, b in zip(result.clusters.tolist(), result.reference_bin) if b != "new"}
            log.info(f"{len(matched):,} clusters matched to reference BINs, {result.n_clusters - len(matched):,} new")
        for name, m in result.metrics.items():
            log.info(f"against the input's {name} labels ({m['n']:,} barcodes, {m['true_groups']:,} groups): "
                     f"AMI {m['ami']:.4f}, ARI {m['ari']:.4f}, match ratio {m['match_ratio']:.4f}")
        if metrics_path:
            _write_json(metrics_path, {"method": method, "threshold": result.threshold,
                                       "n_clusters": result.n_clusters, "barcodes": len(records),
                                       "distinct_sequences": unique,
                                       "metrics": result.metrics, "model": pretrained.fingerprint})

    # ======================================================================================== benchmark
    @main.command("benchmark")
    @click.argument("split_file", metavar="SPLIT_FILE")
    @inference_model_option
    @click.option("--compare", is_flag=True, help="Also run VSEARCH and BLAST (where installed) on the same tasks.")
    @click.option("--sample", type=click.IntRange(min=1), help="Draw this many queries per task (fixed seed).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
    @click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
                  help="Neighbours of the embedding k-NN vote.")
    @click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
    @click.option("--json", "json_path", help="Write every figure as JSON.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
    @device_options
    @read_options
    @click.pass_obj
    @handle_errors
    def benchmark_command(obj, split_file, model_name, compare, sample, seed, k, precision, json_path, batch_size,
                          device, threads, **kwargs):
        """The papers' protocol on SPLIT_FILE (a BIOSCAN-5M-style table with a `split` column): species
        (closed world), genus (open world), BIN reconstruction, optionally against VSEARCH and BLAST."""
        from ..io.atomic import check_outputs_distinct
        from ..evaluation.protocol import format_table, run_benchmark

        read_opts = gather_read_options(kwargs)
        check_outputs_distinct([json_path], [split_file])
        pretrained, torch_device = _load_model_for(model_name, None, device, threads)
        result = run_benchmark(split_file, pretrained, compare=compare, sample=sample, threads=threads, k=k,
                               precision=precision, seed=seed, batch_size=batch_size, device=torch_device,
                               read_options=read_opts)
        click.echo(format_table(result))
        if json_path:
            _write_json(json_path, result)
