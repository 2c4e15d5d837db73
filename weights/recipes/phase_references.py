"""Choose the reference barcodes that anchor the COI-5P region's coordinates (barcodetool/model/phase.py REFERENCES).

    .venv/bin/python weights/recipes/phase_references.py /work/shared/data > /tmp/references.txt

For each group below: among up to 250 random 658-bp A/C/G/T-only barcodes of the group (bold_insects `train`; of
coi_extra, species outside bold_insects' `test`, `test_unseen` and `key_unseen`), the one with the highest mean
anchored identity to the others plus the share of them it aligns to at offset 0 (seed 0). It then prints the
offsets between the chosen references (all 0 where anchored with more than one vote) and the REFERENCES entries.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np

GROUPS = [("Arthropoda", "Lepidoptera"), ("Arthropoda", "Diptera"), ("Arthropoda", "Coleoptera"),
          ("Arthropoda", "Hymenoptera"), ("Arthropoda", "Hemiptera"), ("Arthropoda", "Anomopoda"),
          ("Arthropoda", "Amphipoda"), ("Arthropoda", "Decapoda"), ("Annelida", "Clitellata"),
          ("Annelida", "Polychaeta"), ("Chordata", "Mammalia"), ("Chordata", "Aves"), ("Tardigrada", "Eutardigrada"),
          ("Echinodermata", "Asteroidea"), ("Mollusca", "Gastropoda"), ("Chaetognatha", "Sagittoidea"),
          ("Brachiopoda", "Rhynchonellata")]
HELD_OUT = ("test", "test_unseen", "key_unseen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    args = parser.parse_args()

    from barcodetool.io import read_barcodes
    from barcodetool.search.identity import pair_identity

    data = Path(args.data_dir)
    insects = list(read_barcodes(data / "bold_insects.csv.gz"))
    held_out = {r.taxonomy.get("species") for r in insects if r.split in HELD_OUT}
    candidates: dict[tuple, list] = {}

    def full_length(record) -> bool:
        return len(record.sequence) == 658 and set(record.sequence) <= set("ACGT")

    for r in insects:
        if r.split == "train" and full_length(r):
            candidates.setdefault(("Arthropoda", r.taxonomy.get("order")), []).append(r)
    for r in read_barcodes(data / "coi_extra.csv.gz"):
        if full_length(r) and r.taxonomy.get("species") not in held_out:
            phylum = r.taxonomy.get("phylum")
            group = r.taxonomy.get("order") if phylum == "Arthropoda" else r.taxonomy.get("class")
            candidates.setdefault((phylum, group), []).append(r)
    rng = np.random.default_rng(0)
    chosen = []
    for group in GROUPS:
        pool = candidates[group]
        sample = [pool[i] for i in rng.permutation(len(pool))[:250]]
        sequences = [r.sequence for r in sample]
        n = len(sequences)
        a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        result = pair_identity(sequences, a.ravel(), sequences, b.ravel())
        identity = result.identity.reshape(n, n)
        aligned = (result.offset.reshape(n, n) == 0) & (result.votes.reshape(n, n) >= 2)
        chosen.append((group, sample[int(np.argmax(identity.mean(1) + aligned.mean(1)))]))
    sequences = [r.sequence for _, r in chosen]
    n = len(sequences)
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    result = pair_identity(sequences, a.ravel(), sequences, b.ravel())
    misplaced = (result.offset != 0) & (result.votes >= 2)
    print(f"# references aligned at another offset than 0 (two votes or more): {int(misplaced.sum())}")
    for (phylum, group), record in chosen:
        lines = "\n".join(f'     "{line}"' for line in textwrap.wrap(record.sequence, 100))
        print(f'    ("{phylum}", "{group}", "{record.id}",\n{lines}),')


if __name__ == "__main__":
    main()
