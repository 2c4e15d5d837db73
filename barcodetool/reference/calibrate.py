"""Calibration: each rule's thresholds set on the reference itself, by leave-out searches of its own barcodes.

Each calibration query is a distinct reference sequence searched against the reference without every record of
that same sequence ("sequence"), species ("species") or genus ("genus"). A rank's threshold is the lowest support
at which the rule's calls are right with the target precision, raised until at most 1 - precision of the queries
whose own taxon is absent get a (necessarily wrong) label there (docs/classify-and-cluster.md). The leave-out
searches are stored in the index and reused to recalibrate for other settings.

Two rules are calibrated the same way (`Calibration`); they differ in their search and their decision only:
`KnnCalibration` (embedding neighbours, similarity-weighted vote; cosine similarities) and `IdentityCalibration`
(k-mer and embedding candidates of distinct sequences scored by identity; identity scores).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..cluster import calibrate_cluster_threshold, calibrate_identity_cluster_threshold
from ..errors import UsageError
from ..search import SequenceStore, knn_search, score_candidates
from ..taxonomy import RANKS
from .candidates import (ScoredCandidates, beyond_first, embedding_needed, merge_ranked, search_candidates, widened,
                         widening_needed)
from .confidence import fit_confidence, held_out_confidences, level_evidence, reported_hits
from .conflicts import (CONFLICT_IDENTITY, CONFLICT_RANKS, CONFLICTS_LOGGED, conflicting_records, group_codes,
                        odd_records)
from .isolation import isolation_tables, left_out_isolation
from .decide import (DEFAULT_K, DEFAULT_MIN_CONFIDENCE, DEFAULT_PRECISION, IDENTITY_CANDIDATES_EMBEDDING,
                     IDENTITY_CANDIDATES_KMER, IDENTITY_CANDIDATES_WIDE, IDENTITY_EMBED_BELOW, NO_WIDENING,
                     IdentityThresholds, KnnThresholds, Thresholds, Votes, tie_vote, vote, widen_parts, widen_setting,
                     widening)

if TYPE_CHECKING:   # the index is passed in; this module never needs its class at run time
    from .index import ReferenceIndex

log = logging.getLogger("barcodetool")

CALIBRATION_QUERIES = 10_000      # leave-out queries (distinct sequences) per calibration level
CALIBRATION_NEIGHBOURS = 50       # neighbours stored per calibration query (recalibration for k <= this)
CLUSTER_CALIBRATION_SIZE = 4_000  # unique BIN-labelled sequences clustered to calibrate the cluster threshold
IDENTITY_CALIBRATION_QUERIES = 5_000   # leave-out identity queries (distinct sequences) per calibration level
IDENTITY_CALIBRATION_CANDIDATES = 20   # candidates of each source kept per calibration query (recalibration)
IDENTITY_CLUSTER_CALIBRATION_SIZE = 6_000  # distinct BIN-labelled sequences clustered to calibrate identity clusters

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


def taxon_present(level, codes: dict[str, np.ndarray], rank: str, left_out: str):
    """The queries of a leave-out level whose taxon at `rank` keeps reference rows outside the left-out taxon."""
    queries, sims, idx = level
    if rank not in codes or left_out not in codes:
        return level
    taxon, out = codes[rank].astype(np.int64), codes[left_out].astype(np.int64)
    both = (taxon >= 0) & (out >= 0)
    count_taxon = np.bincount(taxon[taxon >= 0], minlength=int(taxon.max(initial=-1)) + 1)
    keys, count_both = np.unique(taxon[both] * (int(out.max(initial=0)) + 1) + out[both], return_counts=True)
    q_taxon, q_out = taxon[queries], out[queries]
    key = np.maximum(q_taxon, 0) * (int(out.max(initial=0)) + 1) + q_out
    at = np.minimum(np.searchsorted(keys, key), max(len(keys) - 1, 0))
    inside = np.where((len(keys) > 0) & (q_out >= 0), np.where(keys[at] == key, count_both[at], 0), 0) \
        if len(keys) else np.zeros(len(queries), dtype=np.int64)
    present = (q_taxon >= 0) & (count_taxon[np.maximum(q_taxon, 0)] - inside > 0)
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
            parts = [levels[name] if name == "sequence" else taxon_present(levels[name], codes, rank, name)
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


def merge_identity_candidates(stored: dict, n_embedding: int, n_kmer: int, embed_below: float = math.inf,
                              widen=NO_WIDENING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(idx, score, overlap) [m, n_embedding + n_kmer] of stored calibration candidates restricted to the first n
    of each source, merged and ranked exactly as `identity_hits` ranks them: the union of both sources where the
    best k-mer candidate scores below `embed_below` (or there are no k-mer candidates), the k-mer candidates alone
    elsewhere; the k-mer candidates of queries whose best scores below `widen[1]` widened by the stored wide
    candidates (`kmer_wide`, chosen for this widening and n_kmer: `wide_setting`)."""
    def kmer_columns(rows, n: int) -> ScoredCandidates:
        # identities are not stored: the scores stand in for them (only the ranking is used here)
        return ScoredCandidates(stored["kmer"][rows, :n], stored["kmer_score"][rows, :n],
                                stored["kmer_score"][rows, :n], stored["kmer_overlap"][rows, :n])

    kmer = kmer_columns(slice(None), n_kmer)
    embedding = ScoredCandidates(stored["embedding"][:, :n_embedding], stored["embedding_score"][:, :n_embedding],
                                 stored["embedding_score"][:, :n_embedding],
                                 stored["embedding_overlap"][:, :n_embedding])
    need = embedding_needed(kmer, n_embedding, embed_below)
    rows = np.nonzero(widening_needed(kmer, widen))[0]
    if len(rows):
        if not np.array_equal(stored.get("kmer_wide_setting", ()), wide_setting(n_kmer, widen)):
            raise UsageError("the stored calibration candidates were not chosen for this widening")
        kmer = widened(kmer, rows, ScoredCandidates(stored["kmer_wide"][rows], stored["kmer_wide_score"][rows],
                                                    stored["kmer_wide_score"][rows],
                                                    stored["kmer_wide_overlap"][rows]))
    idx, score, _, overlap = merge_ranked(kmer, embedding, need)
    width = n_embedding + n_kmer
    return idx[:, :width], score[:, :width], overlap[:, :width]


