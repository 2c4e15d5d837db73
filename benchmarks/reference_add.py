"""Adding records to a built index (`barcodetool reference add`) against rebuilding it, on real barcodes.

    .venv/bin/python benchmarks/reference_add.py [/tmp/dec/big/ref123k.fasta] --threads 1 \
        [--hold-out 10000] [--limit N] [--queries test_unseen.fasta] [--workdir DIR] [--json out.json]

In one invocation, on the same machine and thread count, each step a process of the real CLI, timed (whole-process
wall time and peak RSS):

1. holds out `--hold-out` random records of the reference FASTA (SINTAX headers; `--limit` first draws that many
   records at random, for a quick run) and writes the others (the base), the held-out ones, and all of them (base
   first, then the held-out ones: the order in which `reference add` appends them), each in input order;
2. builds the base index (`reference build`), adds the held-out records to it (`reference add`), and builds the
   index of all records from scratch (`reference build`, the rebuild the addition replaces);
3. checks that the added and the rebuilt index hold the same ids, sequence groups, labels, identity layer and k-mer
   index, and embeddings (largest difference printed);
4. classifies the queries (`--queries`, default `/tmp/dec/sintax/test_unseen.fasta` where it exists, else the
   held-out records) with the added index, with the rebuilt one under the added one's calibration (its thresholds,
   confidence model and stored leave-out searches copied in), which must give identical output, and with the
   rebuilt one under its own calibration (how many rows a fresh calibration changes);
5. prints a Markdown table (and with `--json` writes the figures). Target: the addition takes under a tenth of the
   rebuild.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from barcodetool.io import read_barcodes

DEFAULT_FASTA = Path("/tmp/dec/big/ref123k.fasta")
DEFAULT_QUERIES = Path("/tmp/dec/sintax/test_unseen.fasta")
DEFAULT_TRUTH = Path("/work/shared/data/bold_insects.csv.gz")   # the labels of those queries (split test_unseen)


def read_fasta(path: Path) -> list[tuple[str, str]]:
    """(header line, sequence) of every record, as written (the CLI reads and cleans them)."""
    records, header, lines = [], None, []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith(">"):
                if header is not None:
                    records.append((header, "".join(lines)))
                header, lines = line, []
            elif line:
                lines.append(line.strip())
    if header is not None:
        records.append((header, "".join(lines)))
    return records


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for header, sequence in records:
            handle.write(f"{header}\n{sequence}\n")
    return path


def run_timed(command: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of one child process (its log kept in `log`); raises on failure."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return {"seconds": round(seconds, 2), "peak_mib": int(usage.ru_maxrss // 1024),
            "command": " ".join(command[2:] if command[1:2] == ["-m"] else command)}


def decoded(index, name: str) -> list[str]:
    names = index.label_names[name]
    return [names[c] if c >= 0 else "" for c in index.codes[name].tolist()]


def compare_indexes(added_path: Path, rebuilt_path: Path) -> dict:
    """What differs between the added and the rebuilt index (empty lists: nothing)."""
    from barcodetool.reference import ReferenceIndex

    added, rebuilt = ReferenceIndex.load(added_path), ReferenceIndex.load(rebuilt_path)
    differ = []
    if added.ids != rebuilt.ids:
        differ.append("ids")
    if not np.array_equal(added.groups, rebuilt.groups):
        differ.append("sequence groups")
    if set(added.codes) != set(rebuilt.codes) or any(decoded(added, n) != decoded(rebuilt, n) for n in rebuilt.codes):
        differ.append("labels")
    a, b = added.identity, rebuilt.identity
    for name in ("kmers", "df", "refs"):
        if not np.array_equal(getattr(a.kmer, name), getattr(b.kmer, name)):
            differ.append(f"k-mer {name}")
    if not (np.array_equal(a.group_record, b.group_record) and np.array_equal(a.store.packed, b.store.packed)):
        differ.append("identity layer")
    largest = float(np.abs(np.asarray(added.embeddings, np.float32) - np.asarray(rebuilt.embeddings, np.float32)).max())
    return {"differ": differ, "embedding_max_difference": largest, "records": len(added),
            "distinct": len(a), "postings": len(a.kmer.refs)}


def with_calibration_of(rebuilt_path: Path, added_path: Path, out: Path) -> Path:
    """The rebuilt index with the added one's calibration (thresholds, confidence model, leave-out searches)."""
    from barcodetool.reference import ReferenceIndex

    rebuilt, added = ReferenceIndex.load(rebuilt_path), ReferenceIndex.load(added_path)
    rebuilt.thresholds, rebuilt.identity_thresholds = added.thresholds, added.identity_thresholds
    rebuilt.calibration, rebuilt.identity_calibration = added.calibration, added.identity_calibration
    return rebuilt.save(out)


