"""Candidates of the identity rule: k-mer and embedding searches of the reference's distinct sequences, scored by
sequence identity, merged and ranked, then decided (`identity_hits`); and the nearest BINs of k-NN neighbours.

Candidates are rows of the identity layer (distinct reference sequences, `ReferenceIndex.identity`). K-mer
candidates come first; for the queries whose best k-mer candidate scores below `embed_below` (`embedding_needed`),
the queries in doubt, embedding candidates are added, and (with a widening, the default) the k-mer search goes on
to its first 60, of which the few sharing the most 8-mers with the query are scored too (`widen_kmer_hits`): far
from every reference the 12-mer count hardly follows identity, 8-mers still do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..search import (KMER_FALLBACK_BELOW, KMER_FALLBACK_DF, KMER_MAX_DF, KMER_QUERY_STRIDE, as_store, candidate_union,
                      knn_search, normalize, rank_scored, reverse_complement, score_candidates, shared_kmer_counts)
from .decide import (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER, IdentityThresholds, Votes,
                     aligned_enough, identity_decide, widen_parts)
from .isolation import isolation_tables

if TYPE_CHECKING:   # the index is passed in; this module never needs its class at run time
    from .index import ReferenceIndex


def search_candidates(index: ReferenceIndex, queries, vectors: np.ndarray | None, n_embedding: int, n_kmer: int, *,
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
        _, emb = knn_search(normalize(vectors), index.group_embeddings, n_embedding,
                            exclude=[exclude] if exclude is not None else (), device=device)
    if n_kmer > 0 and nq:
        kmer_index = index.identity.kmer
        cap = KMER_MAX_DF if max_df is None else max_df
        if fallback is None:
            fallback = n_embedding == 0
        # queries of heavily sampled species, whose k-mers are nearly all over the cap, need the commoner
        # k-mers too when no embedding candidates make up for them
        second = (KMER_FALLBACK_DF, KMER_FALLBACK_BELOW) if fallback and max_df is None else None
        _, km = kmer_index.search(queries, n_kmer, max_df=cap, stride=KMER_QUERY_STRIDE, exclude=exclude,
                                  fallback=second)
    return emb, km


@dataclass
class ScoredCandidates:
    """Candidates of one search (distinct-sequence rows of the reference) scored by identity, in the search's
    order (not ranked)."""

    idx: np.ndarray       # int64 [Q, N] (-1 = empty)
    score: np.ndarray     # float32 [Q, N] coverage scores (-inf = empty)
    identity: np.ndarray  # float32 [Q, N]
    overlap: np.ndarray   # int32 [Q, N]
    # int64 [Q, W - N] the same k-mer search's next candidates, not scored (for a widening: `widen_kmer_hits`)
    beyond: np.ndarray | None = None

    def best(self) -> np.ndarray:
        """float [Q]: the best score of each row (-inf without candidates)."""
        valid = self.idx >= 0
        return np.where(valid, self.score, -np.inf).max(axis=1, initial=-np.inf)

    def rows(self, rows: np.ndarray) -> ScoredCandidates:
        return ScoredCandidates(self.idx[rows], self.score[rows], self.identity[rows], self.overlap[rows],
                                None if self.beyond is None else self.beyond[rows])


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


def widening_needed(kmer: ScoredCandidates, widen) -> np.ndarray:
    """bool [Q]: the queries whose k-mer candidates are widened to the first `widen[0]`: those whose best
    first-stage candidate scores below `widen[1]`; none when that is not more than the first stage holds."""
    n_wide, below, _ = widen_parts(widen)
    if n_wide <= kmer.idx.shape[1] or kmer.idx.shape[1] == 0:
        return np.zeros(len(kmer.idx), dtype=bool)
    return ~(kmer.best() >= below)


# beyond_first: 8-mers of every second candidate position. On 5,000 species of the insects' `train` left out of it
# (genus top hit of those whose genus keeps other species; 60 searched, 5 scored) every position 78.86%, every
# second 78.89%, every third 78.50%; every second costs 0.72 of every one (docs/benchmarks.md).
WIDEN_SHARED_STRIDE = 2


def beyond_first(queries, ref_store, wide_idx: np.ndarray, first: int, scored: int) -> np.ndarray:
    """int64 [Q, scored] (or [Q, W - first] with scored = 0): of a wide k-mer search's candidates `wide_idx`
    [Q, W], those after its first `first` (the first stage's own) that share the most 8-mers with the query
    (search.shared_kmer_counts over every WIDEN_SHARED_STRIDE-th position of the candidate; ties in the search's
    order), or all of them; -1 = none."""
    beyond = np.asarray(wide_idx, dtype=np.int64)[:, first:]
    if scored <= 0 or scored >= beyond.shape[1]:
        return beyond
    shared = shared_kmer_counts(queries, ref_store, beyond, stride=WIDEN_SHARED_STRIDE)
    order = np.argsort(-shared, axis=1, kind="stable")[:, :scored]       # -1 slots count -1: never before a real one
    return np.take_along_axis(beyond, order, axis=1)


def widened(first: ScoredCandidates, rows: np.ndarray, wide: ScoredCandidates) -> ScoredCandidates:
    """[Q, n + w]: the first-stage candidates `first` [Q, n] with, on `rows`, those of the wide search's scored
    candidates `wide` [len(rows), w] that score above the best first-stage one after them (the others, and one
    already among the first, replaced by an empty slot); the other rows padded with empty slots.

    Only nearer references join: a wider search also brings references of other taxa at the distance of those
    already found, which would make the candidate list, and so the confidence of its labels, depend on how far
    the search went rather than on what is near (on train species left out of the insect reference, keeping
    them all named 6 points fewer genera of new species at the same cutoff)."""
    q, n = first.idx.shape
    w = wide.idx.shape[1]
    idx = np.concatenate([first.idx, np.full((q, w), -1, dtype=np.int64)], axis=1)
    score = np.concatenate([first.score, np.full((q, w), -np.inf, dtype=np.float32)], axis=1)
    identity = np.concatenate([first.identity, np.full((q, w), -np.inf, dtype=np.float32)], axis=1)
    overlap = np.concatenate([first.overlap, np.zeros((q, w), dtype=np.int32)], axis=1)
    if len(rows):
        union = candidate_union(first.idx[rows], wide.idx)[:, n:]
        fresh = (union >= 0) & (wide.score > first.best()[rows, None])
        union = np.where(fresh, union, -1)
        idx[rows, n:] = union
        score[rows, n:] = np.where(fresh, wide.score, -np.inf)
        identity[rows, n:] = np.where(fresh, wide.identity, -np.inf)
        overlap[rows, n:] = np.where(fresh, wide.overlap, 0)
    return ScoredCandidates(idx, score, identity, overlap)


def widen_kmer_hits(store, index: ReferenceIndex, first: ScoredCandidates, widen, *,
                    fallback: bool) -> ScoredCandidates:
    """`widened` k-mer candidates of the queries `widening_needed` picks: their first `widen[0]` k-mer candidates
    searched, those beyond the first stage chosen by `beyond_first` and scored."""
    rows = np.nonzero(widening_needed(first, widen))[0]
    if not len(rows):
        return first
    n_wide, _, scored = widen_parts(widen)
    n = first.idx.shape[1]
    subset = store.subset(rows)
    if first.beyond is not None and first.beyond.shape[1] >= n_wide - n:   # the first search went that far
        km = np.concatenate([first.idx[rows], first.beyond[rows, :n_wide - n]], axis=1)
    else:
        _, km = search_candidates(index, subset, None, 0, n_wide, fallback=fallback)
    chosen = beyond_first(subset, index.identity.store, km, n, scored)
    fresh = candidate_union(first.idx[rows], chosen)[:, first.idx.shape[1]:]
    return widened(first, rows, ScoredCandidates(fresh, *score_candidates(subset, index.identity.store, fresh)))


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


@dataclass
class IdentityHits:
    """Identity search results of a batch of queries (distinct-sequence rows of the reference)."""

    idx: np.ndarray          # int64 [Q, N] candidates ranked by score (-1 = empty)
    score: np.ndarray        # float32 [Q, N] coverage scores
    identity: np.ndarray     # float32 [Q, N]
    overlap: np.ndarray      # int32 [Q, N]
    votes: Votes             # of the identity decision
    chosen: np.ndarray       # int64 [Q] column of the hit whose lineage is reported
    hit: np.ndarray          # int64 [Q] its distinct-sequence row (-1 = no candidate)
    bins: list[str]          # per query: BIN within the BIN threshold, else ""
    similarity: np.ndarray   # float32 [Q] identity of the hit (nan = none)
    embedded: np.ndarray     # bool [Q] the query got embedding candidates (embedding_needed)


def kmer_hits(queries, index: ReferenceIndex, n_kmer: int, *, fallback: bool = True, wide: int = 0
              ) -> ScoredCandidates:
    """The first stage of `identity_hits`: k-mer candidates of query sequences scored by identity (`fallback`:
    queries whose k-mers are nearly all too common are searched again with a higher cap). With `wide` > n_kmer
    the search goes on to the first `wide` (kept unscored in `beyond`, for a widening): one search costs about as
    much as the shallower one, a second search of the widened queries as much again."""
    store = as_store(queries)
    _, km = search_candidates(index, store, None, 0, max(n_kmer, wide), fallback=fallback)
    first = km[:, :n_kmer]
    score, identity, overlap = score_candidates(store, index.identity.store, first)
    return ScoredCandidates(first, score, identity, overlap, km[:, n_kmer:] if wide > n_kmer else None)


# Reads of the other strand. A query whose best k-mer candidate scores below REVERSE_BELOW is searched as its
# reverse complement too, and read so where that scores at least REVERSE_MARGIN higher (and REVERSE_BELOW): such a
# read matches nothing as it is (its anchors are chance hits: score ~0), and a forward COI query, even of a new
# order, scores 0.75 and up (of 7,209 val and test_unseen barcodes none scored under 0.5). BOLD also holds a few
# reversed records (3 of the 30,980 distinct train barcodes), which such reads match at 79-90%: below
# REVERSE_CHECK_BELOW the share of the query's 12-mers the reference holds is compared with its reverse
# complement's (forward queries: 0.75 and up, their reverse complements 0.54 at most; reversed ones the other way
# round), and a query whose reverse complement's share is at least REVERSE_SHARE and twice its own is searched
# reversed too (35 us a query and strand).
REVERSE_BELOW = 0.5
REVERSE_MARGIN = 0.1
REVERSE_CHECK_BELOW = 0.92
REVERSE_SHARE = 0.5


def oriented_kmer_hits(queries: list[str], index: ReferenceIndex, n_kmer: int, *, fallback: bool = True,
                       wide: int = 0) -> tuple[ScoredCandidates, np.ndarray]:
    """`kmer_hits` of the queries in the orientation that matches the reference: (candidates, rows read as reverse
    complements). The caller reads those rows' sequences reversed and complemented from then on."""
    forward = kmer_hits(queries, index, n_kmer, fallback=fallback, wide=wide)
    best = forward.best()
    poor = ~(best >= REVERSE_BELOW)
    check = np.flatnonzero(~poor & (best < REVERSE_CHECK_BELOW))
    if len(check):
        kmers = index.identity.kmer
        own = kmers.indexed_share([queries[i] for i in check.tolist()])
        other = kmers.indexed_share([reverse_complement(queries[i]) for i in check.tolist()])
        poor[check[(other >= REVERSE_SHARE) & (other >= 2 * own)]] = True
    poor = np.flatnonzero(poor)
    if not len(poor):
        return forward, poor
    reverse = kmer_hits([reverse_complement(queries[i]) for i in poor.tolist()], index, n_kmer, fallback=fallback,
                        wide=wide)
    other = reverse.best()
    better = (other >= REVERSE_BELOW) & (other >= np.maximum(best[poor], 0) + REVERSE_MARGIN)
    flipped, rows = poor[better], np.flatnonzero(better)
    for name in ("idx", "score", "identity", "overlap", "beyond"):
        values = getattr(forward, name)
        if values is not None:
            values[flipped] = getattr(reverse, name)[rows]
    return forward, flipped


def identity_hits(queries, vectors: np.ndarray | None, index: ReferenceIndex, thresholds: IdentityThresholds, *,
                  candidates: tuple[int, int] = (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER),
                  min_confidence: float | None = None, device=None, embed: Callable | None = None,
                  kmer: ScoredCandidates | None = None) -> IdentityHits:
    """Search, re-rank by identity and decide (decide.identity_decide) for a batch of query sequences
    (a list of cleaned sequences or a SequenceStore).

    K-mer candidates come first (`kmer`: already computed by `kmer_hits`); embedding candidates are added for the
    queries whose best k-mer candidate scores below `thresholds.embed_below` (`embedding_needed`). Their
    embeddings come from `vectors` (rows for every query, or for those queries only) or from `embed`, a function
    of a list of sequences called for those queries only.
    """
    if min_confidence is None:
        min_confidence = thresholds.min_confidence
    n_embedding, n_kmer = candidates
    store = as_store(queries)
    n = len(store)
    layer = index.identity
    fallback = kmer_fallback(n_embedding, thresholds.embed_below)
    if kmer is None:
        kmer = kmer_hits(store, index, n_kmer, fallback=fallback, wide=widen_parts(thresholds.widen)[0])
    need = embedding_needed(kmer, n_embedding, thresholds.embed_below)
    kmer = widen_kmer_hits(store, index, kmer, thresholds.widen, fallback=fallback)
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
        emb, _ = search_candidates(index, subset, vectors, n_embedding, 0, device=device)
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
    # the best n_embedding + n_kmer of all: a widened search changes which candidates, not how many
    idx, score, identity, overlap = (a[:, :n_embedding + n_kmer] for a in merge_ranked(kmer, embedding, need))
    codes = {r: layer.codes[r] for r in index.ranks}
    votes, chosen = identity_decide(idx, score, codes, thresholds=thresholds.ranks, min_confidence=min_confidence,
                                    model=thresholds.confidence, overlap=overlap, query_length=store.lengths,
                                    reference=layer.store,
                                    isolation=isolation_tables(index) if thresholds.confidence is not None else None)
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
        ok = (label >= 0) & (score[rows, use] >= thresholds.bin) & aligned_enough(overlap, use)
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