def wide_setting(n_kmer: int, widen) -> np.ndarray:
    """int32 [3]: what a level's stored wide candidates were chosen for (first stage, wide search, scored)."""
    n_wide, _, scored = widen_parts(widen)
    return np.array([n_kmer, n_wide, scored], dtype=np.int32)


def leave_out_calls(judged: dict[str, tuple[dict, dict]], levels: dict, codes: dict[str, np.ndarray],
                    cutoff: float) -> dict[str, dict]:
    """Per rank, per leave-out level: the share of labelled queries named at `cutoff` and the precision of those,
    from `judged` (level -> (labels, confidences) per rank, by models that did not see the query:
    confidence.held_out_confidences)."""
    out: dict[str, dict] = {}
    for name, (queries, *_rest) in levels.items():
        labels, confidence = judged[name]
        for rank in codes:
            truth = codes[rank][queries]
            known = truth >= 0
            named = known & (np.nan_to_num(confidence[rank], nan=0.0) >= cutoff)
            right = named & (labels[rank] == truth)
            share = float(named.sum() / max(1, known.sum()))
            precision = float(right.sum() / named.sum()) if named.any() else None
            # the calibration queries are a sample of the reference: binomial standard errors of both figures
            out.setdefault(rank, {"cutoff": cutoff})[name] = {
                "queries": int(known.sum()), "named": share,
                "named_se": math.sqrt(share * (1 - share) / max(1, int(known.sum()))),
                "precision": precision,
                "precision_se": None if precision is None else math.sqrt(precision * (1 - precision)
                                                                         / int(named.sum()))}
    return out


