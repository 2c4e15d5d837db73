"""Leave-one-out genus 1-NN per phylum: each model's embeddings against VSEARCH's top hit and a 5-mer profile
(issue 15's transfer measure).

    .venv/bin/python benchmarks/embedding_loo.py ../shared/data/coi_extra.csv.gz \\
        --bcdm ../shared/data/formats/bold_bcdm_sample.tsv --work /tmp/loo \\
        --models barcodemae-nano barcodemae-nano-identity --threads 2

Per phylum of the table (and the BCDM sample as one more group): its distinct sequences labelled to genus (the
first record of each; at most --cap, drawn with a fixed seed). Every sequence is a query against all the others:
its nearest other sequence by cosine of each model's embeddings and of a 5-mer count profile, and VSEARCH's top
hit as a lab runs it (`--usearch_global --self --id 0.5 --maxaccepts 1 --maxrejects 32 --top_hits_only`: `--self`
rejects the query's own record; the heuristic search, not the exhaustive one). Scored: the nearest's genus is the
query's, over the queries whose genus has another sequence in the group (the only ones that can be right).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from barcodetool.embedding import embed_sequences
from barcodetool.evaluation.external import run_tool
from barcodetool.evaluation.profiles import kmer_profiles
from barcodetool.io import read_barcodes, write_fasta
from barcodetool.model.runtime import set_threads
from barcodetool.model.weights import load_model
from barcodetool.search import normalize

NO_PHYLUM = "(no phylum)"
BLOCK = 2048


def groups_of(path: str, bcdm: str | None, cap: int, seed: int) -> dict[str, list]:
    """group -> distinct genus-labelled sequences (first record of each), at most `cap` drawn at random."""
    found: dict[str, dict[str, object]] = defaultdict(dict)
    for source, fixed in [(path, None)] + ([(bcdm, "BCDM sample")] if bcdm else []):
        for record in read_barcodes(source):
            name = fixed or record.taxonomy.get("phylum") or NO_PHYLUM
            if record.taxonomy.get("genus") and record.sequence not in found[name]:
                found[name][record.sequence] = record
    rng = np.random.default_rng(seed)
    out = {}
    for name, by_sequence in sorted(found.items()):
        records = list(by_sequence.values())
        if len(records) > cap:
            records = [records[i] for i in np.sort(rng.choice(len(records), cap, replace=False))]
        out[name] = records
    return out


def nearest_other(vectors: np.ndarray) -> np.ndarray:
    """int64 [n]: each row's nearest other row by cosine (unit rows), in blocks."""
    unit = normalize(np.asarray(vectors, dtype=np.float32))
    nearest = np.empty(len(unit), dtype=np.int64)
    for start in range(0, len(unit), BLOCK):
        sims = unit[start:start + BLOCK] @ unit.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        nearest[start:start + BLOCK] = np.argmax(sims, axis=1)
    return nearest


def share_right(genus: np.ndarray, scored: np.ndarray, nearest: np.ndarray) -> str:
    return f"{100 * (genus[nearest] == genus)[scored].mean():.2f}%"


def vsearch_nearest(records: list, work: Path, threads: int) -> dict[int, int]:
    """query row -> VSEARCH's top hit row (queries without a hit are absent)."""
    fasta, hits = work / "group.fasta", work / "group.b6"
    write_fasta([(f"r{i}", r.sequence) for i, r in enumerate(records)], fasta)
    run_tool(["vsearch", "--usearch_global", str(fasta), "--db", str(fasta), "--self", "--id", "0.5",
              "--maxaccepts", "1", "--maxrejects", "32", "--top_hits_only", "--blast6out", str(hits),
              "--threads", str(threads), "--quiet"], "vsearch --usearch_global --self")
    found: dict[int, int] = {}
    for line in hits.read_text().splitlines():
        query, target = line.split("\t")[:2]
        found.setdefault(int(query[1:]), int(target[1:]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="coi_extra.csv.gz (a BIOSCAN-5M-style table with phyla)")
    parser.add_argument("--bcdm", help="a BOLD BCDM TSV scored as one more group")
    parser.add_argument("--models", nargs="+", default=["barcodemae-nano", "barcodemae-nano-identity"])
    parser.add_argument("--work", default="/tmp/embedding_loo")
    parser.add_argument("--cap", type=int, default=3000)
    parser.add_argument("--min-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = [(name, load_model(name)) for name in args.models]
    header = ["group", "queries (genera)", "VSEARCH top hit", "5-mer profile"] + [name for name, _ in models]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    started = time.perf_counter()
    for name, records in groups_of(args.data, args.bcdm, args.cap, args.seed).items():
        if len(records) < args.min_size:
            continue
        genus = np.array([r.taxonomy["genus"] for r in records])
        sizes = Counter(genus.tolist())
        scored = np.array([sizes[g] > 1 for g in genus])
        sequences = [r.sequence for r in records]

        hits = vsearch_nearest(records, work, args.threads)
        vsearch = np.array([hits.get(i, i) for i in range(len(records))])   # no hit: counted wrong (itself
        vsearch_right = (genus[vsearch] == genus) & (vsearch != np.arange(len(records)))   # is not a neighbour)
        cells = [name, f"{int(scored.sum()):,} ({len(sizes):,})", f"{100 * vsearch_right[scored].mean():.2f}%",
                 share_right(genus, scored, nearest_other(kmer_profiles(sequences, 5)))]
        cells += [share_right(genus, scored, nearest_other(embed_sequences(model, sequences))) for _, model in models]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