def differing_rows(a: Path, b: Path) -> int:
    left, right = a.read_text(encoding="utf-8").splitlines(), b.read_text(encoding="utf-8").splitlines()
    return sum(x != y for x, y in zip(left, right)) + abs(len(left) - len(right))


def label_rows_differing(a: Path, b: Path) -> int:
    """Rows of two classify TSVs that differ in a label, the rank or the nearest reference (not a confidence)."""
    left, right = (path.read_text(encoding="utf-8").splitlines() for path in (a, b))
    header = left[0].split("\t")
    keep = [i for i, name in enumerate(header) if not name.endswith("_confidence")]
    return sum([x.split("\t")[i] for i in keep] != [y.split("\t")[i] for i in keep]
               for x, y in zip(left[1:], right[1:]))


def scores(tsv: Path, truth: dict[str, dict[str, str]]) -> dict[str, tuple[float, float]]:
    """Per rank (family, genus, species): (share of the queries with a true label that are named, precision of
    those named), against the queries' own SINTAX labels."""
    lines = tsv.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    out = {}
    for rank in ("family", "genus", "species"):
        column = header.index(rank)
        known = named = right = 0
        for line in lines[1:]:
            fields = line.split("\t")
            true = truth.get(fields[0], {}).get(rank)
            if not true:
                continue
            known += 1
            if fields[column]:
                named += 1
                right += fields[column] == true
        out[rank] = (named / max(known, 1), right / max(named, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fasta", nargs="?", type=Path, default=DEFAULT_FASTA,
                        help=f"reference FASTA with SINTAX headers (default {DEFAULT_FASTA})")
    parser.add_argument("--hold-out", type=int, default=10_000, help="records added to the base index")
    parser.add_argument("--limit", type=int, default=0, help="use this many random records (0 = all)")
    parser.add_argument("--queries", type=Path, default=None,
                        help=f"queries to classify (default {DEFAULT_QUERIES} if present, else the held-out records)")
    parser.add_argument("--truth", type=Path, default=None,
                        help="a table or FASTA giving the queries' true labels, to score the calls (default: the "
                             f"queries' own labels, or {DEFAULT_TRUTH} where they have none and it exists)")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compute", default="float32",
                        help="inference arithmetic of every step (default float32: under bfloat16 an embedding "
                             "depends on the batch it is computed in, so an added and a rebuilt index differ at the "
                             "1e-3 level, as two builds of the same records in another order do)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if not args.fasta.is_file():
        parser.error(f"{args.fasta} not found: give a reference FASTA")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reference_add."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    records = read_fasta(args.fasta)
    rng = random.Random(args.seed)
    if args.limit and args.limit < len(records):
        records = [records[i] for i in sorted(rng.sample(range(len(records)), args.limit))]
    if not 0 < args.hold_out < len(records):
        raise SystemExit(f"--hold-out must be between 1 and {len(records) - 1}")
    held = set(rng.sample(range(len(records)), args.hold_out))
    base = [r for i, r in enumerate(records) if i not in held]
    added = [r for i, r in enumerate(records) if i in held]
    files = {"base": write_fasta(work / "base.fasta", base), "added": write_fasta(work / "added.fasta", added),
             "all": write_fasta(work / "all.fasta", base + added)}
    queries = args.queries or (DEFAULT_QUERIES if DEFAULT_QUERIES.is_file() else files["added"])
    cli = [sys.executable, "-m", "barcodetool"]
    common = ["--threads", str(args.threads), "--model", args.model, "--compute", args.compute]
    steps = {}
    steps["build base"] = run_timed(cli + ["reference", "build", str(files["base"]), "-o", str(work / "base.h5")]
                                    + common, work / "build_base.log")
    steps["add"] = run_timed(cli + ["reference", "add", str(work / "base.h5"), str(files["added"]), "-o",
                                    str(work / "added.h5")] + common, work / "add.log")
    steps["rebuild all"] = run_timed(cli + ["reference", "build", str(files["all"]), "-o", str(work / "rebuilt.h5")]
                                     + common, work / "rebuild.log")
    same = compare_indexes(work / "added.h5", work / "rebuilt.h5")
    with_calibration_of(work / "rebuilt.h5", work / "added.h5", work / "rebuilt_same.h5")
    outputs = {}
    for name, index in (("added", "added.h5"), ("rebuilt, added's calibration", "rebuilt_same.h5"),
                        ("rebuilt, own calibration", "rebuilt.h5")):
        outputs[name] = work / f"{Path(index).stem}.tsv"
        steps[f"classify with {name}"] = run_timed(
            cli + ["classify", str(queries), "-r", str(work / index), "-o", str(outputs[name])] + common,
            work / f"classify_{Path(index).stem}.log")
    n_queries = len(outputs["added"].read_text(encoding="utf-8").splitlines()) - 1
    calibration = [line for line in (work / "add.log").read_text(encoding="utf-8").splitlines()
                   if "calibrat" in line and "distinct sequences" in line]
    result = {
        "fasta": str(args.fasta), "records": len(records), "base": len(base), "added": len(added),
        "threads": args.threads, "model": args.model, "compute": args.compute, "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "steps": steps, "add_over_rebuild": round(steps["add"]["seconds"] / steps["rebuild all"]["seconds"], 4),
        "index": same, "queries": str(queries), "n_queries": n_queries,
        "rows_differing_same_calibration": differing_rows(outputs["added"], outputs["rebuilt, added's calibration"]),
        "rows_differing_own_calibration": differing_rows(outputs["added"], outputs["rebuilt, own calibration"]),
        "label_rows_differing_own_calibration": label_rows_differing(outputs["added"],
                                                                     outputs["rebuilt, own calibration"]),
        "calibration_log": calibration[-1].split("barcodetool: ")[-1] if calibration else "",
    }
    print(f"| step ({result['base']:,} + {result['added']:,} records, --threads {args.threads}) | wall | peak RSS |")
    print("| --- | ---: | ---: |")
    for name, step in steps.items():
        print(f"| {name} (`{step['command']}`) | {step['seconds']:.1f} s | {step['peak_mib']:,} MiB |")
    print()
    print(f"- add / rebuild: **{result['add_over_rebuild']:.3f}** (target < 0.1: "
          f"{'met' if result['add_over_rebuild'] < 0.1 else 'not met'})")
    verdict = "identical" if not same["differ"] else "DIFFERENT: " + ", ".join(same["differ"])
    print(f"- added vs rebuilt index: {verdict} (ids, groups, labels, identity layer, k-mer kmers/df/refs: "
          f"{same['postings']:,} postings); largest embedding difference {same['embedding_max_difference']:.2g}")
    print(f"- classification of {n_queries:,} queries ({queries.name}), rows differing from the rebuilt index: "
          f"**{result['rows_differing_same_calibration']}** under the same calibration; under the rebuild's own, "
          f"{result['rows_differing_own_calibration']} (a confidence), {result['label_rows_differing_own_calibration']}"
          f" (a label)")
    print(f"- calibration: {result['calibration_log']}")
    truth = {record.id: record.taxonomy for record in read_barcodes(queries)}
    if not any(truth.values()) and (args.truth or DEFAULT_TRUTH.is_file()):
        wanted = set(truth)
        truth = {record.id: record.taxonomy for record in read_barcodes(args.truth or DEFAULT_TRUTH)
                 if record.id in wanted}
    if any(truth.values()):
        result["scores"] = {name: scores(path, truth) for name, path in outputs.items()}
        print()
        print("| index | " + " | ".join(f"{rank} named (precision)" for rank in ("family", "genus", "species")) + " |")
        print("| --- | --- | --- | --- |")
        for name in ("added", "rebuilt, own calibration"):
            print(f"| {name} | " + " | ".join(f"{100 * named:.2f}% ({100 * precision:.2f}%)"
                                             for named, precision in result["scores"][name].values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if not same["differ"] and result["rows_differing_same_calibration"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
