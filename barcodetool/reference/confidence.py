"""Per-query confidence of the identity rule: the probability that each rank's label is right.

One global identity cut per rank treats a 97% hit with a congener at 96.9% like a 97% hit whose nearest other
genus is at 85%. Here every (query, rank) gets the evidence a taxonomist reads off a hit list (`rank_evidence`):

- how far the best hit is (1 - its identity score);
- the gap to the best candidate of *another* label at that rank, and whether the candidate list holds another
  label at all (when not, the gap is a lower bound);
- how the candidates near the best one vote (the share of those within NEAR_SCORE that carry the label, and the
  share among the tied-best);
- how much of the query the best hit covers;
- how many candidates carry the label, and how far their mean score is below the best (a query inside a well
  sampled taxon has hits of it at many distances; one beside it finds them all about equally far), and how far the
  second-best candidate of the label is below the best (a new species next to a sampled one finds that species'
  members close together and all about as far; a new haplotype of it finds one member nearer than the rest);
- the context of the other ranks (`query_evidence`): the gap to another species, another genus and another family,
  whatever the rank judged. A genus call whose species is also clear of every other species is a call inside a
  known species; a species call with another genus close behind is one in a thinly sampled neighbourhood;
- where the hit stands among its neighbours (`partner_distances`): the identity of the hit to the second-best
  candidate of its species and of its genus, and to the best candidate of another species and another genus (one
  reference-to-reference pair each). A query 2% from its hit, whose species' members lie within 0.2% of each other
  and 3% from the next species, is outside that species' cloud, halfway to the next: a new species more often than
  a new haplotype;
- how isolated the hit is in the whole reference (`isolation_distances`, isolation.py): its identity to the nearest
  reference of another species and of another genus, which a hit list of one species cannot show. A query 1% from
  a hit whose species lies 8% from every other species is inside a barcode gap; the same query beside a species
  0.6% from its sister is not.

A small gradient-boosted tree model per rank (`RankModel`) turns the evidence into a probability. It is fitted on
the reference itself (`fit_rank`): the leave-out searches of the calibration (each query a reference sequence
searched without its own sequence, its species or its genus), pooled with a stated weight per leave-out level
(LEVEL_WEIGHTS), so that a confidence of 0.9 means 90% right on such a mix of new haplotypes of known species,
new species of known genera and new genera. Trees whose leaves hold at least MIN_LEAF queries are not switched off by
a few mislabelled records, as a precision target on the extreme scores was. Confidences never grow down the
ranks: a genus is never more certain than its family (`chain`).

The label's own name is never a feature (nor how many sequences carry it): the model learns what a hit list looks
like, not which taxa are hard in this reference, so that it carries over to taxa it was not fitted on. A model
holds only numbers (tree arrays; the features are fixed here, FEATURES_VERSION), stored as JSON in the index, and
is evaluated with numpy: classifying never needs scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..search import score_candidates
from ..taxonomy import OPTIONAL_RANKS, RANKS

FEATURES_VERSION = 3
RANK_FEATURES = ("distance", "gap", "no_other_label", "share_near", "share_tied", "coverage", "label_candidates",
                 "label_spread", "second_gap")
CONTEXT_RANKS = ("species", "genus", "family")
CONTEXT_FEATURES = ("gap", "no_other_label")   # of each context rank, for the model of every rank
PARTNER_RANKS = ("species", "genus")
PARTNER_FEATURES = ("hit_to_second", "hit_to_other")   # distance of the hit to its label's second / another label
ISOLATION_RANKS = ("species", "genus")   # the hit's distance to the nearest reference of another label (isolation.py)
FEATURES = (RANK_FEATURES + tuple(f"{rank}_{name}" for rank in CONTEXT_RANKS for name in CONTEXT_FEATURES)
            + tuple(f"{rank}_{name}" for rank in PARTNER_RANKS for name in PARTNER_FEATURES)
            + tuple(f"{rank}_isolation" for rank in ISOLATION_RANKS))
MAX_LABEL_CANDIDATES = 30
NEAR_SCORE = 0.01          # candidates within this of the best score count as "near" (share_near)
MAX_DISTANCE = 0.5
MIN_EXAMPLES = 20          # fewer labelled calibration queries at a rank: no model there (nothing is assigned)
# the tree ensemble: small, shallow, leaves of many queries (robust to a few mislabelled records)
BOOSTING = {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "l2_regularization": 1.0}
MIN_LEAF = 100
MAX_BINS = 255         # bins of a feature the trees split between (`quantile_bins`; scikit-learn's most)
TREE_GROUP = 25        # RankModel.probability: trees walked together
# Weight of each leave-out level in a rank's fit (normalised per level: each level counts as its weight whatever its
# number of queries): the mix of queries a confidence is calibrated for. At species, known species count four times
# (the open-world queries are two levels of the three); at genus, new genera count one and a half. Chosen on the
# leave-out queries of the benchmark's `train` reference and on `val` (docs/benchmarks.md), never on the test splits.
LEVEL_WEIGHTS = {"species": {"sequence": 4.0, "species": 1.0, "genus": 1.0},
                 "genus": {"sequence": 1.0, "species": 1.0, "genus": 1.5}}
DEFAULT_LEVEL_WEIGHT = 1.0


@dataclass
class RankModel:
    """Boosted trees over FEATURES: p = sigmoid(baseline + sum of the trees' leaf values).

    Trees are arrays [trees, nodes] (padded): feature, threshold, left, right (child node numbers, always larger
    than the node's own: every path ends), value (of leaves), leaf (bool). A sample goes left where
    x[feature] <= threshold."""

    baseline: float
    feature: np.ndarray      # int64 [T, M]
    threshold: np.ndarray    # float64 [T, M]
    left: np.ndarray         # int64 [T, M]
    right: np.ndarray        # int64 [T, M]
    value: np.ndarray        # float64 [T, M]
    leaf: np.ndarray         # bool [T, M]
    examples: int = 0        # calibration queries it was fitted on
    reach: float = MAX_DISTANCE   # the farthest best hit of a right call in calibration: beyond it, confidence 0

    # each array's type, and the field of scikit-learn's tree nodes it is read from
    ARRAYS = {"feature": (np.int64, "feature_idx"), "threshold": (np.float64, "num_threshold"),
              "left": (np.int64, "left"), "right": (np.int64, "right"), "value": (np.float64, "value"),
              "leaf": (bool, "is_leaf")}

    def probability(self, features: np.ndarray) -> np.ndarray:
        """float32 [Q] for features [Q, F]: TREE_GROUP trees walked together, one level at a time, for the
        (tree, row) pairs still at inner nodes. One tree at a time made a thousand short numpy steps a rank, which
        in a search worker held the interpreter's lock against the other worker (test_unseen, 7 ranks: 0.12 s of
        a core one tree at a time, 0.08 s 25 at a time, 0.09 s all 100 at once)."""
        features = np.asarray(features, dtype=np.float64)
        n, width = features.shape
        values = features.ravel()
        raw = np.full(n, self.baseline)
        for first in range(0, self.feature.shape[0], TREE_GROUP):
            group = slice(first, first + TREE_GROUP)
            trees, nodes = self.feature[group].shape
            # the group's arrays flattened; children as flat indices: node j of tree t is t * nodes + j
            base = (np.arange(trees) * nodes)[:, None]
            feature, threshold = self.feature[group].ravel(), self.threshold[group].ravel()
            leaf = self.leaf[group].ravel()
            left, right = (self.left[group] + base).ravel(), (self.right[group] + base).ravel()
            node = np.repeat(base.ravel(), n)               # [trees * Q] (tree-major): each (tree, row)'s flat node
            active = np.flatnonzero(~leaf[node])
            while len(active):   # children are numbered above their parents: every path ends
                at = node[active]
                go_left = values[(active % n) * width + feature[at]] <= threshold[at]
                child = np.where(go_left, left[at], right[at])
                node[active] = child
                active = active[~leaf[child]]
            value = self.value[group].ravel()
            for t in range(trees):   # summed tree by tree, in order: the float result of walking them one by one
                raw += value[node[t * n:(t + 1) * n]]
        p = 1.0 / (1.0 + np.exp(-np.clip(raw, -50, 50)))
        # no extrapolation: a hit farther than any right call of calibration (a non-COI record at 68% identity,
        # say) says nothing the trees were fitted on
        return np.where(features[:, 0] > self.reach, 0.0, p).astype(np.float32)

    @classmethod
    def constant(cls, rate: float, examples: int, reach: float = MAX_DISTANCE) -> RankModel:
        """One tree of one leaf worth nothing: the probability is `rate` whatever the evidence (within `reach`)."""
        zero = np.zeros((1, 1))
        return cls(math.log(rate / (1 - rate)), zero.astype(np.int64), zero, zero.astype(np.int64),
                   zero.astype(np.int64), zero, np.ones((1, 1), dtype=bool), examples, reach)

    @classmethod
    def from_boosting(cls, fitted, examples: int, reach: float = MAX_DISTANCE,
                      cuts: Sequence[np.ndarray] | None = None) -> RankModel:
        """The trees of a fitted scikit-learn HistGradientBoostingClassifier (binary). `cuts`: where it was fitted
        on `quantile_bins` codes, each feature's cuts (a split between codes j and j + 1 becomes x <= cuts[f][j])."""
        trees = [predictors[0].nodes for predictors in fitted._predictors]
        width = max(len(nodes) for nodes in trees)
        arrays = {name: np.zeros((len(trees), width), dtype=dtype) for name, (dtype, _) in cls.ARRAYS.items()}
        for t, nodes in enumerate(trees):
            for name, (_, field) in cls.ARRAYS.items():
                arrays[name][t, :len(nodes)] = nodes[field]
            arrays["leaf"][t, len(nodes):] = True      # padding: leaves worth nothing
        if cuts is not None:
            inner = ~arrays["leaf"]
            threshold, feature = arrays["threshold"], arrays["feature"]
            for f in np.unique(feature[inner]):
                at = inner & (feature == f)
                threshold[at] = cuts[f][np.floor(threshold[at]).astype(np.int64)]   # codes j and j + 1: j + 0.5
        baseline = float(np.ravel(fitted._baseline_prediction)[0])
        return cls(baseline, examples=examples, reach=reach, **arrays)

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "examples": int(self.examples), "reach": float(self.reach),
                **{name: getattr(self, name).tolist() for name in self.ARRAYS}}

    @classmethod
    def from_json(cls, value: dict, rank: str) -> RankModel:
        """The model of `to_json`, checked (any path ends, indices in range, numbers finite); ValueError."""
        try:
            baseline, examples = float(value["baseline"]), int(value["examples"])
            reach = float(value.get("reach", MAX_DISTANCE))
            arrays = {name: np.asarray(value[name], dtype=dtype) for name, (dtype, _) in cls.ARRAYS.items()}
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the confidence model of {rank} is incomplete") from None
        shape = arrays["feature"].shape
        if any(a.shape != shape for a in arrays.values()) or len(shape) != 2 or not math.isfinite(baseline) \
                or not math.isfinite(reach):
            raise ValueError(f"the confidence model of {rank} has arrays of different shapes")
        own = np.broadcast_to(np.arange(shape[1]), shape)
        inner = ~arrays["leaf"]
        bad = (~np.isfinite(arrays["value"]).all() or np.isnan(arrays["threshold"][inner]).any()
               or ((arrays["feature"][inner] < 0) | (arrays["feature"][inner] >= len(FEATURES))).any()
               or any(((arrays[c][inner] <= own[inner]) | (arrays[c][inner] >= shape[1])).any()
                      for c in ("left", "right")))
        if bad:
            raise ValueError(f"the confidence model of {rank} holds invalid trees")
        return cls(baseline, examples=examples, reach=reach, **arrays)


