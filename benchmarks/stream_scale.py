"""Streaming check: `barcodetool embed` and `barcodetool classify` on N mutated barcodes, peak memory vs N.

    .venv/bin/python benchmarks/stream_scale.py --n 20000 100000 [--model barcodemae-fast] [--threads 2]
    nohup .venv/bin/python benchmarks/stream_scale.py --n 1000000 --workdir /tmp/scale > scale.log 2>&1 &

For each N the script

1. writes N query barcodes as a gzip FASTA, streamed to disk (never held in memory): each is a barcode of
   tests/data/bioscan_sample.csv, drawn at random, with 1-3% of its positions substituted at random, under a
   random id (`q<number>_<8 hex digits>`);
2. builds a reference index once (`barcodetool reference build`) from the sample's `train` rows;
3. runs `barcodetool embed` and `barcodetool classify` (against that index) under `/usr/bin/time -v`, each as its
   own process, and reads the wall time and "Maximum resident set size" from time's report;
4. checks that the outputs hold one row per query (HDF5 `count`, TSV rows).

Results are printed as JSON lines and as a Markdown table at the end (also written to <workdir>/results.jsonl).
The peak resident memory of `classify` includes the reference index (small here: 150-odd barcodes), which the
target in docs/benchmarks.md excludes. Figures are recorded in docs/benchmarks.md, "Streaming and memory".
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "bioscan_sample.csv"
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def sample_sequences() -> tuple[list[str], list]:
    """(all cleaned sequences of the sample, its train records)."""
    from barcodetool.io import read_barcodes

    records = list(read_barcodes(SAMPLE))
    return [r.sequence for r in records], [r for r in records if r.split == "train"]


def write_queries(path: Path, n: int, sequences: list[str], seed: int, block: int = 10_000) -> None:
    """N mutated barcodes as gzip FASTA, written block by block (memory does not depend on N)."""
    rng = np.random.default_rng(seed)
    encoded = [np.frombuffer(s.encode("ascii"), dtype=np.uint8) for s in sequences]
    with gzip.open(path, "wt", compresslevel=1, encoding="ascii") as out:
        for start in range(0, n, block):
            count = min(block, n - start)
            picks = rng.integers(0, len(encoded), count)
            rates = rng.uniform(0.01, 0.03, count)
            tags = rng.integers(0, 2**32, count)
            lines = []
            for i in range(count):
                seq = encoded[picks[i]].copy()
                where = np.nonzero(rng.random(len(seq)) < rates[i])[0]
                seq[where] = BASES[rng.integers(0, 4, len(where))]
                lines.append(f">q{start + i}_{tags[i]:08x}\n{seq.tobytes().decode('ascii')}\n")
            out.write("".join(lines))


def write_reference_table(path: Path, train) -> None:
    """The sample's train rows as a BIOSCAN-style CSV (processid, ranks, dna_bin, dna_barcode)."""
    import csv

    from barcodetool.taxonomy import RANKS

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["processid", *RANKS, "dna_bin", "dna_barcode"])
        for r in train:
            writer.writerow([r.id, *(r.taxonomy.get(rank, "") for rank in RANKS), r.bin or "", r.sequence])


def timed(command: list[str], env: dict) -> dict:
    """Run under /usr/bin/time -v; wall seconds and peak RSS (MiB) of the command."""
    report = tempfile.NamedTemporaryFile(prefix="time-", suffix=".txt", delete=False)
    report.close()
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *command], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    text = Path(report.name).read_text()
    os.unlink(report.name)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(rss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20_000, 100_000], help="Query counts.")
    parser.add_argument("--model", default="barcodemae-fast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--commands", default="embed,classify", help="Comma list of embed, classify.")
    parser.add_argument("--workdir", type=Path, help="Folder for inputs and outputs (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the generated inputs and outputs.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="stream-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), CUDA_VISIBLE_DEVICES="",
               XDG_CACHE_HOME=str(work / "cache"))
    cli = [sys.executable, "-m", "barcodetool", "-q"]
    common = ["--model", args.model, "--device", "cpu", "--threads", str(args.threads)]
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"

    sequences, train = sample_sequences()
    reference = work / "reference.h5"
    if "classify" in commands and not reference.exists():
        table = work / "train.csv"
        write_reference_table(table, train)
        built = timed(cli + ["reference", "build", str(table), "-o", str(reference), *common], env)
        print(json.dumps({"step": "reference build", "n": len(train), **built}), flush=True)

    results = []
    for n in args.n:
        queries = work / f"queries_{n}.fasta.gz"
        if not queries.exists():
            start = time.perf_counter()
            write_queries(queries, n, sequences, args.seed + n)
            print(json.dumps({"step": "generate", "n": n, "seconds": round(time.perf_counter() - start, 1),
                              "bytes": queries.stat().st_size}), flush=True)
        for command in commands:
            if command == "embed":
                output = work / f"embed_{n}.h5"
                argv = cli + ["embed", str(queries), "-o", str(output), *common]
            else:
                output = work / f"classify_{n}.tsv"
                argv = cli + ["classify", str(queries), "-r", str(reference), "-o", str(output), *common]
            figures = timed(argv, env)
            if command == "embed":
                import h5py

                with h5py.File(output, "r") as handle:
                    rows = int(handle.attrs["count"])
            else:
                with open(output, encoding="utf-8") as handle:
                    rows = sum(1 for _ in handle) - 1
            assert rows == n, (command, rows, n)
            result = {"command": command, "n": n, "model": args.model, "threads": args.threads,
                      "machine": machine, **figures, "per_s": round(n / figures["wall_s"], 1),
                      "argv": " ".join(argv[1:])}
            results.append(result)
            print(json.dumps(result), flush=True)
            with open(work / "results.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(result) + "\n")
            if not args.keep:
                output.unlink()
        if not args.keep:
            queries.unlink()

    print("\n| command | N | wall | barcodes/s | peak RSS |\n| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['command']} | {r['n']:,} | {r['wall_s']:,.0f} s | {r['per_s']:,.0f} | "
              f"{r['peak_rss_mib']:,.0f} MiB |")


if __name__ == "__main__":
    main()
