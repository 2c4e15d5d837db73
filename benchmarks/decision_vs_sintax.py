"""barcodetool's default output against `vsearch --sintax`, in one run, on the shared split.

    python benchmarks/decision_vs_sintax.py SPLIT_FILE --reference train.h5 --reference-fasta train.fasta \\
        --work DIR [--threads 2]

SPLIT_FILE: a BIOSCAN-5M-style table with a `split` column (../shared/data/bold_insects.csv.gz). The reference is
the `train` split: `train.h5` built by `barcodetool reference build train.fasta` and `train.fasta` its unique
barcodes with SINTAX headers (what VSEARCH reads). Queries are the unique barcodes of `test` (species, closed world)
and `test_unseen` (genus, open world: their species are absent from the reference). For each method: the share of
queries named at the rank and right, the precision of the named, and for `test_unseen` the share given a species
(always wrong). SINTAX is read at cutoffs 0.8 and 0.5 from one run (column 2); barcodetool's SINTAX output is also
read at 0.8 on its column 2, as a SINTAX pipeline would read it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from barcodetool.io import read_barcodes, write_fasta
from barcodetool.evaluation.sintax import read_sintax_output


def scores(named: dict[str, str], truth: dict[str, str]) -> dict:
    right = sum(1 for q, label in named.items() if label and label == truth.get(q))
    count = sum(1 for label in named.values() if label)
    return {"named_right": right / len(truth), "precision": right / count if count else None,
            "named": count / len(truth)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_file")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--reference-fasta", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    queries: dict[str, dict[str, object]] = {"test": {}, "test_unseen": {}}
    for record in read_barcodes(args.split_file):
        if record.split in queries and record.sequence not in queries[record.split]:
            queries[record.split][record.sequence] = record
    result = {}
    for split in ("test", "test_unseen"):
        records = list(queries[split].values())
        fasta = work / f"{split}.fasta"
        write_fasta([(r.id, r.sequence) for r in records], fasta)
        truth = {rank_: {r.id: r.taxonomy.get(rank_, "") for r in records} for rank_ in ("species", "genus")}
        start = time.perf_counter()
        for fmt in ("tsv", "sintax"):
            subprocess.run([sys.executable, "-m", "barcodetool", "-q", "classify", str(fasta), "-r", args.reference,
                            "-o", str(work / f"{split}.{fmt}"), "--output-format", fmt, "--threads",
                            str(args.threads)], check=True)
        seconds = (time.perf_counter() - start) / 2
        rows = [line.split("\t") for line in (work / f"{split}.tsv").read_text().splitlines()]
        header = rows[0]
        table = {row[0]: dict(zip(header, row)) for row in rows[1:]}
        ours = {"seconds": round(seconds, 1)}
        for rank_ in ("species", "genus"):
            ours[rank_] = scores({q: row[rank_] for q, row in table.items()}, truth[rank_])
        own_sintax = read_sintax_output(work / f"{split}.sintax")
        ours["species_read_at_0.8"] = scores({q: p.named("species", 0.8) for q, p in own_sintax.items()},
                                             truth["species"])
        out = work / f"{split}.vsearch.sintax"
        start = time.perf_counter()
        subprocess.run(["vsearch", "--sintax", str(fasta), "--db", args.reference_fasta, "--tabbedout", str(out),
                        "--sintax_cutoff", "0.8", "--randseed", "1", "--threads", "1", "--quiet"], check=True)
        vsearch_seconds = time.perf_counter() - start
        theirs = read_sintax_output(out)
        result[split] = {"queries": len(records), "barcodetool": ours, "vsearch_seconds": round(vsearch_seconds, 1)}
        for cutoff in (0.8, 0.5):
            result[split][f"sintax_{cutoff}"] = {
                rank_: scores({q: p.named(rank_, cutoff) for q, p in theirs.items()}, truth[rank_])
                for rank_ in ("species", "genus")}
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
