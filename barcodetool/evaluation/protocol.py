"""The BarcodeMAE/BarcodeBERT evaluation protocol on a BIOSCAN-5M-style split file, optionally side by side
with VSEARCH and BLAST (docs/benchmarks.md).

Tasks, on unique barcodes (cleaned sequences deduplicated within each split, first record kept):
    species, closed world   queries `test` against reference `train`: the default classifier (identity), its
                            top hit, embedding 1-NN (the papers' protocol) and the embedding k-NN vote
    genus, open world       queries `test_unseen` against `train`: the same, at genus
    BIN reconstruction      cluster `test` + `test_unseen` (those with a BIN): AMI against `dna_bin` of identity
                            clustering (threshold calibrated on the train reference's BINs) and of embedding
                            cosine clustering (true number of BINs, and calibrated threshold)
    harmonic mean           of species 1-NN accuracy, genus 1-NN accuracy and AMI with the true number of BINs (the
                            papers'); and of the identity top hit's species and genus accuracy and identity AMI
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..io.readers import ReadOptions

log = logging.getLogger("barcodetool")

SPLITS = {"reference": "train", "species": "test", "genus": "test_unseen"}
VSEARCH_CLUSTER_IDS = (0.97, 0.98)


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


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Fraction right; an empty prediction is wrong. Queries with an empty true label are left out."""
    pairs = [(t, p) for t, p in zip(truth, predicted) if t]
    if not pairs:
        return math.nan
    return sum(1 for t, p in pairs if p == t) / len(pairs)


def harmonic_mean(values: Sequence[float]) -> float:
    values = [v for v in values]
    if not values or any(v is None or math.isnan(v) for v in values):
        return math.nan
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


# ============================================================================================ external tools
def tool_versions() -> dict[str, str | None]:
    """Installed external tools: name -> version line (None = not installed)."""
    out = {}
    for name, command in (("vsearch", ["vsearch", "--version"]), ("blast", ["blastn", "-version"])):
        executable = shutil.which(command[0])
        if executable is None or (name == "blast" and shutil.which("makeblastdb") is None):
            out[name] = None
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            out[name] = None
            continue
        lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        # the line naming the tool: "vsearch v2.22.1_linux_x86_64, ...", "blastn: 2.12.0+"
        named = [line for line in lines if line.lower().startswith(command[0])]
        out[name] = (named or lines or [command[0]])[0]
    return out


