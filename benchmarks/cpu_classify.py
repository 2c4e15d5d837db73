"""CPU classification speed and accuracy, side by side with VSEARCH, on the unique test / test_unseen barcodes.

    .venv/bin/python benchmarks/cpu_classify.py /work/shared/data/bold_insects.csv.gz --threads 2 \
        --workdir /tmp/cpu_classify [--index ref.h5] [--repeats 3] [--json out.json]

In one invocation, on the same machine and thread count:

1. writes the unique `train` barcodes (reference, with taxonomy and BIN) as a CSV and the unique `test` and
   `test_unseen` barcodes as FASTA (the benchmark's splits: each cleaned sequence once per split);
2. builds the reference index once with the real CLI (`barcodetool reference build`, timed: embedding,
   k-mer index, calibration), unless `--index` gives a prebuilt one;
3. runs VSEARCH `--usearch_global` top hit (`--threads T`) on each query file, and `barcodetool classify` as a
   subprocess of the real CLI for each variant (default identity: embedding candidates below 0.95, `--compute
   auto`, i.e. the model's encoder.onnx in ONNX Runtime where it has one; every query embedded, `--embed-below
   inf`; the default in PyTorch, `--compute bfloat16`; `--kmer-only`; `--method knn`) on each query file, all of
   them in turn, `--repeats` times: the median
   whole-process wall time (start-up, reading, embedding, search, writing), the median of the run-by-run speed
   ratios to VSEARCH, and the peak RSS;
5. scores species accuracy on `test` and genus accuracy on `test_unseen`, both for the classifier's output
   (an empty rank counts as wrong) and for the reported nearest reference (`nearest_id`, the top hit, as
   VSEARCH's), and prints a Markdown table with the exact commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RANKS = ("phylum", "class", "order", "family", "subfamily", "genus", "species")
VARIANTS = (("default (identity, embedding below 0.95, --compute auto)", []),
            ("identity, every query embedded (--embed-below inf)", ["--embed-below", "inf"]),
            ("default in PyTorch (--compute bfloat16)", ["--compute", "bfloat16"]),
            ("identity, --kmer-only", ["--kmer-only"]),
            ("embedding k-NN vote (--method knn)", ["--method", "knn"]))


def run_timed(command: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one child process; raises on failure."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr[-2000:]}")
    return seconds, int(usage.ru_maxrss // 1024)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/cpu_classify")
    parser.add_argument("--index", help="a prebuilt index of the unique train barcodes (skips the build)")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--splits", default="test,test_unseen")
    parser.add_argument("--variants", default="all", help="comma-separated variant numbers (1-5) or all")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (median reported)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()

    from barcodetool.evaluation.protocol import unique_by_split
    from barcodetool.io import read_barcodes

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    cli = [sys.executable, "-m", "barcodetool", "-q"]
    splits = args.splits.split(",")
    data = unique_by_split(read_barcodes(args.split_file, skip_empty=True), ["train"] + splits)
    train = data["train"]
    result: dict = {"split_file": args.split_file, "threads": args.threads, "machine": platform.processor()
                    or platform.machine(), "cpus": os.cpu_count(), "unique": {s: len(v) for s, v in data.items()},
                    "runs": []}

    # ------------------------------------------------------------------ inputs
    reference_csv = work / "train_unique.csv"
    with open(reference_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["processid", *RANKS, "dna_bin", "dna_barcode", "split"])
        for r in train:
            writer.writerow([r.id, *(r.taxonomy.get(rank, "") for rank in RANKS), r.bin or "", r.sequence, "train"])
    reference_fasta = work / "train_unique.fasta"
    with open(reference_fasta, "w", encoding="utf-8") as handle:
        handle.writelines(f">R{i}\n{r.sequence}\n" for i, r in enumerate(train))
    queries = {}
    for split in splits:
        path = work / f"{split}_unique.fasta"
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(f">{r.id}\n{r.sequence}\n" for r in data[split])
        queries[split] = path
    lineage = {r.id: r.taxonomy for r in train}
    truth = {split: {r.id: r.taxonomy for r in data[split]} for split in splits}
    rank_of = {"test": "species", "test_unseen": "genus"}

    # ------------------------------------------------------------------ index
    index = Path(args.index) if args.index else work / "train_unique.h5"
    build = ["barcodetool", "reference", "build", str(reference_csv), "-o", str(index), "--threads",
             str(args.threads), "--model", args.model]
    if not args.index:
        print(f"building the index: {' '.join(build)}", file=sys.stderr, flush=True)
        load = load_average()
        seconds, rss = run_timed(cli + build[1:], env)
        result["index_build"] = {"command": " ".join(build), "seconds": seconds, "peak_rss_mib": rss,
                                 "load_average": load, "size_mib": index.stat().st_size / 2 ** 20}
        print(f"  {seconds:.1f} s, peak RSS {rss} MiB", file=sys.stderr, flush=True)

    def score(split: str, predicted: dict, top: dict) -> dict:
        rank = rank_of.get(split, "species")
        ids = [r.id for r in data[split]]
        right = sum(1 for i in ids if truth[split][i].get(rank) and predicted.get(i, "") == truth[split][i][rank])
        right_top = sum(1 for i in ids if truth[split][i].get(rank) and top.get(i, "") == truth[split][i][rank])
        labelled = sum(1 for i in ids if truth[split][i].get(rank))
        assigned = sum(1 for i in ids if truth[split][i].get(rank) and predicted.get(i, ""))
        return {"rank": rank, "accuracy": right / labelled, "top_hit_accuracy": right_top / labelled,
                "assigned": assigned / labelled}

    # ------------------------------------------------------------------ the runs, interleaved
    # Every command runs `--repeats` times, in turn (VSEARCH, variant 1, variant 2, ..., then again), so that a
    # drift in the machine's speed hits all of them alike; the median wall time is reported.
    jobs = []
    if shutil.which("vsearch"):
        for split in splits:
            out = work / f"{split}.vsearch.b6"
            command = ["vsearch", "--usearch_global", str(queries[split]), "--db", str(reference_fasta), "--id",
                       "0.5", "--maxaccepts", "1", "--maxrejects", "32", "--top_hits_only", "--blast6out",
                       str(out), "--threads", str(args.threads), "--quiet"]
            jobs.append({"tool": "vsearch", "variant": "VSEARCH --usearch_global top hit", "split": split,
                         "argv": command, "out": out, "command": " ".join(command)})
    chosen = range(len(VARIANTS)) if args.variants == "all" else [int(v) - 1 for v in args.variants.split(",")]
    for number in chosen:
        name, extra = VARIANTS[number]
        for split in splits:
            out = work / f"{split}.{number + 1}.tsv"
            command = ["barcodetool", "classify", str(queries[split]), "-r", str(index), "-o", str(out),
                       "--threads", str(args.threads), "--model", args.model, *extra]
            jobs.append({"tool": "barcodetool", "variant": name, "split": split, "argv": cli + command[1:],
                         "out": out, "command": " ".join(["barcodetool", "-q"] + command[1:])})
    for job in jobs:
        job.update(seconds=[], rss=[], load=[])
    for repeat in range(args.repeats):
        for job in jobs:
            job["load"].append(load_average())
            seconds, rss = run_timed(job["argv"], env)
            job["seconds"].append(seconds)
            job["rss"].append(rss)
            print(f"  run {repeat + 1}/{args.repeats} {job['variant']} {job['split']}: {seconds:.1f} s",
                  file=sys.stderr, flush=True)

    vsearch_rate = {}
    for job in jobs:
        split = job["split"]
        rank = rank_of.get(split, "species")
        seconds = float(np.median(job["seconds"]))
        if job["tool"] == "vsearch":
            hits = {}
            for line in open(job["out"], encoding="utf-8"):
                fields = line.split("\t")
                hits.setdefault(fields[0], int(fields[1][1:]))
            predicted = top = {q: train[j].taxonomy.get(rank, "") for q, j in hits.items()}
        else:
            predicted, top = {}, {}
            with open(job["out"], encoding="utf-8") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    predicted[row["id"]] = row[rank]
                    top[row["id"]] = lineage.get(row["nearest_id"], {}).get(rank, "")
            assert len(predicted) == len(data[split]), "one row per query"
        run = {"tool": job["tool"], "variant": job["variant"], "split": split,
               "command": job["command"].replace(str(work) + "/", ""), "seconds": seconds,
               "seconds_all": [round(x, 2) for x in job["seconds"]], "queries": len(data[split]),
               "queries_per_s": len(data[split]) / seconds, "peak_rss_mib": max(job["rss"]),
               "load_average": float(np.median(job["load"])), **score(split, predicted, top)}
        if job["tool"] == "vsearch":
            vsearch_rate[split] = run["queries_per_s"]
        else:
            pairs = [v["seconds"] for v in jobs if v["tool"] == "vsearch" and v["split"] == split]
            # ratio of speeds run by run (same repeat = same moment), then the median
            run["vs_vsearch"] = (float(np.median([vs / own for vs, own in zip(pairs[0], job["seconds"])]))
                                 if pairs else None)
        result["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ table
    print("| method | split | queries | median wall s | queries/s | vs VSEARCH | accuracy (output) | assigned | "
          "top-hit accuracy | peak RSS MiB | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in result["runs"]:
        ratio = f"{run['vs_vsearch']:.2f}x" if run.get("vs_vsearch") else ("1x" if run["tool"] == "vsearch" else "")
        output = f"{100 * run['accuracy']:.2f}% {run['rank']}" if run["tool"] != "vsearch" else ""
        assigned = f"{100 * run['assigned']:.1f}%" if run["tool"] != "vsearch" else ""
        print(f"| {run['variant']} | {run['split']} | {run['queries']:,} | {run['seconds']:.1f} | "
              f"{run['queries_per_s']:.1f} | {ratio} | {output} | {assigned} | "
              f"{100 * run['top_hit_accuracy']:.2f}% {run['rank']} | {run['peak_rss_mib']} | "
              f"{run['load_average']:.1f} |")
    if "index_build" in result:
        b = result["index_build"]
        print(f"\nindex build: `{b['command']}`: {b['seconds']:.0f} s, peak RSS {b['peak_rss_mib']} MiB, "
              f"{b['size_mib']:.0f} MiB file")
    print("\ncommands:")
    for run in result["runs"]:
        print(f"    {run['command']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
