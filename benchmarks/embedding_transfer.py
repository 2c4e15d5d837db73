"""Embedding 1-NN per phylum against VSEARCH's top hit and a k-mer profile, on the phylum benchmark's cuts (issue 15).

    .venv/bin/python benchmarks/phylum_transfer.py ../shared/data/coi_extra.csv.gz \\
        --bcdm ../shared/data/formats/bold_bcdm_sample.tsv --work /tmp/phylum_work --threads 1   # the cuts, once
    .venv/bin/python benchmarks/embedding_transfer.py ../shared/data/coi_extra.csv.gz \\
        --bcdm ../shared/data/formats/bold_bcdm_sample.tsv --work /tmp/phylum_work \\
        --models barcodemae-nano /path/to/new-model --threads 2 --markdown /tmp/phylum_work/embeddings.md

For every group folder that benchmarks/phylum_transfer.py left in WORK (ref.fasta: the reference with its
SINTAX-style taxonomy; queries.fasta; vsearch.b6: VSEARCH's exhaustive `--usearch_global` hits, best first), each
query's nearest reference by cosine of each model's embeddings (`barcodetool.embed_sequences`, unit length) and of
a 5-mer count profile (`evaluation.profiles`) is scored as the phylum benchmark scores top hits: species of
`known species` queries, genus of the queries whose genus is in the reference, and genus of `new species` queries
(species held out, genus not): the question "does the embedding's space transfer to this phylum", with species and
genera held out, beside the alignment tool a lab would use. The queries' truth is read from DATA and --bcdm (the
same records the cuts were drawn from).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from phylum_transfer import category, load_groups, pct, read_blast6, slug, top_hit_scores   # beside this script

PROFILE_K = 5


def read_reference(path: Path) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """(ids, sequences, taxonomy dicts) of a SINTAX-style FASTA written by the phylum benchmark."""
    from barcodetool.io import read_barcodes

    ids, sequences, taxa = [], [], []
    for record in read_barcodes(str(path)):
        ids.append(record.id)
        sequences.append(record.sequence)
        taxa.append(dict(record.taxonomy))
    return ids, sequences, taxa


def nearest(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    from barcodetool.search import knn_search, normalize

    _, idx = knn_search(normalize(queries), normalize(reference), 1)
    return idx[:, 0]


def score_group(folder: Path, records_by_id: dict, models: list, threads: int) -> dict:
    from barcodetool.embedding import embed_sequences
    from barcodetool.evaluation.profiles import kmer_profiles
    from barcodetool.io import read_barcodes

    ref_ids, ref_sequences, ref_taxa = read_reference(folder / "ref.fasta")
    query_ids = [r.id for r in read_barcodes(str(folder / "queries.fasta"))]
    queries = [records_by_id[q] for q in query_ids]
    ref_species = {t.get("species", "") for t in ref_taxa}
    ref_genera = {t.get("genus", "") for t in ref_taxa}
    cats = {q.id: category(q, ref_species, ref_genera) for q in queries}
    query_sequences = [q.sequence for q in queries]
    result = {"group": folder.name, "reference": len(ref_ids), "queries": len(queries),
              "new_species": sum(c == "new_species" for c in cats.values()), "methods": {}, "seconds": {}}
    hits = read_blast6(folder / "vsearch.b6")
    by_ref = dict(zip(ref_ids, ref_taxa))
    vsearch = {q: by_ref.get(h[0][0], {}) for q, h in hits.items() if h}
    result["methods"]["VSEARCH top hit"] = top_hit_scores(vsearch, queries, cats)
    started = time.perf_counter()
    at = nearest(kmer_profiles(query_sequences, PROFILE_K), kmer_profiles(ref_sequences, PROFILE_K))
    result["methods"][f"{PROFILE_K}-mer profile"] = top_hit_scores(
        {q.id: ref_taxa[i] for q, i in zip(queries, at)}, queries, cats)
    result["seconds"]["profile"] = round(time.perf_counter() - started, 1)
    for name, model in models:
        started = time.perf_counter()
        at = nearest(embed_sequences(model, query_sequences, batch_size=256),
                     embed_sequences(model, ref_sequences, batch_size=256))
        result["methods"][name] = top_hit_scores({q.id: ref_taxa[i] for q, i in zip(queries, at)}, queries, cats)
        result["seconds"][name] = round(time.perf_counter() - started, 1)
    return result


def markdown(results: list[dict], names: list[str]) -> str:
    columns = ["VSEARCH top hit", f"{PROFILE_K}-mer profile", *names]
    lines = ["| group | queries (new species) | " + " | ".join(f"{c}: species known / genus / genus new species"
                                                          for c in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]
    for r in results:
        cells = []
        for c in columns:
            s = r["methods"][c]
            cells.append(f"{pct(s['species_known'])} / {pct(s['genus_known_genus'])} / {pct(s['genus_new_species'])}")
        lines.append(f"| {r['group']} | {r['queries']} ({r['new_species']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the table the phylum benchmark's cuts were drawn from (coi_extra.csv.gz)")
    parser.add_argument("--bcdm", help="the BCDM TSV of its `BCDM sample` group")
    parser.add_argument("--work", required=True, help="the phylum benchmark's work folder")
    parser.add_argument("--models", nargs="+", default=["barcodemae-nano"])
    parser.add_argument("--groups", nargs="*", help="only these groups (phylum names, 'BCDM sample')")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()

    from barcodetool.model.runtime import set_threads
    from barcodetool.model.weights import load_model

    set_threads(args.threads)
    groups = load_groups(args.data, args.bcdm)
    records_by_id = {r.id: r for group in groups.values() for r in group}
    models = [(Path(m).name, load_model(m)) for m in args.models]
    names = [n for n, _ in models]
    folders = [Path(args.work) / slug(g) for g in groups if not args.groups or g in args.groups]
    results = []
    for folder in sorted(f for f in folders if (f / "vsearch.b6").exists() and (f / "ref.fasta").exists()):
        results.append(score_group(folder, records_by_id, models, args.threads))
        print(json.dumps(results[-1]), flush=True)
    table = markdown(results, names)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
