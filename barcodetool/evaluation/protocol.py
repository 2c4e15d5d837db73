"""The BarcodeMAE/BarcodeBERT evaluation protocol on a BIOSCAN-5M-style split file, optionally side by side
with VSEARCH and BLAST (docs/benchmarks.md).

Tasks, on unique barcodes (cleaned sequences deduplicated within each split, first record kept):
    species, closed world   queries `test` against reference `train`: the default classifier (identity), its
                            top hit, embedding 1-NN (the papers' protocol) and the embedding k-NN vote; and
                            what `classify` writes by default (classify_output: the public pipeline), scored
                            as named right, share named and precision of the named
    genus, open world       queries `test_unseen` against `train`: the same, at genus (and the share of
                            queries given a species, necessarily wrong)
    BIN reconstruction      cluster `test` + `test_unseen` (those with a BIN): AMI against `dna_bin` of identity
                            clustering (threshold calibrated on the train reference's BINs) and of embedding
                            cosine clustering (true number of BINs, and calibrated threshold)
    harmonic mean           of species 1-NN accuracy, genus 1-NN accuracy and AMI with the true number of BINs (the
                            papers'); and of the identity top hit's species and genus accuracy and identity AMI

run_benchmark runs the steps in this order: read the splits, build the reference from `train` (calibrated as
`reference build` does), draw the queries, the two classification tasks, the BIN task, the harmonic means, and
with `compare` the external tools (external.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..classify import ClassifyOptions, classify_embeddings, classify_identity, classify_records, nearest_labels
from ..cluster import cluster, cluster_identity, cluster_metrics
from ..embedding import embed_sequences
from ..errors import InputError, UsageError
from ..io import ReadOptions, ReadStats, read_barcodes
from ..model.runtime import set_threads
from ..model.weights import PretrainedModel
from ..reference import (DEFAULT_K, DEFAULT_PRECISION, IDENTITY_CANDIDATES_KMER, IdentityThresholds, KnnThresholds,
                         ReferenceIndex, build_reference, thresholds_for)
from ..search import as_store, normalize
from .external import compare_tools
from .profiles import PROFILE_KS, PROFILE_MAX_BYTES, kmer_profiles, profile_nearest
from .scoring import accuracy, assigned_and_precision, harmonic_mean, named_scores, named_share, rate

log = logging.getLogger("barcodetool")

SPLITS = {"reference": "train", "species": "test", "genus": "test_unseen"}


# ============================================================================================ data
def unique_by_split(records, splits: Sequence[str]) -> dict[str, list]:
    """Records of the wanted splits with each cleaned sequence kept once per split (its first record)."""
    out: dict[str, list] = {s: [] for s in splits}
    seen: dict[str, set] = {s: set() for s in splits}
    for record in records:
        split = record.split
        if split in out and record.sequence not in seen[split]:
            seen[split].add(record.sequence)
            out[split].append(record)
    return out


def draw(items: list, sample: int | None, seed: int) -> list:
    if sample is None or sample >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(items), size=sample, replace=False))
    return [items[i] for i in chosen]


def read_splits(split_file: str | os.PathLike, options: ReadOptions, say: Callable[[str], None]) -> dict[str, list]:
    """The unique barcodes of `train`, `test` and `test_unseen`; an InputError where there is no `train`."""
    stats = ReadStats(path=str(split_file))
    data = unique_by_split(read_barcodes(split_file, options, stats=stats), ("train", "test", "test_unseen"))
    say(stats.summary())
    if not data["train"]:
        raise InputError("no `train` records: the benchmark needs a `split` column with train, test and "
                         "test_unseen rows (BIOSCAN-5M style)", path=str(split_file))
    return data


def draw_queries(data: dict[str, list], sample: int | None, seed: int) -> tuple[list, list, list]:
    """(species queries, genus queries, barcodes to cluster), each drawn down to `sample` with `seed`."""
    species_queries = draw(data["test"], sample, seed)
    genus_queries = draw(data["test_unseen"], sample, seed)
    clusterable = [r for r in data["test"] + data["test_unseen"] if r.bin]
    seen_sequences: set[str] = set()
    cluster_items = []
    for record in clusterable:  # a barcode in both test splits counts once
        if record.sequence not in seen_sequences:
            seen_sequences.add(record.sequence)
            cluster_items.append(record)
    return species_queries, genus_queries, draw(cluster_items, sample, seed)


def thresholds_summary(thresholds: KnnThresholds, identity: IdentityThresholds) -> dict:
    """The reference's calibrated thresholds as the result records them."""
    return {"ranks": thresholds.ranks, "bin": thresholds.bin, "cluster_distance": thresholds.cluster_distance,
            "identity": {"ranks": identity.ranks, "bin": identity.bin, "cluster_distance": identity.cluster_distance,
                         "candidates": list(identity.candidates)}}


