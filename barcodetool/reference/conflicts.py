"""Conflicting records of a reference: calibration queries whose best hit, at >= CONFLICT_IDENTITY, carries
another label at a rank of CONFLICT_RANKS (mislabelled, contaminated or chimeric records), and the odd record of
each such pair, which calibration and classification read as unlabelled at that rank and below
(ReferenceIndex.unlabel_odd_records)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..search import SequenceStore, score_candidates
from .candidates import search_candidates

if TYPE_CHECKING:
    from .index import ReferenceIndex

# A calibration query whose best hit is this close but of another label at one of these ranks is a conflict: at 97%
# identity COI-5P barcodes of different families do not occur naturally (mislabels, contaminants, chimeras).
CONFLICT_IDENTITY = 0.97
CONFLICT_RANKS = ("phylum", "class", "order", "family")
CONFLICTS_LOGGED = 5
CONFLICTS_STORED = 100
# Of a conflicting pair, the record whose nearest other record of its own label (at the conflict's rank) is this
# much farther than its partner's is the odd one: its label is read as unknown at that rank and below, in
# calibration and classification alike (the pair's other record keeps its label). Within this margin neither is.
CONFLICT_ODD_MARGIN = 0.02
CONFLICT_OWN_CANDIDATES = 50   # k-mer candidates searched for a conflicting record's nearest of its own label


def conflicting_records(level, codes: dict[str, np.ndarray], index: ReferenceIndex, layer
                        ) -> tuple[dict, list[tuple[int, int, str]]]:
    """Calibration queries (sequence level: only their own sequence left out) whose best hit, at >=
    CONFLICT_IDENTITY, carries another label at a rank of CONFLICT_RANKS: records that are mislabelled,
    contaminated or chimeric, or the reference they match is. Returns what the calibration details keep (counts
    and up to CONFLICTS_STORED records) and every pair as (query group, hit group, rank)."""
    found = {"queries": 0, "pairs": 0, "records": []}
    if level is None:
        return found, []
    queries, score, idx = level
    found["queries"] = int(len(queries))
    if not idx.shape[1]:
        return found, []
    best, hit = score[:, 0], idx[:, 0]
    close = (hit >= 0) & (best >= CONFLICT_IDENTITY)
    records, pairs = [], []
    for q, h, s in zip(queries[close].tolist(), hit[close].tolist(), best[close].tolist()):
        for rank in CONFLICT_RANKS:
            if rank not in codes:
                continue
            mine, theirs = int(codes[rank][q]), int(codes[rank][h])
            if mine >= 0 and theirs >= 0 and mine != theirs:
                pairs.append((int(q), int(h), rank))
                records.append({"id": index.ids[int(layer.group_record[q])], "rank": rank,
                                "label": index.label_names[rank][mine],
                                "other_id": index.ids[int(layer.group_record[h])],
                                "other_label": index.label_names[rank][theirs], "identity": round(float(s), 4)})
                break
    found["pairs"] = len(records)
    found["records"] = records[:CONFLICTS_STORED]
    return found, pairs


def odd_records(pairs: list[tuple[int, int, str]], codes: dict[str, np.ndarray], index: ReferenceIndex,
                layer) -> list[dict]:
    """The odd record of each conflicting pair (`conflicting_records`), where there is one: the side whose
    nearest other record of its own label at the conflict's rank (among CONFLICT_OWN_CANDIDATES k-mer candidates,
    its own sequence left out) is CONFLICT_ODD_MARGIN farther than its partner's. A mislabelled or contaminating
    record sits beside records of another family, far from its own; the record it copies sits among its own."""
    if not pairs:
        return []
    groups = np.array(sorted({g for q, h, _ in pairs for g in (q, h)}), dtype=np.int64)
    store = SequenceStore.from_sequences([layer.store.sequence(int(g)) for g in groups])
    _, candidates = search_candidates(index, store, None, 0, CONFLICT_OWN_CANDIDATES,
                                      exclude=(groups, np.arange(len(layer))))
    scores, _, _ = score_candidates(store, layer.store, candidates)
    row_of = {int(g): i for i, g in enumerate(groups)}

    def own_nearest(group: int, rank: str) -> float:
        row = row_of[group]
        own = codes[rank][group]
        found = candidates[row]
        same = (found >= 0) & (codes[rank][np.maximum(found, 0)] == own)
        return float(scores[row][same].max()) if same.any() else 0.0

    odd, seen = [], set()
    for q, h, rank in pairs:
        mine, theirs = own_nearest(q, rank), own_nearest(h, rank)
        side = q if mine < theirs - CONFLICT_ODD_MARGIN else h if theirs < mine - CONFLICT_ODD_MARGIN else None
        if side is not None and (side, rank) not in seen:
            seen.add((side, rank))
            odd.append({"id": index.ids[int(layer.group_record[side])], "rank": rank,
                        "own_nearest": round(min(mine, theirs), 4), "partner_own_nearest": round(max(mine, theirs), 4)})
    return odd


def group_codes(index: ReferenceIndex, layer) -> dict[str, np.ndarray]:
    """rank -> int32 [groups]: the representative records' own codes, before any odd record is read as unlabelled
    (conflicts are always found on these, so that finding them again finds the same)."""
    return {rank: index.codes[rank][layer.group_record].astype(np.int32) for rank in index.ranks}
