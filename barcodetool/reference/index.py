"""Reference index: embedded, labelled barcodes; exact blocked cosine k-NN search; threshold calibration.

HDF5 layout (format `barcodetool-reference`, version 2; see docs/file-formats.md):

    /ids                    UTF-8 strings [n], reference order
    /sequences              UTF-8 strings [n], cleaned sequences (for alignment re-ranking; read lazily)
    /sequence_group         int32 [n]; records with identical cleaned sequences share a number
    /embeddings             float32 or float16 [n, dim], every row L2-normalised (cosine = dot product)
    /labels/<name>          int32 [n] codes into /label_names/<name>, -1 = unknown; name = a rank or `bin`
    /label_names/<name>     UTF-8 strings
    /calibration/<level>/queries       int32 [m], reference rows used as leave-out calibration queries
    /calibration/<level>/neighbours    int32 [m, K], their nearest references outside the left-out group
    /calibration/<level>/similarities  float32 [m, K]   (level: sequence, species, genus)
    /identity/kmer/{kmers,df,refs}     the KmerIndex of the distinct sequences (int32; attrs k, size)
    /identity/calibration/<level>/{queries,embedding,embedding_score,embedding_overlap,kmer,kmer_score,
                            kmer_overlap}   leave-out identity candidates of distinct sequences (sequence groups)
    root attributes         format, format_version, barcodetool_version, model_name, model_sha256, pooling,
                            embedding_dim, dtype, count, source, created, tokenizer (JSON),
                            threshold_<rank> and threshold_bin (similarity; inf = never assigned, nan = the
                            reference has no such labels), cluster_distance_threshold, calibration_precision,
                            calibration_k, calibration_min_confidence, calibration (JSON details);
                            identity_threshold_<rank>, identity_threshold_bin (identity score),
                            identity_cluster_distance_threshold (identity distance), identity_calibration_precision,
                            identity_calibration_min_confidence, identity_calibration_candidates (JSON [embedding,
                            k-mer]), identity_calibration_embed_below (embedding candidates only for queries
                            whose best k-mer candidate scores below it; absent = inf), identity_calibration
                            (JSON details)

The identity layer (docs/identity-rerank.md) works on distinct sequences ("groups", numbered by first record):
each group's labels are those of its representative record (the most common full label set among its records).

Search is exact: queries and references are unit vectors, similarities are matrix products of a block of
queries with a block of references, and only the running top k of each query is kept, so memory is bounded by
the block sizes whatever the reference size.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .._version import __version__
from ..io.atomic import atomic_path
from ..io.readers import ReadOptions, ReadStats, read_barcodes
from ..errors import IndexMismatchError, InputError, UsageError
from ..taxonomy import LABELS, OPTIONAL_RANKS, RANKS, encode_labels  # noqa: F401 (re-exported)
from ..search import (KMER_FALLBACK_BELOW, KMER_FALLBACK_DF, KMER_MAX_DF, KMER_QUERY_STRIDE, KmerIndex, SequenceStore,
                      as_store, candidate_union, knn_search, normalize, rank_scored, score_candidates)
from ..search.knn import SEARCH_BLOCK_ELEMENTS, sequence_groups  # noqa: F401 (re-exported)

log = logging.getLogger("barcodetool")

REFERENCE_FORMAT = "barcodetool-reference"
REFERENCE_FORMAT_VERSION = 2     # 2: identity layer (k-mer index, identity calibration); older ones are refused
# Part of the cache key of indexes built from tables: raised when the same inputs would now give another index
# (2: calibration with embedding only below --embed-below, coverage over the barcode region), so that a cached
# index made by older code is rebuilt instead of recalibrated on every run.
CACHE_GENERATION = 2

DEFAULT_K = 10
DEFAULT_PRECISION = 0.95
DEFAULT_MIN_CONFIDENCE = 0.5
CALIBRATION_QUERIES = 10_000      # leave-out queries (distinct sequences) per calibration level
CALIBRATION_NEIGHBOURS = 50       # neighbours stored per calibration query (recalibration for k <= this)
CLUSTER_CALIBRATION_SIZE = 4_000  # unique BIN-labelled sequences clustered to calibrate the cluster threshold
VOTE_BLOCK_ELEMENTS = 1 << 22     # queries x k x k label comparisons held at once while voting
# classify --candidates-embedding: for the queries in doubt only (IDENTITY_EMBED_BELOW); 20 rather than 10 raises
# the genus top hit of train species left out from 76.81% to 78.60% (docs/identity-rerank.md, section 8)
IDENTITY_CANDIDATES_EMBEDDING = 20
IDENTITY_CANDIDATES_KMER = 10          # classify --candidates-kmer
# classify --embed-below: embedding candidates are sought only for queries whose best k-mer candidate scores below
# this; above it the embedding's candidates hardly ever change the call (docs/identity-rerank.md, "Embedding only
# where it helps"). inf = every query is embedded.
IDENTITY_EMBED_BELOW = 0.95
IDENTITY_CALIBRATION_QUERIES = 5_000   # leave-out identity queries (distinct sequences) per calibration level
IDENTITY_CALIBRATION_CANDIDATES = 20   # candidates of each source kept per calibration query (recalibration)
IDENTITY_CLUSTER_CALIBRATION_SIZE = 6_000  # distinct BIN-labelled sequences clustered to calibrate identity clusters

Progress = Callable[[int], None]


# ============================================================================================ labels


# ============================================================================================ voting
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
        if thresholds is not None:
            threshold = thresholds.get(rank, math.nan)
            if math.isnan(threshold):  # not calibrated (no labelled calibration query): never assigned,
                assigned = np.zeros(n, dtype=bool)  # and blocks nothing
            else:
                passes = has & (support >= threshold) & (share >= min_confidence - 1e-6)
                assigned = passes & ~blocked
                if rank not in OPTIONAL_RANKS:
                    # a rank with a candidate that fails blocks everything below; one without does not
                    blocked = blocked | (has & ~assigned)
            out.assigned[rank] = assigned
        else:
            out.assigned[rank] = np.zeros(n, dtype=bool)
        agrees = (labels == choice[:, None]) | ~known | ~has[:, None]
        if rank in OPTIONAL_RANKS:  # an optional rank constrains the ranks below only where it is assigned
            agrees |= ~out.assigned[rank][:, None]
        consistent &= agrees
    return out


# ============================================================================================ calibration
# Leave-out levels of the calibration searches: each calibration query is a distinct reference sequence searched
# against the reference without every record of the same sequence ("sequence"), of the same species ("species")
# or of the same genus ("genus").
LEVELS = ("sequence", "species", "genus")
# A rank's precision is calibrated on queries whose species is absent from the reference (species: only their
# own sequence is left out), the open-world condition in which a call at a rank above species matters.
PRECISION_LEVEL = {"phylum": "species", "class": "species", "order": "species", "family": "species",
                   "subfamily": "species", "genus": "species", "species": "sequence"}
# ... and the threshold is raised until at most 1 - precision of the queries whose own taxon at that rank is
# absent get a (necessarily wrong) label there.
NOVEL_LEVEL = {"genus": "genus", "species": "species"}
# The identity classifier measures genus precision on the pooled queries whose genus is in the reference: new
# haplotypes of known species ("sequence" level) and new species of known genera ("species" level, only queries
# whose genus keeps other reference sequences). On the second kind alone the identity top hit's genus is right
# only ~80-89 % of the time at any score on BOLD insects (shared haplotypes across genera, close relatives in other
# genera), so a 95 % target could never be met there and nothing below family would ever be assigned; on the first
# kind alone calibration never sees the scores of new species. Queries of absent genera are controlled by the
# novel-genus floor (NOVEL_LEVEL). Ranks above genus keep the species level.
IDENTITY_PRECISION_LEVEL = dict(PRECISION_LEVEL, genus=("sequence", "species"))


def precision_threshold(scores: np.ndarray, correct: np.ndarray, precision: float,
                        minimum: float = -math.inf) -> float:
    """The lowest score t >= `minimum` such that calls with score >= t are right at least `precision` of the time.

    inf when no such t exists (never assign), nan when there is nothing to calibrate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    ok = np.isfinite(scores)
    scores, correct = scores[ok], correct[ok]
    if len(scores) == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    # calls are made for whole groups of equal scores: evaluate only at the last position of each score
    last = np.r_[s[1:] != s[:-1], True]
    hits = np.cumsum(c)[last]
    counts = np.arange(1, len(s) + 1)[last]
    achieved = hits / counts
    values = s[last]
    good = np.nonzero((achieved >= precision - 1e-12) & (values >= minimum))[0]
    if len(good) == 0:
        return math.inf
    return float(values[good[-1]])


