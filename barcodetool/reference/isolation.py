"""How far each reference sequence lies from the nearest reference of another species and of another genus.

A hit list shows the neighbourhood of the query only: for 93% of known-species queries of the insect `train`
reference every candidate carries one species, so the list cannot say whether that species is 0.5% or 10% from the
next one. The reference can. For every distinct reference sequence and each ISOLATION_RANKS rank, `isolation_tables`
keeps the ISOLATION_NEIGHBOURS nearest references of another label at that rank (k-mer candidates excluding the
sequence's own label and references without a label at the rank, scored by identity), and the confidence model
reads the reported hit's distance to the nearest of them (`confidence.isolation_distances`): a query 1% from a hit
whose species lies 8% from every other species is inside a barcode gap; the same query beside a species 0.6% from
its sister is not.

The calibration's leave-out queries must see the tables a reference without the left-out sequence, species or genus
would have (`left_out_isolation`): the nearest other species of a hit is very often the left-out one (the query
came from it), so those entries are skipped, and where all of a hit's entries are skipped its neighbours are
searched again without the left-out taxon (LEAVE_OUT_DEPTH k-mer candidates).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..model.runtime import available_cores
from ..search import (KMER_FALLBACK_BELOW, KMER_FALLBACK_DF, KMER_MAX_DF, KMER_QUERY_STRIDE, SequenceStore,
                      score_candidates)
from .confidence import ISOLATION_RANKS, MAX_DISTANCE, score_distance

if TYPE_CHECKING:
    from .index import ReferenceIndex

log = logging.getLogger(__name__)

ISOLATION_NEIGHBOURS = 3   # nearest references of another label kept per sequence and rank
ISOLATION_SEARCH = 5       # k-mer candidates scored to find them
ISOLATION_WORKERS = 2      # threads that search (31,000 sequences: 1.5x faster with 2 than with 1 on 2 cores)
ISOLATION_MAX_SEARCHED = 20_000   # distinct sequences searched at most (a sample of larger references): the
# tables cost about 1.3 ms a searched sequence at 123,564 references (two threads); this keeps the build of that
# reference within 240 s (docs/benchmarks.md)
LEAVE_OUT_DEPTH = 300      # k-mer candidates searched again for a left-out query's hit whose entries were all skipped

Tables = dict[str, tuple[np.ndarray, np.ndarray]]   # rank -> (rows int32 [R, K], scores float32 [R, K]) best first


def _nearest_other(kmer, queries: SequenceStore, query_codes: np.ndarray, codes: np.ndarray, depth: int
                   ) -> np.ndarray:
    """int64 [Q, depth]: k-mer candidates (rows of the KmerIndex `kmer`, -1 = none) of `queries` among the
    references whose code differs from the query's, in k-mer order."""
    # the commoner k-mers too for sequences of heavily sampled taxa, as for k-mer-only queries (`search_candidates`),
    # as far as the index stores their postings
    stored = kmer.max_stored_df if kmer.postings_left_out else None
    cap, fallback_cap = (KMER_MAX_DF, KMER_FALLBACK_DF) if stored is None else (min(KMER_MAX_DF, stored),
                                                                                 min(KMER_FALLBACK_DF, stored))
    _, found = kmer.search(queries, depth, max_df=cap, stride=KMER_QUERY_STRIDE, exclude=(query_codes, codes),
                           fallback=(fallback_cap, KMER_FALLBACK_BELOW) if fallback_cap > cap else None)
    return found.astype(np.int64)


