"""Which evidence the confidence model earns its place with: the model fitted on subsets of its features, judged on a
reference's own leave-out queries and on `val` (never on the test splits).

    .venv/bin/python benchmarks/confidence_evidence.py ../shared/data/bold_insects.csv.gz --reference train.h5 \\
        [--seed 1] [--json out.json]

`train.h5`: the unique `train` barcodes of the split file built by `barcodetool reference build` (this version).
For each feature set (FEATURE_SETS: the 8 features of 2026-12-06, then with `second_gap`, the context of the other
ranks, both, the neighbours, and the hit's isolation: all of this version's), three judgements:

1. halves: the index's stored leave-out queries (5,000 per level), each judged by a model fitted on the other half
   (`confidence.held_out_confidences`, what `reference info` prints);
2. second draw: 5,000 more leave-out queries per level (`--seed`; those of the first draw dropped), judged by the
   model fitted on all of the first;
3. `val`: the split file's unique `val` barcodes (known species), classified with that model.

Printed per set: species named and right for new haplotypes (sequence level), species named for left-out species
(always wrong), genus named and right (precision) for left-out species, and `val` species named and right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from barcodetool.classify import load_inference_model
from barcodetool.embedding import embed_sequences
from barcodetool.evaluation.protocol import unique_by_split
from barcodetool.io import read_barcodes
from barcodetool.reference import confidence
from barcodetool.reference.calibrate import LEVELS, IdentityCalibration, leave_out_calls, thresholds_for
from barcodetool.reference.decide import tie_vote
from barcodetool.reference.index import ReferenceIndex
from barcodetool.reference.isolation import isolation_tables, left_out_isolation

OLD = list(confidence.RANK_FEATURES[:8])
CONTEXT = [f"{rank}_{name}" for rank in confidence.CONTEXT_RANKS for name in confidence.CONTEXT_FEATURES]
NEIGHBOURS = [f"{rank}_{name}" for rank in confidence.PARTNER_RANKS for name in confidence.PARTNER_FEATURES]
FEATURE_SETS = {
    "the 8 features of 2026-12-06": OLD,
    "+ second_gap": OLD + ["second_gap"],
    "+ context": OLD + CONTEXT,
    "+ both": OLD + ["second_gap"] + CONTEXT,
    "+ both + neighbours (2026-12-07)": OLD + ["second_gap"] + CONTEXT + NEIGHBOURS,
    "+ both + neighbours + isolation (this version)": list(confidence.FEATURES),
}
CUTOFF = 0.5


def levels_of(calibration: IdentityCalibration, settings: dict, seed: int | None) -> dict:
    """level -> (queries, score, idx, overlap): the stored leave-out searches (seed None) or a fresh draw."""
    index = calibration.index
    stored = index.identity_calibration
    if seed is not None:
        index.identity_calibration = {}
    try:
        out = {}
        for level in LEVELS:
            queries, score, idx = calibration.leave_out(level, settings, seed=seed or 0)
            out[level] = (queries, score, idx, calibration.overlaps[level])
        return out
    finally:
        index.identity_calibration = stored


def sliced(evidence: dict, columns: list[int]) -> dict:
    return {key: {rank: (label, features[:, columns]) for rank, (label, features) in ranks.items()}
            for key, ranks in evidence.items()}


def summary(judged: dict, levels: dict, codes: dict) -> dict:
    calls = leave_out_calls(judged, levels, codes, CUTOFF)

    def right(rank: str, level: str) -> float:
        entry = calls[rank][level]
        return entry["named"] * (entry["precision"] or 0.0)

    return {"species_right_new_haplotypes": right("species", "sequence"),
            "species_named_left_out_species": calls["species"]["species"]["named"],
            "genus_right_left_out_species": right("genus", "species"),
            "genus_precision_left_out_species": calls["genus"]["species"]["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_file")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--seed", type=int, default=1, help="the second draw of leave-out queries")
    parser.add_argument("--json")
    parser.add_argument("--last", type=int, default=len(FEATURE_SETS),
                        help="only the last N feature sets (1: this version's)")
    args = parser.parse_args()
    if not 1 <= args.last <= len(FEATURE_SETS):
        parser.error(f"--last must be 1 to {len(FEATURE_SETS)}, got {args.last}")

    index = ReferenceIndex.load(args.reference)
    calibration = IdentityCalibration(index)
    settings = calibration.settings_of(calibration.stored)
    calibration.check(settings)
    layer = index.identity
    codes = {rank: layer.codes[rank] for rank in index.ranks}
    ranks = list(codes)
    first = levels_of(calibration, settings, None)
    second = levels_of(calibration, settings, args.seed)
    for level in LEVELS:       # the second draw without the first's queries
        keep = ~np.isin(second[level][0], first[level][0])
        second[level] = tuple(part[keep] for part in second[level])
    chosen = {name: {level: tie_vote(idx, score, codes) for level, (_, score, idx, _) in draw.items()}
              for name, draw in (("first", first), ("second", second))}
    tables = isolation_tables(index)
    evidence = {}
    for name, draw in (("first", first), ("second", second)):
        isolation = {level: left_out_isolation(index, tables, confidence.reported_hits(idx, score, chosen[name][level]),
                                               queries, level)
                     for level, (queries, score, idx, _) in draw.items()}
        evidence[name] = confidence.level_evidence(draw, codes, layer.store, chosen[name], isolation)

    val = unique_by_split(read_barcodes(args.split_file), ["val"])["val"]
    sequences = [record.sequence for record in val]
    model, _ = load_inference_model(None, args.reference)
    hits = index.identity_hits(sequences, None, thresholds_for(index, "identity"),
                               embed=lambda batch: embed_sequences(model, batch))
    species_code = {name: code for code, name in enumerate(index.label_names["species"])}
    val_truth = np.array([species_code.get(r.taxonomy.get("species", ""), -2) for r in val])
    val_evidence = confidence.query_evidence(hits.idx, hits.score, hits.overlap,
                                             np.array([len(s) for s in sequences]), hits.chosen, codes, ranks,
                                             layer.store, confidence.isolation_distances(tables, hits.hit))

    results = {}
    for name, features in list(FEATURE_SETS.items())[-args.last:]:
        columns = [confidence.FEATURES.index(feature) for feature in features]
        first_evidence = sliced(evidence["first"], columns)
        halves = summary(confidence.held_out_confidences(first, codes, first_evidence), first, codes)
        fitted, _ = confidence.fit_confidence(first, codes, first_evidence)
        second_evidence = sliced(evidence["second"], columns)
        judged = {level: confidence.rank_confidences(fitted, second_evidence[level], ranks) for level in LEVELS}
        drawn = summary(judged, second, codes)
        labels, confidences = confidence.rank_confidences(fitted, sliced({"val": val_evidence}, columns)["val"],
                                                          ranks)
        named = np.nan_to_num(confidences["species"], nan=0.0) >= CUTOFF
        results[name] = {"halves": halves, "second_draw": drawn,
                         "val_species_right": float((named & (labels["species"] == val_truth)).mean())}

    def pair(name: str, key: str) -> str:
        return f"{100 * results[name]['halves'][key]:.2f} / {100 * results[name]['second_draw'][key]:.2f}%"

    print("| evidence | species right, new haplotypes: halves / second draw | species named, left-out species: "
          "halves / second draw | genus right (precision), left-out species: halves / second draw | `val` "
          "species right |")
    print("| --- | --- | --- | --- | --- |")
    for name, result in results.items():
        genus = " / ".join(f"{100 * result[part]['genus_right_left_out_species']:.2f} "
                           f"({100 * (result[part]['genus_precision_left_out_species'] or 0):.2f})"
                           for part in ("halves", "second_draw"))
        print(f"| {name} | {pair(name, 'species_right_new_haplotypes')} | "
              f"{pair(name, 'species_named_left_out_species')} | {genus}% | "
              f"{100 * result['val_species_right']:.2f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": args.reference, "seed": args.seed, "results": results},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
