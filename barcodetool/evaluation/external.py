"""VSEARCH and BLAST side by side with the benchmark (`barcodetool benchmark --compare`): the tools found, their
runs on the benchmark's own reference and queries, and their scores in the benchmark's result: the top hit of
`vsearch --usearch_global` and of BLAST, `vsearch --sintax` at each cutoff of SINTAX_CUTOFFS (sintax.py) and
`vsearch --cluster_fast`.

Each tool runs as a subprocess on plain FASTA files in a temporary folder; a tool that is not installed or that
fails leaves a note in the result instead of an error.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cluster import cluster_metrics
from .scoring import accuracy, rate
from .sintax import (SINTAX_CUTOFFS, SINTAX_RANDSEED, SintaxPrediction, label_lookup, read_sintax_output,
                     sintax_command, sintax_scores, write_sintax_reference)

VSEARCH_CLUSTER_IDS = (0.97, 0.98)


# ============================================================================================ the tools
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


def run_tool(command: list[str], what: str) -> float:
    """Run an external command; its wall time in seconds. A RuntimeError with the end of its output on failure."""
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
    return run_tool(["vsearch", "--usearch_global", str(queries), "--db", str(reference), "--id", "0.5",
                     "--maxaccepts", "1", "--maxrejects", "32", "--top_hits_only", "--blast6out", str(out),
                     "--threads", str(threads), "--quiet"], "vsearch --usearch_global")


def blast_top_hits(queries: Path, database: Path, out: Path, threads: int) -> float:
    return run_tool(["blastn", "-query", str(queries), "-db", str(database), "-outfmt",
                     "6 qseqid sseqid pident bitscore", "-max_target_seqs", "1", "-num_threads",
                     str(max(1, threads)), "-out", str(out)], "blastn")


def vsearch_clusters(sequences: Path, identity: float, out: Path, threads: int) -> tuple[dict[str, str], float]:
    seconds = run_tool(["vsearch", "--cluster_fast", str(sequences), "--id", str(identity), "--uc", str(out),
                        "--threads", str(threads), "--quiet"], "vsearch --cluster_fast")
    clusters: dict[str, str] = {}
    with open(out, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 9 and fields[0] in ("S", "H"):
                clusters[fields[8]] = fields[1]
    return clusters, seconds


def blast_database(folder: Path, reference_fasta: Path, tools: dict) -> Path | None:
    """makeblastdb of the reference FASTA; its time, or its error, goes into `tools`. None where it failed."""
    database = folder / "reference_db"
    try:
        seconds = run_tool(["makeblastdb", "-in", str(reference_fasta), "-dbtype", "nucl", "-out", str(database)],
                           "makeblastdb")
        tools["blast_makeblastdb_seconds"] = seconds
    except RuntimeError as error:
        tools["blast_error"] = str(error)
        return None
    return database


# ============================================================================================ the comparison
@dataclass
class ToolComparison:
    """One comparison's working folder, the tools found (tool_versions) and the reference as the tools read it:
    sequences named R0, R1, ... in `reference_fasta` (and with their taxonomy in `sintax_fasta`), their taxonomy
    in `reference_labels`."""

    folder: Path
    versions: dict[str, str | None]
    reference_fasta: Path
    reference_labels: dict[str, dict]
    database: Path | None        # BLAST's, None without BLAST or where makeblastdb failed
    threads: int
    say: Callable[[str], None]
    sintax_fasta: Path | None = None   # VSEARCH's SINTAX reference, None without VSEARCH

    def classify(self, name: str, queries: list, rank: str, task: dict) -> None:
        """Each tool's top hit for the queries of task `name`: its accuracy at `rank` and speed in task[tool]; and
        SINTAX's named labels in task["sintax"] (ToolComparison.sintax)."""
        query_fasta = self.folder / f"{name}.fasta"
        write_plain_fasta(query_fasta, [(f"Q{i}", r.sequence) for i, r in enumerate(queries)])
        truth = [r.taxonomy.get(rank, "") for r in queries]
        for tool in ("vsearch", "blast"):
            if not self.versions.get(tool) or (tool == "blast" and self.database is None):
                task[tool] = {"note": "not installed"}
                continue
            out = self.folder / f"{name}.{tool}.tsv"
            self.say(f"{name}: {tool} top hit for {len(queries):,} queries")
            try:
                if tool == "vsearch":
                    seconds = vsearch_top_hits(query_fasta, self.reference_fasta, out, self.threads)
                else:
                    seconds = blast_top_hits(query_fasta, self.database, out, self.threads)
            except RuntimeError as error:
                task[tool] = {"note": str(error)}
                continue
            hits = top_hits(out)
            predicted = [self.reference_labels[hits[f"Q{i}"]].get(rank, "") if f"Q{i}" in hits else ""
                         for i in range(len(queries))]
            task[tool] = {"top_hit_accuracy": accuracy(truth, predicted), "seconds": seconds,
                          "queries_per_s": len(queries) / seconds if seconds > 0 else math.nan,
                          "no_hit": sum(1 for i in range(len(queries)) if f"Q{i}" not in hits)}
        self.sintax(name, query_fasta, queries, rank, task)

    def sintax(self, name: str, query_fasta: Path, queries: list, rank: str, task: dict) -> None:
        """`vsearch --sintax` of the queries (one run, one thread, --randseed SINTAX_RANDSEED): task["sintax"] gets
        the named_scores at `rank` for each of SINTAX_CUTOFFS ("cutoffs"), on the genus task with the share given
        a species, and its speed."""
        if not self.versions.get("vsearch") or self.sintax_fasta is None:
            task["sintax"] = {"note": "not installed"}
            return
        out = self.folder / f"{name}.sintax.tsv"
        self.say(f"{name}: vsearch --sintax for {len(queries):,} queries")
        try:
            seconds = run_tool(sintax_command(query_fasta, self.sintax_fasta, out), "vsearch --sintax")
        except RuntimeError as error:
            task["sintax"] = {"note": str(error)}
            return
        found = read_sintax_output(out, label_lookup(self.reference_labels.values()))
        predictions = [found.get(f"Q{i}") or SintaxPrediction() for i in range(len(queries))]
        truth = [r.taxonomy.get(rank, "") for r in queries]
        task["sintax"] = {"cutoffs": sintax_scores(truth, predictions, rank, SINTAX_CUTOFFS,
                                                   species_named=rank != "species"),
                          "randseed": SINTAX_RANDSEED, "threads": 1, "seconds": seconds,
                          "queries_per_s": rate(seconds, len(queries)),
                          "no_prediction": sum(1 for p in predictions if not p.labels)}

    def cluster(self, cluster_items: list, bins: dict) -> None:
        """VSEARCH --cluster_fast of the BIN task's barcodes at each of VSEARCH_CLUSTER_IDS: bins[vsearch_<id>]."""
        if len(cluster_items) < 2:
            return
        if not self.versions.get("vsearch"):
            bins["vsearch"] = {"note": "not installed"}
            return
        cluster_fasta = self.folder / "cluster.fasta"
        write_plain_fasta(cluster_fasta, [(f"C{i}", r.sequence) for i, r in enumerate(cluster_items)])
        truth = [r.bin for r in cluster_items]
        for identity in VSEARCH_CLUSTER_IDS:
            self.say(f"BIN reconstruction: vsearch --cluster_fast --id {identity}")
            try:
                clusters, seconds = vsearch_clusters(cluster_fasta, identity, self.folder / f"clusters{identity}.uc",
                                                     self.threads)
            except RuntimeError as error:
                bins[f"vsearch_{identity}"] = {"note": str(error)}
                continue
            predicted = [clusters.get(f"C{i}", f"missing{i}") for i in range(len(cluster_items))]
            bins[f"vsearch_{identity}"] = dict(cluster_metrics(truth, predicted), seconds=seconds)


