"""The default `classify` and `cluster` per phylum against VSEARCH, with species and genera held out (issue 14).

    .venv/bin/python benchmarks/phylum_transfer.py ../shared/data/coi_extra.csv.gz \\
        --bcdm ../shared/data/formats/bold_bcdm_sample.tsv --work /tmp/phylum_work \\
        --json /tmp/phylum_work/results.json --markdown /tmp/phylum_work/results.md --threads 1

Groups: each phylum of the coi_extra table, the BCDM sample (all Arthropoda) and, last, the records of coi_extra
without a phylum (`(no phylum)`: mixed phyla labelled with genus and species only). A group's population is its
unique sequences (first record of each) labelled to genus and species; groups with fewer than --min-labelled (100)
are skipped. Groups run in increasing size; each group's result is kept in WORK/<group>/result.json (reused by a
later run with the same settings unless --fresh) and the tables are rewritten after each group, so a partial run
is usable.

The cut, as a lab meets its queries (seeded per group: --seed and the group's name):
- a group larger than --max-population (7,500) keeps whole genera, drawn at random, up to that size;
- --genera-out (10 %) of the genera, then --species-out (15 %) of the species of the other genera, are held out:
  all their sequences are queries only (taxa are drawn in random order; one that would take the held-out
  sequences over 1.5 x the fraction of the population is passed over). Every other sequence is a query with
  probability --query-share (0.3), else reference;
- the reference is capped at --max-reference (4,000) and the queries at --max-queries (800) by random sampling
  (VSEARCH's exhaustive search aligns every query to every reference, ~4,500 alignments a second on one loaded
  core: 4,000 x 800 is ~12 minutes); each query is then `known species` (its species is in the reference),
  `new species` (its genus is, its species not) or `new genus`.

Methods: barcodetool with its defaults (`reference build REF.fasta -o ref.h5`; `classify Q.fasta -r ref.h5
-o out.tsv`), its top hit = nearest_id's lineage, its named labels = the rank columns; VSEARCH `--usearch_global
--id 0.5 --maxaccepts 0 --maxrejects 0` (every reference aligned; --maxhits 10 only trims what is written), top
hit = the highest identity; `vsearch --sintax --sintax_cutoff 0.8` (labels with confidence >= 0.8 named).
`reference info`'s `confidence species` row (sequence leave-out: named share, precision) is what the index expects
for queries drawn like the reference; it is set against what was achieved on the 70/30 queries.

Cluster: the reference and query sequences that carry a BIN, `barcodetool cluster X.fasta -o c.tsv` (no
reference: the bridged cut) vs `vsearch --cluster_fast --id 0.97`; AMI against dna_bin.

Misses: queries whose VSEARCH top hit is right at genus and barcodetool's is not get a cause, in this order:
`not found` (VSEARCH's top hit is not among barcodetool's candidates, re-run through the Python API),
`scoring` (barcodetool's score of VSEARCH's top hit, or of its own hit, differs from VSEARCH's identity by more
than --score-margin, 2 identity points), `near tie` (VSEARCH's identity of barcodetool's hit is within
--tie-margin, 1 point, of VSEARCH's top identity), else `other`.

--exhaustive adds a ceiling study of the search: each query's nearest reference by barcodetool's own score with
every reference scored (`exhaustive_top`), scored as a top hit beside the default's and VSEARCH's (about a minute
per 4,000 x 800 group on one core).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from barcodetool.io import BarcodeRecord, read_barcodes, write_fasta
from barcodetool.io.fasta import sintax_label
from barcodetool.evaluation.sintax import read_sintax_output
from barcodetool.taxonomy import RANKS

NO_PHYLUM = "(no phylum)"
BCDM = "BCDM sample"
UNSAFE_ID = re.compile(r"[\s;,]")
MIN_CLUSTER = 30   # BIN-carrying sequences needed to score clustering
EXHAUSTIVE_RESCORED = 32   # --exhaustive: of every reference's approximate score, the best rescored exactly


# ---------------------------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(command: list[str], what: str) -> float:
    """Run a command (its output to stderr, failing loudly); returns its wall time."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds


def barcodetool(*args: str) -> list[str]:
    return [sys.executable, "-m", "barcodetool", "-q", *args]


def share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def safe_id(record_id: str) -> str:
    return UNSAFE_ID.sub("_", record_id)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "group"


def same(label: str, truth: str) -> bool:
    """Labels equal as SINTAX writes them (white space, ',' and ';' -> '_')."""
    return bool(label) and sintax_label(label) == sintax_label(truth)


