"""`cluster --method cosine` without a reference: BIN AMI of each model's space at its card's cut, per data set.

    .venv/bin/python benchmarks/cosine_clusters.py ../shared/data/bold_insects.csv.gz \\
        --extra ../shared/data/coi_extra.csv.gz --models barcodemae-nano barcodemae-nano-identity --threads 2

Sets: the distinct BIN-labelled `val` barcodes of the split file (never seen by the bundled models' training) and,
with --extra, up to --cap distinct BIN-labelled barcodes of each phylum of that table (in the training corpus of
`barcodemae-nano-identity`, whose identity teacher needs no labels: read them as fit, not transfer). Each model
clusters each set as `barcodetool cluster --method cosine` does without a reference (its card's
`metrics.cluster_distance_threshold`), and the default identity method (the bridged cut) is shown beside them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

from sklearn.metrics import adjusted_mutual_info_score

from barcodetool.cluster import ClusterOptions, cluster_records, default_threshold
from barcodetool.io import read_barcodes
from barcodetool.model.runtime import set_threads
from barcodetool.model.weights import load_model


def distinct_binned(path: str, key, cap: int | None) -> dict[str, list]:
    """set name (key(record), None = skipped) -> the first record of each distinct BIN-labelled sequence."""
    sets: dict[str, dict[str, object]] = defaultdict(dict)
    for record in read_barcodes(path):
        name = key(record)
        if name is None or not record.bin or record.sequence in sets[name]:
            continue
        if cap is None or len(sets[name]) < cap:
            sets[name][record.sequence] = record
    return {name: list(by_sequence.values()) for name, by_sequence in sets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_file", help="a BIOSCAN-5M-style table with a split column (its `val` is scored)")
    parser.add_argument("--extra", help="a table whose phyla are scored as sets too (coi_extra)")
    parser.add_argument("--models", nargs="+", default=["barcodemae-nano", "barcodemae-nano-identity"])
    parser.add_argument("--cap", type=int, default=3000, help="distinct barcodes per phylum of --extra")
    parser.add_argument("--min-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    sets = distinct_binned(args.split_file, lambda r: "val" if r.split == "val" else None, None)
    if args.extra:
        sets.update(distinct_binned(args.extra, lambda r: r.taxonomy.get("phylum") or "(no phylum)", args.cap))
    sets = {name: records for name, records in sets.items() if len(records) >= args.min_size}
    columns = [(name, load_model(name)) for name in args.models]
    header = (["set", "distinct barcodes (BINs)", "identity (default method)"]
              + [f"cosine, {name} (cut {default_threshold(model):g})" for name, model in columns])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    started = time.perf_counter()
    for name, records in sets.items():
        truth = [r.bin for r in records]
        cells = [name, f"{len(records):,} ({len(set(truth)):,})"]
        identity = cluster_records(records, columns[0][1], ClusterOptions(method="identity"))
        cells.append(f"{100 * adjusted_mutual_info_score(truth, identity.clusters):.2f}%")
        for _, model in columns:
            result = cluster_records(records, model, ClusterOptions(method="cosine",
                                                                    threshold=default_threshold(model)))
            cells.append(f"{100 * adjusted_mutual_info_score(truth, result.clusters):.2f}%")
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