def compare_tools(result: dict, reference: list, tasks: dict[str, tuple[list, str]], cluster_items: list,
                  threads: int, say: Callable[[str], None]) -> None:
    """VSEARCH and BLAST, where installed, on the benchmark's reference records and queries, written into `result`:
    "tools" gets their versions, each classification task of `tasks` (name -> (queries, rank)) a "vsearch", a
    "blast" and a "sintax" entry, and the "bins" task the VSEARCH clusterings of `cluster_items`."""
    versions = tool_versions()
    result["tools"] = {name: (version or "not installed") for name, version in versions.items()}
    with tempfile.TemporaryDirectory(prefix="barcodetool-bench-") as temporary:
        folder = Path(temporary)
        reference_fasta = folder / "reference.fasta"
        write_plain_fasta(reference_fasta, [(f"R{i}", r.sequence) for i, r in enumerate(reference)])
        reference_labels = {f"R{i}": r.taxonomy for i, r in enumerate(reference)}
        database = blast_database(folder, reference_fasta, result["tools"]) if versions.get("blast") else None
        sintax_fasta = None
        if versions.get("vsearch"):
            sintax_fasta = folder / "reference.sintax.fasta"
            write_sintax_reference(sintax_fasta, ((f"R{i}", r.sequence, r.taxonomy) for i, r in enumerate(reference)))
        comparison = ToolComparison(folder, versions, reference_fasta, reference_labels, database, threads, say,
                                    sintax_fasta)
        for name, (queries, rank) in tasks.items():
            if queries:
                comparison.classify(name, queries, rank, result["tasks"][name])
        comparison.cluster(cluster_items, result["tasks"]["bins"])