# ============================================================================================ the benchmark
@dataclass
class BenchmarkRun:
    """What the steps of one run share: the model, the reference index built from `train` with the thresholds it
    was calibrated to (read once, right after building), and how to embed and search."""

    model: PretrainedModel
    index: ReferenceIndex
    thresholds: KnnThresholds
    identity_thresholds: IdentityThresholds
    neighbours: int
    batch_size: int
    device: object
    say: Callable[[str], None]
    threads: int = 0
    reference: list = field(default_factory=list)          # the train records the index was built from, in order
    profiles: dict = field(default_factory=dict)           # k -> their k-mer profiles (profiles.kmer_profiles)

    def embed(self, sequences: list[str]) -> np.ndarray:
        return embed_sequences(self.model, sequences, batch_size=self.batch_size)


def run_benchmark(split_file: str | os.PathLike, model: PretrainedModel, *, compare: bool = False,
                  sample: int | None = None, threads: int = 0, neighbours: int | None = None,
                  precision: float | None = None, seed: int = 0, batch_size: int = 256, device=None,
                  read_options: ReadOptions | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Run the protocol; with `compare`, VSEARCH and BLAST too (where installed). Returns a JSON-able dict.

    `neighbours`: of the embedding k-NN vote (the result's "k"); `precision`: the reference's calibration target;
    `sample`: queries drawn per task with `seed`; `progress`: called with each step's message (default: logged).
    """
    say = progress or (lambda message: log.info(message))
    if sample is not None and sample < 1:
        raise UsageError(f"--sample must be at least 1, got {sample}")
    neighbours = DEFAULT_K if neighbours is None else neighbours
    precision = DEFAULT_PRECISION if precision is None else precision
    threads = set_threads(threads) if threads is not None else set_threads(0)
    read_options = read_options or ReadOptions()
    data = read_splits(split_file, read_options.replace(skip_empty=True, min_length=model.tokenizer.config.k),
                       say)
    result: dict = {
        "split_file": str(split_file), "model": model.fingerprint, "embedding_dim": model.embedding_dim,
        "threads": threads, "sample": sample, "seed": seed, "k": neighbours, "precision": precision,
        "unique_barcodes": {s: len(v) for s, v in data.items()}, "tasks": {}, "tools": {},
    }
    say(f"embedding the reference: {len(data['train']):,} unique train barcodes")
    start = time.perf_counter()
    index = build_reference(data["train"], model, precision=precision, neighbours=neighbours,
                            batch_size=batch_size, source=os.path.basename(str(split_file)))
    result["reference_seconds"] = time.perf_counter() - start
    run = BenchmarkRun(model, index, index.thresholds, index.identity_thresholds, neighbours, batch_size,
                       device, say, threads, reference=data["train"])
    # the baselines' reference profiles are held in memory (float32 [train, 4^k]): a k whose profiles would
    # exceed PROFILE_MAX_BYTES is left out, and the result says so
    fitting = [k for k in PROFILE_KS if len(data["train"]) * 4 ** k * 4 <= PROFILE_MAX_BYTES]
    if len(fitting) < len(PROFILE_KS):
        left_out = ", ".join(str(k) for k in PROFILE_KS if k not in fitting)
        result["profiles_left_out"] = (f"k-mer profiles of k = {left_out} of {len(data['train']):,} train barcodes "
                                       f"would exceed {PROFILE_MAX_BYTES >> 20:,} MiB")
        say(result["profiles_left_out"])
    if fitting:
        say(f"k-mer profiles of the reference (baselines: k = {', '.join(map(str, fitting))})")
    train = as_store([r.sequence for r in data["train"]])   # encoded once for every k
    run.profiles = {k: kmer_profiles(train, k) for k in fitting}
    result["thresholds"] = thresholds_summary(run.thresholds, run.identity_thresholds)
    species_queries, genus_queries, cluster_items = draw_queries(data, sample, seed)

    result["tasks"]["species"] = classify_task(run, "species", species_queries, "species")
    result["tasks"]["genus"] = classify_task(run, "genus", genus_queries, "genus")
    result["tasks"]["bins"] = cluster_task(run, cluster_items)
    result["harmonic_mean"] = harmonic_means(result["tasks"])
    if compare:
        compare_tools(result, data["train"], {"species": (species_queries, "species"),
                                              "genus": (genus_queries, "genus")}, cluster_items, threads, say)
        vsearch = [result["tasks"][name].get("vsearch", {}).get("top_hit_accuracy") for name in ("species", "genus")]
        vsearch.append(result["tasks"]["bins"].get("vsearch_0.97", {}).get("ami"))
        if all(isinstance(v, float) for v in vsearch):
            result["harmonic_mean"]["vsearch"] = harmonic_mean(vsearch)
    return result


# ============================================================================================ classification
@dataclass
class EmbeddingCalls:
    """The embedding methods' calls on one task's queries, with their wall times."""

    one_nn: list[str]          # the nearest reference's label (the papers' protocol: no threshold)
    knn: list                  # the k-NN vote's Assignments
    embed_seconds: float       # embedding every query, shared by both methods
    one_nn_seconds: float      # including the embedding
    knn_seconds: float         # including the embedding


@dataclass
class IdentityCalls:
    """The identity classifier's calls on one task's queries, with their wall times."""

    default: list              # Assignments of the default path (embeds only the queries in doubt itself)
    kmer_only: list            # Assignments of `classify --kmer-only` (no embedding)
    seconds: float
    kmer_only_seconds: float
    embedded: int              # queries the default path embedded


def embedding_calls(run: BenchmarkRun, sequences: list[str], ids: list[str], rank: str) -> EmbeddingCalls:
    start = time.perf_counter()
    vectors = run.embed(sequences)
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, idx = run.index.search(vectors, 1, device=run.device)
    one_nn = nearest_labels(run.index, idx, rank)
    one_nn_seconds = embed_seconds + time.perf_counter() - start
    start = time.perf_counter()
    knn = classify_embeddings(vectors, ids, run.index, run.thresholds, neighbours=run.neighbours, device=run.device)
    knn_seconds = embed_seconds + time.perf_counter() - start
    return EmbeddingCalls(one_nn, knn, embed_seconds, one_nn_seconds, knn_seconds)


def identity_calls(run: BenchmarkRun, sequences: list[str], ids: list[str]) -> IdentityCalls:
    thresholds = run.identity_thresholds
    embedded: list[str] = []

    def embed_in_doubt(doubtful: list[str]) -> np.ndarray:
        embedded.extend(doubtful)
        return run.embed(doubtful)

    start = time.perf_counter()   # the default path embeds only the queries in doubt after the k-mer search
    default = classify_identity(sequences, None, ids, run.index, thresholds, candidates=thresholds.candidates,
                                device=run.device, embed=embed_in_doubt)
    seconds = time.perf_counter() - start
    kmer_candidates = (0, thresholds.candidates[1] or IDENTITY_CANDIDATES_KMER)
    start = time.perf_counter()   # the thresholds for k-mer candidates only are part of the time
    kmer_only = classify_identity(sequences, None, ids, run.index, thresholds_for(
        run.index, "identity", candidates=kmer_candidates), candidates=kmer_candidates, device=run.device)
    kmer_only_seconds = time.perf_counter() - start   # no embedding: `classify --kmer-only`
    return IdentityCalls(default, kmer_only, seconds, kmer_only_seconds, len(embedded))


def classification_scores(truth: list[str], rank: str, embedding: EmbeddingCalls, identity: IdentityCalls,
                          thresholds: IdentityThresholds) -> dict:
    """Every method's accuracy (and assignment rate and precision where it may leave a rank empty) and speed."""
    n = len(truth)
    default = [a.label(rank) for a in identity.default]
    top_hit = [a.candidates.get(rank, ("", 0.0))[0] for a in identity.default]
    kmer_default = [a.label(rank) for a in identity.kmer_only]
    kmer_top_hit = [a.candidates.get(rank, ("", 0.0))[0] for a in identity.kmer_only]
    knn_labels = [a.label(rank) for a in embedding.knn]
    kmer_assigned, kmer_precision = assigned_and_precision(truth, kmer_default)
    default_assigned, default_precision = assigned_and_precision(truth, default)
    knn_assigned, knn_precision = assigned_and_precision(truth, knn_labels)
    return {"default_method": "identity",
            "default_accuracy": accuracy(truth, default), "default_assigned": default_assigned,
            "default_precision": default_precision, "top_hit_accuracy": accuracy(truth, top_hit),
            "seconds": identity.seconds, "queries_per_s": rate(identity.seconds, n),
            "embed_seconds": embedding.embed_seconds,
            "one_nn_accuracy": accuracy(truth, embedding.one_nn), "one_nn_seconds": embedding.one_nn_seconds,
            "one_nn_queries_per_s": rate(embedding.one_nn_seconds, n),
            "knn_accuracy": accuracy(truth, knn_labels), "knn_assigned": knn_assigned,
            "knn_precision": knn_precision, "knn_seconds": embedding.knn_seconds,
            "knn_queries_per_s": rate(embedding.knn_seconds, n),
            "candidates": list(thresholds.candidates),
            "embed_below": thresholds.embed_below, "embedded_fraction": identity.embedded / max(1, n),
            "kmer_only_accuracy": accuracy(truth, kmer_default), "kmer_only_assigned": kmer_assigned,
            "kmer_only_precision": kmer_precision, "kmer_only_top_hit_accuracy": accuracy(truth, kmer_top_hit),
            "kmer_only_seconds": identity.kmer_only_seconds,
            "kmer_only_queries_per_s": rate(identity.kmer_only_seconds, n)}


def classify_task(run: BenchmarkRun, name: str, queries: list, rank: str) -> dict:
    """Every method's accuracy and queries/s (wall time of its own steps plus the shared embedding of every
    query; the identity default embeds only the queries in doubt itself, `--kmer-only` none)."""
    if not queries:
        return {"queries": 0, "note": f"no {SPLITS[name]} records"}
    run.say(f"{name}: classifying {len(queries):,} {SPLITS[name]} barcodes")
    sequences = [r.sequence for r in queries]
    ids = [r.id for r in queries]
    truth = [r.taxonomy.get(rank, "") for r in queries]
    embedding = embedding_calls(run, sequences, ids, rank)
    identity = identity_calls(run, sequences, ids)
    scores = classification_scores(truth, rank, embedding, identity, run.identity_thresholds)
    scores["profiles"] = profile_scores(run, sequences, truth, rank)
    task = {"queries": len(queries), "rank": rank, "barcodetool": scores,
            "classify_output": classify_output(run, queries, rank, identity.default)}
    if rank == "genus":
        scores["species_left_empty"] = float(np.mean([not a.label("species") for a in identity.default]))
        scores["knn_species_left_empty"] = float(np.mean([not a.label("species") for a in embedding.knn]))
    return task


def profile_scores(run: BenchmarkRun, sequences: list[str], truth: list[str], rank: str) -> dict:
    """The baselines: 1-NN by cosine of k-mer count profiles (profiles.py), k -> accuracy and queries/s."""
    out = {}
    for k, reference_profiles in run.profiles.items():
        start = time.perf_counter()
        nearest = profile_nearest(sequences, reference_profiles, k)
        seconds = time.perf_counter() - start
        predicted = [run.reference[i].taxonomy.get(rank, "") if i >= 0 else "" for i in nearest.tolist()]
        out[str(k)] = {"one_nn_accuracy": accuracy(truth, predicted), "seconds": seconds,
                       "queries_per_s": rate(seconds, len(sequences))}
    return out


def classify_output(run: BenchmarkRun, queries: list, rank: str, default: list) -> dict:
    """barcodetool's default output, the labels `barcodetool classify` writes (the public pipeline with the
    command's default options), scored as SINTAX's are: named_scores at `rank`, on the genus task (`rank` above
    species) the share given a species, its speed, and the share of queries whose label at `rank` is the
    identity default's (`default`, classification_scores' "default_*": 1.0 where the two agree)."""
    options = ClassifyOptions(batch_size=run.batch_size, search_workers=min(4, run.threads or os.cpu_count() or 1))
    start = time.perf_counter()
    assignments = list(classify_records(queries, run.index, run.model, options, device=run.device))
    seconds = time.perf_counter() - start
    truth = [r.taxonomy.get(rank, "") for r in queries]
    predicted = [a.label(rank) for a in assignments]
    scores = named_scores(truth, predicted)
    if rank != "species":
        scores["species_named"] = named_share([a.label("species") for a in assignments])
    scores.update(seconds=seconds, queries_per_s=rate(seconds, len(queries)),
                  agrees_with_default=float(np.mean([p == a.label(rank) for p, a in zip(predicted, default)])))
    return scores


# ============================================================================================ clustering
def cluster_task(run: BenchmarkRun, cluster_items: list) -> dict:
    """AMI, ARI and match ratio against the BINs of identity clustering at the calibrated distance, and of
    embedding cosine clustering with the true number of BINs and at the calibrated distance."""
    task: dict = {"barcodes": len(cluster_items)}
    if len(cluster_items) < 2:
        task["note"] = "fewer than 2 test/test_unseen barcodes with a BIN"
        return task
    run.say(f"BIN reconstruction: clustering {len(cluster_items):,} test + test_unseen barcodes")
    truth = [r.bin for r in cluster_items]
    true_k = len(set(truth))
    sequences = [r.sequence for r in cluster_items]
    start = time.perf_counter()
    vectors = normalize(run.embed(sequences))
    embed_seconds = time.perf_counter() - start
    task["true_bins"] = true_k
    task["embed_seconds"] = embed_seconds
    identity_distance = run.identity_thresholds.cluster_distance
    if not math.isnan(identity_distance):
        start = time.perf_counter()
        labels_i = cluster_identity(sequences, vectors, identity_distance, device=run.device)
        task["barcodetool_identity"] = dict(cluster_metrics(truth, labels_i), threshold=identity_distance,
                                            seconds=embed_seconds + time.perf_counter() - start)
    start = time.perf_counter()
    labels_k = cluster(vectors, n_clusters=true_k)
    task["barcodetool_true_k"] = dict(cluster_metrics(truth, labels_k),
                                      seconds=embed_seconds + time.perf_counter() - start)
    if not math.isnan(run.thresholds.cluster_distance):
        start = time.perf_counter()
        labels_t = cluster(vectors, threshold=run.thresholds.cluster_distance)
        task["barcodetool_threshold"] = dict(cluster_metrics(truth, labels_t),
                                             threshold=run.thresholds.cluster_distance,
                                             seconds=embed_seconds + time.perf_counter() - start)
    store = as_store(sequences)
    for k in run.profiles:   # the baselines, clustered as the embedding is
        start = time.perf_counter()
        labels_p = cluster(kmer_profiles(store, k), n_clusters=true_k)
        task[f"profile_{k}_true_k"] = dict(cluster_metrics(truth, labels_p), seconds=time.perf_counter() - start)
    return task


def harmonic_means(tasks: dict) -> dict:
    """The papers' harmonic mean of the embedding's tasks, and the same of the identity methods'."""
    species_bt = tasks["species"].get("barcodetool", {})
    genus_bt = tasks["genus"].get("barcodetool", {})
    bins = tasks["bins"]
    ami = bins.get("barcodetool_true_k", {}).get("ami", math.nan)
    out = {
        "barcodetool": harmonic_mean([species_bt.get("one_nn_accuracy", math.nan),
                                      genus_bt.get("one_nn_accuracy", math.nan), ami]),
        "of": "species 1-NN accuracy, genus 1-NN accuracy, AMI with the true number of BINs",
        "barcodetool_identity": harmonic_mean([species_bt.get("top_hit_accuracy", math.nan),
                                               genus_bt.get("top_hit_accuracy", math.nan),
                                               bins.get("barcodetool_identity", {}).get("ami", math.nan)]),
        "identity_of": "identity top-hit species and genus accuracy, identity clustering AMI (calibrated threshold)"}
    for k in species_bt.get("profiles", {}):   # the k-mer profile baselines, by the embedding's protocol
        out[f"profile_{k}"] = harmonic_mean([species_bt["profiles"][k]["one_nn_accuracy"],
                                             genus_bt.get("profiles", {}).get(k, {}).get("one_nn_accuracy", math.nan),
                                             bins.get(f"profile_{k}_true_k", {}).get("ami", math.nan)])
    return out