# ------------------------------------------------------------------------------------------------ groups
def load_groups(path: str, bcdm: str | None) -> dict[str, list[BarcodeRecord]]:
    """group -> unique sequences (first record of each) labelled to genus and species, ids made FASTA-safe."""
    groups: dict[str, dict[str, BarcodeRecord]] = defaultdict(dict)
    sources = [(path, None)] + ([(bcdm, BCDM)] if bcdm else [])
    for source, fixed in sources:
        for record in read_barcodes(source):
            group = fixed or record.taxonomy.get("phylum") or NO_PHYLUM
            if record.sequence in groups[group]:
                continue
            groups[group][record.sequence] = record
    out = {}
    for group, by_sequence in groups.items():
        kept = []
        for record in by_sequence.values():
            if record.taxonomy.get("species") and record.taxonomy.get("genus"):
                record.id = safe_id(record.id)
                kept.append(record)
        out[group] = kept
    return out


def hold_out(sizes: dict[str, int], fraction: float, total: int, rng: np.random.Generator) -> set[str]:
    """`fraction` of the taxa (name -> sequences), drawn in random order; a taxon that would take the held-out
    sequences over 1.5 x `fraction` of `total` is passed over (a few huge taxa would otherwise make most queries)."""
    names = list(sizes)
    wanted = round(fraction * len(names))
    held, count = set(), 0
    for i in rng.permutation(len(names)).tolist():
        if len(held) >= wanted:
            break
        if count + sizes[names[i]] <= 1.5 * fraction * total:
            held.add(names[i])
            count += sizes[names[i]]
    return held


def cut(records: list[BarcodeRecord], rng: np.random.Generator, args) -> tuple[list, list, dict]:
    """(reference, queries, origin: query id -> 'split' | 'held_species' | 'held_genus')."""
    by_genus: dict[str, list[BarcodeRecord]] = defaultdict(list)
    for record in records:
        by_genus[record.taxonomy["genus"]].append(record)
    genera = sorted(by_genus)
    if len(records) > args.max_population:   # whole genera, drawn at random, up to the cap
        kept, total = [], 0
        for i in rng.permutation(len(genera)).tolist():
            size = len(by_genus[genera[i]])
            if total + size <= args.max_population:
                kept.append(genera[i])
                total += size
        genera = sorted(kept)
    total = sum(len(by_genus[g]) for g in genera)
    held_genera = hold_out({g: len(by_genus[g]) for g in genera}, args.genera_out, total, rng)
    species_sizes: Counter = Counter(r.taxonomy["species"] for g in genera if g not in held_genera
                                     for r in by_genus[g])
    held_species = hold_out(dict(sorted(species_sizes.items())), args.species_out, sum(species_sizes.values()), rng)
    reference, queries, origin = [], [], {}
    for genus in genera:
        for record in by_genus[genus]:
            if genus in held_genera:
                origin[record.id] = "held_genus"
            elif record.taxonomy["species"] in held_species:
                origin[record.id] = "held_species"
            elif rng.random() < args.query_share:
                origin[record.id] = "split"
            else:
                reference.append(record)
                continue
            queries.append(record)
    if len(reference) > args.max_reference:
        keep = np.sort(rng.choice(len(reference), args.max_reference, replace=False))
        reference = [reference[i] for i in keep.tolist()]
    if len(queries) > args.max_queries:
        keep = np.sort(rng.choice(len(queries), args.max_queries, replace=False))
        queries = [queries[i] for i in keep.tolist()]
    origin = {q.id: origin[q.id] for q in queries}
    return reference, queries, origin


def category(record: BarcodeRecord, ref_species: set[str], ref_genera: set[str]) -> str:
    if record.taxonomy["species"] in ref_species:
        return "known_species"
    if record.taxonomy["genus"] in ref_genera:
        return "new_species"
    return "new_genus"