def rejection_threshold(scores: np.ndarray, total: int, rate: float) -> float:
    """The lowest t such that at most `rate` x `total` of the scores are >= t (-inf when all may pass)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])[::-1]
    allowed = int(math.floor(rate * total + 1e-9))
    if len(scores) <= allowed:
        return -math.inf
    return float(np.nextafter(scores[allowed], math.inf))


@dataclass
class Thresholds:
    """Calibrated decision thresholds of a reference (similarities are cosine similarities)."""

    ranks: dict[str, float]                 # rank -> similarity threshold (inf: never; nan: no labels)
    bin: float = math.nan                   # similarity within which the nearest reference's BIN is reported
    cluster_distance: float = math.nan      # cosine distance cut of average-linkage clustering
    precision: float = DEFAULT_PRECISION
    k: int = DEFAULT_K
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    details: dict = field(default_factory=dict)
    # "cosine" (k-NN vote: similarities, cosine distance) or "identity" (identity scores, identity distance)
    kind: str = "cosine"
    candidates: tuple[int, int] = (0, 0)    # identity: (embedding, k-mer) candidates calibrated with
    embed_below: float = math.inf           # identity: embedding candidates only below this best k-mer score

    def as_dict(self) -> dict:
        return {"kind": self.kind, "ranks": self.ranks, "bin": self.bin, "cluster_distance": self.cluster_distance,
                "precision": self.precision, "k": self.k, "min_confidence": self.min_confidence,
                "candidates": list(self.candidates), "embed_below": self.embed_below, "details": self.details}


def calibration_queries(groups: np.ndarray, labelled: np.ndarray | None, max_queries: int,
                        seed: int = 0) -> np.ndarray:
    """One reference row per distinct sequence (its first record; with `labelled`, only labelled rows), a
    random subsample of at most max_queries, in reference order."""
    rows = np.arange(len(groups)) if labelled is None else np.nonzero(labelled)[0]
    _, first = np.unique(groups[rows], return_index=True)
    first = np.sort(rows[first])
    if len(first) > max_queries:
        rng = np.random.default_rng(seed)
        first = np.sort(rng.choice(first, size=max_queries, replace=False))
    return first.astype(np.int64)


def _rank_calls(level, codes, ranks, thresholds, rank, k, min_confidence, decide=None):
    queries, sims, idx = level
    trial = dict(thresholds)
    trial[rank] = -math.inf
    position = ranks.index(rank)
    if decide is None:
        votes = vote(sims[:, :k], idx[:, :k], codes, thresholds=trial, min_confidence=min_confidence,
                     ranks=ranks[:position + 1])
    else:
        votes = decide(sims, idx, codes, thresholds=trial, min_confidence=min_confidence, ranks=ranks[:position + 1])
    truth = codes[rank][queries]
    return votes, truth


def _taxon_present(level, codes: dict[str, np.ndarray], rank: str, left_out: str):
    """The queries of a leave-out level whose taxon at `rank` keeps reference rows outside the left-out taxon."""
    queries, sims, idx = level
    if rank not in codes or left_out not in codes:
        return level
    r, l = codes[rank].astype(np.int64), codes[left_out].astype(np.int64)
    both = (r >= 0) & (l >= 0)
    count_r = np.bincount(r[r >= 0], minlength=int(r.max(initial=-1)) + 1)
    keys, count_rl = np.unique(r[both] * (int(l.max(initial=0)) + 1) + l[both], return_counts=True)
    qr, ql = r[queries], l[queries]
    key = np.maximum(qr, 0) * (int(l.max(initial=0)) + 1) + ql
    at = np.minimum(np.searchsorted(keys, key), max(len(keys) - 1, 0))
    inside = np.where((len(keys) > 0) & (ql >= 0), np.where(keys[at] == key, count_rl[at], 0), 0) \
        if len(keys) else np.zeros(len(queries), dtype=np.int64)
    present = (qr >= 0) & (count_r[np.maximum(qr, 0)] - inside > 0)
    return queries[present], sims[present], idx[present]


def calibrate_ranks(levels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], codes: dict[str, np.ndarray],
                    *, precision: float, k: int, min_confidence: float, decide: Callable | None = None,
                    precision_levels: dict[str, str] = PRECISION_LEVEL) -> tuple[dict[str, float], dict]:
    """Per-rank similarity thresholds, top-down (each rank on the classifier's own output given the thresholds
    above it). `levels` maps a leave-out level to (queries, similarities, neighbours). `decide(sims, idx, codes,
    *, thresholds, min_confidence, ranks) -> Votes` replaces the k-NN vote (the identity decision);
    `precision_levels` maps each rank to the level its precision is measured on."""
    thresholds: dict[str, float] = {}
    details: dict = {}
    ranks = [r for r in RANKS if r in codes]
    for rank in ranks:
        spec = precision_levels[rank]
        names = tuple(name for name in ((spec,) if isinstance(spec, str) else spec) if name in levels)
        names = names or ("sequence",)
        level_name = "+".join(names)
        if len(names) == 1:
            level = levels[names[0]]
        else:  # pooled: queries of the left-out levels only where their taxon at `rank` is still present
            parts = [levels[name] if name == "sequence" else _taxon_present(levels[name], codes, rank, name)
                     for name in names]
            level = tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
        votes, truth = _rank_calls(level, codes, ranks, thresholds, rank, k, min_confidence, decide)
        candidate = votes.assigned[rank] & (truth >= 0)
        correct = votes.label[rank][candidate] == truth[candidate]
        scores = votes.support[rank][candidate]
        novel_floor = -math.inf
        novel_name = NOVEL_LEVEL.get(rank)
        novel_info = None
        if novel_name in levels and len(scores):
            novel_votes, novel_truth = _rank_calls(levels[novel_name], codes, ranks, thresholds, rank, k,
                                                   min_confidence, decide)
            known = novel_truth >= 0
            calls = novel_votes.assigned[rank] & known  # the query's own taxon is absent: every call is wrong
            novel_floor = rejection_threshold(novel_votes.support[rank][calls], int(known.sum()), 1.0 - precision)
            novel_info = (novel_votes.support[rank][calls], int(known.sum()))
        threshold = precision_threshold(scores, correct, precision, minimum=novel_floor)
        if math.isnan(threshold) and (truth >= 0).any():
            threshold = math.inf  # labelled queries, but none reaches this rank (a rank above is never assigned)
        thresholds[rank] = threshold
        called = scores >= threshold if not math.isnan(threshold) else np.zeros(len(scores), dtype=bool)
        info = {"level": level_name, "queries": int((truth >= 0).sum()), "called": int(called.sum()),
                "precision": float(correct[called].mean()) if called.any() else None,
                "recall": float(correct[called].sum() / max(1, (truth >= 0).sum())),
                "precision_only_threshold": precision_threshold(scores, correct, precision)}
        if novel_info is not None:
            supports, total = novel_info
            info.update({"novel_level": novel_name, "novel_queries": total, "novel_floor": novel_floor,
                         "novel_called": float((supports >= threshold).sum() / max(1, total))})
        details[rank] = info
    return thresholds, details


def _nearest_bin(level, bin_codes):
    queries, sims, idx = level
    labels = np.where(idx >= 0, bin_codes[np.where(idx >= 0, idx, 0)], -1)
    has = (labels >= 0).any(axis=1)
    first = np.argmax(labels >= 0, axis=1)
    rows = np.arange(len(idx))
    nearest = np.where(has, labels[rows, first], -1)
    score = np.where(has, sims[rows, first], -np.inf)
    return queries, nearest, score, has


def calibrate_bin(levels: dict, bin_codes: np.ndarray | None, species_codes: np.ndarray | None, *,
                  precision: float) -> tuple[float, dict]:
    """Similarity within which the nearest BIN-labelled reference's BIN is right with `precision` (sequence
    level), raised until at most 1 - precision of queries whose BIN is absent (species level, BINs held by one
    species only) get one."""
    if bin_codes is None or not (bin_codes >= 0).any():
        return math.nan, {}
    queries, nearest, score, has = _nearest_bin(levels["sequence"], bin_codes)
    truth = bin_codes[queries]
    use = (truth >= 0) & has
    correct = nearest[use] == truth[use]
    floor = -math.inf
    info: dict = {}
    if "species" in levels and species_codes is not None:
        # BINs whose every record carries one and the same species vanish when that species is left out
        n_bins = int(bin_codes.max()) + 1
        labelled = bin_codes >= 0
        pairs = np.unique(np.stack([bin_codes[labelled], species_codes[labelled]], axis=1), axis=0)
        species_per_bin = np.bincount(pairs[:, 0], minlength=n_bins)
        private = species_per_bin == 1
        private &= np.isin(np.arange(n_bins), pairs[pairs[:, 1] >= 0, 0])
        q, _, s, h = _nearest_bin(levels["species"], bin_codes)
        qb = bin_codes[q]
        novel = (qb >= 0) & private[np.where(qb >= 0, qb, 0)]
        floor = rejection_threshold(s[novel & h], int(novel.sum()), 1.0 - precision)
        info = {"novel_queries": int(novel.sum()), "novel_floor": floor}
    threshold = precision_threshold(score[use], correct, precision, minimum=floor)
    called = score[use] >= threshold if not math.isnan(threshold) else np.zeros(int(use.sum()), dtype=bool)
    info.update({"queries": int((truth >= 0).sum()), "called": int(called.sum()),
                 "precision": float(correct[called].mean()) if called.any() else None})
    return threshold, info


# ============================================================================================ identity decision
def identity_decide(idx: np.ndarray, score: np.ndarray, codes: dict[str, np.ndarray], *,
                    thresholds: dict[str, float] | None = None, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                    ranks: Sequence[str] = RANKS) -> tuple[Votes, np.ndarray]:
    """The identity classifier's decision on re-ranked candidates (idx, score [Q, N], best first, -1 = empty).

    The tied-best candidates are those whose score equals the best one. The chosen hit is the first of them
    carrying the species most of them carry (the "tie vote"; the top hit when no tied candidate has a species),
    and every rank's candidate label is the chosen hit's. A label's confidence is the share of the tied-best
    candidates labelled at that rank that carry it (1.0 when they agree); its support is the best score. Ranks
    are assigned top-down as in `vote`: support >= the rank's threshold, confidence >= `min_confidence`, and no
    rank above left unassigned with a candidate (optional ranks never block; nan thresholds never assign).
    Returns (Votes, chosen column [Q]).
    """
    n = len(idx)
    rows = np.arange(n)
    valid = (idx >= 0) & np.isfinite(score)
    best = np.where(valid[:, 0], score[:, 0], -np.inf) if idx.shape[1] else np.full(n, -np.inf)
    tied = valid & (score >= best[:, None])
    safe = np.where(valid, idx, 0)

    def tied_labels(name):
        return np.where(tied, codes[name][safe], -1)

    chosen = np.zeros(n, dtype=np.int64)
    if "species" in codes and idx.shape[1]:
        species = tied_labels("species")
        known = species >= 0
        counts = ((species[:, :, None] == species[:, None, :]) & known[:, None, :]).sum(axis=2)
        counts = np.where(known, counts, -1)
        chosen = np.where(known.any(axis=1), np.argmax(counts, axis=1), 0)
    hit = np.where(valid[rows, chosen], idx[rows, chosen], -1) if idx.shape[1] else np.full(n, -1)
    out = Votes({}, {}, {}, {})
    blocked = np.zeros(n, dtype=bool)
    for rank in ranks:
        if rank not in codes:
            continue
        label = np.where(hit >= 0, codes[rank][np.maximum(hit, 0)], -1).astype(np.int32)
        has = label >= 0
        labels = tied_labels(rank)
        labelled = (labels >= 0).sum(axis=1)
        agree = (labels == label[:, None]).sum(axis=1)
        share = np.where(has & (labelled > 0), agree / np.maximum(labelled, 1), 0.0).astype(np.float32)
        out.label[rank] = label
        out.confidence[rank] = share
        out.support[rank] = np.where(has, best, -np.inf).astype(np.float32)
        if thresholds is not None:
            threshold = thresholds.get(rank, math.nan)
            if math.isnan(threshold):
                assigned = np.zeros(n, dtype=bool)
            else:
                assigned = has & (best >= threshold) & (share >= min_confidence - 1e-6) & ~blocked
                if rank not in OPTIONAL_RANKS:
                    blocked = blocked | (has & ~assigned)
            out.assigned[rank] = assigned
        else:
            out.assigned[rank] = np.zeros(n, dtype=bool)
    return out, chosen


def _identity_votes(sims, idx, codes, *, thresholds, min_confidence, ranks):
    return identity_decide(idx, sims, codes, thresholds=thresholds, min_confidence=min_confidence, ranks=ranks)[0]


def representative_records(groups: np.ndarray, codes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(first record, representative record) of each sequence group (groups numbered 0.. by first record).

    The representative carries the group's most common full set of labels (ranks and BIN); ties go to the more
    completely labelled set, then to the earliest record."""
    groups = np.asarray(groups, dtype=np.int64)
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first = np.unique(groups, return_index=True)
    names = [name for name in LABELS if name in codes]
    table = np.stack([groups] + [np.asarray(codes[name], dtype=np.int64) for name in names], axis=1)
    combos, where, counts = np.unique(table, axis=0, return_index=True, return_counts=True)
    complete = (combos[:, 1:] >= 0).sum(axis=1)
    order = np.lexsort((where, -complete, -counts, combos[:, 0]))
    group_sorted = combos[order, 0]
    take = np.r_[True, group_sorted[1:] != group_sorted[:-1]]
    representative = np.empty(len(first), dtype=np.int64)
    representative[group_sorted[take]] = where[order][take]
    return first.astype(np.int64), representative


