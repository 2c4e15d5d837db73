"""The decision: per-rank labels from ranked neighbours or candidates, gated by calibrated thresholds.

Two rules, one shape of output (`Votes`): the similarity-weighted k-NN vote over embedding neighbours (`vote`,
`classify --method knn`) and the identity rule over identity-scored candidates (`identity_decide`, the default).
Both assign ranks top-down: a rank is assigned when its support reaches the rank's threshold, its confidence
reaches `min_confidence`, and no rank above it was left unassigned with a candidate (optional ranks, subfamily,
never block). The thresholds are calibrated on the reference itself (barcodetool.reference.calibrate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..search.identity import MIN_COMPARED_COLUMNS
from ..taxonomy import OPTIONAL_RANKS, RANKS
from .confidence import ConfidenceModel, isolation_distances, query_evidence, rank_confidences, reported_hits

DEFAULT_K = 10                    # neighbours that vote (--neighbours)
DEFAULT_PRECISION = 0.95
DEFAULT_MIN_CONFIDENCE = 0.5
VOTE_BLOCK_ELEMENTS = 1 << 22     # queries x k x k label comparisons held at once while voting
# The identity rule names no rank (and no BIN) from a hit aligned over fewer columns: a fragment of 25-60 bases
# matches a reference of another order at 96-100% by chance, and the confidence model, fitted on reference
# sequences (0.1% of the benchmark's under 130 bases), reads its hit as a full barcode's. 1,499 `val` barcodes cut to
# one window each, against the `train` index (benchmarks/fragment_lengths.py): precision of the species named
# 55.5% at 25 bases (order 74.5%), 78.9% at 40, 93.8% at 60, 96.6% at 80, 98.7% at 100, 99.6% at 160, 99.7% whole.
MIN_NAMED_COLUMNS = MIN_COMPARED_COLUMNS   # 100, below which `cluster` leaves a sequence on its own too
# classify --candidates-embedding: for the queries in doubt only (IDENTITY_EMBED_BELOW); 20 rather than 10 raises
# the genus top hit of train species left out from 76.81% to 78.60% (docs/research/identity-rerank.md, section 8)
IDENTITY_CANDIDATES_EMBEDDING = 20
IDENTITY_CANDIDATES_KMER = 10          # classify --candidates-kmer
# classify --embed-below: embedding candidates are sought only for queries whose best k-mer candidate scores below
# this; above it the embedding's candidates hardly ever change the call (docs/research/identity-rerank.md,
# "Embedding only where it helps"). inf = every query is embedded.
IDENTITY_EMBED_BELOW = 0.95
# `--candidates-wide` (60 unless asked otherwise, 0 = off): where the best of the first k-mer candidates scores below
# IDENTITY_WIDEN_BELOW, the first N k-mer candidates are searched and those nearer than the best found join the list
# (as many candidates as before are kept). Far from every reference (80-93% identity) the count of shared 12-mers
# hardly follows identity: the nearest reference of 20 such queries in 3 phyla of coi_extra ranked 15th to 175th by
# that count. With 60 (IDENTITY_CANDIDATES_WIDE) the top hit gains 1.9 points of genus on the insects' `test_unseen`
# and reaches VSEARCH's in Annelida and Tardigrada (docs/benchmarks.md, "Distant queries: a wider k-mer search").
# Of the candidates beyond the first stage only IDENTITY_WIDEN_SCORED are scored: those sharing the most 8-mers with
# the query (search.shared_kmer_counts), which follow identity that far out where 12-mers do not. On 5,000 species of
# the insects' `train` left out of it (genus top hit where the genus keeps other species): 77.93% without widening,
# 78.60% with all 50 scored, 78.86% with the best 5 by 8-mers (78.78% with 8): a tenth of the pairs, and the
# confidences calibrated with it name more genera, not fewer (docs/benchmarks.md).
IDENTITY_CANDIDATES_WIDE = 60
IDENTITY_WIDEN_BELOW = 0.95
IDENTITY_WIDEN_SCORED = 5
NO_WIDENING = (0, math.inf)   # IdentityThresholds.widen of a calibration without it


def widening(candidates: int, below: float, scored: int) -> tuple:
    """IdentityThresholds.widen: (candidates, below, scored), or NO_WIDENING without wide candidates."""
    return (int(candidates), float(below), int(scored)) if candidates else NO_WIDENING


def widen_setting(candidates: int, scored: int = IDENTITY_WIDEN_SCORED) -> tuple:
    """IdentityThresholds.widen for `--candidates-wide N` (0: none), of which `scored` (0: all) are scored."""
    return widening(candidates, IDENTITY_WIDEN_BELOW, scored)


def widen_parts(widen) -> tuple[int, float, int]:
    """(k-mer candidates, below, scored) of an IdentityThresholds.widen; a setting of two (written before the
    8-mer choice existed) scores every candidate beyond the first stage (scored = 0)."""
    n_wide, below, *rest = widen
    return int(n_wide), float(below), int(rest[0]) if rest else 0


# ============================================================================================ thresholds
@dataclass
class Thresholds:
    """Calibrated decision thresholds of a reference: what both rules share."""

    ranks: dict[str, float]                 # rank -> support threshold (inf: never; nan: no labels)
    bin: float = math.nan                   # support within which the best BIN-labelled neighbour's BIN is reported
    cluster_distance: float = math.nan      # distance cut of average-linkage clustering
    precision: float = DEFAULT_PRECISION
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    details: dict = field(default_factory=dict)


@dataclass
class KnnThresholds(Thresholds):
    """Thresholds of the k-NN vote: cosine similarities; cluster_distance is a cosine distance."""

    k: int = DEFAULT_K                      # neighbours that vote


@dataclass
class IdentityThresholds(Thresholds):
    """Thresholds of the identity rule. With a `confidence` model (indexes of this version), `ranks` holds the
    cutoff on each rank's confidence (the target precision); without one (older indexes), identity-score
    thresholds. BIN thresholds are identity scores; cluster_distance is an identity distance."""

    candidates: tuple[int, int] = (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER)  # (embedding, k-mer)
    embed_below: float = math.inf           # embedding candidates only below this best k-mer score
    widen: tuple = NO_WIDENING    # (k-mer candidates, below[, scored]): distant queries' widened search (widen_parts)
    confidence: ConfidenceModel | None = None   # per-query confidence of each rank's label (reference.confidence)


# ============================================================================================ the gate
def gate(rank: str, has: np.ndarray, support: np.ndarray, share: np.ndarray, thresholds: dict[str, float] | None,
         min_confidence: float, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(assigned, blocked) [n] at `rank`, ranks taken top-down: a candidate (`has`) is assigned where its support
    reaches the rank's threshold, its share reaches `min_confidence`, and no rank above blocks it; a candidate that
    fails blocks every rank below (unless the rank is optional). A rank without a calibrated threshold (nan: no
    labelled calibration query) assigns nothing and blocks nothing; without `thresholds` nothing is assigned."""
    n = len(has)
    if thresholds is None:
        return np.zeros(n, dtype=bool), blocked
    threshold = thresholds.get(rank, math.nan)
    if math.isnan(threshold):
        return np.zeros(n, dtype=bool), blocked
    assigned = has & (support >= threshold) & (share >= min_confidence - 1e-6) & ~blocked
    if rank not in OPTIONAL_RANKS:
        blocked = blocked | (has & ~assigned)
    return assigned, blocked