@dataclass
class ConfidenceModel:
    """Rank -> RankModel; ranks without a model get no confidence (never assigned)."""

    ranks: dict[str, RankModel]
    version: int = FEATURES_VERSION

    def to_json(self) -> dict:
        return {"version": self.version, "features": list(FEATURES),
                "ranks": {rank: model.to_json() for rank, model in self.ranks.items()}}

    @staticmethod
    def readable(value) -> bool:
        """Whether `value` is a model of this version's features (a model of another version is refitted from the
        index's stored leave-out searches, not refused)."""
        return isinstance(value, dict) and value.get("version") == FEATURES_VERSION \
            and value.get("features") == list(FEATURES)

    @classmethod
    def from_json(cls, value) -> ConfidenceModel:
        """The model of `to_json`; ValueError (with the reason) for anything else."""
        if not isinstance(value, dict) or value.get("version") != FEATURES_VERSION:
            raise ValueError(f"a confidence model of an unknown version (this version reads {FEATURES_VERSION})")
        if value.get("features") != list(FEATURES):
            raise ValueError("a confidence model over other features")
        ranks = value.get("ranks")
        if not isinstance(ranks, dict) or not set(ranks) <= set(RANKS):
            raise ValueError("a confidence model of unknown ranks")
        return cls({rank: RankModel.from_json(model, rank) for rank, model in ranks.items()})


