"""Would a barcoding-gap feature make the open-world genus call more frequent at the same error rates?

    .venv/bin/python docs/research/genus_gap.py /tmp/cpu_classify/train_unique.h5

Uses only the reference index's own leave-out calibration queries (the distinct train sequences searched without
their own sequence, species or genus; the stored candidates of both searches, as classify takes them) and
compares, at most 5% of novel genera named (the calibration's open-world rule), the genus call on identity score
alone with rules that also ask for a gap between the best score and the best score of a candidate of another
genus (unbounded when every candidate shares the genus). Prints the identity-only rule, the best gap rules of a
grid, and each rule's recall on new species of known genera, on known species, and its novel-genus rate
(identity-rerank.md, section 10). Nothing here touches the test splits.
"""

from __future__ import annotations

import argparse

import numpy as np

from barcodetool.reference import (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER, LEVELS, ReferenceIndex,
                                   calibration, identity_decide, taxon_present, thresholds_for)


def features(level, codes: dict[str, np.ndarray], rank: str = "genus"):
    """(best score, gap to the best other-genus candidate, called label, true label) per query."""
    queries, score, idx = level
    _, chosen = identity_decide(idx, score, codes, thresholds=None)
    rows = np.arange(len(queries))
    label = codes[rank][idx[rows, chosen]]
    best = score[rows, chosen]
    valid = (idx >= 0) & np.isfinite(score)
    labels = np.where(valid, codes[rank][np.maximum(idx, 0)], -1)
    other = valid & (labels != label[:, None]) & (labels >= 0)
    best_other = np.where(other, score, -np.inf).max(axis=1)
    return best, best - best_other, label, codes[rank][queries]


def evaluate(rule, known, new_species, new_genera, family_threshold: float) -> dict:
    out = {}
    for name, (best, gap, label, truth) in (("known", known), ("new_species", new_species)):
        called = rule(best, gap) & (best >= family_threshold) & (truth >= 0)
        right = called & (label == truth)
        out[name] = float(right.sum() / max(1, (truth >= 0).sum()))
        out[f"{name}_precision"] = float(right.sum() / max(1, called.sum()))
    best, gap, _, truth = new_genera
    out["novel_genera_named"] = float((rule(best, gap) & (best >= family_threshold) & (truth >= 0)).sum()
                                      / max(1, (truth >= 0).sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="a reference index (barcodetool reference build) with genus labels")
    parser.add_argument("--max-novel", type=float, default=0.05, help="largest share of novel genera named")
    args = parser.parse_args()
    index = ReferenceIndex.load(args.index)
    layer = index.identity
    codes = {r: layer.codes[r] for r in index.ranks}
    thresholds = thresholds_for(index, "identity")
    settings = {"candidates": (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER),
                "embed_below": thresholds.embed_below}
    leave_out = calibration(index, "identity").leave_out   # the calibration's own leave-out searches
    levels = {level: leave_out(level, settings) for level in LEVELS}
    known = features(levels["sequence"], codes)
    new_species = features(taxon_present(levels["species"], codes, "genus", "species"), codes)
    new_genera = features(levels["genus"], codes)
    family = thresholds.ranks.get("family", -np.inf)
    genus = thresholds.ranks["genus"]
    rows = [(f"score >= {genus:.4f} (calibrated)", evaluate(lambda b, g: b >= genus, known, new_species,
                                                           new_genera, family))]
    grid = []
    for alone in (genus, 0.96, 0.97, np.inf):
        for score in np.arange(0.86, 0.951, 0.01):
            for gap in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08):
                rule = (lambda a, s, g: lambda b, d: (b >= a) | ((b >= s) & (d >= g)))(alone, score, gap)
                result = evaluate(rule, known, new_species, new_genera, family)
                if result["novel_genera_named"] <= args.max_novel:
                    grid.append((f"score >= {alone:.4f}, or score >= {score:.2f} and gap >= {gap:.2f}", result))
    grid.sort(key=lambda row: -row[1]["new_species"])
    rows += grid[:5]
    print("| rule | new species, genus present: right (precision) | known species: right | novel genera named |")
    print("| --- | --- | --- | --- |")
    for name, r in rows:
        print(f"| {name} | {r['new_species']:.2%} ({r['new_species_precision']:.1%}) | {r['known']:.2%} | "
              f"{r['novel_genera_named']:.2%} |")


if __name__ == "__main__":
    main()
