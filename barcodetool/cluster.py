"""Cluster barcodes into BIN-like groups, match clusters to reference BINs, score clusterings.

Default method (docs/classify-and-cluster.md, docs/research/identity-rerank.md): average linkage on identity distance
(1 - sequence identity) over a candidate graph of each barcode's 30 nearest embeddings and 30 best k-mer matches
(`cluster_identity`). Given a cut (`--threshold`, or a reference's calibrated one) the tree is cut there. Without
one the bridged cut is used (BridgedCut): clusters at 2% average distance, and two of them up to 3.5% apart joined
only where at least two of their cross pairs are within 1.5% (a chain of close barcodes, as BOLD's RESL starts
from single linkage at 2.2%), two lone barcodes where they are within 2.2%; see `bridged_labels`. The embedding
method (`cluster`, `--method cosine`): average-linkage agglomerative clustering on cosine distance, cut at a
distance threshold (or at a given number of clusters). Up to FULL_LINKAGE_LIMIT points the full distance matrix
is used (exact). Larger inputs use a k-nearest-neighbour graph from the blocked exact search: edges with cosine
distance <= threshold, connected components, then exact average linkage inside each component. Average linkage
never merges two groups whose every cross pair is farther than the threshold, so this equals the full method
whenever each point's within-threshold neighbours are reachable through its k nearest neighbours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from . import embedding
from .errors import UsageError
from .io.fasta import tab_separated
from .options import Options
from .search import (KmerIndex, SequenceStore, as_store, candidate_union, identity_graph_cluster, knn_search,
                     neighbour_pairs, normalize, pair_identity, sequence_groups)
from .search.identity import MAX_COMPONENT, MIN_COMPARED_COLUMNS

log = logging.getLogger("barcodetool")

FULL_LINKAGE_LIMIT = 20_000     # points clustered with the full distance matrix (20k: 1.6 GB of float64 distances)
GRAPH_NEIGHBOURS = 30           # neighbours per point in the k-NN graph of large inputs
# Used when neither --threshold, nor a calibrated reference, nor the model card gives one. Cosine distance;
# it depends on the model, so calibrate on a reference (`--reference`) whenever one is at hand.
DEFAULT_DISTANCE_THRESHOLD = 0.02
# Identity clustering (the default method; docs/research/identity-rerank.md): average linkage on identity distance
# (1 - identity) over a candidate graph of embedding and k-mer neighbours. Without a threshold or a calibrated
# reference the bridged cut (BridgedCut) is used, which joins nothing beyond this distance. 0.035 was the fixed
# cut before it (calibrated on the BOLD insect train split: AMI 0.989 on its test barcodes, but below VSEARCH
# cluster_fast at 97% on other phyla, whose BINs often sit 1.5-3% apart); `--threshold 0.035` still gives it.
DEFAULT_IDENTITY_DISTANCE_THRESHOLD = 0.035
IDENTITY_GRAPH_NEIGHBOURS = 30  # embedding neighbours and k-mer neighbours per barcode in the candidate graph
IDENTITY_CLUSTER_GRID = (0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05)
METHODS = ("identity", "cosine")
TSV_COLUMNS = ["id", "cluster", "reference_bin", "similarity"]


@dataclass(frozen=True)
class BridgedCut:
    """The default identity cut when none is given: average linkage cut at `base`; above it, up to an average
    distance of `top`, two clusters are still joined when close barcodes chain them:
    - at least `pairs` of their cross pairs (all of them if fewer) are within `bridge`;
    - or both sides are single barcodes (one cross pair: no chain can show) within `lone` of each other.
    Sparse samples of BINs (a few barcodes each, which a fixed 3.5% cut merges across BINs 2-3% apart) stay apart
    at `base`; BINs with deep but continuous variation stay whole. base, bridge, pairs and top were chosen on BOLD
    BINs of 7 phyla, dense and subsampled to 2-5 barcodes a BIN, against VSEARCH cluster_fast at 97% and 98%;
    lone on coi_extra's BINs of 6 phyla, bold_insects' train and val and the BCDM sample, dense and subsampled
    to 1-3 and 1-5 a BIN (docs/benchmarks.md, "Cluster without a reference")."""

    base: float = 0.02
    top: float = DEFAULT_IDENTITY_DISTANCE_THRESHOLD
    bridge: float = 0.015
    pairs: int = 2
    lone: float = 0.022

    def __post_init__(self):
        if not 0 <= self.bridge <= self.base <= self.top <= 1:
            raise UsageError(f"a bridged cut needs 0 <= bridge <= base <= top <= 1, got bridge {self.bridge}, "
                             f"base {self.base}, top {self.top}")
        if not 0 <= self.lone <= self.top:
            raise UsageError(f"a bridged cut needs 0 <= lone <= top ({self.top}), got lone {self.lone}")
        if self.pairs < 1:
            raise UsageError(f"a bridged cut needs pairs >= 1, got {self.pairs}")

    def describe(self) -> str:
        return (f"bridged cut {self.base:g} (to {self.top:g} where {self.pairs}+ cross pairs are within "
                f"{self.bridge:g}, or two lone barcodes within {self.lone:g})")


BRIDGED_CUT = BridgedCut()


@dataclass(frozen=True)
class ClusterOptions(Options):
    """How records are clustered: the options of `barcodetool cluster`, validated once.

    `method`: "identity" (default: average linkage on identity distance over the embedding + k-mer candidate
    graph) or "cosine" (average linkage on the embeddings' cosine distance). The cut is `threshold` (identity
    distance, 1 - identity, or cosine distance), else the reference's calibrated one, else a default
    (cluster_records; identity: the bridged cut BRIDGED_CUT); the cosine method may instead cut into exactly
    `n_clusters`. `batch_size`: barcodes per
    forward pass; `neighbours`: neighbours per barcode in the candidate graph (identity) or the k-NN graph of
    inputs larger than `full_limit` (cosine) [default: IDENTITY_GRAPH_NEIGHBOURS, GRAPH_NEIGHBOURS].
    """

    method: str = "identity"
    threshold: float | None = None
    n_clusters: int | None = None
    batch_size: int = 256
    neighbours: int | None = None
    full_limit: int = FULL_LINKAGE_LIMIT

    kind = "cluster"

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown clustering method {self.method!r}; choose {' or '.join(METHODS)}")
        if self.threshold is not None and self.n_clusters is not None:
            raise UsageError("give --threshold or --n-clusters, not both")
        if self.n_clusters is not None and self.method != "cosine":
            raise UsageError("--n-clusters needs --method cosine (identity clusters are cut at an identity "
                             "distance: give --threshold)")
        if self.method == "identity" and self.threshold is not None and self.threshold > 1:
            raise UsageError(f"an identity distance is at most 1, got --threshold {self.threshold}")


# ============================================================================================ metrics
def cluster_metrics(true: Sequence, predicted: Sequence) -> dict:
    """AMI, ARI and match ratio of a clustering against true labels (items with an empty/None label ignored).

    match_ratio: the fraction of true groups recovered exactly, i.e. whose members form one predicted cluster
    that holds nothing else.
    """
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    true = np.asarray([("" if t is None else str(t)) for t in true], dtype=object)
    predicted = np.asarray([str(p) for p in predicted], dtype=object)
    if len(true) != len(predicted):
        raise UsageError(f"{len(true)} true labels but {len(predicted)} predicted ones")
    keep = true != ""
    true, predicted = true[keep], predicted[keep]
    n = int(len(true))
    if n == 0:
        return {"n": 0, "true_groups": 0, "clusters": 0, "ami": math.nan, "ari": math.nan, "match_ratio": math.nan}
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(predicted, return_inverse=True)
    pairs = {}
    for a, b in zip(t.tolist(), p.tolist()):
        pairs.setdefault(a, set()).add(b)
    true_sizes = np.bincount(t)
    pred_sizes = np.bincount(p)
    exact = sum(1 for a, members in pairs.items()
                if len(members) == 1 and pred_sizes[next(iter(members))] == true_sizes[a])
    return {"n": n, "true_groups": int(len(true_sizes)), "clusters": int(len(pred_sizes)),
            "ami": float(adjusted_mutual_info_score(t, p)), "ari": float(adjusted_rand_score(t, p)),
            "match_ratio": exact / len(true_sizes)}


# ============================================================================================ clustering
def _condensed_cosine(x: np.ndarray) -> np.ndarray:
    """Condensed (scipy pdist order) cosine distances of unit rows, float64, clipped to [0, 2]."""
    n = len(x)
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    position = 0
    block = max(1, (1 << 24) // max(1, n))
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        sims = x[i0:i1] @ x[i0:].T  # only the columns from i0 on are needed
        for i in range(i0, i1):
            row = sims[i - i0, i - i0 + 1:]
            out[position:position + len(row)] = 1.0 - row
            position += len(row)
    np.clip(out, 0.0, 2.0, out=out)
    return out


def _linkage(x: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage

    if len(x) < 2:      # no pair to link (scipy refuses an empty distance matrix); _cut gives the one cluster
        return np.zeros((0, 4))
    return linkage(_condensed_cosine(x), method="average")


def _cut(z: np.ndarray, n: int, *, threshold: float | None = None, n_clusters: int | None = None) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if n_clusters is not None:
        return fcluster(z, t=n_clusters, criterion="maxclust").astype(np.int64) - 1
    return fcluster(z, t=threshold, criterion="distance").astype(np.int64) - 1


def renumber(labels: np.ndarray) -> np.ndarray:
    """Cluster numbers 0, 1, 2 ... in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def cluster(embeddings: np.ndarray, *, threshold: float | None = None, n_clusters: int | None = None,
            neighbours: int = GRAPH_NEIGHBOURS, full_limit: int = FULL_LINKAGE_LIMIT, device=None) -> np.ndarray:
    """Average-linkage clusters of embeddings (cosine distance): int labels numbered by first appearance.

    Give `threshold` (cosine distance cut) or `n_clusters` (the number of clusters; needs at most `full_limit`
    points). Inputs larger than `full_limit` use the k-NN graph method (module docstring).
    """
    if (threshold is None) == (n_clusters is None):
        raise UsageError("give either a distance threshold or a number of clusters")
    x = normalize(embeddings)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n_clusters is not None:
        if n_clusters < 1:
            raise UsageError(f"the number of clusters must be at least 1, got {n_clusters}")
        if n > full_limit:
            raise UsageError(f"--n-clusters needs the full distance matrix, which is limited to {full_limit:,} "
                             f"barcodes (got {n:,} unique ones); use a distance threshold instead")
        return renumber(_cut(_linkage(x), n, n_clusters=min(n_clusters, n)))
    if threshold < 0:
        raise UsageError(f"the distance threshold must be >= 0, got {threshold}")
    if n <= full_limit:
        return renumber(_cut(_linkage(x), n, threshold=threshold))
    return renumber(_graph_cluster(x, threshold, neighbours=neighbours, full_limit=full_limit, device=device))