# ============================================================================================ evidence
def rank_evidence(idx: np.ndarray, score: np.ndarray, overlap: np.ndarray, query_length: np.ndarray,
                  chosen: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label int64 [Q], features float64 [Q, F]) at one rank for ranked, identity-scored candidates.

    idx, score, overlap: [Q, N] best first (-1 / -inf = empty); chosen: [Q] the column of the reported hit;
    codes: the rank's label code of every reference row (-1 = unlabelled). Rows without a labelled hit get label
    -1 (their features mean nothing)."""
    n, width = idx.shape
    if width == 0:
        return np.full(n, -1, dtype=np.int64), np.zeros((n, len(RANK_FEATURES)))
    rows = np.arange(n)
    valid = (idx >= 0) & np.isfinite(score)
    labels = np.where(valid, codes[np.where(valid, idx, 0)], -1)
    label = np.where(valid[rows, chosen], labels[rows, chosen], -1).astype(np.int64)
    best = np.where(valid[rows, chosen], score[rows, chosen], 0.0).astype(np.float64)
    other = (labels >= 0) & (labels != label[:, None])
    has_other = other.any(axis=1)
    other_best = np.where(other, score, -np.inf).max(axis=1)
    worst = np.where(valid, score, np.inf).min(axis=1)
    # without another label among the candidates, the lowest candidate bounds the gap from below
    other_best = np.where(has_other, other_best, np.where(np.isfinite(worst), worst, best - MAX_DISTANCE))
    labelled = labels >= 0
    same = labels == label[:, None]
    near = labelled & (score >= best[:, None] - NEAR_SCORE)
    tied = labelled & (score >= best[:, None])
    carrying = same & labelled
    mean_carrying = np.where(carrying, score, 0.0).sum(axis=1) / np.maximum(carrying.sum(axis=1), 1)
    others_carrying = carrying.copy()
    others_carrying[rows, chosen] = False
    second = np.where(others_carrying, score, -np.inf).max(axis=1)
    features = np.stack([
        np.clip(1.0 - best, 0.0, MAX_DISTANCE),
        np.clip(best - other_best, 0.0, MAX_DISTANCE),
        (~has_other).astype(np.float64),
        (near & same).sum(axis=1) / np.maximum(near.sum(axis=1), 1),
        (tied & same).sum(axis=1) / np.maximum(tied.sum(axis=1), 1),
        np.clip(overlap[rows, chosen] / np.maximum(query_length, 1), 0.0, 1.0),
        np.minimum(carrying.sum(axis=1), MAX_LABEL_CANDIDATES).astype(np.float64),
        np.clip(best - mean_carrying, 0.0, MAX_DISTANCE),
        np.where(np.isfinite(second), np.clip(best - second, 0.0, MAX_DISTANCE), MAX_DISTANCE),
    ], axis=1)
    return label, features


def partner_rows(idx: np.ndarray, score: np.ndarray, chosen: np.ndarray, codes: dict[str, np.ndarray]
                 ) -> np.ndarray:
    """int64 [Q, 2 * len(PARTNER_RANKS)]: per partner rank, the reference row of the best candidate after the hit
    that carries the hit's label, and of the best candidate of another label (-1: none; or the reference does not
    label that rank)."""
    n, width = idx.shape
    out = np.full((n, 2 * len(PARTNER_RANKS)), -1, dtype=np.int64)
    if width == 0:
        return out
    rows = np.arange(n)
    valid = (idx >= 0) & np.isfinite(score)
    for r, rank in enumerate(PARTNER_RANKS):
        if rank not in codes:
            continue
        labels = np.where(valid, codes[rank][np.where(valid, idx, 0)], -1)
        label = np.where(valid[rows, chosen], labels[rows, chosen], -1)
        same = (labels == label[:, None]) & (labels >= 0)
        same[rows, chosen] = False
        other = (labels >= 0) & (labels != label[:, None])
        for c, mask in enumerate((same, other)):     # candidates are ranked: the first one is the best
            column = np.argmax(mask, axis=1)
            out[:, 2 * r + c] = np.where(mask.any(axis=1) & (label >= 0), idx[rows, column], -1)
    return out


def score_distance(score: np.ndarray) -> np.ndarray:
    """float64: 1 - identity scores, clipped to [0, MAX_DISTANCE]; MAX_DISTANCE where a score is not finite (no
    such reference)."""
    score = np.asarray(score, dtype=np.float64)
    return np.where(np.isfinite(score), np.clip(1.0 - score, 0.0, MAX_DISTANCE), MAX_DISTANCE)


def reported_hits(idx: np.ndarray, score: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """int64 [Q]: the reference row of each query's reported hit (column `chosen` of idx, score [Q, N]), -1 where
    that column is empty."""
    if idx.shape[1] == 0:
        return np.full(len(idx), -1, dtype=np.int64)
    rows = np.arange(len(idx))
    picked = idx[rows, chosen]
    return np.where((picked >= 0) & np.isfinite(score[rows, chosen]), picked, -1).astype(np.int64)


def partner_distances(reference, idx: np.ndarray, score: np.ndarray, chosen: np.ndarray,
                      codes: dict[str, np.ndarray]) -> np.ndarray:
    """float64 [Q, 2 * len(PARTNER_RANKS)]: 1 - the identity score of the hit (as the query) against each of its
    `partner_rows` in `reference` (the reference's SequenceStore), MAX_DISTANCE where there is no partner."""
    n = len(idx)
    out = np.full((n, 2 * len(PARTNER_RANKS)), MAX_DISTANCE)
    if idx.shape[1] == 0:
        return out
    hit = reported_hits(idx, score, chosen)
    partners = partner_rows(idx, score, chosen, codes)
    todo = np.nonzero((hit >= 0) & (partners >= 0).any(axis=1))[0]
    if len(todo):
        pair_score = score_candidates(reference.subset(hit[todo]), reference, partners[todo])[0]
        out[todo] = score_distance(pair_score)
    return out


def isolation_distances(tables: dict[str, tuple[np.ndarray, np.ndarray]], hit: np.ndarray) -> np.ndarray:
    """float64 [Q, len(ISOLATION_RANKS)]: 1 - the identity of each hit (a reference row, -1 = none) to the nearest
    reference of another label at each ISOLATION_RANKS rank, from the reference's isolation tables (rank ->
    (rows [R, K], scores [R, K]), isolation.py); MAX_DISTANCE without a hit, a table or an entry."""
    out = np.full((len(hit), len(ISOLATION_RANKS)), MAX_DISTANCE)
    has = hit >= 0
    for column, rank in enumerate(ISOLATION_RANKS):
        if rank in tables and has.any():
            out[has, column] = score_distance(tables[rank][1][hit[has]].max(axis=1, initial=-np.inf))
    return out


def query_evidence(idx: np.ndarray, score: np.ndarray, overlap: np.ndarray, query_length: np.ndarray,
                   chosen: np.ndarray, codes: dict[str, np.ndarray], ranks: Sequence[str], reference,
                   isolation: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """rank -> (label int64 [Q], features float64 [Q, len(FEATURES)]) for ranked, identity-scored candidates
    (idx, score, overlap [Q, N]; chosen [Q]: the reported hit's column) of rows of `reference` (a SequenceStore):
    each rank's own evidence (`rank_evidence`), then the gap columns of the CONTEXT_RANKS (a context rank the
    reference does not label reads as a gap of 0 with no other label), the `partner_distances` and the hit's
    `isolation` ([Q, len(ISOLATION_RANKS)], `isolation_distances`), the same for every rank."""
    own = {rank: rank_evidence(idx, score, overlap, query_length, chosen, codes[rank])
           for rank in dict.fromkeys([*ranks, *CONTEXT_RANKS]) if rank in codes}
    columns = [RANK_FEATURES.index(name) for name in CONTEXT_FEATURES]
    absent = np.tile(np.array([0.0 if name == "gap" else 1.0 for name in CONTEXT_FEATURES]), (len(idx), 1))
    shared = np.concatenate([own[rank][1][:, columns] if rank in own else absent for rank in CONTEXT_RANKS]
                            + [partner_distances(reference, idx, score, chosen, codes),
                               np.asarray(isolation, dtype=np.float64).reshape(len(idx), len(ISOLATION_RANKS))],
                            axis=1)
    return {rank: (own[rank][0], np.concatenate([own[rank][1], shared], axis=1)) for rank in ranks
            if rank in own}


def rank_confidences(model: ConfidenceModel, evidence: dict[str, tuple[np.ndarray, np.ndarray]],
                     ranks: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(labels, confidences) per rank from `query_evidence`: each rank's label (the chosen hit's; -1 = none) and
    the probability that it is right (nan where there is no label or no model), made non-increasing down the
    ranks (`chain`)."""
    labels, confidence = {}, {}
    for rank in ranks:
        label, features = evidence[rank]
        p = np.full(len(label), np.nan, dtype=np.float32)
        model_of_rank = model.ranks.get(rank)
        has = label >= 0
        if model_of_rank is not None and has.any():
            p[has] = model_of_rank.probability(features[has])
        labels[rank], confidence[rank] = label, p
    return labels, chain(confidence, ranks)


def chain(confidence: dict[str, np.ndarray], ranks: Sequence[str]) -> dict[str, np.ndarray]:
    """Confidences made non-increasing down the ranks (a label is never surer than its parent's): an optional
    rank (subfamily) is capped by the ranks above it but caps none below; where a query has no label at a rank
    (nan) that rank caps nothing."""
    out = {}
    running = None
    for rank in ranks:
        value = confidence[rank]
        capped = value if running is None else np.where(np.isnan(value), value, np.fmin(value, running))
        out[rank] = capped.astype(np.float32)
        if rank not in OPTIONAL_RANKS:
            running = capped if running is None else np.where(np.isnan(capped), running, capped)
    return out


# ============================================================================================ fitting
def fit_rank(features: np.ndarray, correct: np.ndarray, weights: np.ndarray, *, seed: int = 0) -> RankModel | None:
    """The model of one rank from calibration queries (features [n, F], correct [n] bool, weights [n]); None with
    fewer than MIN_EXAMPLES. Where the calls are all right (or all wrong), a constant at the smoothed rate."""
    n = len(correct)
    if n < MIN_EXAMPLES:
        return None
    reach = float(features[correct, 0].max()) if correct.any() else 0.0
    if correct.all() or not correct.any():
        return RankModel.constant((correct.sum() + 0.5) / (n + 1.0), n, reach)
    from threadpoolctl import threadpool_limits   # installed with scikit-learn

    fitted = boosted_trees(n, seed)
    weights = np.asarray(weights, dtype=np.float64) * n / np.sum(weights)
    features = np.asarray(features, dtype=np.float64)
    # binned here: scikit-learn (1.9) bins weighted features by one weighted percentile at a time (255 sorts of
    # the column each), 85% of the fit's time (31 of 36 s of the `train` reference's build)
    binned = [quantile_bins(column, weights) for column in features.T]
    codes = np.stack([codes for codes, _ in binned], axis=1)
    # one thread: on 8 features OpenMP's threads cost more than they give (0.35 s a rank against 2.7 s, and 20 s
    # on a busy machine, where its threads wait on each other)
    with threadpool_limits(1):
        fitted.fit(codes, correct, sample_weight=weights)
    return RankModel.from_boosting(fitted, n, reach, cuts=[cuts for _, cuts in binned])


def boosted_trees(examples: int, seed: int = 0):
    """The unfitted tree ensemble of `fit_rank` for `examples` calibration queries: leaves of MIN_LEAF queries,
    or of a 30th of them on a small reference (never fewer than 10)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(**BOOSTING, min_samples_leaf=min(MIN_LEAF, max(10, examples // 30)),
                                          early_stopping=False, random_state=seed)


def quantile_bins(column: np.ndarray, weights: np.ndarray, bins: int = MAX_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(codes float64 [n], cuts float64 [B - 1]) of one feature (column [n], weights [n] > 0): each value's bin
    (0..B-1, B <= bins) and the value halfway between bins j and j + 1. Up to `bins` distinct values each is its
    own bin; above, bins are runs of distinct values holding about equal shares of the weight. For every value
    binned, x <= cuts[j] exactly when its code is <= j, so a tree split between codes j and j + 1 reads x <= cuts[j]
    (on distinct values, scikit-learn's own thresholds)."""
    distinct, inverse = np.unique(column, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(distinct) <= bins:
        bin_of = np.arange(len(distinct))
    else:
        mass = np.bincount(inverse, weights=weights, minlength=len(distinct))
        below = (np.cumsum(mass) - mass) / mass.sum()        # weight share of the values below each distinct value
        group = np.minimum((below * bins).astype(np.int64), bins - 1)        # non-decreasing
        bin_of = np.cumsum(np.diff(group, prepend=-1) > 0) - 1   # bins numbered 0..B-1 without gaps
    first = np.flatnonzero(np.diff(bin_of, prepend=-1))      # each bin's smallest distinct value
    upper, lower = distinct[first[1:] - 1], distinct[first[1:]]
    cuts = (upper + lower) / 2
    return bin_of[inverse].astype(np.float64), np.where(cuts < lower, cuts, upper)   # adjacent floats: the lower


def level_weight(rank: str, level: str) -> float:
    return LEVEL_WEIGHTS.get(rank, {}).get(level, DEFAULT_LEVEL_WEIGHT)


def level_evidence(levels: dict[str, tuple], codes: dict[str, np.ndarray], reference, chosen_of: dict[str, np.ndarray],
                   isolation_of: dict[str, np.ndarray]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """level -> `query_evidence` of its leave-out queries: levels: level -> (queries [m], score [m, N], idx [m, N],
    overlap [m, N]) in the distinct-sequence space of `reference` (the SequenceStore the queries are rows of);
    chosen_of: level -> the reported column [m]; isolation_of: level -> the hits' isolation as the reference
    without the left-out sequences has it (`isolation.left_out_isolation`)."""
    ranks = [r for r in RANKS if r in codes]
    return {level: query_evidence(idx, score, overlap, reference.lengths[queries], chosen_of[level], codes, ranks,
                                  reference, isolation_of[level])
            for level, (queries, score, idx, overlap) in levels.items()}


def fit_confidence(levels: dict[str, tuple], codes: dict[str, np.ndarray],
                   evidence: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], *, half: int | None = None
                   ) -> tuple[ConfidenceModel, dict]:
    """The confidence model of a reference from its leave-out levels (level -> (queries [m], ...), as for
    `level_evidence`) and their `level_evidence`; `half` (0 or 1): fitted on the queries whose sequence number has
    that parity only (`held_out_confidences`). Returns (model, details per rank)."""
    ranks = [r for r in RANKS if r in codes]
    models, details = {}, {}
    for rank in ranks:
        parts = []
        for level, (queries, *_searched) in levels.items():
            label, features = evidence[level][rank]
            truth = codes[rank][queries]
            use = (truth >= 0) & (label >= 0)
            if half is not None:
                use &= queries % 2 == half
            if use.any():
                parts.append((level, features[use], label[use] == truth[use]))
        if not parts:
            continue
        features = np.concatenate([p[1] for p in parts])
        correct = np.concatenate([p[2] for p in parts])
        weights = np.concatenate([np.full(len(p[2]), level_weight(rank, p[0]) / len(p[2])) for p in parts])
        model = fit_rank(features, correct, weights)
        if model is None:
            continue
        models[rank] = model
        details[rank] = {"examples": int(len(correct)),
                         "top_hit_right": {p[0]: float(p[2].mean()) for p in parts},
                         "level_weights": {p[0]: level_weight(rank, p[0]) for p in parts}}
    return ConfidenceModel(models), details


def held_out_confidences(levels: dict[str, tuple], codes: dict[str, np.ndarray],
                         evidence: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
                         ) -> dict[str, tuple[dict, dict]]:
    """level -> (labels, confidences) per rank of every leave-out query by a model fitted without it (two models,
    each on the queries of one parity of sequence number, each judging the other's): what the model does on
    queries it has not seen, for `reference info`; in-sample figures would flatter it."""
    halves = [fit_confidence(levels, codes, evidence, half=half)[0] for half in (0, 1)]
    ranks = [r for r in RANKS if r in codes]
    out = {}
    for level, (queries, *_searched) in levels.items():
        judged = [rank_confidences(model, evidence[level], ranks) for model in halves]
        odd = queries % 2 == 1      # judged by the model of the even half, and the even ones by the odd half's
        labels = judged[0][0]
        confidence = {rank: np.where(odd, judged[0][1][rank], judged[1][1][rank]) for rank in ranks}
        out[level] = (labels, confidence)
    return out
