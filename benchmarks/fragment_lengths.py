"""How the default `classify` fares on fragments of barcodes: `val` barcodes cut to windows of given lengths.

    .venv/bin/python benchmarks/fragment_lengths.py ../shared/data/bold_insects.csv.gz --reference train.h5 \\
        [--lengths 25 40 60 80 100 130 160 200 313 658] [--queries 1500] [--seed 7] [--threads 2]

`train.h5`: the unique `train` barcodes of the split file built by `barcodetool reference build`. The first
--queries distinct `val` barcodes of at least 600 bases (species known; a seeded shuffle) are each cut to one
window of every length, at a random start, and classified by `barcodetool classify` with its defaults. Printed
per length and rank (order, genus, species): the top hit's label right (nearest_id, whatever the confidence),
the share named and the precision of the named. Fragments whose window is all N are dropped (the same ones at
every length). Chosen on `val`, never on the test splits.
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from barcodetool.evaluation.protocol import unique_by_split
from barcodetool.io import read_barcodes

RANKS = ("order", "genus", "species")


def windows(sequences: list[str], length: int, rng: random.Random) -> list[str]:
    out = []
    for sequence in sequences:
        start = rng.randrange(0, len(sequence) - length + 1) if length < len(sequence) else 0
        out.append(sequence[start:start + length])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_file")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[25, 40, 60, 80, 100, 130, 160, 200, 313, 658])
    parser.add_argument("--queries", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    val = [r for r in unique_by_split(read_barcodes(args.split_file), ["val"])["val"]
           if len(r.sequence) >= 600 and r.taxonomy.get("species")]
    rng = random.Random(args.seed)
    rng.shuffle(val)
    val = val[:args.queries]
    cut = {length: windows([r.sequence for r in val], length, rng) for length in args.lengths}
    usable = [i for i in range(len(val)) if all(cut[length][i].strip("Nn") for length in args.lengths)]
    print(f"{len(usable)} `val` barcodes, {len(val) - len(usable)} dropped (a window all N)", file=sys.stderr)
    print("| length | " + " | ".join(f"{rank}: top hit / named (precision)" for rank in RANKS) + " |")
    print("| --- |" + " --- |" * len(RANKS))
    with tempfile.TemporaryDirectory() as work:
        for length in args.lengths:
            fasta, out = Path(work) / f"f{length}.fasta", Path(work) / f"o{length}.tsv"
            fasta.write_text("".join(f">{val[i].id}\n{cut[length][i]}\n" for i in usable))
            subprocess.run([sys.executable, "-m", "barcodetool", "-q", "classify", str(fasta), "-r", args.reference,
                            "-o", str(out), "--threads", str(args.threads)], check=True)
            truth = {val[i].id: val[i].taxonomy for i in usable}
            rows = list(csv.DictReader(open(out), delimiter="\t"))
            ref_labels = nearest_labels(args.reference, {row["nearest_id"] for row in rows})
            cells = []
            for rank in RANKS:
                top = sum(ref_labels.get(row["nearest_id"], {}).get(rank) == truth[row["id"]].get(rank)
                          for row in rows)
                named = [row for row in rows if row[rank]]
                right = sum(row[rank] == truth[row["id"]].get(rank) for row in named)
                precision = f"{100 * right / len(named):.1f}%" if named else "-"
                cells.append(f"{100 * top / len(rows):.1f}% / {100 * len(named) / len(rows):.1f}% ({precision})")
            print(f"| {length} | " + " | ".join(cells) + " |", flush=True)


def nearest_labels(reference: str, ids: set[str]) -> dict[str, dict[str, str]]:
    """id -> taxonomy of the reference records named (from the index)."""
    from barcodetool.reference import ReferenceIndex

    index = ReferenceIndex.load(reference)
    out = {}
    for row, record_id in enumerate(index.ids):
        if record_id in ids:
            out[record_id] = {rank: (index.label_names[rank][index.codes[rank][row]]
                                     if rank in index.codes and index.codes[rank][row] >= 0 else "")
                              for rank in RANKS}
    return out


if __name__ == "__main__":
    main()