def _graph_cluster(x: np.ndarray, threshold: float, *, neighbours: int, full_limit: int, device=None) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(x)
    k = min(neighbours + 1, n)
    sims, idx = knn_search(x, x, k, device=device)
    rows = np.repeat(np.arange(n), k)
    cols = idx.ravel()
    dist = 1.0 - sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (dist <= threshold)
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (rows[keep], cols[keep])), shape=(n, n))
    count, component = connected_components(graph, directed=True, connection="weak")
    labels = np.empty(n, dtype=np.int64)
    order = np.argsort(component, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(component, minlength=count))]
    next_label = 0
    large = 0
    for c in range(count):
        members = order[bounds[c]:bounds[c + 1]]
        size = len(members)
        if size <= 2:  # one point, or two joined by an edge within the threshold
            labels[members] = next_label
            next_label += 1
            continue
        if size <= full_limit:
            sub = _cut(_linkage(x[members]), size, threshold=threshold)
        else:
            large += 1
            sub = _sparse_average(x[members], threshold, neighbours)
        labels[members] = sub + next_label
        next_label += int(sub.max()) + 1
    if large:
        log.info(f"{large} connected group(s) larger than {full_limit:,} were clustered with graph-restricted "
                 "average linkage (approximate)")
    return labels


def _sparse_average(x: np.ndarray, threshold: float, neighbours: int) -> np.ndarray:
    """Average linkage restricted to a connected k-NN graph (scikit-learn); for very large components only."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(x, n_neighbors=min(neighbours, len(x) - 1), metric="cosine", include_self=False)
    model = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                    linkage="average", connectivity=graph)
    return model.fit_predict(x).astype(np.int64)


# ============================================================================================ identity clustering
def identity_neighbours(store, vectors: np.ndarray | None, k: int = IDENTITY_GRAPH_NEIGHBOURS, *,
                        device=None) -> np.ndarray:
    """Candidate graph [n, <= 2k] of distinct sequences: each one's k nearest by embedding (when `vectors` are
    given) and its k best by shared k-mers (search.KmerIndex over the same sequences), self excluded."""
    store = as_store(store)
    n = len(store)
    own = np.arange(n)
    tables = []
    if n < 2:
        return np.full((n, 0), -1, dtype=np.int64)
    kk = min(k, n - 1)
    if vectors is not None:
        x = normalize(vectors)
        _, nb = knn_search(x, x, kk, exclude=[(own, own)], device=device)
        tables.append(nb)
    kmer = KmerIndex(store)
    _, nb = kmer.search(store, kk, exclude=(own, own))
    tables.append(nb)
    return candidate_union(*tables)


def cluster_identity(sequences, vectors: np.ndarray | None, threshold: float | None = None, *,
                     neighbours: int = IDENTITY_GRAPH_NEIGHBOURS, device=None, cut: BridgedCut = BRIDGED_CUT
                     ) -> np.ndarray:
    """Average-linkage clusters of distinct sequences on identity distance over the embedding + k-mer candidate
    graph: cut at `threshold` (identity.identity_graph_cluster), or with `threshold` None by the bridged `cut`
    (cluster_bridged). int labels by first appearance."""
    store = as_store(sequences)
    if threshold is not None and (threshold < 0 or threshold > 1):
        raise UsageError(f"the identity distance threshold must be in [0, 1], got {threshold}")
    if len(store) == 0:
        return np.zeros(0, dtype=np.int64)
    short = store.lengths < MIN_COMPARED_COLUMNS
    if short.any():    # fragments: each in a cluster of its own, linking nothing (MIN_COMPARED_COLUMNS)
        placed = np.flatnonzero(~short)
        labels = np.empty(len(store), dtype=np.int64)
        labels[placed] = cluster_identity(store.subset(placed), None if vectors is None else vectors[placed],
                                          threshold, neighbours=neighbours, device=device, cut=cut)
        labels[short] = len(placed) + np.arange(int(short.sum()))
        return renumber(labels)
    graph = identity_neighbours(store, vectors, neighbours, device=device)
    if threshold is None:
        return cluster_bridged(store, graph, cut)
    return renumber(identity_graph_cluster(store, graph, threshold))


def cluster_bridged(store, neighbours: np.ndarray | None, cut: BridgedCut = BRIDGED_CUT, *,
                    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    max_component: int = MAX_COMPONENT) -> np.ndarray:
    """Clusters of `store`'s sequences by the bridged cut (BridgedCut) over a candidate graph `neighbours` [n, k]
    (-1 = none), or over its edges' identities `pairs` = (i, j, identity) computed before (neighbour_pairs).

    As identity.identity_graph_cluster at `cut.top`: candidate edges within `cut.top` give connected components
    (nothing is joined across them), and inside each the exact identities of all its pairs give the average
    linkage tree, cut by `bridged_labels`. A component above `max_component` barcodes raises UsageError.
    Returns int64 [n] cluster numbers by first member."""
    store = as_store(store)
    n = len(store)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    i, j, identity = neighbour_pairs(store, neighbours) if pairs is None else pairs
    keep = (1.0 - identity) <= cut.top + 1e-9
    component = _components(n, i[keep], j[keep])
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.r_[True, component[order][1:] != component[order][:-1], True])
    largest = int(np.diff(bounds).max())
    if largest > max_component:
        raise UsageError(f"a linked group of {largest:,} barcodes at identity distance {cut.top} exceeds "
                         f"max_component={max_component:,}; give a lower --threshold")
    labels = np.empty(n, dtype=np.int64)
    next_label = 0
    for s in range(len(bounds) - 1):
        members = order[bounds[s]:bounds[s + 1]]
        if len(members) == 1:
            local = np.zeros(1, dtype=np.int64)
        else:
            ii, jj = np.triu_indices(len(members), k=1)       # condensed (pdist) order
            distances = 1.0 - pair_identity(store, members[ii], store, members[jj]).identity.astype(np.float64)
            local = bridged_labels(np.clip(distances, 0.0, 1.0), cut)
        labels[members] = next_label + local
        next_label += int(local.max()) + 1
    return renumber(labels)


def bridged_labels(distances: np.ndarray, cut: BridgedCut = BRIDGED_CUT) -> np.ndarray:
    """The bridged cut of one group from its condensed (scipy pdist order) distances: int64 labels 0.. by first
    member.

    The average-linkage tree is cut at `cut.base`. Its merges above that, in order up to `cut.top`, are accepted
    when both sides are accepted clusters (no merge below was refused) and close cross pairs chain them
    (BridgedCut: `pairs` within `bridge`, or two lone barcodes within `lone`)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    distances = np.asarray(distances, dtype=np.float64)
    m = int(round((1 + math.sqrt(1 + 8 * len(distances))) / 2))
    if m < 2:
        return np.zeros(m, dtype=np.int64)
    tree = linkage(distances, method="average")
    flat = fcluster(tree, cut.base, criterion="distance").astype(np.int64) - 1    # clusters at the base cut
    upper = np.flatnonzero((tree[:, 2] > cut.base) & (tree[:, 2] <= cut.top + 1e-9))
    if len(upper) == 0:
        return renumber(flat)
    children = tree[:, :2].astype(np.int64)
    leaf = np.arange(2 * m - 1)                        # a leaf under each tree node
    for k in range(m - 1):
        leaf[m + k] = leaf[children[k, 0]]
    size = np.r_[np.ones(m), tree[:, 3]]
    final = np.arange(int(flat.max()) + 1)             # the accepted cluster of each base cluster
    node = np.full(len(final), -1, dtype=np.int64)     # the tree node above each base cluster, as merges go on
    ok = np.ones(2 * m - 1, dtype=bool)                # tree nodes accepted (below the base cut: all)
    u, v = _condensed_pairs(np.flatnonzero(distances <= cut.bridge + 1e-9), m)
    cu, cv = flat[u], flat[v]                          # close pairs as pairs of base clusters, across ones only
    cu, cv = cu[cu != cv], cv[cu != cv]
    for k in upper.tolist():
        a, b = children[k]
        for child in (a, b):
            if child < m or tree[child - m, 2] <= cut.base:    # a base cluster meets its first upper merge
                node[flat[leaf[child]]] = child
        in_a, in_b = node == a, node == b
        accept = bool(ok[a] and ok[b])
        if accept:
            bridges = int(np.count_nonzero((in_a[cu] & in_b[cv]) | (in_b[cu] & in_a[cv])))
            n_cross = int(size[a] * size[b])
            # two lone barcodes: the merge's height is their one pair's distance
            accept = bridges >= min(cut.pairs, n_cross) or (n_cross == 1 and tree[k, 2] <= cut.lone + 1e-9)
        ok[m + k] = accept
        both = in_a | in_b
        if accept:
            final[both] = final[np.flatnonzero(both)[0]]
        node[both] = m + k
    return renumber(final[flat])