# ============================================================================================ the calibrations
class Calibration:
    """Calibrates one decision rule's thresholds on the reference (`calibrate`) and answers the thresholds for given
    settings (`thresholds_for`: the stored ones when the settings match, else recalibrated from the stored leave-out
    searches). A subclass says how the rule searches a left-out level, decides, and clusters."""

    method = ""
    thresholds_type: type[Thresholds] = Thresholds
    precision_levels: dict = PRECISION_LEVEL
    decide: Callable[..., Votes] | None = None       # None: the k-NN vote
    max_queries = CALIBRATION_QUERIES
    cluster_size = CLUSTER_CALIBRATION_SIZE
    recluster = True       # whether thresholds_for calibrates a cluster threshold that the index lacks

    def __init__(self, index: ReferenceIndex):
        self.index = index
        self.overlaps: dict[str, np.ndarray] = {}   # leave-out level -> candidates' overlaps (identity)

    stored_as = ""         # the index attribute that holds the rule's thresholds

    # -------------------------------------------------------------------------------- what a rule defines
    @property
    def stored(self) -> Thresholds | None:
        return getattr(self.index, self.stored_as)

    def store(self, thresholds: Thresholds) -> None:
        setattr(self.index, self.stored_as, thresholds)

    def settings_of(self, thresholds: Thresholds | None) -> dict:
        """The calibration settings `thresholds` were made with (the defaults without thresholds)."""
        raise NotImplementedError

    def check(self, settings: dict) -> None:
        if not 0.0 < settings["precision"] <= 1.0:
            raise UsageError(f"precision must be in (0, 1], got {settings['precision']}")

    def same_settings(self, current: dict, requested: dict) -> bool:
        return (math.isclose(current["precision"], requested["precision"])
                and math.isclose(current["min_confidence"], requested["min_confidence"]))

    def describe(self, settings: dict) -> str:
        raise NotImplementedError

    def complete(self, thresholds: Thresholds) -> bool:
        """Whether stored thresholds hold all this version decides with (else they are recalibrated)."""
        return True

    def leave_out(self, level: str, settings: dict, *, max_queries: int, seed: int = 0, device=None):
        """(queries, scores [m, N], candidates [m, N]) of one leave-out level, ranked; None when the reference has
        no labels at `level`."""
        raise NotImplementedError

    def population(self) -> int:
        """How many distinct sequences (identity) or records (knn) the calibration queries are sampled from."""
        return len(self.index)

    def label_codes(self) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
        """(rank codes, BIN codes, species codes) in the space the leave-out queries index."""
        raise NotImplementedError

    def cluster_threshold(self, *, max_size: int, seed: int, device) -> tuple[float, dict]:
        raise NotImplementedError

    # -------------------------------------------------------------------------------- shared
    def calibrate(self, *, cluster: bool = True, max_queries: int | None = None, cluster_size: int | None = None,
                  seed: int = 0, device=None, **settings) -> Thresholds:
        """Calibrate (and store in the index) the per-rank, BIN and cluster thresholds for `settings` (missing ones
        take the defaults). A cluster threshold already in the index is kept: it does not depend on the settings."""
        settings = {**self.settings_of(None), **settings}
        self.check(settings)
        levels = {}
        for level in LEVELS:
            found = self.leave_out(level, settings, max_queries=max_queries or self.max_queries, seed=seed,
                                   device=device)
            if found is not None:
                levels[level] = found
        rank_codes, bin_codes, species_codes = self.label_codes()
        ranks, details, fields = self.rank_thresholds(levels, rank_codes, settings)
        bin_threshold, bin_details = calibrate_bin(levels, bin_codes, species_codes, precision=settings["precision"])
        cluster_distance = math.nan
        previous = self.stored
        if previous is not None and not math.isnan(previous.cluster_distance):
            cluster_distance = previous.cluster_distance
            details["cluster"] = previous.details.get("cluster", {})
        elif cluster and bin_codes is not None and (bin_codes >= 0).any():
            cluster_distance, details["cluster"] = self.cluster_threshold(
                max_size=cluster_size or self.cluster_size, seed=seed, device=device)
        details["bin"] = bin_details
        details["calibration_queries"] = {name: int(len(level[0])) for name, level in levels.items()}
        details["calibration_population"] = self.population()
        thresholds = self.thresholds_type(ranks=ranks, bin=bin_threshold, cluster_distance=cluster_distance,
                                          details=details, **fields, **settings)
        self.store(thresholds)
        return thresholds

    def rank_thresholds(self, levels: dict, codes: dict[str, np.ndarray], settings: dict
                        ) -> tuple[dict[str, float], dict, dict]:
        """(rank -> threshold, details, further fields of the thresholds) from the leave-out levels."""
        ranks, details = calibrate_ranks(levels, codes, precision=settings["precision"], k=settings.get("k", 0),
                                         min_confidence=settings["min_confidence"], decide=self.decide,
                                         precision_levels=self.precision_levels)
        return ranks, details, {}

    def thresholds_for(self, **requested) -> Thresholds:
        """Thresholds for these settings (None or absent: the stored ones' settings, else the defaults): the stored
        thresholds when the settings match, else recalibrated from the stored leave-out searches (kept in the
        index in memory)."""
        current = self.stored
        settings = self.settings_of(current)
        settings.update({name: value for name, value in requested.items() if value is not None})
        if current is not None and self.same_settings(self.settings_of(current), settings) and self.complete(current):
            return current
        log.info(self.describe(settings))
        return self.calibrate(cluster=self.recluster, **settings)


