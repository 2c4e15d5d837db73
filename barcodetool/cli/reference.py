"""Command group `reference`: `reference build` (a calibrated index from labelled barcodes), `reference add` and
`reference merge` (an index grown without a rebuild) and `reference info`."""

from __future__ import annotations

import math
import os

import click

from ..classify import load_inference_model
from ..io import ReadOptions, ReadStats, read_barcodes
from ..model.weights import check_model_outputs
from ..reference import BuildOptions, ReferenceIndex, add_records, build_reference, merge_indexes
from ..reference.decide import IDENTITY_CANDIDATES_WIDE, IDENTITY_WIDEN_SCORED, widen_parts
from ..taxonomy import RANKS
from ._common import (INPUT_FIX, Context, aligned_read_options, check_paths, device_options, handle_errors,
                      inference_model_option, log, log_model, log_reference, output_name, read_options,
                      refuse_binary_terminal, renamed_option, requested_compute)

INDEX_FIX = "give an index built by `barcodetool reference build`"
RECALIBRATE_HELP = ("Calibrate both rules again, as `reference build` does. Without it they are calibrated again only "
                    "when the new distinct sequences are more than 10% of those indexed; otherwise the index's "
                    "thresholds and confidence model are kept.")   # update.RECALIBRATE_SHARE


def _threshold_text(value: float) -> str:
    if math.isnan(value):
        return "none"
    if math.isinf(value):
        return "never"
    return f"{value:.4f}"


def _calibration_queries(t) -> str:
    counts = t.details.get("calibration_queries", {})
    text = (" + ".join(f"{n:,} {level}" for level, n in counts.items()) or "no") + " leave-out queries"
    population = t.details.get("calibration_population")
    if population and counts:
        text += f" (sampled from {population:,} distinct sequences; standard errors in `reference info`)"
    return text


def _widening(widen) -> str:
    n_wide, below, scored = widen_parts(widen)
    chosen = f" ({scored} scored, by shared 8-mers)" if scored else ""
    return f"widened to {n_wide} k-mer below {below:g}{chosen}\t"


def _named_text(t, rank: str) -> str:
    """'genus 98%/45%/2%': the share of leave-out queries named at `rank`, per leave-out level (own sequence,
    species, genus left out)."""
    calls = t.details.get(rank, {})
    if math.isnan(t.ranks.get(rank, math.nan)):
        return f"{rank} never"
    shares = [calls[level]["named"] for level in ("sequence", "species", "genus") if level in calls]
    return f"{rank} " + "/".join(f"{100 * share:.0f}%" for share in shares)


def _leave_out_text(level: str, calls: dict) -> str:
    """'species named 14.2% precision 97.1% (+-0.5)': the sample's standard error of the precision, where stored."""
    precision = "-" if calls["precision"] is None else f"{100 * calls['precision']:.1f}%"
    if calls.get("precision_se") is not None:
        precision += f" (+-{100 * calls['precision_se']:.1f})"
    return f"{level} named {100 * calls['named']:.1f}% precision {precision}"


@click.group("reference")
def reference_group():
    """Build and inspect reference indexes for `classify` and `cluster`."""


@reference_group.command("build")
@click.argument("ref", metavar="REF")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Index file (HDF5); `-` = standard output (made in the temporary folder, then copied).")
@inference_model_option
@click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Calibrate the BIN threshold, and each rank's cosine similarity threshold of --method knn, so "
                   "calls are right this often.")
@renamed_option("--neighbours", "--k", "neighbours", type=click.IntRange(min=1), default=10, show_default=True,
                help="Neighbours that vote in `classify --method knn` (calibrated for this number).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Confidence a rank's label needs: the calibrated probability that it is right (knn: the vote "
                   "share, calibrated with this value).")
@click.option("--candidates-wide", type=click.IntRange(min=0), default=IDENTITY_CANDIDATES_WIDE, show_default=True,
              help="Calibrate `classify` for a wider k-mer search of distant queries (best k-mer candidate below "
                   "0.95): this many k-mer candidates, of which those nearer than the best found join (0 = none; "
                   "docs/benchmarks.md).")
