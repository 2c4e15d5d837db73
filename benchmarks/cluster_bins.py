"""`cluster` without a reference (the bridged cut) against `vsearch --cluster_fast --id 0.97`, on BIN samples of
every phylum, dense and sparse (issue 14).

    .venv/bin/python benchmarks/cluster_bins.py ../shared/data/coi_extra.csv.gz \\
        --insects ../shared/data/bold_insects.csv.gz --bcdm ../shared/data/formats/bold_bcdm_sample.tsv \\
        --work /tmp/cluster_bins --threads 2 --markdown /tmp/cluster_bins/results.md

Samples (distinct sequences carrying a BIN; the first record of each): per phylum of DATA, the `train` and `val`
records of --insects (never its test splits) and the --bcdm sample:
- `dense`: whole BINs drawn in random order up to --dense-cap (3,000) sequences;
- `sparse 1-3` and `sparse 1-5`: of every BIN 1-3 (or 1-5) of its sequences, drawn at random, up to --sparse-cap
  (3,000): BINs as a lab meets them in a small survey, where most members of a BIN were not sampled.
Samples under --min-size (100) sequences are skipped.

Each sample is clustered by every cut of --cuts (`current`: the shipped BRIDGED_CUT; `no-lone`: the same without
the rule for two lone barcodes, as before 2026-12-07 d; `fixed-0.035`: the fixed cut of earlier versions) over one
candidate graph of 30 k-mer neighbours a sequence (`cluster.identity_neighbours` without embeddings: the choice of
cut, not of graph, is what is compared; `barcodetool cluster` adds 30 embedding neighbours) and by VSEARCH
`--cluster_fast --id 0.97`; the table gives the AMI of each against the BINs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

CUTS = ("current", "no-lone", "fixed-0.035")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def binned_groups(data: str, insects: str | None, bcdm: str | None) -> dict[str, list]:
    """group -> distinct BIN-labelled records (the first record of each sequence)."""
    from barcodetool.io import read_barcodes

    groups: dict[str, dict] = defaultdict(dict)
    sources = [(data, None)] + ([(insects, "insects (train, val)")] if insects else []) \
        + ([(bcdm, "BCDM sample")] if bcdm else [])
    for path, fixed in sources:
        for record in read_barcodes(path):
            if not record.bin or (fixed and fixed.startswith("insects") and record.split not in ("train", "val")):
                continue
            group = fixed or record.taxonomy.get("phylum") or "(no phylum)"
            groups[group].setdefault(record.sequence, record)
    return {group: list(records.values()) for group, records in groups.items()}


def samples(records: list, rng: np.random.Generator, args) -> dict[str, list]:
    by_bin = defaultdict(list)
    for record in records:
        by_bin[record.bin].append(record)
    bins = list(by_bin)
    out = {}
    dense = []
    for b in rng.permutation(len(bins)):
        members = by_bin[bins[b]]
        if len(dense) + len(members) <= args.dense_cap:
            dense += members
    out["dense"] = dense
    for most in (3, 5):
        sparse = []
        for name in bins:
            members = by_bin[name]
            keep = rng.permutation(len(members))[:int(rng.integers(1, most + 1))]
            sparse += [members[i] for i in sorted(keep)]
        if len(sparse) > args.sparse_cap:
            sparse = [sparse[i] for i in np.sort(rng.permutation(len(sparse))[:args.sparse_cap])]
        out[f"sparse 1-{most}"] = sparse
    return {name: recs for name, recs in out.items() if len(recs) >= args.min_size}


def cut_of(name: str):
    import dataclasses

    from barcodetool.cluster import BRIDGED_CUT

    if name == "current":
        return BRIDGED_CUT
    if name == "no-lone":
        return dataclasses.replace(BRIDGED_CUT, lone=0.0)
    if name.startswith("fixed-"):
        return float(name.split("-", 1)[1])
    raise SystemExit(f"unknown cut {name!r}; choose from {', '.join(CUTS)}")


def vsearch_labels(sequences: list[str], work: Path, threads: int) -> list[str]:
    from barcodetool.evaluation.external import vsearch_clusters, write_plain_fasta

    fasta = work / "sample.fasta"
    write_plain_fasta(fasta, [(f"s{i}", s) for i, s in enumerate(sequences)])
    found, _ = vsearch_clusters(fasta, 0.97, work / "sample.uc", threads)
    return [found[f"s{i}"] for i in range(len(sequences))]


def run_sample(records: list, work: Path, args) -> dict:
    from sklearn.metrics import adjusted_mutual_info_score

    from barcodetool.cluster import cluster_bridged, identity_neighbours
    from barcodetool.search import as_store, identity_graph_cluster, neighbour_pairs

    work.mkdir(parents=True, exist_ok=True)
    truth = [r.bin for r in records]
    store = as_store([r.sequence for r in records])
    graph = identity_neighbours(store, None, 30)
    pairs = neighbour_pairs(store, graph)
    result = {"n": len(records), "bins": len(set(truth)), "ami": {}, "clusters": {}}
    for name in args.cuts:
        cut = cut_of(name)
        if isinstance(cut, float):
            labels = identity_graph_cluster(store, graph, cut)
        else:
            labels = cluster_bridged(store, graph, cut, pairs=pairs)
        result["ami"][name] = adjusted_mutual_info_score(truth, labels)
        result["clusters"][name] = len(set(np.asarray(labels).tolist()))
    theirs = vsearch_labels([r.sequence for r in records], work, args.threads)
    result["ami"]["vsearch"] = adjusted_mutual_info_score(truth, theirs)
    result["clusters"]["vsearch"] = len(set(theirs))
    return result


def markdown(results: dict, cuts: list[str]) -> str:
    head = ["sample", "sequences (BINs)"] + [f"`{c}`" for c in cuts] + ["`cluster_fast 0.97`"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ahead = defaultdict(int)
    for name, r in results.items():
        vs = r["ami"]["vsearch"]
        cells = [name, f"{r['n']:,} ({r['bins']:,})"]
        for c in cuts:
            value = r["ami"][c]
            ahead[c] += value >= vs - 1e-12
            cells.append(f"{100 * value:.2f}")
        cells.append(f"{100 * vs:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    mean = {c: np.mean([r["ami"][c] - r["ami"]["vsearch"] for r in results.values()]) for c in cuts}
    lines.append("| mean AMI difference to `cluster_fast` (points) | | "
                 + " | ".join(f"{100 * mean[c]:+.2f}" for c in cuts) + " | |")
    lines.append("| samples at or above `cluster_fast` | | "
                 + " | ".join(f"{ahead[c]} of {len(results)}" for c in cuts) + " | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="coi_extra.csv.gz (grouped by phylum)")
    parser.add_argument("--insects", help="bold_insects.csv.gz: its train and val records as one more group")
    parser.add_argument("--bcdm", help="a BOLD BCDM TSV as one more group")
    parser.add_argument("--work", required=True)
    parser.add_argument("--cuts", nargs="+", default=list(CUTS))
    parser.add_argument("--dense-cap", type=int, default=3000)
    parser.add_argument("--sparse-cap", type=int, default=3000)
    parser.add_argument("--min-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    for name in args.cuts:
        cut_of(name)
    work = Path(args.work)
    rng = np.random.default_rng(args.seed)
    results = {}
    for group, records in sorted(binned_groups(args.data, args.insects, args.bcdm).items()):
        for kind, recs in samples(records, rng, args).items():
            start = time.perf_counter()
            name = f"{group}, {kind}"
            results[name] = run_sample(recs, work / f"{group}_{kind}".replace(" ", "_").replace("/", "_"), args)
            log(f"{name}: {results[name]['ami']} ({time.perf_counter() - start:.0f} s)")
    table = markdown(results, args.cuts)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