def _first_kept(found: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """int64 [Q, n]: the first `n` candidates of `found` [Q, N] (in its order) where `keep`, then -1."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
    return np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(found, order, axis=1), -1)


def _labelled(found: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """bool [Q, N]: candidates (-1 = none) that carry a label in `codes` (-1 = none)."""
    return (found >= 0) & (codes[np.maximum(found, 0)] >= 0)


def _labelled_others(kmer, queries: SequenceStore, query_codes: np.ndarray, codes: np.ndarray, depth: int
                     ) -> np.ndarray:
    """int64 [Q, depth]: `_nearest_other`'s candidates that carry another label: a reference without a label at
    the rank (an odd record read as unlabelled, or a rank its source left empty) is not "another species" (an
    unnamed record 0.3% from a species is most likely of it). Queries left with fewer than ISOLATION_NEIGHBOURS
    labelled candidates are searched again LEAVE_OUT_DEPTH deep and keep the first `depth` labelled ones."""
    found = _nearest_other(kmer, queries, query_codes, codes, depth)
    labelled = _labelled(found, codes)
    out = np.where(labelled, found, -1)
    dropped = (found >= 0) & ~labelled
    again = np.flatnonzero(dropped.any(axis=1) & (labelled.sum(axis=1) < ISOLATION_NEIGHBOURS))
    if len(again):
        deeper = _nearest_other(kmer, queries.subset(again), query_codes[again], codes, LEAVE_OUT_DEPTH)
        out[again] = _first_kept(deeper, _labelled(deeper, codes), depth)
    return out


def _best_scored(queries: SequenceStore, store: SequenceStore, candidates: np.ndarray, keep: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The `keep` best of `candidates` [Q, N] by identity score: (rows int32 [Q, keep], scores float32 [Q, keep]),
    best first, -1 / -inf where there are fewer."""
    score = score_candidates(queries, store, candidates)[0]
    score = np.where((candidates >= 0) & np.isfinite(score), score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :keep]
    rows = np.take_along_axis(candidates, order, axis=1)
    score = np.take_along_axis(score, order, axis=1)
    rows = np.where(np.isfinite(score), rows, -1)
    return rows.astype(np.int32), score.astype(np.float32)


def isolation_tables(index: ReferenceIndex) -> Tables:
    """The index's tables (`index.identity_isolation`), computed and kept in memory when it has none (an index of
    an older version: `reference build` or `reference add` store them)."""
    if index.identity_isolation is None:
        started = time.perf_counter()
        index.identity_isolation = compute_isolation(index)
        if index.path is not None and index.identity_isolation:   # (none to store: no species or genus labels)
            log.warning(f"{index.path} holds no isolation tables (an index of an older version): computed them in "
                        f"{time.perf_counter() - started:.0f} s; `barcodetool reference build` stores them")
    return index.identity_isolation


def searched_rows(codes: dict[str, np.ndarray], size: int, limit: int = ISOLATION_MAX_SEARCHED, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows searched [m], source [size]: the searched row whose entries each row takes, -1 = none). Up to `limit`
    rows all are searched; above, a seeded sample of `limit` that spreads over the species (and over the genera
    of rows without a species; each unlabelled row alone) as evenly as it can: one row of as many groups as the
    limit allows, then a second of each, and so on. Every other row takes the entries of the first searched row
    of its group (its nearest other species is about its sibling's), or none where its group has no searched
    row (a reference with more groups than `limit`: the confidence model reads that as "no other label known",
    in calibration as in classification)."""
    everything = np.arange(size)
    if size <= limit:
        return everything, everything
    species = codes.get("species", np.full(size, -1))
    genus = codes.get("genus", np.full(size, -1))
    group = np.where(species >= 0, species, np.where(genus >= 0, species.max(initial=-1) + 1 + genus, -1))
    group = np.where(group >= 0, group, group.max(initial=-1) + 1 + everything)
    shuffled = np.random.default_rng(seed).permutation(size)
    order = shuffled[np.argsort(group[shuffled], kind="stable")]          # by group, random within a group
    first = np.searchsorted(group[order], group[order], side="left")
    turn = np.empty(size, dtype=np.int64)
    turn[order] = np.arange(size) - first          # 0 for a group's first (random) row, 1 for its second, ...
    picked_order = shuffled[np.argsort(turn[shuffled], kind="stable")]    # by turn, random within a turn
    searched = np.sort(picked_order[:limit])
    picked = np.zeros(size, dtype=bool)
    picked[searched] = True
    source_of_group = np.full(group.max() + 1, -1, dtype=np.int64)
    ours = order[picked[order]]
    firsts = np.unique(group[ours], return_index=True)[1]     # each group's first searched row, in `order`
    source_of_group[group[ours[firsts]]] = ours[firsts]
    source = np.where(picked, everything, source_of_group[group])
    return searched, source


def compute_isolation(index: ReferenceIndex, *, block: int = 2048, limit: int = ISOLATION_MAX_SEARCHED,
                      workers: int | None = None) -> Tables:
    """rank -> (rows, scores) [distinct sequences, ISOLATION_NEIGHBOURS] for each ISOLATION_RANKS rank the index
    labels: each sequence's nearest references of another label at that rank (rows without a label get the
    nearest labelled ones); above `limit` distinct sequences only a sample is searched (`searched_rows`). Blocks
    of `block` sequences are searched by `workers` threads (default: ISOLATION_WORKERS, at most the cores this
    process may use)."""
    layer = index.identity
    store, kmer = layer.store, layer.kmer
    searched, source = searched_rows(layer.codes, len(store), limit)
    if len(searched) < len(store):
        log.info(f"isolation: the nearest other species and genus of {len(searched):,} of the {len(store):,} "
                 f"distinct sequences searched; {int((source < 0).sum()):,} of the others have no searched sibling")
    workers = max(1, min(workers or ISOLATION_WORKERS, available_cores()))
    tables = {}
    for rank in ISOLATION_RANKS:
        codes = layer.codes.get(rank)
        if codes is None or not (codes >= 0).any():
            continue
        rows = np.full((len(store), ISOLATION_NEIGHBOURS), -1, dtype=np.int32)
        scores = np.full((len(store), ISOLATION_NEIGHBOURS), -np.inf, dtype=np.float32)

        def search(part: np.ndarray, codes=codes) -> tuple[np.ndarray, np.ndarray]:
            queries = store.subset(part)
            return _best_scored(queries, store, _labelled_others(kmer, queries, codes[part], codes,
                                                                  ISOLATION_SEARCH), ISOLATION_NEIGHBOURS)

        parts = [searched[start:start + block] for start in range(0, len(searched), block)]
        # the k-mer search and the scoring run mostly outside the GIL: threads share the index, processes could not
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="barcodetool-isolation") as pool:
            for part, (found, score) in zip(parts, pool.map(search, parts)):
                rows[part], scores[part] = found, score
        has = source >= 0
        tables[rank] = (np.where(has[:, None], rows[np.maximum(source, 0)], -1).astype(np.int32),
                        np.where(has[:, None], scores[np.maximum(source, 0)], -np.inf).astype(np.float32))
    return tables


def left_out_isolation(index: ReferenceIndex, tables: Tables, hit: np.ndarray, queries: np.ndarray, level: str
                       ) -> np.ndarray:
    """float64 [m, len(ISOLATION_RANKS)]: `confidence.isolation_distances` of the hits (rows, -1 = none) of
    leave-out queries (rows `queries`) of one level ("sequence", "species", "genus"), as if the left-out sequence
    (or every sequence of the query's species or genus) were not in the reference."""
    layer = index.identity
    out = np.full((len(hit), len(ISOLATION_RANKS)), MAX_DISTANCE)
    has = hit >= 0
    left_codes = layer.codes.get(level) if level != "sequence" else None

    def kept(rows: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
        ok = rows >= 0
        if level == "sequence":
            return ok & (rows != query_rows[:, None])
        return ok & (left_codes[np.maximum(rows, 0)] != left_codes[query_rows][:, None])

    for column, rank in enumerate(ISOLATION_RANKS):
        if rank not in tables:
            continue
        table_rows, table_scores = tables[rank]
        safe = np.maximum(hit, 0)
        rows, scores = table_rows[safe], table_scores[safe]
        ok = kept(rows, queries) & np.isfinite(scores)
        best = np.where(ok, scores, -np.inf).max(axis=1, initial=-np.inf)
        again = np.nonzero(has & ~ok.any(axis=1) & (rows >= 0).any(axis=1))[0]
        if len(again):
            codes = layer.codes[rank]
            searched = layer.store.subset(hit[again])
            found = _nearest_other(layer.kmer, searched, codes[hit[again]], codes, LEAVE_OUT_DEPTH)
            found = _first_kept(found, kept(found, queries[again]) & _labelled(found, codes), ISOLATION_SEARCH)
            best[again] = _best_scored(searched, layer.store, found, 1)[1][:, 0]
        out[:, column] = np.where(has, score_distance(best), MAX_DISTANCE)
    return out