# ============================================================================================ k-NN vote
@dataclass
class Votes:
    """Hierarchical k-NN votes for a batch of queries (codes index `ReferenceIndex.label_names[rank]`)."""

    label: dict[str, np.ndarray]       # rank -> int32 [n] candidate label, -1 = no neighbour labelled
    confidence: dict[str, np.ndarray]  # rank -> float32 [n] weighted vote share of the candidate
    support: dict[str, np.ndarray]     # rank -> float32 [n] similarity of the nearest neighbour with it
    assigned: dict[str, np.ndarray]    # rank -> bool [n]


def neighbour_weights(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Vote weights: cosine similarity, clipped at 0; nothing for empty slots."""
    weights = np.where(idx >= 0, np.clip(sims, 0.0, None), 0.0).astype(np.float32)
    return weights


def vote(sims: np.ndarray, idx: np.ndarray, codes: dict[str, np.ndarray], *,
         thresholds: dict[str, float] | None = None, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
         ranks: Sequence[str] = RANKS) -> Votes:
    """Similarity-weighted k-NN vote, rank by rank from phylum down.

    At each rank only neighbours that agree with every candidate above (or are unlabelled there) vote, so the
    candidates form one consistent lineage. A candidate's confidence is its vote weight over the weight of all
    neighbours labelled at that rank; its support is the similarity of its nearest neighbour. A rank is
    assigned when support >= the rank's threshold, confidence >= `min_confidence`, and no rank above has a
    candidate left unassigned (optional ranks such as subfamily never block; a rank with no labelled
    neighbour blocks nothing). Without `thresholds` nothing is assigned.
    """
    n = len(idx)
    rows_per_block = max(1, VOTE_BLOCK_ELEMENTS // max(1, idx.shape[1] ** 2))
    if n > rows_per_block:  # bound the [rows, k, k] comparison arrays
        parts = [vote(sims[i:i + rows_per_block], idx[i:i + rows_per_block], codes, thresholds=thresholds,
                      min_confidence=min_confidence, ranks=ranks) for i in range(0, n, rows_per_block)]
        return Votes(*({rank: np.concatenate([getattr(p, name)[rank] for p in parts])
                        for rank in parts[0].label} for name in ("label", "confidence", "support", "assigned")))
    valid = idx >= 0
    weights = neighbour_weights(sims, idx)
    safe_idx = np.where(valid, idx, 0)
    out = Votes({}, {}, {}, {})
    consistent = valid.copy()   # [n, k] neighbour agrees with every candidate so far (or is unlabelled there)
    blocked = np.zeros(n, dtype=bool)
    rows = np.arange(n)
    for rank in ranks:
        if rank not in codes:
            continue
        labels = np.where(valid, codes[rank][safe_idx], -1)
        known = labels >= 0
        total = (weights * known).sum(axis=1)
        eligible = known & consistent
        has = eligible.any(axis=1)
        # total weight of each neighbour's label among the eligible neighbours: [n, k]
        same = labels[:, :, None] == labels[:, None, :]
        label_weight = (same * (weights * eligible)[:, None, :]).sum(axis=2)
        label_weight = np.where(eligible, label_weight, -1.0)
        best = np.argmax(label_weight, axis=1)  # first maximum = the nearest neighbour of the heaviest label
        choice = np.where(has, labels[rows, best], -1).astype(np.int32)
        won = label_weight[rows, best]
        share = np.where(total > 0, won / np.where(total > 0, total, 1.0), 1.0)
        share = np.where(has, share, 0.0)
        # rows are sorted by similarity, so `best` is already the nearest neighbour carrying the candidate
        support = np.where(has, sims[rows, best], -np.inf).astype(np.float32)
        out.label[rank] = choice
        out.confidence[rank] = share.astype(np.float32)
        out.support[rank] = support
        out.assigned[rank], blocked = gate(rank, has, support, share, thresholds, min_confidence, blocked)
        agrees = (labels == choice[:, None]) | ~known | ~has[:, None]
        if rank in OPTIONAL_RANKS:  # an optional rank constrains the ranks below only where it is assigned
            agrees |= ~out.assigned[rank][:, None]
        consistent &= agrees
    return out


# ============================================================================================ identity rule
def tie_vote(idx: np.ndarray, score: np.ndarray, codes: dict[str, np.ndarray]) -> np.ndarray:
    """The column of the reported hit [Q] among ranked candidates (idx, score [Q, N], best first, -1 = empty):
    the first of the tied-best (score equal to the best) carrying the species most of them carry; when none of
    them has a species, the first one labelled at the most ranks (an unlabelled reference tied with labelled ones
    never hides their lineage)."""
    n = len(idx)
    chosen = np.zeros(n, dtype=np.int64)
    if not idx.shape[1]:
        return chosen
    valid = (idx >= 0) & np.isfinite(score)
    tied = valid & (score >= np.where(valid[:, 0], score[:, 0], -np.inf)[:, None])
    safe = np.where(valid, idx, 0)
    depth = sum((codes[rank][safe] >= 0).astype(np.int64) for rank in codes if rank in RANKS)
    chosen = np.argmax(np.where(tied, depth, -1), axis=1)
    if "species" in codes:
        species = np.where(tied, codes["species"][safe], -1)
        known = species >= 0
        counts = ((species[:, :, None] == species[:, None, :]) & known[:, None, :]).sum(axis=2)
        counts = np.where(known, counts, -1)
        chosen = np.where(known.any(axis=1), np.argmax(counts, axis=1), chosen)
    return chosen


def aligned_enough(overlap: np.ndarray | None, column: np.ndarray) -> np.ndarray | bool:
    """bool [Q]: whether each query's candidate in `column` [Q] is aligned over at least MIN_NAMED_COLUMNS
    columns (overlap [Q, N]); True where the overlaps are not known."""
    if overlap is None or not overlap.shape[1]:
        return True
    return overlap[np.arange(len(column)), column] >= MIN_NAMED_COLUMNS


def identity_decide(idx: np.ndarray, score: np.ndarray, codes: dict[str, np.ndarray], *,
                    thresholds: dict[str, float] | None = None, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                    ranks: Sequence[str] = RANKS, model: ConfidenceModel | None = None,
                    overlap: np.ndarray | None = None, query_length: np.ndarray | None = None,
                    reference=None, isolation: dict | None = None) -> tuple[Votes, np.ndarray]:
    """The identity classifier's decision on re-ranked candidates (idx, score [Q, N], best first, -1 = empty).

    The reported hit is the tie vote's (`tie_vote`), and every rank's candidate label is that hit's.

    With a confidence `model` (and the candidates' `overlap`, the queries' lengths, the `reference`
    SequenceStore the candidates are rows of and its `isolation` tables), a label's confidence is the
    model's probability that it is right, given the whole candidate list (reference.confidence), and a rank is
    assigned when it reaches the rank's cutoff in `thresholds` (`min_confidence` is not used: the tied-best share
    is part of the model's evidence). Without a model (indexes of older versions) the confidence is the share of
    the tied-best candidates labelled at the rank that carry the label; a rank is assigned when the best score
    reaches the rank's identity threshold and that share reaches `min_confidence`. Either way ranks are assigned
    top-down as in `vote` (optional ranks never block; nan thresholds never assign). Returns (Votes, chosen
    column [Q]).
    """
    n = len(idx)
    chosen = tie_vote(idx, score, codes)
    valid = (idx >= 0) & np.isfinite(score)
    hit = reported_hits(idx, score, chosen)
    long_enough = aligned_enough(overlap, chosen)
    ranks = [rank for rank in ranks if rank in codes]
    probability = None
    if model is not None:
        if overlap is None or query_length is None or reference is None or isolation is None:
            raise UsageError("a confidence model needs the candidates' overlap, the query lengths, the reference "
                             "and its isolation tables")
        evidence = query_evidence(idx, score, overlap, query_length, chosen, codes, ranks, reference,
                                  isolation_distances(isolation, hit))
        probability = rank_confidences(model, evidence, ranks)[1]
    else:
        best = np.where(valid[:, 0], score[:, 0], -np.inf) if idx.shape[1] else np.full(n, -np.inf)
        tied = valid & (score >= best[:, None])
        safe = np.where(valid, idx, 0)
    out = Votes({}, {}, {}, {})
    blocked = np.zeros(n, dtype=bool)
    for rank in ranks:
        label = np.where(hit >= 0, codes[rank][np.maximum(hit, 0)], -1).astype(np.int32)
        has = (label >= 0) & long_enough
        out.label[rank] = label
        if probability is None:
            labels = np.where(tied, codes[rank][safe], -1)
            labelled = (labels >= 0).sum(axis=1)
            agree = (labels == label[:, None]).sum(axis=1)
            share = np.where(has & (labelled > 0), agree / np.maximum(labelled, 1), 0.0).astype(np.float32)
            out.confidence[rank] = share
            out.support[rank] = np.where(has, best, -np.inf).astype(np.float32)
            out.assigned[rank], blocked = gate(rank, has, best, share, thresholds, min_confidence, blocked)
        else:
            p = probability[rank]
            has &= ~np.isnan(p)
            out.confidence[rank] = np.where(has, p, 0.0).astype(np.float32)
            out.support[rank] = np.where(has, p, -np.inf).astype(np.float32)
            out.assigned[rank], blocked = gate(rank, has, out.support[rank], np.ones(n), thresholds, 0.0, blocked)
    return out, chosen