@dataclass
class IdentityLayer:
    """What identity classification needs: the distinct reference sequences, their k-mer index and labels."""

    store: SequenceStore          # the distinct sequences, in group order
    kmer: KmerIndex               # over `store`
    group_first: np.ndarray       # int64 [groups] first record of each distinct sequence (its embedding)
    group_record: np.ndarray      # int64 [groups] representative record (its id and labels are reported)
    codes: dict[str, np.ndarray]  # label name -> int32 [groups] the representative record's codes

    def __len__(self) -> int:
        return len(self.group_first)


def merge_identity_candidates(stored: dict, n_embedding: int, n_kmer: int,
                              embed_below: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """(idx, score) [m, N] of stored calibration candidates restricted to the first n of each source, merged
    and ranked exactly as `identity_hits` ranks them: the union of both sources where the best k-mer candidate
    scores below `embed_below` (or there are no k-mer candidates), the k-mer candidates alone elsewhere."""
    # identities are not stored: the scores stand in for them (only the ranking is used here)
    kmer = ScoredCandidates(stored["kmer"][:, :n_kmer], stored["kmer_score"][:, :n_kmer],
                            stored["kmer_score"][:, :n_kmer], stored["kmer_overlap"][:, :n_kmer])
    embedding = ScoredCandidates(stored["embedding"][:, :n_embedding], stored["embedding_score"][:, :n_embedding],
                                 stored["embedding_score"][:, :n_embedding],
                                 stored["embedding_overlap"][:, :n_embedding])
    need = embedding_needed(kmer, n_embedding, embed_below)
    idx, score, _, _ = merge_ranked(kmer, embedding, need)
    return idx, score


@dataclass
class ScoredCandidates:
    """Candidates of one search (distinct-sequence rows of the reference) scored by identity, in the search's
    order (not ranked)."""

    idx: np.ndarray       # int64 [Q, N] (-1 = empty)
    score: np.ndarray     # float32 [Q, N] coverage scores (-inf = empty)
    identity: np.ndarray  # float32 [Q, N]
    overlap: np.ndarray   # int32 [Q, N]

    def best(self) -> np.ndarray:
        """float [Q]: the best score of each row (-inf without candidates)."""
        valid = self.idx >= 0
        return np.where(valid, self.score, -np.inf).max(axis=1, initial=-np.inf)

    def rows(self, rows: np.ndarray) -> "ScoredCandidates":
        return ScoredCandidates(self.idx[rows], self.score[rows], self.identity[rows], self.overlap[rows])


def kmer_fallback(n_embedding: int, embed_below: float) -> bool:
    """Whether the k-mer search also searches again, with a higher cap, the queries whose k-mers are nearly all
    too common (densely sampled species): needed unless every query gets embedding candidates as well."""
    return n_embedding == 0 or math.isfinite(embed_below)


def embedding_needed(kmer: ScoredCandidates, n_embedding: int, embed_below: float) -> np.ndarray:
    """bool [Q]: the queries that get embedding candidates: every one when there are no k-mer candidates to
    judge by, else those whose best k-mer candidate scores below `embed_below`; none without embedding
    candidates."""
    q = len(kmer.idx)
    if n_embedding <= 0:
        return np.zeros(q, dtype=bool)
    if kmer.idx.shape[1] == 0:
        return np.ones(q, dtype=bool)
    return ~(kmer.best() >= embed_below)


def merge_ranked(kmer: ScoredCandidates, embedding: ScoredCandidates, embedded: np.ndarray):
    """(idx, score, identity, overlap) [Q, n_embedding + n_kmer], ranked as `rerank` ranks candidates: rows where
    `embedded` is set hold the union of the embedding candidates (first) and the k-mer ones, the others the k-mer
    candidates alone. `embedding` holds rows for the `embedded` queries only, or for every query."""
    q, n_kmer = kmer.idx.shape
    n_embedding = embedding.idx.shape[1]
    width = n_embedding + n_kmer
    idx = np.full((q, width), -1, dtype=np.int64)
    score = np.full((q, width), -np.inf, dtype=np.float32)
    identity = np.full((q, width), -np.inf, dtype=np.float32)
    overlap = np.zeros((q, width), dtype=np.int32)

    def place(rows: np.ndarray, found: ScoredCandidates) -> None:
        ranked_idx, ranked_score, ranked_overlap, ranked_identity = rank_scored(
            found.idx, found.score, found.overlap, found.identity)
        real = ranked_idx >= 0           # empty slots (and repeated candidates) carry no identity or overlap
        columns = ranked_idx.shape[1]
        idx[rows, :columns] = ranked_idx
        score[rows, :columns] = ranked_score
        identity[rows, :columns] = np.where(real, ranked_identity, -np.inf)
        overlap[rows, :columns] = np.where(real, ranked_overlap, 0)

    rows = np.nonzero(embedded)[0]
    if len(embedding.idx) == q and len(rows) < q:
        embedding = embedding.rows(rows)
    if len(rows):
        part = kmer.rows(rows)
        place(rows, ScoredCandidates(candidate_union(embedding.idx, part.idx),
                                     *(np.concatenate([getattr(embedding, name), getattr(part, name)], axis=1)
                                       for name in ("score", "identity", "overlap"))))
    alone = np.nonzero(~np.asarray(embedded, dtype=bool))[0]
    if len(alone) and n_kmer:
        place(alone, kmer.rows(alone))
    return idx, score, identity, overlap


# ============================================================================================ the index
# ============================================================================================ hits
@dataclass
class IdentityHits:
    """Identity search results of a batch of queries (distinct-sequence rows of the reference)."""

    idx: np.ndarray          # int64 [Q, N] candidates ranked by score (-1 = empty)
    score: np.ndarray        # float32 [Q, N] coverage scores
    identity: np.ndarray     # float32 [Q, N]
    overlap: np.ndarray      # int32 [Q, N]
    votes: object            # reference.Votes of the identity decision
    chosen: np.ndarray       # int64 [Q] column of the hit whose lineage is reported
    hit: np.ndarray          # int64 [Q] its distinct-sequence row (-1 = no candidate)
    bins: list[str]          # per query: BIN within the BIN threshold, else ""
    similarity: np.ndarray   # float32 [Q] identity of the hit (nan = none)
    embedded: np.ndarray     # bool [Q] the query got embedding candidates (embedding_needed)


def kmer_hits(queries, index: ReferenceIndex, n_kmer: int, *, fallback: bool = True) -> ScoredCandidates:
    """The first stage of `identity_hits`: k-mer candidates of query sequences scored by identity (`fallback`:
    queries whose k-mers are nearly all too common are searched again with a higher cap)."""
    store = as_store(queries)
    _, km = index.identity_candidates(store, None, 0, n_kmer, fallback=fallback)
    score, identity, overlap = score_candidates(store, index.identity.store, km)
    return ScoredCandidates(km, score, identity, overlap)


def identity_hits(queries, vectors: np.ndarray | None, index: ReferenceIndex, thresholds: Thresholds | None = None,
                  *, candidates: tuple[int, int] = (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER),
                  min_confidence: float | None = None, device=None, embed: Callable | None = None,
                  kmer: ScoredCandidates | None = None) -> IdentityHits:
    """Search, re-rank by identity and decide (reference.identity_decide) for a batch of query sequences
    (a list of cleaned sequences or a SequenceStore).

    K-mer candidates come first (`kmer`: already computed by `kmer_hits`); embedding candidates are added for the
    queries whose best k-mer candidate scores below `thresholds.embed_below` (`embedding_needed`). Their
    embeddings come from `vectors` (rows for every query, or for those queries only) or from `embed`, a function
    of a list of sequences called for those queries only.
    """
    if thresholds is None:
        thresholds = index.identity_thresholds_for(candidates=candidates)
    if min_confidence is None:
        min_confidence = thresholds.min_confidence
    n_embedding, n_kmer = candidates
    store = as_store(queries)
    n = len(store)
    layer = index.identity
    if kmer is None:
        kmer = kmer_hits(store, index, n_kmer, fallback=kmer_fallback(n_embedding, thresholds.embed_below))
    need = embedding_needed(kmer, n_embedding, thresholds.embed_below)
    rows = np.nonzero(need)[0]
    embedding = ScoredCandidates(np.zeros((len(rows), 0), dtype=np.int64), np.zeros((len(rows), 0), np.float32),
                                 np.zeros((len(rows), 0), np.float32), np.zeros((len(rows), 0), np.int32))
    if len(rows):
        if vectors is not None:
            vectors = np.asarray(vectors)
            if len(vectors) not in (n, len(rows)):
                raise UsageError(f"vectors must have a row for each of the {n} queries or for the {len(rows)} "
                                 f"queries that need embedding candidates, got {len(vectors)}")
            if len(vectors) == n:
                vectors = vectors[rows]
        elif embed is not None:
            vectors = np.asarray(embed([store.sequence(int(i)) for i in rows]))
        else:
            raise UsageError("embedding candidates need the queries' embeddings")
        subset = as_store([store.sequence(int(i)) for i in rows]) if len(rows) < n else store
        emb, _ = index.identity_candidates(subset, vectors, n_embedding, 0, device=device)
        known = kmer.rows(rows)
        # a candidate both searches found is scored once: its k-mer stage values are copied
        same = (emb[:, :, None] == known.idx[:, None, :]) & (emb[:, :, None] >= 0)
        found = same.any(axis=2)
        embedding = ScoredCandidates(emb, *score_candidates(subset, layer.store, np.where(found, -1, emb)))
        if found.any():
            column = np.argmax(same, axis=2)
            for name in ("score", "identity", "overlap"):
                values = getattr(embedding, name)
                values[found] = np.take_along_axis(getattr(known, name), column, axis=1)[found]
    idx, score, identity, overlap = merge_ranked(kmer, embedding, need)
    codes = {r: layer.codes[r] for r in index.ranks}
    votes, chosen = identity_decide(idx, score, codes, thresholds=thresholds.ranks, min_confidence=min_confidence)
    n = len(store)
    rows = np.arange(n)
    if idx.shape[1]:
        hit = np.where(idx[rows, chosen] >= 0, idx[rows, chosen], -1)
        similarity = np.where(hit >= 0, identity[rows, chosen], np.nan).astype(np.float32)
    else:
        hit = np.full(n, -1, dtype=np.int64)
        similarity = np.full(n, np.nan, dtype=np.float32)
    bins = [""] * n
    bin_codes = layer.codes.get("bin")
    if bin_codes is not None and not math.isnan(thresholds.bin) and idx.shape[1]:
        labels = np.where(idx >= 0, bin_codes[np.maximum(idx, 0)], -1)
        first = np.argmax(labels >= 0, axis=1)           # the best-scoring BIN-labelled candidate ...
        use = np.where(labels[rows, chosen] >= 0, chosen, first)   # ... unless the reported hit has a BIN
        label = labels[rows, use]
        ok = (label >= 0) & (score[rows, use] >= thresholds.bin)
        names = index.label_names["bin"]
        bins = [names[c] if good else "" for c, good in zip(label.tolist(), ok.tolist())]
    return IdentityHits(idx=idx, score=score, identity=identity, overlap=overlap, votes=votes, chosen=chosen,
                        hit=hit, bins=bins, similarity=similarity, embedded=need)


def nearest_bins(index: ReferenceIndex, sims: np.ndarray, idx: np.ndarray, threshold: float) -> list[str]:
    """Per query: the BIN of the nearest BIN-labelled neighbour when its similarity >= threshold, else ""."""
    n = len(idx)
    codes = index.bin_codes
    if codes is None or math.isnan(threshold) or n == 0:
        return [""] * n
    labels = np.where(idx >= 0, codes[np.where(idx >= 0, idx, 0)], -1)
    has = (labels >= 0).any(axis=1)
    first = np.argmax(labels >= 0, axis=1)
    rows = np.arange(n)
    ok = has & (sims[rows, first] >= threshold)
    chosen = labels[rows, first]
    names = index.label_names["bin"]
    return [names[c] if good else "" for c, good in zip(chosen.tolist(), ok.tolist())]


@dataclass
class ReferenceIndex:
    """Embedded reference barcodes with their labels and calibrated thresholds."""

    ids: list[str]
    embeddings: np.ndarray                       # [n, dim] unit rows, float32 or float16
    codes: dict[str, np.ndarray]                 # label name (rank or "bin") -> int32 [n], -1 unknown
    label_names: dict[str, list[str]]
    groups: np.ndarray                           # int32 [n] identical-sequence groups
    model_name: str
    model_sha256: str
    thresholds: Thresholds | None = None
    attrs: dict = field(default_factory=dict)
    path: Path | None = None
    _sequences: list[str] | None = None
    calibration: dict | None = None              # level -> {"queries", "neighbours", "similarities"} arrays
    identity_thresholds: Thresholds | None = None  # kind "identity": identity-score thresholds
    identity_calibration: dict | None = None     # level -> stored leave-out identity candidates (group space)
    _identity: IdentityLayer | None = None
    _group_embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def sequences(self) -> list[str]:
        """The cleaned reference sequences (read from the file on first use)."""
        if self._sequences is None:
            if self.path is None:
                raise InputError("this index holds no sequences")
            import h5py

            with h5py.File(self.path, "r") as handle:
                if "sequences" not in handle:
                    raise InputError("this index holds no sequences", path=str(self.path),
                                     fix="rebuild it with `barcodetool reference build`")
                self._sequences = handle["sequences"].asstr()[:].tolist()
        return self._sequences

    @property
    def ranks(self) -> list[str]:
        """Ranks at which at least one reference record is labelled."""
        return [r for r in RANKS if r in self.codes and (self.codes[r] >= 0).any()]

    @property
    def bin_codes(self) -> np.ndarray | None:
        return self.codes.get("bin")

    def label(self, name: str, code: int) -> str:
        return self.label_names[name][code] if code >= 0 else ""

    def rank_codes(self) -> dict[str, np.ndarray]:
        return {r: self.codes[r] for r in self.ranks}

    # ------------------------------------------------------------------------------------ identity layer
    @property
    def identity(self) -> IdentityLayer:
        """The identity layer: read from the index file (k-mer index stored there), else built (~17 s for 31k
        distinct barcodes) and kept."""
        if self._identity is None:
            self._identity = self._read_identity() if self.path is not None else None
            if self._identity is None:
                self._identity = self.build_identity()
        return self._identity

    def _identity_base(self):
        first, representative = representative_records(self.groups, self.codes)
        sequences = self.sequences
        store = SequenceStore.from_sequences([sequences[i] for i in first.tolist()])
        codes = {name: values[representative].astype(np.int32) for name, values in self.codes.items()}
        return store, first, representative, codes

    def build_identity(self) -> IdentityLayer:
        """Build the identity layer from the reference sequences (the k-mer index of the distinct ones)."""
        store, first, representative, codes = self._identity_base()
        log.info(f"indexing the k-mers of {len(store):,} distinct reference sequences")
        return IdentityLayer(store=store, kmer=KmerIndex(store), group_first=first, group_record=representative,
                             codes=codes)

    def _read_identity(self) -> IdentityLayer | None:
        import h5py

        with h5py.File(self.path, "r") as handle:
            group = handle.get("identity/kmer")
            if group is None:
                return None
            arrays = {name: group[name][:] for name in ("kmers", "df", "refs")}
            k, size = int(group.attrs["k"]), int(group.attrs["size"])
        store, first, representative, codes = self._identity_base()
        if size != len(store):
            raise InputError(f"the stored k-mer index covers {size:,} sequences, the index {len(store):,}",
                             path=str(self.path), fix="rebuild the index with `barcodetool reference build`")
        kmer = KmerIndex.from_arrays(k, size, arrays["kmers"], arrays["df"], arrays["refs"])
        return IdentityLayer(store=store, kmer=kmer, group_first=first, group_record=representative, codes=codes)

    @property
    def group_embeddings(self) -> np.ndarray:
        """Embeddings of the distinct sequences (group order): the embedding candidates of the identity layer."""
        if self._group_embeddings is None:
            first = self.identity.group_first
            if len(first) == len(self.embeddings) and (first == np.arange(len(first))).all():
                self._group_embeddings = self.embeddings
            else:
                self._group_embeddings = np.ascontiguousarray(self.embeddings[first])
        return self._group_embeddings

    def identity_candidates(self, queries, vectors: np.ndarray | None, n_embedding: int, n_kmer: int, *,
                            exclude: tuple[np.ndarray, np.ndarray] | None = None, device=None,
                            max_df: int | None = None, fallback: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(embedding candidates [Q, n_embedding], k-mer candidates [Q, n_kmer]) as distinct-sequence rows
        (-1 = none). `vectors`: the queries' embeddings (needed when n_embedding > 0); `exclude`: (query groups,
        reference groups) in distinct-sequence space, for leave-out calibration; `fallback` (default: without
        embedding candidates): queries whose k-mers are nearly all over the cap are searched again with a higher
        cap."""
        queries = as_store(queries)
        nq = len(queries)
        emb = np.full((nq, max(0, n_embedding)), -1, dtype=np.int64)
        km = np.full((nq, max(0, n_kmer)), -1, dtype=np.int64)
        if n_embedding > 0 and nq:
            if vectors is None:
                raise UsageError("embedding candidates need the queries' embeddings")
            _, emb = knn_search(normalize(vectors), self.group_embeddings, n_embedding,
                                exclude=[exclude] if exclude is not None else (), device=device)
        if n_kmer > 0 and nq:
            kmer_index = self.identity.kmer
            cap = KMER_MAX_DF if max_df is None else max_df
            if fallback is None:
                fallback = n_embedding == 0
            # queries of heavily sampled species, whose k-mers are nearly all over the cap, need the commoner
            # k-mers too when no embedding candidates make up for them
            second = (KMER_FALLBACK_DF, KMER_FALLBACK_BELOW) if fallback and max_df is None else None
            _, km = kmer_index.search(queries, n_kmer, max_df=cap, stride=KMER_QUERY_STRIDE, exclude=exclude,
                                      fallback=second)
        return emb, km

    def identity_calibration_level(self, level: str, n_embedding: int, n_kmer: int, *,
                                   max_queries: int = IDENTITY_CALIBRATION_QUERIES, seed: int = 0, device=None,
                                   embed_below: float = math.inf):
        """(queries, scores, candidates) [m, N] of one leave-out level in distinct-sequence space, ranked; the
        candidate searches and identities are computed once (IDENTITY_CALIBRATION_CANDIDATES of each source)
        and reused for any smaller numbers of candidates. None when the reference has no labels at `level`."""
        if level not in LEVELS:
            raise UsageError(f"unknown calibration level {level!r}")
        self.identity_calibration = self.identity_calibration or {}
        stored = self.identity_calibration.get(level)
        if stored is None or stored["embedding"].shape[1] < n_embedding or stored["kmer"].shape[1] < n_kmer:
            layer = self.identity
            groups = np.arange(len(layer), dtype=np.int32)
            labelled = None
            if level != "sequence":
                if level not in layer.codes or not (layer.codes[level] >= 0).any():
                    return None
                labelled = layer.codes[level] >= 0
            queries = calibration_queries(groups, labelled, max_queries, seed)
            if level == "sequence":
                exclude = (groups[queries], groups)
            else:
                exclude = (layer.codes[level][queries], layer.codes[level])
            flat = [layer.store.sequence(int(i)) for i in queries]
            query_store = SequenceStore.from_sequences(flat)
            width_e = max(n_embedding, IDENTITY_CALIBRATION_CANDIDATES)
            width_k = max(n_kmer, IDENTITY_CALIBRATION_CANDIDATES)
            vectors = np.asarray(self.group_embeddings[queries], dtype=np.float32)
            emb, km = self.identity_candidates(query_store, vectors, width_e, width_k, exclude=exclude,
                                               device=device)
            stored = {"queries": queries}
            for name, table in (("embedding", emb), ("kmer", km)):
                score, _, overlap = score_candidates(query_store, layer.store, table)
                stored.update({name: table, f"{name}_score": score, f"{name}_overlap": overlap})
            self.identity_calibration[level] = stored
        idx, score = merge_identity_candidates(stored, n_embedding, n_kmer, embed_below)
        return stored["queries"], score, idx

    def calibrate_identity(self, *, precision: float = DEFAULT_PRECISION,
                           min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                           candidates: tuple[int, int] = (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER),
                           cluster: bool = True, max_queries: int = IDENTITY_CALIBRATION_QUERIES,
                           cluster_size: int = IDENTITY_CLUSTER_CALIBRATION_SIZE, seed: int = 0,
                           device=None, embed_below: float = IDENTITY_EMBED_BELOW) -> Thresholds:
        """Calibrate (and store in `self.identity_thresholds`) the identity classifier's thresholds on the
        reference itself: per-rank identity-score thresholds and the BIN one exactly as `calibrate` does for
        cosine similarities (same leave-out levels, same precision and open-world rules, on distinct
        sequences), and the identity-distance cut of identity clustering that maximises the AMI of the
        reference's own BINs on a subsample (cluster.calibrate_identity_cluster_threshold). The calibration
        queries take the classifier's own path: embedding candidates only below `embed_below`."""
        if not 0.0 < precision <= 1.0:
            raise UsageError(f"precision must be in (0, 1], got {precision}")
        n_embedding, n_kmer = (int(c) for c in candidates)
        if n_embedding < 0 or n_kmer < 0 or n_embedding + n_kmer == 0:
            raise UsageError("identity classification needs embedding or k-mer candidates (or both)")
        layer = self.identity
        levels = {}
        for level in LEVELS:
            found = self.identity_calibration_level(level, n_embedding, n_kmer, max_queries=max_queries, seed=seed,
                                                    device=device, embed_below=embed_below)
            if found is not None:
                levels[level] = found
        rank_codes = {r: layer.codes[r] for r in self.ranks}
        ranks, details = calibrate_ranks(levels, rank_codes, precision=precision, k=0, min_confidence=min_confidence,
                                         decide=_identity_votes, precision_levels=IDENTITY_PRECISION_LEVEL)
        bin_threshold, bin_details = calibrate_bin(levels, layer.codes.get("bin"), layer.codes.get("species"),
                                                   precision=precision)
        cluster_distance = math.nan
        previous = self.identity_thresholds
        if previous is not None and not math.isnan(previous.cluster_distance):   # kept: it does not depend on
            # the classifier's settings
            cluster_distance = previous.cluster_distance
            details["cluster"] = previous.details.get("cluster", {})
        elif cluster and layer.codes.get("bin") is not None and (layer.codes["bin"] >= 0).any():
            from ..cluster import calibrate_identity_cluster_threshold

            cluster_distance, details["cluster"] = calibrate_identity_cluster_threshold(
                layer.store, self.group_embeddings, layer.codes["bin"], max_size=cluster_size, seed=seed,
                device=device)
        details["bin"] = bin_details
        details["calibration_queries"] = {name: int(len(level[0])) for name, level in levels.items()}
        self.identity_thresholds = Thresholds(ranks=ranks, bin=bin_threshold, cluster_distance=cluster_distance,
                                              precision=precision, k=0, min_confidence=min_confidence,
                                              details=details, kind="identity",
                                              candidates=(n_embedding, n_kmer), embed_below=float(embed_below))
        return self.identity_thresholds

    def identity_thresholds_for(self, *, precision: float | None = None, min_confidence: float | None = None,
                                candidates: tuple[int, int] | None = None,
                                embed_below: float | None = None) -> Thresholds:
        """Identity thresholds for these settings: the stored ones when they match, else recalibrated from the
        stored calibration candidates (kept in memory)."""
        current = self.identity_thresholds
        precision = current.precision if precision is None and current else (precision or DEFAULT_PRECISION)
        if min_confidence is None:
            min_confidence = current.min_confidence if current else DEFAULT_MIN_CONFIDENCE
        if candidates is None:
            candidates = current.candidates if current else (IDENTITY_CANDIDATES_EMBEDDING,
                                                             IDENTITY_CANDIDATES_KMER)
        candidates = (int(candidates[0]), int(candidates[1]))
        if embed_below is None:
            embed_below = current.embed_below if current else IDENTITY_EMBED_BELOW
        embed_below = float(embed_below)
        if (current is not None and math.isclose(current.precision, precision)
                and math.isclose(current.min_confidence, min_confidence) and tuple(current.candidates) == candidates
                and (current.embed_below == embed_below or candidates[0] == 0)):
            return current
        log.info(f"calibrating identity thresholds for precision {precision}, share {min_confidence}, "
                 f"candidates {candidates[0]} embedding + {candidates[1]} k-mer, embedding below {embed_below}")
        return self.calibrate_identity(precision=precision, min_confidence=min_confidence, candidates=candidates,
                                       cluster=False, embed_below=embed_below)

    # ------------------------------------------------------------------------------------ search
    def identity_hits(self, queries, vectors: np.ndarray | None, **options) -> IdentityHits:
        """`identity_hits` against this index (for callers that hold an index but should not import this module)."""
        return identity_hits(queries, vectors, self, **options)

    def nearest_bins(self, sims: np.ndarray, idx: np.ndarray, threshold: float) -> list[str]:
        """`nearest_bins` for neighbours found in this index."""
        return nearest_bins(self, sims, idx, threshold)

    def search(self, queries: np.ndarray, k: int, *, device=None, progress: Progress | None = None):
        """Top-k neighbours of query embeddings (normalised here): (similarities, indices)."""
        return knn_search(normalize(queries), self.embeddings, k, device=device, progress=progress)

    def check_model(self, pretrained, *, source: str | None = None) -> None:
        """Raise IndexMismatchError unless `pretrained` is the model the index was built with."""
        if pretrained.sha256 == self.model_sha256:
            return
        where = source or (str(self.path) if self.path else "the reference index")
        raise IndexMismatchError(
            f"{where} was built with model {self.model_name!r} (sha256 {self.model_sha256[:12]}), but model "
            f"{pretrained.name!r} (sha256 {pretrained.sha256[:12]}) is in use; embeddings of different models "
            f"cannot be compared (rebuild the index with `barcodetool reference build ... --model "
            f"{pretrained.name}` or pass --model {self.model_name})")

    # ------------------------------------------------------------------------------------ calibration
    def level_exclusions(self, level: str, queries: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(query groups, reference groups) pairs that leave out the query's sequence and, above the
        "sequence" level, every record of its species or genus."""
        pairs = [(self.groups[queries], self.groups)]
        if level != "sequence":
            codes = self.codes[level]
            pairs.append((codes[queries], codes))  # queries are labelled; -1 rows never match
        return pairs

    def calibration_neighbours(self, level: str = "sequence", k: int = DEFAULT_K, *,
                               max_queries: int = CALIBRATION_QUERIES, seed: int = 0, device=None,
                               progress: Progress | None = None):
        """(queries, similarities, neighbours) of one leave-out level, searched once and reused for k <= stored."""
        if level not in LEVELS:
            raise UsageError(f"unknown calibration level {level!r}")
        self.calibration = self.calibration or {}
        stored = self.calibration.get(level)
        if stored is not None and stored["neighbours"].shape[1] >= k:
            return stored["queries"], stored["similarities"], stored["neighbours"]
        labelled = None
        if level != "sequence":
            if level not in self.codes or not (self.codes[level] >= 0).any():
                return None
            labelled = self.codes[level] >= 0
        queries = calibration_queries(self.groups, labelled, max_queries, seed)
        width = max(k, CALIBRATION_NEIGHBOURS)
        query_vectors = np.asarray(self.embeddings[queries], dtype=np.float32)
        sims, idx = knn_search(query_vectors, self.embeddings, width, exclude=self.level_exclusions(level, queries),
                               device=device, progress=progress)
        self.calibration[level] = {"queries": queries, "similarities": sims, "neighbours": idx}
        return queries, sims, idx

    def calibrate(self, *, precision: float = DEFAULT_PRECISION, k: int = DEFAULT_K,
                  min_confidence: float = DEFAULT_MIN_CONFIDENCE, cluster: bool = True,
                  max_queries: int = CALIBRATION_QUERIES, cluster_size: int = CLUSTER_CALIBRATION_SIZE,
                  seed: int = 0, device=None) -> Thresholds:
        """Calibrate (and store in `self.thresholds`) the per-rank, BIN and cluster thresholds.

        Leave-out searches at three levels (LEVELS): each calibration query is a distinct reference sequence
        searched without every record of that same sequence, species, or genus. A rank's threshold is the lowest
        similarity at which its calls are right with `precision` when the next lower taxon is unknown to the
        reference, raised until at most 1 - precision of queries whose own taxon is absent get a label
        (species and genus); see docs/classify-and-cluster.md.
        """
        if not 0.0 < precision <= 1.0:
            raise UsageError(f"precision must be in (0, 1], got {precision}")
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        levels = {}
        for level in LEVELS:
            found = self.calibration_neighbours(level, k, max_queries=max_queries, seed=seed, device=device)
            if found is not None:
                levels[level] = found
        ranks, details = calibrate_ranks(levels, self.rank_codes(), precision=precision, k=k,
                                         min_confidence=min_confidence)
        bin_threshold, bin_details = calibrate_bin(levels, self.bin_codes, self.codes.get("species"),
                                                   precision=precision)
        cluster_distance = math.nan
        if cluster and self.thresholds is not None and not math.isnan(self.thresholds.cluster_distance):
            cluster_distance = self.thresholds.cluster_distance
            details["cluster"] = self.thresholds.details.get("cluster", {})
        elif cluster and self.bin_codes is not None and (self.bin_codes >= 0).any():
            from ..cluster import calibrate_cluster_threshold

            cluster_distance, cluster_details = calibrate_cluster_threshold(
                self.embeddings, self.bin_codes, self.groups, max_size=cluster_size, seed=seed)
            details["cluster"] = cluster_details
        details["bin"] = bin_details
        details["calibration_queries"] = {name: int(len(level[0])) for name, level in levels.items()}
        self.thresholds = Thresholds(ranks=ranks, bin=bin_threshold, cluster_distance=cluster_distance,
                                     precision=precision, k=k, min_confidence=min_confidence, details=details)
        return self.thresholds

    def thresholds_for(self, *, precision: float | None = None, k: int | None = None,
                       min_confidence: float | None = None) -> Thresholds:
        """Thresholds for these settings: the stored ones when they match, else recalibrated (kept in memory)."""
        current = self.thresholds
        precision = current.precision if precision is None and current else (precision or DEFAULT_PRECISION)
        k = current.k if k is None and current else (k or DEFAULT_K)
        if min_confidence is None:
            min_confidence = current.min_confidence if current else DEFAULT_MIN_CONFIDENCE
        if (current is not None and math.isclose(current.precision, precision)
                and current.k == k and math.isclose(current.min_confidence, min_confidence)):
            return current
        log.info(f"calibrating thresholds for precision {precision}, k {k}, vote share {min_confidence}")
        return self.calibrate(precision=precision, k=k, min_confidence=min_confidence)

    # ------------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike, *, source: str | None = None) -> Path:
        """Write the index to one HDF5 file, atomically."""
        import h5py

        path = Path(path)
        strings = h5py.string_dtype("utf-8")
        sequences = self._sequences if self._sequences is not None else (
            self.sequences if self.path is not None else None)
        dtype = "float16" if self.embeddings.dtype == np.float16 else "float32"
        with atomic_path(path) as temporary:
            with h5py.File(temporary, "w") as handle:
                n = len(self.ids)
                chunk = (min(max(n, 1), 65536),)
                handle.create_dataset("ids", data=np.array(self.ids, dtype=object), dtype=strings,
                                      chunks=chunk if n else None)
                if sequences is not None:
                    handle.create_dataset("sequences", data=np.array(sequences, dtype=object), dtype=strings,
                                          chunks=chunk if n else None, compression="gzip", compression_opts=4)
                handle.create_dataset("sequence_group", data=self.groups.astype(np.int32))
                rows = max(1, min(n, max(1, (1 << 20) // max(1, 4 * self.embedding_dim))))
                handle.create_dataset("embeddings", data=self.embeddings, chunks=(rows, self.embedding_dim)
                                      if n else None)
                for name, codes in self.codes.items():
                    handle.create_dataset(f"labels/{name}", data=codes.astype(np.int32))
                    handle.create_dataset(f"label_names/{name}",
                                          data=np.array(self.label_names[name], dtype=object), dtype=strings)
                for level, stored in (self.calibration or {}).items():
                    handle.create_dataset(f"calibration/{level}/queries", data=stored["queries"].astype(np.int32))
                    handle.create_dataset(f"calibration/{level}/neighbours",
                                          data=stored["neighbours"].astype(np.int32))
                    handle.create_dataset(f"calibration/{level}/similarities",
                                          data=stored["similarities"].astype(np.float32))
                if sequences is not None:  # the identity layer needs the sequences
                    layer = self.identity
                    kmer = handle.create_group("identity/kmer")
                    kmer.attrs.update({"k": int(layer.kmer.k), "size": int(layer.kmer.size)})
                    for name in ("kmers", "df", "refs"):
                        values = getattr(layer.kmer, name).astype(np.int32)
                        # gzip 1 + shuffle: the postings shrink ~10x (78 -> 8 MiB for 31k barcodes), ~0.4 s to read
                        kmer.create_dataset(name, data=values, chunks=(min(len(values), 1 << 20),),
                                            compression="gzip", compression_opts=1, shuffle=True) \
                            if len(values) else kmer.create_dataset(name, data=values)
                    for level, stored in (self.identity_calibration or {}).items():
                        for name, values in stored.items():
                            dtype_ = np.float32 if name.endswith("_score") else np.int32
                            handle.create_dataset(f"identity/calibration/{level}/{name}",
                                                  data=np.asarray(values).astype(dtype_))
                attrs = {
                    "format": REFERENCE_FORMAT,
                    "format_version": REFERENCE_FORMAT_VERSION,
                    "barcodetool_version": __version__,
                    "model_name": self.model_name,
                    "model_sha256": self.model_sha256,
                    "pooling": self.attrs.get("pooling", "mean"),
                    "embedding_dim": self.embedding_dim,
                    "dtype": dtype,
                    "count": n,
                    "source": source if source is not None else self.attrs.get("source", ""),
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "tokenizer": self.attrs.get("tokenizer", ""),
                }
                if self.thresholds is not None:
                    attrs.update(_thresholds_attrs(self.thresholds, ""))
                    attrs["calibration_k"] = int(self.thresholds.k)
                if self.identity_thresholds is not None:
                    attrs.update(_thresholds_attrs(self.identity_thresholds, "identity_"))
                    attrs["identity_calibration_candidates"] = json.dumps(list(self.identity_thresholds.candidates))
                    attrs["identity_calibration_embed_below"] = float(self.identity_thresholds.embed_below)
                handle.attrs.update(attrs)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceIndex":
        """Read an index written by `save` (sequences are read lazily)."""
        import h5py

        path = Path(path)
        try:
            handle = h5py.File(path, "r")
        except FileNotFoundError:
            raise InputError("file not found", path=str(path), fix="check the path") from None
        except (OSError, ValueError) as error:
            raise InputError(f"cannot open as HDF5 ({error})", path=str(path)) from None
        with handle:
            attrs = dict(handle.attrs)
            if attrs.get("format") != REFERENCE_FORMAT:
                raise InputError(f"not a barcodetool reference index (format {attrs.get('format')!r})",
                                 path=str(path), fix="build one with `barcodetool reference build`")
            version = int(attrs.get("format_version", 0))
            if version != REFERENCE_FORMAT_VERSION:
                newer = version > REFERENCE_FORMAT_VERSION
                raise InputError(
                    f"reference index format version {version} is {'newer' if newer else 'older'} than the "
                    f"version this barcodetool reads ({REFERENCE_FORMAT_VERSION})", path=str(path),
                    fix="rebuild the index with `barcodetool reference build`"
                        + (" (or upgrade barcodetool)" if newer else ""))
            try:
                ids = handle["ids"].asstr()[:].tolist()
                embeddings = handle["embeddings"][:]
                groups = handle["sequence_group"][:].astype(np.int32)
                codes, names = {}, {}
                for name in handle.get("labels", {}):
                    codes[name] = handle["labels"][name][:].astype(np.int32)
                    names[name] = handle["label_names"][name].asstr()[:].tolist()
                calibration = {}
                for level in handle.get("calibration", {}):
                    group = handle["calibration"][level]
                    calibration[level] = {"queries": group["queries"][:].astype(np.int64),
                                          "neighbours": group["neighbours"][:].astype(np.int64),
                                          "similarities": group["similarities"][:].astype(np.float32)}
                identity_calibration = {}
                for level in handle.get("identity/calibration", {}):
                    group = handle["identity/calibration"][level]
                    identity_calibration[level] = {
                        name: group[name][:].astype(np.float32 if name.endswith("_score") else np.int64)
                        for name in group}
            except KeyError as error:
                raise InputError(f"the reference index is incomplete ({error})", path=str(path),
                                 fix="rebuild it with `barcodetool reference build`") from None
        thresholds = _thresholds_from_attrs(attrs, "", kind="cosine",
                                            k=int(attrs.get("calibration_k", DEFAULT_K)))
        identity_thresholds = _thresholds_from_attrs(
            attrs, "identity_", kind="identity", k=0,
            candidates=tuple(json.loads(attrs.get("identity_calibration_candidates", "[10, 10]"))),
            # indexes written before the attribute existed embedded every query
            embed_below=float(attrs.get("identity_calibration_embed_below", math.inf)))
        return cls(ids=ids, embeddings=embeddings, codes=codes, label_names=names, groups=groups,
                   model_name=str(attrs.get("model_name", "")), model_sha256=str(attrs.get("model_sha256", "")),
                   thresholds=thresholds, attrs=attrs, path=path, calibration=calibration,
                   identity_thresholds=identity_thresholds, identity_calibration=identity_calibration or None)


def _thresholds_attrs(thresholds: Thresholds, prefix: str) -> dict:
    """HDF5 root attributes of one set of thresholds (prefix "" for cosine, "identity_" for identity)."""
    attrs = {f"{prefix}threshold_{rank}": float(thresholds.ranks.get(rank, math.nan)) for rank in RANKS}
    attrs.update({f"{prefix}threshold_bin": float(thresholds.bin),
                  f"{prefix}cluster_distance_threshold": float(thresholds.cluster_distance),
                  f"{prefix}calibration_precision": float(thresholds.precision),
                  f"{prefix}calibration_min_confidence": float(thresholds.min_confidence),
                  f"{prefix}calibration": json.dumps(_jsonable(thresholds.details))})
    return attrs


def _thresholds_from_attrs(attrs, prefix: str, **fixed) -> Thresholds | None:
    """The thresholds written by _thresholds_attrs, or None when the index holds no such calibration."""
    if f"{prefix}calibration_precision" not in attrs:
        return None
    return Thresholds(
        ranks={r: float(attrs.get(f"{prefix}threshold_{r}", math.nan)) for r in RANKS},
        bin=float(attrs.get(f"{prefix}threshold_bin", math.nan)),
        cluster_distance=float(attrs.get(f"{prefix}cluster_distance_threshold", math.nan)),
        precision=float(attrs[f"{prefix}calibration_precision"]),
        min_confidence=float(attrs.get(f"{prefix}calibration_min_confidence", DEFAULT_MIN_CONFIDENCE)),
        details=json.loads(attrs.get(f"{prefix}calibration", "{}") or "{}"), **fixed)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def is_reference_file(path: str | os.PathLike) -> bool:
    """True when `path` is an HDF5 file (a prebuilt index, or something else that load() will refuse)."""
    if str(path) == "-":
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


# ============================================================================================ building
def build_reference(records: Iterable, pretrained, *, precision: float = DEFAULT_PRECISION, k: int = DEFAULT_K,
                    min_confidence: float = DEFAULT_MIN_CONFIDENCE, dtype: str = "float32",
                    batch_size: int = 256, calibrate: bool = True, source: str = "",
                    progress: Progress | None = None, chunk_records: int = 16384,
                    display: str | None = None) -> ReferenceIndex:
    """Embed reference records (objects with .id, .sequence, .taxonomy, .bin) into a calibrated index.

    Identical sequences are embedded once. Embeddings are stored L2-normalised in `dtype` (float32 default;
    float16 halves the memory of very large references). `source` is recorded in the index; errors name
    `display` (the path as given), or `source` without it.
    """
    display = display or source or None
    from ..embedding import embed_sequences

    if dtype not in {"float32", "float16"}:
        raise UsageError(f"index dtype must be float32 or float16, got {dtype!r}")
    ids: list[str] = []
    sequences: list[str] = []
    labels: dict[str, list[str]] = {name: [] for name in LABELS}
    group_of: dict[str, int] = {}
    groups: list[int] = []
    unique: list[str] = []
    for record in records:
        ids.append(record.id)
        sequences.append(record.sequence)
        for rank in RANKS:
            labels[rank].append(record.taxonomy.get(rank) or "")
        labels["bin"].append(record.bin or "")
        group = group_of.get(record.sequence)
        if group is None:
            group = group_of[record.sequence] = len(unique)
            unique.append(record.sequence)
        groups.append(group)
    if not ids:
        raise InputError("the reference holds no records", path=display)
    if not any(labels[name][i] for name in LABELS for i in range(len(ids))):
        raise InputError("the reference records carry no taxonomy and no BIN", path=display,
                         fix="give a table with taxonomy or BIN columns, or a FASTA with SINTAX headers "
                             "(>id;tax=p:...,g:...,s:...;)")
    vectors = np.empty((len(unique), pretrained.embedding_dim), dtype=np.float32)
    for start in range(0, len(unique), chunk_records):
        part = unique[start:start + chunk_records]
        vectors[start:start + len(part)] = embed_sequences(pretrained, part, batch_size=batch_size,
                                                           progress=progress)
    vectors = normalize(vectors)
    group_array = np.asarray(groups, dtype=np.int32)
    embeddings = vectors[group_array]
    del vectors
    if dtype == "float16":
        embeddings = embeddings.astype(np.float16)
    codes, names = {}, {}
    for name in LABELS:
        if any(labels[name]):
            codes[name], names[name] = encode_labels(labels[name])
    index = ReferenceIndex(ids=ids, embeddings=embeddings, codes=codes, label_names=names, groups=group_array,
                           model_name=pretrained.name, model_sha256=pretrained.sha256,
                           attrs={"pooling": pretrained.pooling, "source": source,
                                  "tokenizer": json.dumps(pretrained.tokenizer.config.to_dict())},
                           _sequences=sequences)
    if calibrate:
        index.calibrate(precision=precision, k=k, min_confidence=min_confidence)
        index.calibrate_identity(precision=precision, min_confidence=min_confidence)
    return index


# ============================================================================================ loading/caching
def reference_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("barcodetool", appauthor=False)) / "references"


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def cache_key(path: str | os.PathLike, pretrained, read_options: ReadOptions | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(file_sha256(path).encode())
    digest.update(pretrained.sha256.encode())
    digest.update(json.dumps((read_options or ReadOptions()).as_dict(), sort_keys=True, default=str).encode())
    digest.update(f"{REFERENCE_FORMAT}-{REFERENCE_FORMAT_VERSION}-{CACHE_GENERATION}".encode())
    return digest.hexdigest()[:32]


def read_reference_records(path: str | os.PathLike, read_options: ReadOptions | None = None, stats=None):
    """Records of a reference table/FASTA; empty or too-short sequences (under `min_length`) are skipped."""
    return read_barcodes(path, (read_options or ReadOptions()).replace(skip_empty=True), stats=stats)


def open_reference(path: str | os.PathLike, pretrained, *, read_options: ReadOptions | None = None,
                   use_cache: bool = True, batch_size: int = 256, progress: Progress | None = None,
                   ) -> ReferenceIndex:
    """A prebuilt index (checked against `pretrained`), or a table/FASTA built once and cached.

    Cached indexes live in the user cache folder (platformdirs), keyed by the file's content hash, the model's
    sha256 and the read options; a second call with the same file and model reuses the cached index.
    """
    if is_reference_file(path):
        index = ReferenceIndex.load(path)
        index.check_model(pretrained, source=str(path))
        return index
    if str(path) == "-":
        raise UsageError("the reference cannot be standard input (give a file)")
    if not os.path.exists(path):
        raise InputError("file not found", path=str(path), fix="check the path")
    read_options = (read_options or ReadOptions()).replace(min_length=pretrained.tokenizer.config.k)
    cached = None
    if use_cache:
        cached = reference_cache_dir() / f"{cache_key(path, pretrained, read_options)}.h5"
        if cached.is_file():
            try:
                index = ReferenceIndex.load(cached)
                index.check_model(pretrained)
                log.info(f"using the cached reference index {cached}")
                return index
            except (InputError, IndexMismatchError):
                log.info(f"rebuilding the unreadable cached index {cached}")
    stats = ReadStats(path=str(path))
    log.info(f"building a reference index from {path} (cached for next time)")
    index = build_reference(read_reference_records(path, read_options, stats), pretrained, batch_size=batch_size,
                            source=os.path.basename(str(path)), progress=progress, display=str(path))
    log.info(stats.summary())
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            index.save(cached, source=os.path.basename(str(path)))
            index._sequences = None  # re-read lazily from the cache when needed
        except OSError as error:  # a read-only cache must not stop classification
            log.warning(f"could not cache the reference index in {cached} ({error})")
    return index


def index_model_name(path: str | os.PathLike) -> str | None:
    """The model name recorded in a prebuilt index (None for tables/FASTA or unreadable files)."""
    if not is_reference_file(path):
        return None
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != REFERENCE_FORMAT:
                return None
            return str(handle.attrs.get("model_name", "")) or None
    except (OSError, ValueError):
        return None


def resolve_model_for_reference(model_name: str | None, reference: str | os.PathLike | None) -> str | None:
    """With `--model auto` and a prebuilt index made with a known named model, use that model."""
    if model_name not in (None, "", "auto") or reference is None:
        return model_name
    name = index_model_name(reference)
    if name:
        from ..model.weights import available_models

        if name in available_models():
            return name
    return model_name