class KnnCalibration(Calibration):
    """The k-NN vote (`classify --method knn`/`probe`, `cluster --method cosine`): cosine similarities of the
    embeddings; leave-out neighbours stored in `index.calibration`."""

    method = "knn"
    thresholds_type = KnnThresholds
    stored_as = "thresholds"

    def settings_of(self, thresholds: Thresholds | None) -> dict:
        if thresholds is None:
            return {"precision": DEFAULT_PRECISION, "k": DEFAULT_K, "min_confidence": DEFAULT_MIN_CONFIDENCE}
        return {"precision": thresholds.precision, "k": thresholds.k, "min_confidence": thresholds.min_confidence}

    def check(self, settings: dict) -> None:
        super().check(settings)
        if settings["k"] < 1:
            raise UsageError(f"k must be at least 1, got {settings['k']}")

    def same_settings(self, current: dict, requested: dict) -> bool:
        return super().same_settings(current, requested) and current["k"] == requested["k"]

    def describe(self, settings: dict) -> str:
        return (f"calibrating thresholds for precision {settings['precision']}, k {settings['k']}, vote share "
                f"{settings['min_confidence']}")

    def leave_out(self, level: str, settings: dict, *, max_queries: int = CALIBRATION_QUERIES, seed: int = 0,
                  device=None):
        """(queries, similarities, neighbours) of one leave-out level: searched once (CALIBRATION_NEIGHBOURS
        neighbours) and reused for any k up to that."""
        if level not in LEVELS:
            raise UsageError(f"unknown calibration level {level!r}")
        index = self.index
        k = settings.get("k", DEFAULT_K)
        index.calibration = index.calibration or {}
        stored = index.calibration.get(level)
        if stored is not None and stored["neighbours"].shape[1] >= k:
            return stored["queries"], stored["similarities"], stored["neighbours"]
        labelled = None
        if level != "sequence":
            if level not in index.codes or not (index.codes[level] >= 0).any():
                return None
            labelled = index.codes[level] >= 0
        queries = calibration_queries(index.groups, labelled, max_queries, seed)
        # leave out the query's own sequence and, above the "sequence" level, every record of its species or genus
        exclusions = [(index.groups[queries], index.groups)]
        if level != "sequence":
            exclusions.append((index.codes[level][queries], index.codes[level]))  # -1 rows never match
        query_vectors = np.asarray(index.embeddings[queries], dtype=np.float32)
        sims, idx = knn_search(query_vectors, index.embeddings, max(k, CALIBRATION_NEIGHBOURS), exclude=exclusions,
                               device=device)
        index.calibration[level] = {"queries": queries, "similarities": sims, "neighbours": idx}
        return queries, sims, idx

    def label_codes(self):
        index = self.index
        return index.rank_codes(), index.bin_codes, index.codes.get("species")

    def cluster_threshold(self, *, max_size: int, seed: int, device) -> tuple[float, dict]:
        index = self.index
        return calibrate_cluster_threshold(index.embeddings, index.bin_codes, index.groups, max_size=max_size,
                                           seed=seed)