@click.option("--candidates-wide-scored", type=click.IntRange(min=0), default=IDENTITY_WIDEN_SCORED,
              show_default=True,
              help="Of the wide search's candidates beyond the first k-mer candidates, score the ones sharing the "
                   "most 8-mers with the query (0 = score them all).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored embeddings; float16 halves the size of very large references.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_options
@read_options
@click.pass_obj
@handle_errors
def reference_build(obj: Context, ref: str, output: str, model_name: str, device: str, threads: int,
                    read_options: ReadOptions, **settings):
    """Embed REF (a table with taxonomy and/or BINs, or FASTA with SINTAX headers) into a calibrated index."""
    options = BuildOptions(**settings)
    check_paths(inputs=[(ref, INPUT_FIX)], outputs=[(output, "-o")])
    refuse_binary_terminal(output)
    model, torch_device = load_inference_model(model_name, None, device=device, threads=threads,
                                                    compute=requested_compute(), onnx=False)
    check_model_outputs(model, output)
    log_model(model, torch_device)
    read_options = aligned_read_options(read_options, model.tokenizer.config.k)
    stats = ReadStats(path=ref)
    with obj.progress(None, "barcode", "embed") as bar:
        index = build_reference(read_barcodes(ref, read_options, stats=stats), model, options,
                                source=os.path.basename(ref), progress=bar.update, display=ref)
    log.info(stats.summary())
    index.save(output, source=os.path.basename(ref))
    t = index.identity_thresholds
    log.info(f"confidence model fitted on {_calibration_queries(t)}; ranks are named at confidence "
             f">= {t.min_confidence:g} ({', '.join(_named_text(t, r) for r in index.ranks)}); BIN identity "
             f"{_threshold_text(t.bin)}; cluster identity distance {_threshold_text(t.cluster_distance)}")
    t = index.thresholds
    ranks = ", ".join(f"{r} {_threshold_text(t.ranks[r])}" for r in index.ranks)
    log.info(f"--method knn thresholds (cosine similarity): {ranks}; BIN {_threshold_text(t.bin)}; "
             f"cluster cosine distance {_threshold_text(t.cluster_distance)}")
    log.info(f"wrote {len(index):,} reference barcodes to {output_name(output)}")


@reference_group.command("add")
@click.argument("index_path", metavar="INDEX")
@click.argument("records_path", metavar="NEW_RECORDS")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The grown index (HDF5; not INDEX itself); `-` = standard output (made in the temporary folder, "
                   "then copied).")
@click.option("--recalibrate", is_flag=True, help=RECALIBRATE_HELP)
@inference_model_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_options
@read_options
@click.pass_obj
@handle_errors
def reference_add(obj: Context, index_path: str, records_path: str, output: str, recalibrate: bool, model_name: str,
                  batch_size: int, device: str, threads: int, read_options: ReadOptions):
    """Add NEW_RECORDS (a table or FASTA, as for `reference build`) to INDEX without rebuilding it: only sequences
    not already in INDEX are embedded, and its k-mer index is extended. The result is the index that `reference
    build` makes of INDEX's records followed by NEW_RECORDS (with INDEX's model and calibration; see
    --recalibrate)."""
    check_paths(inputs=[(index_path, INDEX_FIX), (records_path, INPUT_FIX)], outputs=[(output, "-o")])
    refuse_binary_terminal(output)
    index = ReferenceIndex.load(index_path)
    log_reference(index)
    model, torch_device = load_inference_model(model_name, index_path, device=device, threads=threads,
                                               compute=requested_compute(), onnx=False)
    index.check_model(model, source=index_path)
    check_model_outputs(model, output)
    log_model(model, torch_device)
    read_options = aligned_read_options(read_options, model.tokenizer.config.k)
    stats = ReadStats(path=records_path)
    with obj.progress(None, "barcode", "embed") as bar:
        grown = add_records(index, read_barcodes(records_path, read_options, stats=stats), model,
                            recalibrate=True if recalibrate else None, allow_duplicates=read_options.allow_duplicates,
                            batch_size=batch_size, progress=bar.update, source=os.path.basename(records_path),
                            display=records_path)
    log.info(stats.summary())
    grown.save(output)
    log.info(f"wrote {len(grown):,} reference barcodes ({len(grown) - len(index):,} added) to {output_name(output)}")


@reference_group.command("merge")
@click.argument("first_path", metavar="A")
@click.argument("second_path", metavar="B")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The merged index (HDF5); `-` = standard output (made in the temporary folder, then copied).")
@click.option("--recalibrate", is_flag=True, help=RECALIBRATE_HELP)
@click.option("--allow-duplicates", is_flag=True, help="Accept record ids that are in both indexes instead of failing.")
@handle_errors
def reference_merge(first_path: str, second_path: str, output: str, recalibrate: bool, allow_duplicates: bool):
    """Merge indexes A and B (built with the same model) into one: B's records appended to A's. B's embeddings are
    reused (no model is needed): the result is the index that `reference add` makes of A and B's records. A's
    calibration is kept, or both rules are calibrated again (see --recalibrate)."""
    check_paths(inputs=[(first_path, INDEX_FIX), (second_path, INDEX_FIX)], outputs=[(output, "-o")])
    refuse_binary_terminal(output)
    first, second = ReferenceIndex.load(first_path), ReferenceIndex.load(second_path)
    merged = merge_indexes(first, second, recalibrate=True if recalibrate else None,
                           allow_duplicates=allow_duplicates)
    merged.save(output)
    log.info(f"wrote {len(merged):,} reference barcodes ({len(first):,} + {len(second):,}) to {output_name(output)}")


@reference_group.command("info")
@click.argument("index_path", metavar="INDEX")
@handle_errors
def reference_info(index_path: str):
    """Print an index's model, size, labels and calibrated thresholds."""
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
                   f"{t.candidates[1]} k-mer\tembedding below {t.embed_below:g}\t"
                   + (_widening(t.widen) if t.widen[0] else "")
                   + f"min confidence {t.min_confidence}")
        for rank in index.ranks:
            if t.confidence is None:   # an index of an older version: identity-score thresholds
                click.echo(f"threshold\t{rank}\t{_threshold_text(t.ranks.get(rank, math.nan))}")
                continue
            calls = t.details.get(rank, {})
            named = "\t".join(_leave_out_text(level, calls[level]) for level in ("sequence", "species", "genus")
                              if level in calls)
            click.echo(f"confidence\t{rank}\t>= {_threshold_text(t.ranks.get(rank, math.nan))}\t{named}")
        click.echo(f"threshold\tbin\t{_threshold_text(t.bin)}")
        click.echo(f"threshold\tcluster_distance\t{_threshold_text(t.cluster_distance)}")
        conflicts = t.details.get("conflicts", {})
        for c in conflicts.get("records", []):
            click.echo(f"conflict\t{c['id']}\t{c['rank']} {c['label']}\t{c['other_id']}\t{c['rank']} "
                       f"{c['other_label']}\t{c['identity']:.4f}")
        if conflicts.get("pairs", 0) > len(conflicts.get("records", [])):
            click.echo(f"conflict\t... {conflicts['pairs'] - len(conflicts['records'])} more")
        for c in conflicts.get("odd", []):   # read as unlabelled at that rank and below
            click.echo(f"unlabelled\t{c['id']}\t{c['rank']} and below\tnearest of its own {c['rank']} "
                       f"{c['own_nearest']:.4f}, its partner's {c['partner_own_nearest']:.4f}")
    t = index.thresholds
    if t is not None:  # --method knn / probe and cluster --method cosine: cosine similarity and distance
        click.echo(f"calibration\tknn\tprecision {t.precision}\tk {t.k}\tmin confidence {t.min_confidence}")
        for rank in index.ranks:
            click.echo(f"knn_threshold\t{rank}\t{_threshold_text(t.ranks.get(rank, math.nan))}")
        click.echo(f"knn_threshold\tbin\t{_threshold_text(t.bin)}")
        click.echo(f"knn_threshold\tcluster_distance\t{_threshold_text(t.cluster_distance)}")