def _condensed_pairs(index: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, of positions `index` of a condensed (pdist order) distance vector of m points."""
    index = np.asarray(index, dtype=np.int64)
    i = np.floor((2 * m - 1 - np.sqrt((2 * m - 1) ** 2 - 8.0 * index)) / 2).astype(np.int64)
    for _ in range(2):                                 # fix float rounding of the inverted quadratic
        start = i * m - i * (i + 1) // 2
        i = np.where(index < start, i - 1, np.where(index >= start + (m - 1 - i), i + 1, i))
    start = i * m - i * (i + 1) // 2
    return i, index - start + i + 1


def calibrate_identity_cluster_threshold(store, vectors: np.ndarray | None, bin_codes: np.ndarray, *,
                                         max_size: int = 6000, seed: int = 0, grid=IDENTITY_CLUSTER_GRID,
                                         neighbours: int = IDENTITY_GRAPH_NEIGHBOURS, device=None
                                         ) -> tuple[float, dict]:
    """The identity-distance cut (from `grid`) maximising AMI with the reference's own BINs on a seeded subsample
    of at most `max_size` of its distinct BIN-labelled sequences (`store` rows; `bin_codes` [rows], -1 = none).
    Candidate edges and their identities are computed once for the whole grid."""
    from sklearn.metrics import adjusted_mutual_info_score

    store = as_store(store)
    rows = np.flatnonzero(np.asarray(bin_codes) >= 0)
    if len(rows) > max_size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_size, replace=False))
    if len(rows) < 3 or len(np.unique(bin_codes[rows])) < 2:
        return math.nan, {"sequences": int(len(rows)), "note": "too few BIN-labelled sequences to calibrate"}
    sub = SequenceStore.from_sequences([store.sequence(int(i)) for i in rows])
    sub_vectors = None if vectors is None else np.asarray(vectors[rows], dtype=np.float32)
    graph = identity_neighbours(sub, sub_vectors, neighbours, device=device)
    pairs = neighbour_pairs(sub, graph)
    truth = bin_codes[rows]
    scores = {}
    for t, labels in _identity_cluster_grid(sub, pairs, sorted(float(t) for t in grid)).items():
        scores[t] = float(adjusted_mutual_info_score(truth, labels))
    if not scores:
        return math.nan, {"sequences": int(len(rows)), "note": "no threshold of the grid could be clustered"}
    best = max(scores.values())
    tied = sorted(t for t, value in scores.items() if value >= best - 1e-9)
    threshold = tied[(len(tied) - 1) // 2]      # the middle of a plateau of equally good cuts
    return threshold, {"sequences": int(len(rows)), "bins": int(len(np.unique(truth))), "ami": scores[threshold],
                       "grid": scores}


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _identity_cluster_grid(store, pairs, grid, *, max_component: int = 20_000) -> dict[float, np.ndarray]:
    """identity.identity_graph_cluster at every threshold of `grid` from one set of candidate edges: the
    identities inside each linked component at the largest threshold are computed once (components at smaller
    thresholds are subsets of those). Thresholds linking more than `max_component` barcodes are left out."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(store)
    i, j, identity = pairs
    distance = 1.0 - identity
    grid = sorted(float(t) for t in grid)
    while grid:
        keep = distance <= grid[-1] + 1e-9
        top = _components(n, i[keep], j[keep])
        if n == 0 or np.bincount(top).max() <= max_component:
            break
        grid.pop()
    if not grid:
        return {}
    order = np.argsort(top, kind="stable")
    bounds = np.flatnonzero(np.r_[True, top[order][1:] != top[order][:-1], True])
    blocks = []                                          # (members, condensed distances) of each component
    for s in range(len(bounds) - 1):
        members = order[bounds[s]:bounds[s + 1]]
        if len(members) > 1:
            ii, jj = np.triu_indices(len(members), k=1)
            d = 1.0 - pair_identity(store, members[ii], store, members[jj]).identity.astype(np.float64)
            blocks.append((members, np.clip(d, 0.0, 1.0)))
    out: dict[float, np.ndarray] = {}
    for t in grid:
        keep = distance <= t + 1e-9
        component = _components(n, i[keep], j[keep])
        labels = np.arange(n, dtype=np.int64)           # singletons: their own row; groups: 2n + row * n + ...
        for members, d in blocks:
            m = len(members)
            local = component[members]
            for c in np.unique(local):
                where = np.flatnonzero(local == c)
                if len(where) == 1:
                    continue
                a, b = np.triu_indices(len(where), k=1)
                a, b = where[a], where[b]
                cut = fcluster(linkage(d[m * a - a * (a + 1) // 2 + (b - a - 1)], method="average"), t,
                               criterion="distance")
                labels[members[where]] = 2 * n + int(members[where[0]]) * n + (cut - 1)
        out[t] = renumber(labels)
    return out


# ============================================================================================ calibration
def calibrate_cluster_threshold(embeddings: np.ndarray, bin_codes: np.ndarray, groups: np.ndarray, *,
                                max_size: int = 4000, seed: int = 0) -> tuple[float, dict]:
    """The cosine-distance cut maximising AMI with the reference's own BINs on a subsample of its distinct
    BIN-labelled sequences (one record per sequence, at most `max_size`)."""
    from sklearn.metrics import adjusted_mutual_info_score

    labelled = np.nonzero(bin_codes >= 0)[0]
    _, first = np.unique(groups[labelled], return_index=True)
    rows = np.sort(labelled[first])
    if len(rows) > max_size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_size, replace=False))
    if len(rows) < 3 or len(np.unique(bin_codes[rows])) < 2:
        return math.nan, {"sequences": int(len(rows)), "note": "too few BIN-labelled sequences to calibrate"}
    x = normalize(np.asarray(embeddings[rows], dtype=np.float32))
    truth = bin_codes[rows]
    z = _linkage(x)
    heights = np.unique(z[:, 2])
    scores: dict[float, float] = {}

    def score(t: float) -> float:
        if t not in scores:
            scores[t] = float(adjusted_mutual_info_score(truth, _cut(z, len(x), threshold=t)))
        return scores[t]

    grid = np.unique(np.quantile(heights, np.linspace(0.0, 0.98, 21)))
    values = [score(float(t)) for t in grid]
    best = int(np.argmax(values))
    low = grid[max(0, best - 1)]
    high = grid[min(len(grid) - 1, best + 1)]
    inside = heights[(heights >= low) & (heights <= high)]
    if len(inside) > 2:
        for t in np.unique(np.quantile(inside, np.linspace(0, 1, 11))):
            score(float(t))
    threshold = max(scores, key=lambda t: (scores[t], -t))
    # cut half-way to the next merge height, so the threshold is not on a merge
    above = heights[heights > threshold]
    if len(above):
        threshold = (threshold + float(above[0])) / 2.0
    return float(threshold), {"sequences": int(len(rows)), "bins": int(len(np.unique(truth))),
                              "ami": scores[max(scores, key=lambda t: (scores[t], -t))]}


# ============================================================================================ records
@dataclass
class ClusterResult:
    ids: list[str]
    clusters: np.ndarray                        # int [n], numbered from 0 by first appearance
    threshold: float | None
    n_clusters: int
    reference_bin: list[str] | None = None      # per record: matched reference BIN, "new", or None
    similarity: np.ndarray | None = None        # per record: similarity (identity method: identity) to the
    metrics: dict = field(default_factory=dict)  # nearest reference barcode
    method: str = "identity"
    distinct_sequences: int = 0                 # distinct sequences among the records (what was clustered)
    cut: BridgedCut | None = None               # the bridged cut, used when `threshold` is None (identity)


def match_reference_bins(clusters: np.ndarray, nearest_bins: Sequence[str]) -> dict[int, str]:
    """For each cluster, the reference BIN that a strict majority of its members are matched to, else `new`."""
    out: dict[int, str] = {}
    tallies: dict[int, dict[str, int]] = {}
    sizes = np.bincount(clusters) if len(clusters) else np.zeros(0, dtype=int)
    for c, b in zip(clusters.tolist(), nearest_bins):
        if b:
            tally = tallies.setdefault(c, {})
            tally[b] = tally.get(b, 0) + 1
    for c in range(len(sizes)):
        tally = tallies.get(c)
        if tally:
            name, count = max(tally.items(), key=lambda item: (item[1], item[0] == "", item[0]))
            if 2 * count > sizes[c]:
                out[c] = name
                continue
        out[c] = "new"
    return out


def cluster_records(records: Sequence, model, options: ClusterOptions | None = None, *, reference=None,
                    device=None, progress=None, **changes) -> ClusterResult:
    """Embed records, cluster their distinct sequences, and (with a ReferenceIndex) match clusters to BINs.

    How is said by `options` (ClusterOptions) or by its fields as keywords (`method="cosine"`, `threshold=0.03`),
    which also override `options`. method "identity" (default): average linkage on identity distance over the
    embedding + k-mer candidate graph; cut at `threshold`, else at the reference's calibrated identity cut, else
    by the bridged cut (BRIDGED_CUT; then result.threshold is None and result.cut is set); `n_clusters` is not
    supported. method "cosine": average linkage on the embeddings' cosine distance; the threshold is `threshold`,
    the reference's calibrated cosine cut, the model card's `metrics.cluster_distance_threshold`,
    DEFAULT_DISTANCE_THRESHOLD; or `n_clusters`. `device` runs
    the neighbour searches in PyTorch; `progress` is called with the number of sequences of each embedded batch.
    """
    options = (options or ClusterOptions()).replace(**changes) if changes else (options or ClusterOptions())
    method, threshold, neighbours = options.method, options.threshold, options.neighbours
    records = list(records)
    ids = [r.id for r in records]
    sequences = [r.sequence for r in records]
    groups = sequence_groups(sequences)
    _, first = np.unique(groups, return_index=True)
    unique = [sequences[i] for i in first]  # groups are numbered by first occurrence, so this is group order
    vectors = normalize(embedding.embed_sequences(model, unique, batch_size=options.batch_size, progress=progress))
    if method == "identity":
        store = SequenceStore.from_sequences(unique)
        if threshold is None:
            threshold = default_identity_threshold(reference)
        labels_unique = cluster_identity(store, vectors, threshold, device=device,
                                         neighbours=IDENTITY_GRAPH_NEIGHBOURS if neighbours is None else neighbours)
    else:
        if options.n_clusters is None and threshold is None:
            threshold = default_threshold(model, reference)
        labels_unique = cluster(vectors, threshold=threshold, n_clusters=options.n_clusters,
                                neighbours=GRAPH_NEIGHBOURS if neighbours is None else neighbours,
                                full_limit=options.full_limit, device=device)
    clusters = renumber(labels_unique[groups])
    result = ClusterResult(ids=ids, clusters=clusters, threshold=threshold, n_clusters=int(clusters.max()) + 1
                           if len(clusters) else 0, method=method, distinct_sequences=len(unique),
                           cut=BRIDGED_CUT if method == "identity" and threshold is None else None)
    if reference is not None:
        reference.check_model(model)
        if method == "identity":
            hits = reference.identity_hits(store, vectors, device=device)
            nearest_sim, nearest_bins = hits.similarity, hits.bins
        else:
            sims, idx = reference.search(vectors, 10, device=device)
            nearest_sim = sims[:, 0]
            bin_threshold = reference.thresholds.bin if reference.thresholds else math.nan
            # the nearest reference barcode carrying a BIN (among the 10 nearest), within the BIN threshold
            nearest_bins = reference.nearest_bins(sims, idx, bin_threshold)
        member_bins = [nearest_bins[g] for g in groups]
        if reference.bin_codes is None:
            # without BINs every cluster would read "new", as if it were a new BIN: the column stays empty
            log.warning("the reference holds no BINs: reference_bin is left empty (similarity is still reported)")
            result.reference_bin = [""] * len(clusters)
        else:
            matched = match_reference_bins(clusters, member_bins)
            result.reference_bin = [matched[c] for c in clusters.tolist()]
        result.similarity = nearest_sim[groups]
    truth_bins = [r.bin or "" for r in records]
    truth_species = [r.taxonomy.get("species", "") for r in records]
    for name, truth in (("bin", truth_bins), ("species", truth_species)):
        if any(truth):
            result.metrics[name] = cluster_metrics(truth, clusters)
    return result


def default_identity_threshold(reference=None) -> float | None:
    """The reference's calibrated identity-distance cut, else None: the bridged cut (BRIDGED_CUT)."""
    t = getattr(reference, "identity_thresholds", None) if reference is not None else None
    if t is not None and not math.isnan(t.cluster_distance):
        return float(t.cluster_distance)
    if reference is not None:
        log.info(f"the reference has no calibrated identity cut (no BINs?): using the {BRIDGED_CUT.describe()}")
    return None


def default_threshold(model, reference=None) -> float:
    if reference is not None and reference.thresholds is not None \
            and not math.isnan(reference.thresholds.cluster_distance):
        return float(reference.thresholds.cluster_distance)
    value = (getattr(model, "card", {}) or {}).get("metrics", {}).get("cluster_distance_threshold")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    log.warning(f"no calibrated cluster threshold for model {model.name}: using the default cosine distance "
                f"{DEFAULT_DISTANCE_THRESHOLD} (pass --reference with BINs to calibrate, or --threshold)")
    return DEFAULT_DISTANCE_THRESHOLD


# ============================================================================================ writing
def write_clusters(result: ClusterResult, handle: IO[str]) -> int:
    """Write a clustering as the TSV of `barcodetool cluster` (with a header): id, cluster (numbered from 1 by
    first appearance), reference_bin and similarity (with a reference); returns the number of rows written."""
    handle.write("\t".join(TSV_COLUMNS) + "\n")
    for row, record_id in enumerate(result.ids):
        ref_bin = result.reference_bin[row] if result.reference_bin is not None else ""
        sim = (f"{result.similarity[row]:.4f}" if result.similarity is not None
               and math.isfinite(result.similarity[row]) else "")
        handle.write(tab_separated([record_id, str(int(result.clusters[row]) + 1), ref_bin, sim]))
    return len(result.ids)
