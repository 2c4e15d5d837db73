"""Scale check of the reference search and of clustering large inputs (figures in docs/benchmarks.md).

    .venv/bin/python benchmarks/reference_scale.py all [--dims 128 768] [--threads 2]
    .venv/bin/python benchmarks/reference_scale.py search --n-ref 1000000 --n-query 10000 --dim 128
    .venv/bin/python benchmarks/reference_scale.py cluster --n 100000 --dim 128

`search`: exact blocked cosine k-NN (barcodetool.search.knn_search) of n-query random unit vectors against a
synthetic reference of n-ref unit vectors (float32, or float16 with --float16). `cluster`: the k-NN-graph path of
barcodetool.cluster.cluster on n points drawn around many centres (BIN-like groups of 1-60 members).
Each measurement reports wall time and peak resident memory (ru_maxrss) of its own process; `all` runs each case
in a fresh subprocess so peaks do not mix. The memory of the data itself is reported separately (`data_mib`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def unit_rows(rng, n: int, dim: int, dtype=np.float32, block: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=dtype)
    for start in range(0, n, block):
        x = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + len(x)] = x
    return out


def run_search(args) -> dict:
    import torch

    from barcodetool.search import knn_search

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    reference = unit_rows(rng, args.n_ref, args.dim, np.float16 if args.float16 else np.float32)
    queries = unit_rows(rng, args.n_query, args.dim)
    before = peak_mib()
    start = time.perf_counter()
    sims, idx = knn_search(queries, reference, args.k)
    seconds = time.perf_counter() - start
    peak = peak_mib()
    # spot check of the first query against brute force, a block at a time
    best = max((float(s), r0 + int(np.argmax(block))) for r0 in range(0, args.n_ref, 100_000)
               for block in [np.asarray(reference[r0:r0 + 100_000], dtype=np.float32) @ queries[0]]
               for s in [block.max()])
    assert best[1] == idx[0, 0], (best, idx[0, :3])
    return {"case": "search", "n_ref": args.n_ref, "n_query": args.n_query, "dim": args.dim, "k": args.k,
            "dtype": "float16" if args.float16 else "float32", "threads": args.threads,
            "seconds": round(seconds, 2), "queries_per_s": round(args.n_query / seconds, 1),
            "data_mib": round((reference.nbytes + queries.nbytes) / 2**20, 1),
            "peak_mib_before_search": round(before, 1), "peak_mib": round(peak, 1)}


def run_cluster(args) -> dict:
    import torch

    from barcodetool.cluster import cluster, cluster_metrics

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    sizes = []
    while sum(sizes) < args.n:
        sizes.append(int(min(60, rng.geometric(0.15))))
    sizes[-1] -= sum(sizes) - args.n
    centres = unit_rows(rng, len(sizes), args.dim)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[labels] + args.spread * rng.standard_normal((args.n, args.dim), dtype=np.float32) / np.sqrt(
        args.dim)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    before = peak_mib()
    start = time.perf_counter()
    predicted = cluster(points, threshold=args.threshold, neighbours=args.neighbours)
    seconds = time.perf_counter() - start
    metrics = cluster_metrics(labels, predicted)
    return {"case": "cluster", "n": args.n, "dim": args.dim, "groups": len(sizes), "threshold": args.threshold,
            "neighbours": args.neighbours, "threads": args.threads, "seconds": round(seconds, 2),
            "clusters": metrics["clusters"], "ami": round(metrics["ami"], 4),
            "data_mib": round(points.nbytes / 2**20, 1), "peak_mib_before": round(before, 1),
            "peak_mib": round(peak_mib(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["search", "cluster", "all"])
    parser.add_argument("--n-ref", type=int, default=1_000_000)
    parser.add_argument("--n-query", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 768], help="for `all`")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--float16", action="store_true")
    parser.add_argument("--n", type=int, default=100_000, help="points to cluster")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--spread", type=float, default=0.1)
    parser.add_argument("--neighbours", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.case == "search":
        print(json.dumps(run_search(args)))
    elif args.case == "cluster":
        print(json.dumps(run_cluster(args)))
    else:
        cases = [["search", "--dim", str(d)] for d in args.dims]
        cases.append(["search", "--dim", str(args.dims[-1]), "--float16"])
        cases.append(["cluster", "--dim", "128"])
        for case in cases:
            command = [sys.executable, __file__, *case, "--threads", str(args.threads), "--n-ref",
                       str(args.n_ref), "--n-query", str(args.n_query), "--n", str(args.n)]
            done = subprocess.run(command, capture_output=True, text=True)
            print(done.stdout.strip() or done.stderr.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