class IdentityCalibration(Calibration):
    """The identity rule (the default of `classify` and `cluster`): identity scores of k-mer and embedding
    candidates of distinct sequences; leave-out candidates stored in `index.identity_calibration`. The calibration
    queries take the classifier's own path: embedding candidates only below `embed_below`."""

    method = "identity"
    thresholds_type = IdentityThresholds
    max_queries = IDENTITY_CALIBRATION_QUERIES
    cluster_size = IDENTITY_CLUSTER_CALIBRATION_SIZE
    recluster = False
    stored_as = "identity_thresholds"

    def settings_of(self, thresholds: Thresholds | None) -> dict:
        if thresholds is None:
            return {"precision": DEFAULT_PRECISION, "min_confidence": DEFAULT_MIN_CONFIDENCE,
                    "candidates": (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER),
                    "embed_below": IDENTITY_EMBED_BELOW, "widen": widen_setting(IDENTITY_CANDIDATES_WIDE)}
        return {"precision": thresholds.precision, "min_confidence": thresholds.min_confidence,
                "candidates": tuple(thresholds.candidates), "embed_below": thresholds.embed_below,
                "widen": tuple(thresholds.widen)}

    def check(self, settings: dict) -> None:
        super().check(settings)
        n_embedding, n_kmer = (int(c) for c in settings["candidates"])
        if n_embedding < 0 or n_kmer < 0 or n_embedding + n_kmer == 0:
            raise UsageError("identity classification needs embedding or k-mer candidates (or both)")
        settings["candidates"] = (n_embedding, n_kmer)
        settings["embed_below"] = float(settings["embed_below"])
        n_wide, below, scored = widen_parts(settings.get("widen", NO_WIDENING))
        if n_wide < 0 or scored < 0 or math.isnan(below):
            raise UsageError(f"widen must be (k-mer candidates >= 0, a score, scored >= 0), got {settings['widen']}")
        settings["widen"] = widening(n_wide, below, scored)

    def same_settings(self, current: dict, requested: dict) -> bool:
        candidates = (int(requested["candidates"][0]), int(requested["candidates"][1]))
        # without embedding candidates the embedding threshold does not matter
        return (super().same_settings(current, requested) and tuple(current["candidates"]) == candidates
                and (current["embed_below"] == float(requested["embed_below"]) or candidates[0] == 0)
                and widen_parts(current.get("widen", NO_WIDENING)) == widen_parts(requested.get("widen", NO_WIDENING)))

    def complete(self, thresholds: Thresholds) -> bool:
        return getattr(thresholds, "confidence", None) is not None   # indexes of older versions have none

    def describe(self, settings: dict) -> str:
        n_embedding, n_kmer = settings["candidates"]
        return (f"calibrating the identity rule for confidence {settings['min_confidence']}, BIN precision "
                f"{settings['precision']}, candidates {int(n_embedding)} embedding + {int(n_kmer)} k-mer, "
                f"embedding below {float(settings['embed_below'])}, widened to {int(settings['widen'][0])} k-mer "
                f"below {float(settings['widen'][1])} ({widen_parts(settings['widen'])[2]} scored; 0: all)")

    def leave_out(self, level: str, settings: dict, *, max_queries: int = IDENTITY_CALIBRATION_QUERIES,
                  seed: int = 0, device=None):
        """(queries, scores, candidates) [m, N] of one leave-out level in distinct-sequence space, ranked; the
        candidate searches and identities are computed once (IDENTITY_CALIBRATION_CANDIDATES of each source) and
        reused for any smaller numbers of candidates."""
        if level not in LEVELS:
            raise UsageError(f"unknown calibration level {level!r}")
        index = self.index
        n_embedding, n_kmer = settings.get("candidates", (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER))
        widen = settings.get("widen", NO_WIDENING)
        wide = widen_parts(widen)[0] > n_kmer
        index.identity_calibration = index.identity_calibration or {}
        stored = index.identity_calibration.get(level)
        if (stored is None or stored["embedding"].shape[1] < n_embedding or stored["kmer"].shape[1] < n_kmer
                or (wide and not np.array_equal(stored.get("kmer_wide_setting", ()), wide_setting(n_kmer, widen)))):
            stored = self._search_level(level, n_embedding, n_kmer, widen if wide else NO_WIDENING,
                                        max_queries=max_queries, seed=seed, device=device)
            if stored is None:
                return None
            index.identity_calibration[level] = stored
        idx, score, overlap = merge_identity_candidates(stored, n_embedding, n_kmer,
                                                        settings.get("embed_below", math.inf), widen)
        self.overlaps[level] = overlap
        return stored["queries"], score, idx

    def _search_level(self, level: str, n_embedding: int, n_kmer: int, widen, *, max_queries: int, seed: int,
                      device):
        layer = self.index.identity
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
        query_store = SequenceStore.from_sequences([layer.store.sequence(int(i)) for i in queries])
        vectors = np.asarray(self.index.group_embeddings[queries], dtype=np.float32)
        n_wide, _, scored = widen_parts(widen)
        depth = max(n_kmer, IDENTITY_CALIBRATION_CANDIDATES)
        # one k-mer search as deep as the widening needs: its first columns are those of a shallower one
        emb, km = search_candidates(self.index, query_store, vectors, max(n_embedding, IDENTITY_CALIBRATION_CANDIDATES),
                                    max(depth, n_wide), exclude=exclude, device=device)
        tables = [("embedding", emb), ("kmer", km[:, :depth])]
        if n_wide > n_kmer:
            # every query's (not only those the widening picks: the stored table serves any `below`)
            tables.append(("kmer_wide", beyond_first(query_store, layer.store, km[:, :n_wide], n_kmer, scored)))
        stored = {"queries": queries}
        for name, table in tables:
            score, _, overlap = score_candidates(query_store, layer.store, table)
            stored.update({name: table, f"{name}_score": score, f"{name}_overlap": overlap})
        if n_wide > n_kmer:
            stored["kmer_wide_setting"] = wide_setting(n_kmer, widen)
        return stored

    def label_codes(self):
        layer = self.index.identity
        return ({r: layer.codes[r] for r in self.index.ranks}, layer.codes.get("bin"), layer.codes.get("species"))

    def population(self) -> int:
        return len(self.index.identity)

    def rank_thresholds(self, levels: dict, codes: dict[str, np.ndarray], settings: dict
                        ) -> tuple[dict[str, float], dict, dict]:
        """The confidence model (fitted on the leave-out levels; kept when only the cutoff changes) and, per rank,
        the cutoff on its confidence (`min_confidence`), where the rank has a model."""
        layer = self.index.identity
        own = group_codes(self.index, layer)
        conflicts, pairs = conflicting_records(levels.get("sequence"), own, self.index, layer)
        conflicts["odd"] = odd_records(pairs, own, self.index, layer)
        # in place: `codes` holds the layer's arrays, so calibration and classification read the same labels
        self.index.unlabel_odd_records(layer.codes, layer.group_record, conflicts["odd"])
        chosen = {name: tie_vote(idx, score, codes) for name, (_, score, idx) in levels.items()}
        full = {name: (queries, score, idx, self.overlaps[name]) for name, (queries, score, idx) in levels.items()}
        tables = isolation_tables(self.index)
        isolation = {name: left_out_isolation(self.index, tables, reported_hits(idx, score, chosen[name]), queries,
                                              name)
                     for name, (queries, score, idx) in levels.items()}
        evidence = level_evidence(full, codes, layer.store, chosen, isolation)
        previous = self.stored
        if (previous is not None and previous.confidence is not None
                and tuple(previous.candidates) == tuple(settings["candidates"])
                and previous.embed_below == settings["embed_below"]
                and widen_parts(previous.widen) == widen_parts(settings["widen"])):
            model, details = previous.confidence, {"confidence": previous.details.get("confidence", {})}
        else:
            model, fitted = fit_confidence(full, codes, evidence)
            details = {"confidence": fitted}
        cutoff = float(settings["min_confidence"])
        ranks = {rank: cutoff if rank in model.ranks else math.nan for rank in codes}
        judged = held_out_confidences(full, codes, evidence)
        for rank, info in leave_out_calls(judged, full, codes, cutoff).items():
            details[rank] = info
        details["conflicts"] = conflicts
        if conflicts["pairs"]:
            shown = "; ".join(f"{c['id']} ({c['label']}) ~ {c['other_id']} ({c['other_label']}) "
                              f"{100 * c['identity']:.1f}%" for c in conflicts["records"][:CONFLICTS_LOGGED])
            log.warning(f"{conflicts['pairs']} of {conflicts['queries']:,} calibration queries match a reference "
                        f"of another {'/'.join(CONFLICT_RANKS)} at >= {100 * CONFLICT_IDENTITY:g}% identity "
                        f"(mislabelled or contaminated records?): {shown}"
                        + (" ..." if conflicts["pairs"] > CONFLICTS_LOGGED else "")
                        + f"; {len(conflicts['odd'])} of them, each far from its own label and beside another, "
                          "are read as unlabelled at that rank and below; the others lower the confidence of calls "
                          "near them but switch no rank off (all are listed by `barcodetool reference info`)")
        return ranks, details, {"confidence": model}

    def cluster_threshold(self, *, max_size: int, seed: int, device) -> tuple[float, dict]:
        layer = self.index.identity
        return calibrate_identity_cluster_threshold(layer.store, self.index.group_embeddings, layer.codes["bin"],
                                                    max_size=max_size, seed=seed, device=device)


CALIBRATIONS: dict[str, type[Calibration]] = {"knn": KnnCalibration, "identity": IdentityCalibration}


def calibration(index: ReferenceIndex, method: str) -> Calibration:
    """The calibration of `method` ("identity", or "knn" for the k-NN vote and the probe) on `index`."""
    try:
        return CALIBRATIONS[method](index)
    except KeyError:
        raise UsageError(f"no calibration for method {method!r}; choose {', '.join(CALIBRATIONS)}") from None


def thresholds_for(index: ReferenceIndex, method: str, **settings) -> Thresholds:
    """The thresholds of `method` on `index` for these settings (see Calibration.thresholds_for)."""
    return calibration(index, method).thresholds_for(**settings)


def calibrate_thresholds(index: ReferenceIndex, method: str, **settings) -> Thresholds:
    """Calibrate and store the thresholds of `method` on `index` (see Calibration.calibrate)."""
    return calibration(index, method).calibrate(**settings)