def write_plain_fasta(path: Path, named: Sequence[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for name, sequence in named:
            handle.write(f">{name}\n{sequence}\n")


def _run(command: list[str], what: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed with exit status {done.returncode}: {' | '.join(tail)}")
    return seconds


def top_hits(blast6: Path) -> dict[str, str]:
    """First hit per query of a BLAST tabular (outfmt 6) file: query -> subject."""
    hits: dict[str, str] = {}
    with open(blast6, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 2 and fields[0] not in hits:
                hits[fields[0]] = fields[1]
    return hits


def vsearch_top_hits(queries: Path, reference: Path, out: Path, threads: int) -> float:
    return _run(["vsearch", "--usearch_global", str(queries), "--db", str(reference), "--id", "0.5",
                 "--maxaccepts", "1", "--maxrejects", "32", "--top_hits_only", "--blast6out", str(out),
                 "--threads", str(threads), "--quiet"], "vsearch --usearch_global")


def blast_top_hits(queries: Path, database: Path, out: Path, threads: int) -> float:
    return _run(["blastn", "-query", str(queries), "-db", str(database), "-outfmt", "6 qseqid sseqid pident bitscore",
                 "-max_target_seqs", "1", "-num_threads", str(max(1, threads)), "-out", str(out)], "blastn")


def vsearch_clusters(sequences: Path, identity: float, out: Path, threads: int) -> tuple[dict[str, str], float]:
    seconds = _run(["vsearch", "--cluster_fast", str(sequences), "--id", str(identity), "--uc", str(out),
                    "--threads", str(threads), "--quiet"], "vsearch --cluster_fast")
    clusters: dict[str, str] = {}
    with open(out, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 9 and fields[0] in ("S", "H"):
                clusters[fields[8]] = fields[1]
    return clusters, seconds


# ============================================================================================ the benchmark
def run_benchmark(split_file: str | os.PathLike, pretrained, *, compare: bool = False, sample: int | None = None,
                  threads: int = 0, k: int | None = None, precision: float | None = None, seed: int = 0,
                  batch_size: int = 256, device=None, read_options: ReadOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Run the protocol; with `compare`, VSEARCH and BLAST too (where installed). Returns a JSON-able dict."""
    from ..classify import classify_embeddings, classify_identity, nearest_labels
    from ..cluster import cluster, cluster_identity, cluster_metrics
    from ..embedding import embed_sequences
    from ..io.readers import ReadStats, read_barcodes
    from ..reference.index import DEFAULT_K, DEFAULT_PRECISION, IDENTITY_CANDIDATES_KMER, build_reference, normalize
    from ..model.runtime import set_threads

    say = progress or (lambda message: log.info(message))
    if sample is not None and sample < 1:
        raise UsageError(f"--sample must be at least 1, got {sample}")
    k = DEFAULT_K if k is None else k
    precision = DEFAULT_PRECISION if precision is None else precision
    threads = set_threads(threads) if threads is not None else set_threads(0)
    read_options = read_options or ReadOptions()
    options = read_options.replace(skip_empty=True, min_length=pretrained.tokenizer.config.k)
    stats = ReadStats(path=str(split_file))
    wanted = ("train", "test", "test_unseen")
    data = unique_by_split(read_barcodes(split_file, options, stats=stats), wanted)
    say(stats.summary())
    if not data["train"]:
        raise InputError("no `train` records: the benchmark needs a `split` column with train, test and "
                         "test_unseen rows (BIOSCAN-5M style)", path=str(split_file))
    result: dict = {
        "split_file": str(split_file), "model": pretrained.fingerprint, "embedding_dim": pretrained.embedding_dim,
        "threads": threads, "sample": sample, "seed": seed, "k": k, "precision": precision,
        "unique_barcodes": {s: len(v) for s, v in data.items()}, "tasks": {}, "tools": {},
    }
    # ------------------------------------------------------------------ reference
    say(f"embedding the reference: {len(data['train']):,} unique train barcodes")
    start = time.perf_counter()
    index = build_reference(data["train"], pretrained, precision=precision, k=k, batch_size=batch_size,
                            source=os.path.basename(str(split_file)))
    result["reference_seconds"] = time.perf_counter() - start
    thresholds = index.thresholds
    identity_thresholds = index.identity_thresholds
    result["thresholds"] = {"ranks": thresholds.ranks, "bin": thresholds.bin,
                            "cluster_distance": thresholds.cluster_distance,
                            "identity": {"ranks": identity_thresholds.ranks, "bin": identity_thresholds.bin,
                                         "cluster_distance": identity_thresholds.cluster_distance,
                                         "candidates": list(identity_thresholds.candidates)}}
    species_queries = draw(data["test"], sample, seed)
    genus_queries = draw(data["test_unseen"], sample, seed)
    clusterable = [r for r in data["test"] + data["test_unseen"] if r.bin]
    seen_sequences: set[str] = set()
    cluster_items = []
    for record in clusterable:  # a barcode in both test splits counts once
        if record.sequence not in seen_sequences:
            seen_sequences.add(record.sequence)
            cluster_items.append(record)
    cluster_items = draw(cluster_items, sample, seed)

    # ------------------------------------------------------------------ classification tasks
    def rate(seconds: float, n: int) -> float:
        return n / seconds if seconds > 0 else math.nan

    def called(truth: list, predicted: list) -> tuple[float, float]:
        assigned = [bool(p) for p, t in zip(predicted, truth) if t]
        right = [p == t for p, t in zip(predicted, truth) if t and p]
        return (float(np.mean(assigned)) if assigned else math.nan,
                float(np.mean(right)) if right else math.nan)

    def classify_task(name: str, queries: list, rank: str) -> dict:
        """Every method's accuracy and queries/s (wall time of its own steps plus the shared embedding of every
        query; the identity default embeds only the queries in doubt itself, `--kmer-only` none)."""
        if not queries:
            return {"queries": 0, "note": f"no {SPLITS[name]} records"}
        say(f"{name}: classifying {len(queries):,} {SPLITS[name]} barcodes")
        n = len(queries)
        sequences = [r.sequence for r in queries]
        ids = [r.id for r in queries]
        truth = [r.taxonomy.get(rank, "") for r in queries]
        start = time.perf_counter()
        vectors = embed_sequences(pretrained, sequences, batch_size=batch_size)
        embed_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _, idx = index.search(vectors, 1, device=device)
        one_nn = nearest_labels(index, idx, rank)
        one_nn_seconds = embed_seconds + time.perf_counter() - start
        start = time.perf_counter()
        knn = classify_embeddings(vectors, ids, index, thresholds, k=k, device=device)
        knn_seconds = embed_seconds + time.perf_counter() - start
        embedded: list[str] = []

        def embed_in_doubt(doubtful: list[str]) -> np.ndarray:
            embedded.extend(doubtful)
            return embed_sequences(pretrained, doubtful, batch_size=batch_size)

        start = time.perf_counter()   # the default path embeds only the queries in doubt after the k-mer search
        identity = classify_identity(sequences, None, ids, index, identity_thresholds,
                                     candidates=identity_thresholds.candidates, device=device, embed=embed_in_doubt)
        identity_seconds = time.perf_counter() - start
        kmer_candidates = (0, identity_thresholds.candidates[1] or IDENTITY_CANDIDATES_KMER)
        start = time.perf_counter()
        kmer_only = classify_identity(sequences, None, ids, index, index.identity_thresholds_for(
            candidates=kmer_candidates), candidates=kmer_candidates, device=device)
        kmer_only_seconds = time.perf_counter() - start   # no embedding: `classify --kmer-only`
        default = [a.label(rank) for a in identity]
        top_hit = [a.candidates.get(rank, ("", 0.0))[0] for a in identity]
        kmer_default = [a.label(rank) for a in kmer_only]
        kmer_assigned, kmer_precision = called(truth, kmer_default)
        knn_labels = [a.label(rank) for a in knn]
        default_assigned, default_precision = called(truth, default)
        knn_assigned, knn_precision = called(truth, knn_labels)
        scores = {"default_method": "identity",
                  "default_accuracy": accuracy(truth, default), "default_assigned": default_assigned,
                  "default_precision": default_precision, "top_hit_accuracy": accuracy(truth, top_hit),
                  "seconds": identity_seconds, "queries_per_s": rate(identity_seconds, n),
                  "embed_seconds": embed_seconds,
                  "one_nn_accuracy": accuracy(truth, one_nn), "one_nn_seconds": one_nn_seconds,
                  "one_nn_queries_per_s": rate(one_nn_seconds, n),
                  "knn_accuracy": accuracy(truth, knn_labels), "knn_assigned": knn_assigned,
                  "knn_precision": knn_precision, "knn_seconds": knn_seconds,
                  "knn_queries_per_s": rate(knn_seconds, n),
                  "candidates": list(identity_thresholds.candidates),
                  "embed_below": identity_thresholds.embed_below, "embedded_fraction": len(embedded) / max(1, n),
                  "kmer_only_accuracy": accuracy(truth, kmer_default), "kmer_only_assigned": kmer_assigned,
                  "kmer_only_precision": kmer_precision,
                  "kmer_only_top_hit_accuracy": accuracy(truth, [a.candidates.get(rank, ("", 0.0))[0]
                                                                 for a in kmer_only]),
                  "kmer_only_seconds": kmer_only_seconds, "kmer_only_queries_per_s": rate(kmer_only_seconds, n)}
        task = {"queries": n, "rank": rank, "barcodetool": scores}
        if rank == "genus":
            scores["species_left_empty"] = float(np.mean([not a.label("species") for a in identity]))
            scores["knn_species_left_empty"] = float(np.mean([not a.label("species") for a in knn]))
        return task

    result["tasks"]["species"] = classify_task("species", species_queries, "species")
    result["tasks"]["genus"] = classify_task("genus", genus_queries, "genus")

    # ------------------------------------------------------------------ clustering
    task: dict = {"barcodes": len(cluster_items)}
    if len(cluster_items) >= 2:
        say(f"BIN reconstruction: clustering {len(cluster_items):,} test + test_unseen barcodes")
        truth = [r.bin for r in cluster_items]
        true_k = len(set(truth))
        sequences = [r.sequence for r in cluster_items]
        start = time.perf_counter()
        vectors = normalize(embed_sequences(pretrained, sequences, batch_size=batch_size))
        embed_seconds = time.perf_counter() - start
        task["true_bins"] = true_k
        task["embed_seconds"] = embed_seconds
        if not math.isnan(identity_thresholds.cluster_distance):
            start = time.perf_counter()
            labels_i = cluster_identity(sequences, vectors, identity_thresholds.cluster_distance, device=device)
            task["barcodetool_identity"] = dict(cluster_metrics(truth, labels_i),
                                                threshold=identity_thresholds.cluster_distance,
                                                seconds=embed_seconds + time.perf_counter() - start)
        start = time.perf_counter()
        labels_k = cluster(vectors, n_clusters=true_k)
        task["barcodetool_true_k"] = dict(cluster_metrics(truth, labels_k),
                                          seconds=embed_seconds + time.perf_counter() - start)
        if not math.isnan(thresholds.cluster_distance):
            start = time.perf_counter()
            labels_t = cluster(vectors, threshold=thresholds.cluster_distance)
            task["barcodetool_threshold"] = dict(cluster_metrics(truth, labels_t),
                                                 threshold=thresholds.cluster_distance,
                                                 seconds=embed_seconds + time.perf_counter() - start)
    else:
        task["note"] = "fewer than 2 test/test_unseen barcodes with a BIN"
    result["tasks"]["bins"] = task
    species_bt = result["tasks"]["species"].get("barcodetool", {})
    genus_bt = result["tasks"]["genus"].get("barcodetool", {})
    ami = task.get("barcodetool_true_k", {}).get("ami", math.nan)
    result["harmonic_mean"] = {
        "barcodetool": harmonic_mean([species_bt.get("one_nn_accuracy", math.nan),
                                      genus_bt.get("one_nn_accuracy", math.nan), ami]),
        "of": "species 1-NN accuracy, genus 1-NN accuracy, AMI with the true number of BINs",
        "barcodetool_identity": harmonic_mean([species_bt.get("top_hit_accuracy", math.nan),
                                               genus_bt.get("top_hit_accuracy", math.nan),
                                               task.get("barcodetool_identity", {}).get("ami", math.nan)]),
        "identity_of": "identity top-hit species and genus accuracy, identity clustering AMI (calibrated threshold)"}

    # ------------------------------------------------------------------ external tools
    if compare:
        versions = tool_versions()
        result["tools"] = {name: (version or "not installed") for name, version in versions.items()}
        with tempfile.TemporaryDirectory(prefix="barcodetool-bench-") as folder:
            _compare(Path(folder), versions, data["train"], species_queries, genus_queries, cluster_items,
                     result, threads, say)
        vsearch = [result["tasks"][name].get("vsearch", {}).get("top_hit_accuracy") for name in ("species", "genus")]
        vsearch.append(result["tasks"]["bins"].get("vsearch_0.97", {}).get("ami"))
        if all(isinstance(v, float) for v in vsearch):
            result["harmonic_mean"]["vsearch"] = harmonic_mean(vsearch)
    return result


def _compare(folder: Path, versions: dict, reference: list, species_queries: list, genus_queries: list,
             cluster_items: list, result: dict, threads: int, say) -> None:
    from ..cluster import cluster_metrics

    ref_fasta = folder / "reference.fasta"
    write_plain_fasta(ref_fasta, [(f"R{i}", r.sequence) for i, r in enumerate(reference)])
    ref_labels = {f"R{i}": r.taxonomy for i, r in enumerate(reference)}
    tasks = {"species": (species_queries, "species"), "genus": (genus_queries, "genus")}
    database = None
    if versions.get("blast"):
        database = folder / "reference_db"
        try:
            seconds = _run(["makeblastdb", "-in", str(ref_fasta), "-dbtype", "nucl", "-out", str(database)],
                           "makeblastdb")
            result["tools"]["blast_makeblastdb_seconds"] = seconds
        except RuntimeError as error:
            result["tools"]["blast_error"] = str(error)
            database = None
    for name, (queries, rank) in tasks.items():
        task = result["tasks"][name]
        if not queries:
            continue
        query_fasta = folder / f"{name}.fasta"
        write_plain_fasta(query_fasta, [(f"Q{i}", r.sequence) for i, r in enumerate(queries)])
        truth = [r.taxonomy.get(rank, "") for r in queries]
        for tool in ("vsearch", "blast"):
            if not versions.get(tool) or (tool == "blast" and database is None):
                task[tool] = {"note": "not installed"}
                continue
            out = folder / f"{name}.{tool}.tsv"
            say(f"{name}: {tool} top hit for {len(queries):,} queries")
            try:
                if tool == "vsearch":
                    seconds = vsearch_top_hits(query_fasta, ref_fasta, out, threads)
                else:
                    seconds = blast_top_hits(query_fasta, database, out, threads)
            except RuntimeError as error:
                task[tool] = {"note": str(error)}
                continue
            hits = top_hits(out)
            predicted = [ref_labels[hits[f"Q{i}"]].get(rank, "") if f"Q{i}" in hits else ""
                         for i in range(len(queries))]
            task[tool] = {"top_hit_accuracy": accuracy(truth, predicted), "seconds": seconds,
                          "queries_per_s": len(queries) / seconds if seconds > 0 else math.nan,
                          "no_hit": sum(1 for i in range(len(queries)) if f"Q{i}" not in hits)}
    bins = result["tasks"]["bins"]
    if len(cluster_items) >= 2:
        if not versions.get("vsearch"):
            bins["vsearch"] = {"note": "not installed"}
            return
        cluster_fasta = folder / "cluster.fasta"
        write_plain_fasta(cluster_fasta, [(f"C{i}", r.sequence) for i, r in enumerate(cluster_items)])
        truth = [r.bin for r in cluster_items]
        for identity in VSEARCH_CLUSTER_IDS:
            say(f"BIN reconstruction: vsearch --cluster_fast --id {identity}")
            try:
                clusters, seconds = vsearch_clusters(cluster_fasta, identity, folder / f"clusters{identity}.uc",
                                                     threads)
            except RuntimeError as error:
                bins[f"vsearch_{identity}"] = {"note": str(error)}
                continue
            predicted = [clusters.get(f"C{i}", f"missing{i}") for i in range(len(cluster_items))]
            bins[f"vsearch_{identity}"] = dict(cluster_metrics(truth, predicted), seconds=seconds)


# ============================================================================================ the table
def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}%"


def _rate(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.1f}"


def format_table(result: dict) -> str:
    """A plain-text table of a run_benchmark result."""
    rows = [("task", "method", "n", "result", "queries/s")]
    tools = result.get("tools", {})
    for name, title in (("species", "species, closed world"), ("genus", "genus, open world")):
        task = result["tasks"].get(name, {})
        n = str(task.get("queries", 0))
        bt = task.get("barcodetool")
        if not bt:
            rows.append((title, "-", n, task.get("note", "-"), "-"))
            continue
        extra = f" (assigned {_pct(bt['default_assigned'])}, precision {_pct(bt['default_precision'])})"
        candidates = "+".join(str(c) for c in bt.get("candidates", []))
        if "embedded_fraction" in bt:
            candidates += f", {_pct(bt['embedded_fraction'])} embedded"
        rows.append((title, f"barcodetool identity, default (candidates {candidates})", n,
                     _pct(bt["default_accuracy"]) + extra, _rate(bt["queries_per_s"])))
        if name == "genus" and "species_left_empty" in bt:
            rows.append((title, "barcodetool identity: species left empty", n, _pct(bt["species_left_empty"]),
                         ""))
        rows.append((title, "barcodetool identity, top hit (no threshold)", n, _pct(bt["top_hit_accuracy"]),
                     _rate(bt["queries_per_s"])))
        if "kmer_only_accuracy" in bt:
            extra = f" (assigned {_pct(bt['kmer_only_assigned'])}, precision {_pct(bt['kmer_only_precision'])})"
            rows.append((title, "barcodetool identity --kmer-only (no model), default", n,
                         _pct(bt["kmer_only_accuracy"]) + extra, _rate(bt["kmer_only_queries_per_s"])))
            rows.append((title, "barcodetool identity --kmer-only, top hit", n,
                         _pct(bt["kmer_only_top_hit_accuracy"]), _rate(bt["kmer_only_queries_per_s"])))
        rows.append((title, "barcodetool embedding 1-NN (papers' protocol)", n, _pct(bt["one_nn_accuracy"]),
                     _rate(bt.get("one_nn_queries_per_s"))))
        extra = f" (assigned {_pct(bt['knn_assigned'])}, precision {_pct(bt['knn_precision'])})"
        rows.append((title, f"barcodetool embedding k-NN vote k={result.get('k')}", n,
                     _pct(bt["knn_accuracy"]) + extra, _rate(bt.get("knn_queries_per_s"))))
        if name == "genus" and "knn_species_left_empty" in bt:
            rows.append((title, "barcodetool k-NN: species left empty", n, _pct(bt["knn_species_left_empty"]),
                         ""))
        for tool, label in (("vsearch", "VSEARCH top hit"), ("blast", "BLAST top hit")):
            if tool in task:
                entry = task[tool]
                if "top_hit_accuracy" in entry:
                    rows.append((title, label, n, _pct(entry["top_hit_accuracy"]), _rate(entry["queries_per_s"])))
                else:
                    rows.append((title, label, n, entry.get("note", "-"), "-"))
    bins = result["tasks"].get("bins", {})
    title = "BIN reconstruction (AMI)"
    n = str(bins.get("barcodes", 0))
    if "barcodetool_identity" in bins:
        m = bins["barcodetool_identity"]
        rows.append((title, f"barcodetool identity, distance {m['threshold']:.4g} ({m['clusters']} clusters)", n,
                     f"{_pct(m['ami'])} (ARI {_pct(m['ari'])}, match {_pct(m['match_ratio'])})",
                     _rate(bins["barcodes"] / m["seconds"] if m.get("seconds") else None)))
    if "barcodetool_true_k" in bins:
        m = bins["barcodetool_true_k"]
        rows.append((title, f"barcodetool cosine, true k={bins['true_bins']}", n,
                     f"{_pct(m['ami'])} (ARI {_pct(m['ari'])}, match {_pct(m['match_ratio'])})",
                     _rate(bins["barcodes"] / m["seconds"] if m.get("seconds") else None)))
    if "barcodetool_threshold" in bins:
        m = bins["barcodetool_threshold"]
        rows.append((title, f"barcodetool cosine, distance {m['threshold']:.4g} ({m['clusters']} clusters)", n,
                     f"{_pct(m['ami'])} (ARI {_pct(m['ari'])}, match {_pct(m['match_ratio'])})",
                     _rate(bins["barcodes"] / m["seconds"] if m.get("seconds") else None)))
    for identity in VSEARCH_CLUSTER_IDS:
        entry = bins.get(f"vsearch_{identity}")
        if entry is not None:
            if "ami" in entry:
                rows.append((title, f"VSEARCH cluster_fast {identity} ({entry['clusters']} clusters)", n,
                             f"{_pct(entry['ami'])} (ARI {_pct(entry['ari'])}, match {_pct(entry['match_ratio'])})",
                             _rate(bins["barcodes"] / entry["seconds"] if entry.get("seconds") else None)))
            else:
                rows.append((title, f"VSEARCH cluster_fast {identity}", n, entry.get("note", "-"), ""))
    if "vsearch" in bins:
        rows.append((title, "VSEARCH cluster_fast", n, bins["vsearch"].get("note", "-"), ""))
    hm = result.get("harmonic_mean", {})
    rows.append(("harmonic mean", "barcodetool embedding (species 1-NN, genus 1-NN, AMI true k)", "",
                 _pct(hm.get("barcodetool")), ""))
    if "barcodetool_identity" in hm:
        rows.append(("harmonic mean", "barcodetool identity (top-hit species, genus, AMI calibrated)", "",
                     _pct(hm.get("barcodetool_identity")), ""))
    if "vsearch" in hm:
        rows.append(("harmonic mean", "VSEARCH (top-hit species, genus, cluster_fast 0.97 AMI)", "",
                     _pct(hm.get("vsearch")), ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(str(cell).ljust(widths[i]) if i < 4 else str(cell).rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    model = result.get("model", {})
    lines.append("")
    lines.append(f"model {model.get('model_name')} (sha256 {str(model.get('model_sha256', ''))[:12]}), "
                 f"{result.get('threads')} threads; reference: {result['unique_barcodes'].get('train', 0):,} unique "
                 f"train barcodes embedded and calibrated in {result.get('reference_seconds', 0):.1f} s")
    if tools:
        shown = ", ".join(f"{k}: {v}" for k, v in tools.items() if not k.startswith("blast_"))
        lines.append(f"tools: {shown}")
    return "\n".join(lines)
