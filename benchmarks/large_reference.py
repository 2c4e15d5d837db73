"""A large real reference (issue 17): `reference build` time and peak memory, and `classify` against VSEARCH on the
same database, with the top hit's and the named labels' accuracy.

    .venv/bin/python benchmarks/large_reference.py ../shared/data/bold_insects.csv.gz ../shared/data/coi_extra.csv.gz \
        --threads 2 --repeats 3 --workdir /tmp/large_reference [--index ref.h5] [--json out.json]

1. The reference: every record of the tables whose `split` is not test, test_unseen or key_unseen, each cleaned
   sequence once (123,564 for bold_insects + coi_extra: 11 phyla), as a SINTAX FASTA (VSEARCH's database and
   barcodetool's input alike). The queries: the unique `test_unseen` barcodes of the first table (species absent
   from the reference: the open-world case, where the search is hardest).
2. `barcodetool reference build` once (unless `--index`), whole process under `/usr/bin/time -v`: wall time, peak
   RSS, the index's size.
3. `barcodetool classify` and `vsearch --usearch_global` top hit (cpu_classify.py's options) on the queries, in
   turn, `--repeats` times: median wall time, median of the run-by-run ratios, peak RSS.
4. Accuracy against the queries' known labels: the top hit's genus for both tools; barcodetool's named genus
   (share right, precision) and the share of queries given a species (their species are absent from `train`,
   not necessarily from the rest of this reference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from barcodetool.io import read_barcodes, write_fasta

HELD_OUT = ("test", "test_unseen", "key_unseen")
VSEARCH_OPTIONS = ["--id", "0.5", "--maxaccepts", "1", "--maxrejects", "32", "--top_hits_only", "--quiet"]


def make_inputs(tables: list[str], work: Path) -> tuple[Path, Path, dict, dict]:
    """(reference FASTA, query FASTA, reference genus by id, query taxonomy by id)."""
    reference, queries = work / "reference.fasta", work / "test_unseen.fasta"
    seen, ref_records, query_records, query_seen = set(), [], [], set()
    for number, table in enumerate(tables):
        for record in read_barcodes(table):
            record.id = record.id.replace(" ", "_")
            if record.split in HELD_OUT:
                if number == 0 and record.split == "test_unseen" and record.sequence not in query_seen:
                    query_seen.add(record.sequence)
                    query_records.append(record)
            elif record.sequence not in seen:
                seen.add(record.sequence)
                ref_records.append(record)
    if not reference.exists():
        write_fasta(ref_records, reference, sintax=True)
    if not queries.exists():
        write_fasta(query_records, queries, sintax=True)
    return (reference, queries, {r.id: r.taxonomy.get("genus") for r in ref_records},
            {r.id: r.taxonomy for r in query_records})


def timed(argv: list[str], work: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of one whole process, from /usr/bin/time -v."""
    report = work / "time.txt"
    subprocess.run(["/usr/bin/time", "-v", "-o", str(report), *argv], check=True, stdout=subprocess.DEVNULL)
    text = report.read_text()
    wall = next(line for line in text.splitlines() if "Elapsed (wall clock)" in line).rsplit(" ", 1)[1]
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    rss = next(int(line.split()[-1]) for line in text.splitlines() if "Maximum resident set size" in line)
    return {"seconds": seconds, "peak_mib": rss / 1024}


def scores(tsv: Path, b6: Path, ref_genus: dict, truth: dict) -> dict:
    rows = [line.rstrip("\n").split("\t") for line in tsv.open()]
    header, rows = rows[0], rows[1:]
    col = {name: header.index(name) for name in ("id", "genus", "species", "nearest_id")}
    n = len(truth)
    named = [r for r in rows if r[col["genus"]]]
    right = [r for r in named if r[col["genus"]] == truth[r[col["id"]]].get("genus")]
    top = sum(ref_genus.get(r[col["nearest_id"]]) == truth[r[col["id"]]].get("genus") for r in rows)
    vsearch = {}
    for line in b6.open():
        query, target = line.split("\t")[:2]
        vsearch.setdefault(query.split(";")[0], target.split(";")[0])
    vsearch_top = sum(ref_genus.get(target) == truth[query].get("genus") for query, target in vsearch.items())
    return {"queries": n, "top_hit_genus": top / n, "vsearch_top_hit_genus": vsearch_top / n,
            "genus_named_right": len(right) / n, "genus_precision": len(right) / max(1, len(named)),
            "species_named": sum(bool(r[col["species"]]) for r in rows) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/large_reference")
    parser.add_argument("--index", help="a prebuilt index of the same reference (skips the build)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tool = [sys.executable, "-m", "barcodetool", "-q"]
    reference, queries, ref_genus, truth = make_inputs(args.tables, work)
    result = {"reference": len(ref_genus), "queries": len(truth), "threads": args.threads,
              "cpu": os.cpu_count(), "load_before": os.getloadavg()[0]}
    index = Path(args.index) if args.index else work / "reference.h5"
    if not args.index:
        result["build"] = timed([*tool, "reference", "build", str(reference), "-o", str(index), "--threads",
                                 str(args.threads)], work)
    result["index_mib"] = index.stat().st_size / 2 ** 20
    runs = {"barcodetool": [], "vsearch": []}
    for _ in range(args.repeats):
        runs["barcodetool"].append(timed([*tool, "classify", str(queries), "-r", str(index), "-o",
                                          str(work / "classified.tsv"), "--threads", str(args.threads)], work))
        runs["vsearch"].append(timed(["vsearch", "--usearch_global", str(queries), "--db", str(reference),
                                      "--blast6out", str(work / "vsearch.b6"), "--threads", str(args.threads),
                                      *VSEARCH_OPTIONS], work))
    for name, timings in runs.items():
        result[name] = {"median_s": statistics.median(t["seconds"] for t in timings),
                        "peak_mib": max(t["peak_mib"] for t in timings), "runs": timings}
    result["speed_ratio"] = statistics.median(v["seconds"] / b["seconds"]
                                              for b, v in zip(runs["barcodetool"], runs["vsearch"]))
    result["accuracy"] = scores(work / "classified.tsv", work / "vsearch.b6", ref_genus, truth)
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    a = result["accuracy"]
    print(f"| reference | {result['reference']:,} barcodes; index {result['index_mib']:.0f} MiB |")
    print("| --- | --- |")
    if "build" in result:
        build = result["build"]
        print(f"| `reference build` | {build['seconds']:.0f} s, peak {build['peak_mib']:,.0f} MiB |")
    print(f"| `classify` {result['queries']:,} `test_unseen` | {result['barcodetool']['median_s']:.1f} s (median of "
          f"{args.repeats}), peak {result['barcodetool']['peak_mib']:,.0f} MiB |")
    print(f"| VSEARCH top hit, same queries and database | {result['vsearch']['median_s']:.1f} s, peak "
          f"{result['vsearch']['peak_mib']:,.0f} MiB |")
    print(f"| speed, VSEARCH time / barcodetool time (median of run ratios) | {result['speed_ratio']:.2f}x |")
    print(f"| top-hit genus: barcodetool / VSEARCH | {100 * a['top_hit_genus']:.2f}% / "
          f"{100 * a['vsearch_top_hit_genus']:.2f}% |")
    print(f"| named genus (precision); species named | {100 * a['genus_named_right']:.2f}% "
          f"({100 * a['genus_precision']:.2f}%); {100 * a['species_named']:.2f}% |")
    print(f"| load average before / after | {result['load_before']:.2f} / {result['load_after']:.2f} |")


if __name__ == "__main__":
    main()