# ----------------------------------------------------------------------------------------------- parsing
def read_tsv(path: Path) -> dict[str, dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return {row[0]: dict(zip(header, row)) for row in (line.split("\t") for line in lines[1:])}


def read_blast6(path: Path) -> dict[str, list[tuple[str, float]]]:
    """query -> [(reference id, identity 0-1)] in VSEARCH's order (decreasing identity)."""
    hits: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        cells = line.split("\t")
        hits[cells[0]].append((cells[1].split(";", 1)[0], float(cells[2]) / 100))
    return hits


def read_sintax(path: Path, cutoff: float) -> dict[str, dict[str, str]]:
    """query -> rank -> label named at `cutoff`."""
    return {query: prediction.at_cutoff(cutoff) for query, prediction in read_sintax_output(path).items()}


def read_info(path: Path) -> dict:
    """`reference info`'s confidence rows: rank -> {level: (named, precision)} (shares 0-1, None for '-')."""
    text = subprocess.run(barcodetool("reference", "info", str(path)), capture_output=True, text=True,
                          check=True).stdout
    out: dict = {}
    for line in text.splitlines():
        cells = line.split("\t")
        if cells[0] != "confidence":
            continue
        levels = {}
        for cell in cells[3:]:
            # "<level> named 98.1% precision 99.8% (+-0.2)": the standard error of the precision is optional
            found = re.fullmatch(r"(\w+) named ([\d.]+)% precision ([\d.]+%|-)(?: \(\+-[\d.]+\))?", cell)
            if found:
                precision = None if found[3] == "-" else float(found[3].rstrip("%")) / 100
                levels[found[1]] = (float(found[2]) / 100, precision)
        out[cells[1]] = levels
    return out


# ------------------------------------------------------------------------------------------------ scores
def named_scores(named: dict[str, str], truth: dict[str, str], ids: list[str]) -> dict:
    """Over `ids`: share named and right, precision of the named, share named."""
    count = sum(1 for q in ids if named.get(q))
    right = sum(1 for q in ids if same(named.get(q, ""), truth[q]))
    return {"n": len(ids), "named_right": share(right, len(ids)), "precision": share(right, count),
            "named": share(count, len(ids))}


def output_scores(labels: dict[str, dict[str, str]], queries: list[BarcodeRecord], cats: dict[str, str],
                  origin: dict[str, str]) -> dict:
    """The named-output scores of one method; labels: query -> rank -> label."""
    species = {q: ranks.get("species", "") for q, ranks in labels.items()}
    genus = {q: ranks.get("genus", "") for q, ranks in labels.items()}
    truth_species = {q.id: q.taxonomy["species"] for q in queries}
    truth_genus = {q.id: q.taxonomy["genus"] for q in queries}
    known = [q.id for q in queries if cats[q.id] == "known_species"]
    new_species = [q.id for q in queries if cats[q.id] == "new_species"]
    new_genus = [q.id for q in queries if cats[q.id] == "new_genus"]
    absent = new_species + new_genus
    split = [q.id for q in queries if origin[q.id] == "split"]
    held = [q.id for q in queries if origin[q.id] == "held_species"]
    return {
        "species_known": named_scores(species, truth_species, known),
        "genus_new_species": named_scores(genus, truth_genus, new_species),
        "species_named_on_new": share(sum(1 for q in absent if species.get(q)), len(absent)),
        "genus_named_on_new_genus": share(sum(1 for q in new_genus if genus.get(q)), len(new_genus)),
        "species_split_queries": named_scores(species, truth_species, split),
        "species_named_on_held_species": share(sum(1 for q in held if species.get(q)), len(held)),
    }


def top_hit_scores(top: dict[str, dict[str, str]], queries: list[BarcodeRecord], cats: dict[str, str]) -> dict:
    """Top hit right at species (known-species queries) and genus (known-genus queries, and new-species ones)."""
    def right(rank: str, ids: list[str]) -> float | None:
        return share(sum(1 for q in ids if same(top.get(q, {}).get(rank, ""), truth[q][rank])), len(ids))

    truth = {q.id: q.taxonomy for q in queries}
    known = [q.id for q in queries if cats[q.id] == "known_species"]
    new_species = [q.id for q in queries if cats[q.id] == "new_species"]
    return {"species_known": right("species", known), "genus_known_genus": right("genus", known + new_species),
            "genus_new_species": right("genus", new_species)}


def ami(truth: dict[str, str], clusters: dict[str, str]) -> float:
    from sklearn.metrics import adjusted_mutual_info_score

    ids = sorted(truth)
    return float(adjusted_mutual_info_score([truth[i] for i in ids], [clusters[i] for i in ids]))


# ------------------------------------------------------------------------------------------------ misses
def miss_causes(misses: list[str], queries: dict[str, BarcodeRecord], reference: dict[str, BarcodeRecord],
                table: dict[str, dict[str, str]], vs_top: dict[str, tuple[str, float]], index_path: Path,
                ref_fasta: Path, work: Path, args) -> dict:
    """The cause of each miss (module docstring): barcodetool's candidates re-found through its Python API, and
    VSEARCH's identity to every reference (a full search of the missed queries)."""
    if not misses:
        return {"n": 0, "causes": {}, "detail": []}
    from barcodetool import embedding
    from barcodetool.classify import load_inference_model
    from barcodetool.reference import ReferenceIndex, identity_hits, thresholds_for
    from barcodetool.search.identity import score_candidates

    index = ReferenceIndex.load(index_path)
    thresholds = thresholds_for(index, "identity")
    model, device = load_inference_model(None, str(index_path), threads=args.threads)
    sequences = [queries[q].sequence for q in misses]
    hits = identity_hits(sequences, None, index, thresholds, device=device,
                         embed=lambda s: embedding.embed_sequences(model, s))
    layer = index.identity
    row_of = {record_id: i for i, record_id in enumerate(index.ids)}
    group_id = {int(g): index.ids[int(r)] for g, r in enumerate(layer.group_record.tolist())}

    fasta = work / "misses.fasta"
    write_fasta([(q, queries[q].sequence) for q in misses], fasta)
    out = work / "misses.b6"
    run(["vsearch", "--usearch_global", str(fasta), "--db", str(ref_fasta), "--id", "0.5", "--maxaccepts", "0",
         "--maxrejects", "0", "--blast6out", str(out), "--threads", str(args.threads), "--quiet"], "vsearch misses")
    vs_all = {q: dict(h[::-1]) for q, h in read_blast6(out).items()}   # the first (best) alignment of a pair wins

    causes: Counter = Counter()
    detail = []
    for row, q in enumerate(misses):
        top_id, top_identity = vs_top[q]
        top_group = int(index.groups[row_of[top_id]])
        candidates = [int(g) for g in hits.idx[row].tolist() if g >= 0]
        genus = queries[q].taxonomy["genus"]
        right_genus_found = any(reference[group_id[g]].taxonomy["genus"] == genus for g in candidates)
        bt_id = table[q]["nearest_id"]
        api_id = group_id.get(int(hits.hit[row]), "")
        own_group = int(index.groups[row_of[bt_id]]) if bt_id else -1
        pair = np.array([[top_group, own_group]], dtype=np.int64)
        score, identity, _ = score_candidates([sequences[row]], layer.store, pair)
        bt_score_top, bt_score_own = float(score[0, 0]), float(score[0, 1])
        vs_own = vs_all.get(q, {}).get(bt_id, math.nan)
        scoring = (abs(bt_score_top - top_identity) > args.score_margin
                   or not abs(bt_score_own - vs_own) <= args.score_margin)
        # the score differs only by barcodetool's coverage scaling (a reference covering < 70 % of the query)
        coverage = scoring and abs(float(identity[0, 0]) - top_identity) <= args.score_margin and (
            not bt_id or abs(float(identity[0, 1]) - vs_own) <= args.score_margin)
        if top_group not in candidates:
            cause = "not found"
        elif scoring:
            cause = "scoring"
        elif top_identity - vs_own <= args.tie_margin:
            cause = "near tie"
        else:
            cause = "other"
        causes[cause] += 1
        detail.append({"query": q, "cause": cause, "right_genus_among_candidates": right_genus_found,
                       "vsearch_top": top_id, "vsearch_top_identity": top_identity,
                       "barcodetool_hit": bt_id, "api_hit_same": api_id == bt_id,
                       "barcodetool_score_of_vsearch_top": round(bt_score_top, 4),
                       "barcodetool_identity_of_vsearch_top": round(float(identity[0, 0]), 4),
                       "barcodetool_score_of_own_hit": round(bt_score_own, 4),
                       "vsearch_top_would_rank_first": bt_score_top > bt_score_own, "coverage_only": coverage,
                       "vsearch_identity_of_barcodetool_hit": vs_own,
                       "barcodetool_similarity": float(table[q]["similarity"] or "nan")})
    not_found = [d for d in detail if d["cause"] == "not found"]
    return {"n": len(misses), "causes": dict(causes),
            "not_found_without_right_genus_candidate": sum(1 for d in not_found
                                                           if not d["right_genus_among_candidates"]),
            "not_found_but_would_rank_first": sum(1 for d in not_found if d["vsearch_top_would_rank_first"]),
            "scoring_by_coverage_only": sum(1 for d in detail if d["cause"] == "scoring" and d["coverage_only"]),
            "api_hit_differs_from_tsv": sum(1 for d in detail if not d["api_hit_same"]), "detail": detail}


# ------------------------------------------------------------------------------------------------- group
def run_group(name: str, records: list[BarcodeRecord], args) -> dict:
    work = Path(args.work) / slug(name)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([args.seed, zlib.crc32(name.encode())])
    reference, queries, origin = cut(records, rng, args)
    ref_species = {r.taxonomy["species"] for r in reference}
    ref_genera = {r.taxonomy["genus"] for r in reference}
    cats = {q.id: category(q, ref_species, ref_genera) for q in queries}
    result: dict = {"group": name, "population": len(records), "reference": len(reference),
                    "reference_species": len(ref_species), "reference_genera": len(ref_genera),
                    "queries": dict(Counter(cats.values())), "origins": dict(Counter(origin.values())),
                    "seconds": {}}
    log(f"{name}: {len(reference):,} reference, {len(queries):,} queries {result['queries']}")
    ref_fasta, query_fasta, index = work / "ref.fasta", work / "queries.fasta", work / "ref.h5"
    write_fasta(reference, ref_fasta, sintax=True)
    write_fasta([(q.id, q.sequence) for q in queries], query_fasta)
    threads = str(args.threads)
    seconds = result["seconds"]
    seconds["reference_build"] = run(barcodetool("reference", "build", str(ref_fasta), "-o", str(index),
                                                 "--threads", threads), "reference build")
    info = read_info(index)
    seconds["classify"] = run(barcodetool("classify", str(query_fasta), "-r", str(index), "-o",
                                          str(work / "out.tsv"), "--threads", threads), "classify")
    b6, sintax = work / "vsearch.b6", work / "vsearch.sintax"
    vsearch_runs = {
        "vsearch_global": ["vsearch", "--usearch_global", str(query_fasta), "--db", str(ref_fasta), "--id", "0.5",
                           "--maxaccepts", "0", "--maxrejects", "0", "--maxhits", "10", "--blast6out", str(b6),
                           "--threads", threads, "--quiet"],
        "vsearch_sintax": ["vsearch", "--sintax", str(query_fasta), "--db", str(ref_fasta), "--sintax_cutoff", "0.8",
                           "--tabbedout", str(sintax), "--randseed", "1", "--threads", threads, "--quiet"]}
    # VSEARCH's outputs depend only on the two FASTA files and its options: with --reuse-vsearch they are kept
    # from an earlier run of the same cut (the exhaustive search is most of a group's time)
    options = {what: [Path(a).name if a.startswith(str(work)) else a for a in command]
               for what, command in vsearch_runs.items()}      # the work folder itself may move
    key = hashlib.sha256(ref_fasta.read_bytes() + query_fasta.read_bytes() + json.dumps(options).encode()).hexdigest()
    key_file = work / "vsearch.key.json"
    kept = json.loads(key_file.read_text()) if key_file.exists() else {}
    if args.reuse_vsearch and kept.get("key") == key and b6.exists() and sintax.exists():
        seconds.update(kept["seconds"])
        log(f"{name}: VSEARCH outputs of the same inputs reused")
    else:
        for what, command in vsearch_runs.items():
            seconds[what] = run(command, what)
        key_file.write_text(json.dumps({"key": key, "seconds": {w: seconds[w] for w in vsearch_runs}}))
    log(f"{name}: build {seconds['reference_build']:.0f}s, classify {seconds['classify']:.0f}s, "
        f"usearch_global {seconds['vsearch_global']:.0f}s, sintax {seconds['vsearch_sintax']:.0f}s")

    by_id = {r.id: r for r in reference}
    table = read_tsv(work / "out.tsv")
    bt_top = {q: by_id[row["nearest_id"]].taxonomy if row["nearest_id"] else {} for q, row in table.items()}
    bt_named = {q: {rank: row[rank] for rank in RANKS if row.get(rank)} for q, row in table.items()}
    blast = read_blast6(b6)
    vs_top_hit = {q: hits[0] for q, hits in blast.items() if hits}   # VSEARCH orders by decreasing identity
    vs_top = {q: by_id[hit[0]].taxonomy for q, hit in vs_top_hit.items()}
    result["vsearch_top_tied_other_genus"] = sum(
        1 for q, hits in blast.items()
        if len({by_id[r].taxonomy["genus"] for r, ident in hits if ident == hits[0][1]}) > 1)
    sintax_named = read_sintax(sintax, 0.8)
    result["top_hit"] = {"barcodetool": top_hit_scores(bt_top, queries, cats),
                         "vsearch": top_hit_scores(vs_top, queries, cats)}
    if args.exhaustive:
        start = time.perf_counter()
        result["top_hit"]["exhaustive"] = top_hit_scores(exhaustive_top(reference, queries), queries, cats)
        seconds["exhaustive"] = time.perf_counter() - start
    result["named"] = {"barcodetool": output_scores(bt_named, queries, cats, origin),
                       "sintax_0.8": output_scores(sintax_named, queries, cats, origin)}
    result["no_vsearch_hit"] = len(queries) - len(vs_top_hit)
    species_row = info.get("species", {})
    result["leave_out"] = {"expected_sequence": species_row.get("sequence"),
                           "expected_species": species_row.get("species"),
                           "genus_row": info.get("genus", {})}

    by_query = {q.id: q for q in queries}
    misses = [q.id for q in queries if cats[q.id] != "new_genus" and q.id in vs_top
              and same(vs_top[q.id]["genus"], q.taxonomy["genus"])
              and not same(bt_top.get(q.id, {}).get("genus", ""), q.taxonomy["genus"])]
    start = time.perf_counter()
    result["misses"] = miss_causes(misses, by_query, by_id, table, vs_top_hit, index, ref_fasta, work, args)
    seconds["miss_analysis"] = time.perf_counter() - start
    reverse = [q.id for q in queries if cats[q.id] != "new_genus"
               and same(bt_top.get(q.id, {}).get("genus", ""), q.taxonomy["genus"])
               and not (q.id in vs_top and same(vs_top[q.id]["genus"], q.taxonomy["genus"]))]
    result["misses"]["reverse"] = len(reverse)   # barcodetool's top hit right at genus, VSEARCH's not

    binned = [r for r in reference + queries if r.bin]
    result["cluster"] = {"n": len(binned), "bins": len({r.bin for r in binned})}
    if len(binned) >= MIN_CLUSTER and result["cluster"]["bins"] >= 2:
        fasta = work / "cluster.fasta"
        write_fasta([(r.id, r.sequence) for r in binned], fasta)
        seconds["cluster"] = run(barcodetool("cluster", str(fasta), "-o", str(work / "cluster.tsv"), "--threads",
                                             threads), "cluster")
        uc = work / "cluster.uc"
        seconds["vsearch_cluster"] = run(["vsearch", "--cluster_fast", str(fasta), "--id", "0.97", "--uc", str(uc),
                                          "--threads", threads, "--quiet"], "vsearch --cluster_fast")
        ours = {row["id"]: row["cluster"] for row in read_tsv(work / "cluster.tsv").values()}
        theirs = {cells[8]: cells[1] for cells in (line.split("\t") for line in uc.read_text().splitlines())
                  if cells[0] in ("S", "H")}
        truth = {r.id: r.bin for r in binned}
        result["cluster"].update({"barcodetool_ami": ami(truth, ours), "vsearch_ami": ami(truth, theirs),
                                  "barcodetool_clusters": len(set(ours.values())),
                                  "vsearch_clusters": len(set(theirs.values()))})
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return result


def exhaustive_top(reference: list[BarcodeRecord], queries: list[BarcodeRecord]) -> dict[str, dict[str, str]]:
    """query id -> the taxonomy of its nearest reference by barcodetool's score (coverage-weighted identity) with
    every reference scored: pair_identity's values for all pairs, the best EXHAUSTIVE_RESCORED of each query
    scored again with the realignment of deciding pairs (score_candidates' default), and among the tied best the
    one `classify` would report (decide.tie_vote: the species most of them carry)."""
    from barcodetool.reference.decide import tie_vote
    from barcodetool.search import as_store, score_candidates

    store = as_store([r.sequence for r in reference])
    codes = {}
    for rank in ("genus", "species"):
        names = sorted({r.taxonomy.get(rank, "") for r in reference} - {""})
        code = {name: i for i, name in enumerate(names)}
        codes[rank] = np.array([code.get(r.taxonomy.get(rank, ""), -1) for r in reference], dtype=np.int64)
    top = {}
    for start in range(0, len(queries), 100):
        block = queries[start:start + 100]
        subset = as_store([q.sequence for q in block])
        every = np.broadcast_to(np.arange(len(reference))[None, :], (len(block), len(reference))).copy()
        approximate, _, _ = score_candidates(subset, store, every, realign="none")
        best = np.argsort(-approximate, axis=1, kind="stable")[:, :EXHAUSTIVE_RESCORED]
        score, _, _ = score_candidates(subset, store, best)
        order = np.argsort(-score, axis=1, kind="stable")
        idx, score = np.take_along_axis(best, order, axis=1), np.take_along_axis(score, order, axis=1)
        chosen = idx[np.arange(len(block)), tie_vote(idx, score, codes)]
        top.update({q.id: reference[int(i)].taxonomy for q, i in zip(block, chosen)})
    return top


# ------------------------------------------------------------------------------------------------ report
def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(results: list[dict], skipped: dict[str, int], args) -> str:
    lines = ["## Top hit and named output per group", "",
             "Queries: known species / new species (genus known) / new genus. Top hit: share right at species "
             "(known-species queries) and genus (known-genus queries), barcodetool (nearest_id) / VSEARCH "
             "usearch_global. Named: right % / precision % of the named; species on known-species queries, genus "
             "on new-species queries; `sp. on new`: queries of absent species given a species (always wrong).", "",
             "| group | ref | queries | top hit species bt / vs | top hit genus bt / vs "
             "| bt species | bt genus (new sp.) | bt sp. on new | SINTAX species | SINTAX genus (new sp.) "
             "| SINTAX sp. on new |",
             "|---|---:|---|---|---|---|---|---:|---|---|---:|"]
    for r in results:
        q = r["queries"]
        bt, sx = r["named"]["barcodetool"], r["named"]["sintax_0.8"]
        th_bt, th_vs = r["top_hit"]["barcodetool"], r["top_hit"]["vsearch"]
        lines.append(
            f"| {r['group']} | {r['reference']:,} | {q.get('known_species', 0)} / {q.get('new_species', 0)} / "
            f"{q.get('new_genus', 0)} | {pct(th_bt['species_known'])} / {pct(th_vs['species_known'])} | "
            f"{pct(th_bt['genus_known_genus'])} / {pct(th_vs['genus_known_genus'])} | "
            f"{pct(bt['species_known']['named_right'])} / {pct(bt['species_known']['precision'])} | "
            f"{pct(bt['genus_new_species']['named_right'])} / {pct(bt['genus_new_species']['precision'])} | "
            f"{pct(bt['species_named_on_new'])} | "
            f"{pct(sx['species_known']['named_right'])} / {pct(sx['species_known']['precision'])} | "
            f"{pct(sx['genus_new_species']['named_right'])} / {pct(sx['genus_new_species']['precision'])} | "
            f"{pct(sx['species_named_on_new'])} |")
    lines += ["", "## Leave-out expectation and clustering", "",
              "Leave-out: `reference info`'s `confidence species` row, sequence level (named % / precision %), vs "
              "barcodetool's species named % / precision % on the 70/30 queries (drawn like the reference); and "
              "its species-level row (species named on a left-out species) vs `bt sp. on new` on held-out-species "
              "queries. Cluster: AMI against dna_bin of the BIN-carrying reference + query sequences, barcodetool "
              "cluster (bridged cut) / vsearch --cluster_fast --id 0.97.", "",
              "| group | expected species named / prec. | achieved (70/30 queries) | expected on left-out sp. "
              "| achieved on held-out sp. | cluster n (BINs) | AMI bt / vs | clusters bt / vs / BINs "
              "| seconds bt (build+classify) / vs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        expected = r["leave_out"]["expected_sequence"] or (None, None)
        expected_sp = r["leave_out"]["expected_species"] or (None, None)
        split = r["named"]["barcodetool"]["species_split_queries"]
        c = r["cluster"]
        held = r["named"]["barcodetool"].get("species_named_on_held_species")
        s = r["seconds"]
        lines.append(
            f"| {r['group']} | {pct(expected[0])} / {pct(expected[1])} | {pct(split['named'])} / "
            f"{pct(split['precision'])} | {pct(expected_sp[0])} | {pct(held)} | {c['n']:,} ({c['bins']:,}) | "
            + (f"{c['barcodetool_ami']:.3f} / {c['vsearch_ami']:.3f} | {c['barcodetool_clusters']} / "
               f"{c['vsearch_clusters']} / {c['bins']} | " if "barcodetool_ami" in c else "– | – | ")
            + f"{s.get('reference_build', 0) + s.get('classify', 0):.0f} / "
              f"{s.get('vsearch_global', 0) + s.get('vsearch_sintax', 0):.0f} |")
    lines += ["", "## Misses: VSEARCH's top hit right at genus, barcodetool's not", "",
              "Known-genus queries. not found: VSEARCH's top hit is not among barcodetool's candidates (of which: "
              "it would have ranked first had it been found; no candidate of the right genus at all); scoring: "
              "barcodetool's score of VSEARCH's top hit or of its own hit differs from VSEARCH's identity by more "
              f"than {100 * args.score_margin:g} points (of which: by the coverage scaling alone, the identities "
              f"agree); near tie: VSEARCH's identity of barcodetool's hit is within {100 * args.tie_margin:g} "
              "point(s) of its top; reverse: barcodetool's top hit right at genus, VSEARCH's not.", "",
              "| group | misses | not found (would rank first / no right-genus candidate) | scoring (coverage only) "
              "| near tie | other | reverse |",
              "|---|---:|---|---|---:|---:|---:|"]
    for r in results:
        m = r["misses"]
        causes = m.get("causes", {})
        lines.append(f"| {r['group']} | {m['n']} | {causes.get('not found', 0)} "
                     f"({m.get('not_found_but_would_rank_first', 0)} / "
                     f"{m.get('not_found_without_right_genus_candidate', 0)}) | {causes.get('scoring', 0)} "
                     f"({m.get('scoring_by_coverage_only', 0)}) | {causes.get('near tie', 0)} | "
                     f"{causes.get('other', 0)} | {m.get('reverse', 0)} |")
    if any("exhaustive" in r["top_hit"] for r in results):
        lines += ["", "## Top hit with every reference scored (--exhaustive)", "",
                  "Top hit right at species (known-species queries) / genus (known-genus queries): barcodetool's "
                  "default, the nearest reference by barcodetool's own score with every reference scored, VSEARCH "
                  "usearch_global (every reference aligned).", "",
                  "| group | barcodetool default | every reference scored | VSEARCH |", "|---|---|---|---|"]
        for r in results:
            if "exhaustive" in r["top_hit"]:
                cells = [f"{pct(r['top_hit'][m]['species_known'])} / {pct(r['top_hit'][m]['genus_known_genus'])}"
                         for m in ("barcodetool", "exhaustive", "vsearch")]
                lines.append(f"| {r['group']} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", f"Skipped (fewer than {args.min_labelled} unique labelled sequences): "
                  + ", ".join(f"{g or '?'} ({n})" for g, n in sorted(skipped.items()))]
    return "\n".join(lines) + "\n"


def settings(args) -> dict:
    return {name: getattr(args, name) for name in ("seed", "max_population", "max_reference", "max_queries",
                                                    "species_out", "genera_out", "query_share", "score_margin",
                                                    "tie_margin", "exhaustive")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="coi_extra.csv.gz (a BIOSCAN-5M-style table with phyla)")
    parser.add_argument("--bcdm", help="a BOLD BCDM TSV run as one more group")
    parser.add_argument("--work", default="/tmp/phylum_work")
    parser.add_argument("--json", help="write all results as JSON here")
    parser.add_argument("--markdown", help="write the tables here (default WORK/results.md)")
    parser.add_argument("--groups", nargs="*", help="run only these groups (phylum names, 'BCDM sample')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-labelled", type=int, default=100)
    parser.add_argument("--max-population", type=int, default=7_500)
    parser.add_argument("--max-reference", type=int, default=4_000)
    parser.add_argument("--max-queries", type=int, default=800)
    parser.add_argument("--species-out", type=float, default=0.15)
    parser.add_argument("--genera-out", type=float, default=0.10)
    parser.add_argument("--query-share", type=float, default=0.30)
    parser.add_argument("--score-margin", type=float, default=0.02)
    parser.add_argument("--tie-margin", type=float, default=0.01)
    parser.add_argument("--exhaustive", action="store_true",
                        help="also score every reference for every query (a ceiling study of the search)")
    parser.add_argument("--fresh", action="store_true", help="recompute groups that have a stored result")
    parser.add_argument("--reuse-vsearch", action="store_true",
                        help="keep VSEARCH's outputs of an earlier run whose two FASTA files were the same")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    markdown_path = Path(args.markdown) if args.markdown else work / "results.md"
    started = time.perf_counter()
    groups = load_groups(args.data, args.bcdm)
    skipped = {g: len(r) for g, r in groups.items() if len(r) < args.min_labelled}
    order = sorted((g for g in groups if g not in skipped and (not args.groups or g in args.groups)),
                   key=lambda g: (g == NO_PHYLUM, min(len(groups[g]), args.max_population), g))
    results = []
    for name in order:
        stored = work / slug(name) / "result.json"
        if stored.exists() and not args.fresh:
            kept = json.loads(stored.read_text())
            if kept.get("settings") == settings(args):
                log(f"{name}: stored result reused")
                results.append(kept)
                continue
        result = run_group(name, groups[name], args)
        result["settings"] = settings(args)
        stored.write_text(json.dumps(result, indent=1))
        results.append(result)
        markdown_path.write_text(markdown(results, skipped, args))
        (work / "partial.json").write_text(json.dumps(results, indent=1))
    table = markdown(results, skipped, args)
    markdown_path.write_text(table)
    print(table)
    totals = Counter()
    for r in results:
        totals.update(r["misses"].get("causes", {}))
    summary = {"groups": results, "skipped": skipped, "miss_causes_total": dict(totals),
               "seconds": round(time.perf_counter() - started, 1), "settings": settings(args)}
    print(f"miss causes, all groups: {dict(totals)}; {summary['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
