"""K-mer candidate search: an inverted index of the distinct 12-mers of reference sequences (the VSEARCH idea)."""

from __future__ import annotations

import threading

import numpy as np

from ..errors import InputError, UsageError
from .knn import largest_columns
from .sequences import SequenceStore, as_store, kmer_codes

KMER_K = 12                 # KmerIndex k-mer length
KMER_MAX_DF = 1000          # KmerIndex.search: skip k-mers held by more references than this
# classify: every second query k-mer is looked up. Measured on the shared split (train as the reference): 36% less
# search time, species top hit on val 99.10% either way, genus top hit of left-out train species 77.3% vs 77.4%
# (docs/benchmarks.md, "CPU speed").
KMER_QUERY_STRIDE = 2
# k-mer-only candidates (no embedding): a query most of whose k-mers are held by more than KMER_MAX_DF references
# (a heavily sampled species) is searched again with this cap. On val against train: species top hit 97.90% ->
# 98.94% for 1.5x the search time (a single search capped at 3,000 for every query: 98.94% for 2.9x).
KMER_FALLBACK_DF = 3000
KMER_FALLBACK_BELOW = 0.1   # ... when fewer than this fraction of its k-mers are within KMER_MAX_DF
KMER_COUNT_ELEMENTS = 1 << 22   # KmerIndex.search: queries x references shared-k-mer counts held at once
# Up to this many stored postings the shared k-mers are counted by a sparse product (its int16 data array costs
# 2 bytes a posting: 92 MiB for 123k references); above it by gathering the postings, which needs no data array
SPARSE_COUNT_POSTINGS = 1 << 26
SPARSE_COUNT_MAX = np.iinfo(np.int16).max   # shared k-mers an int16 sparse product counts (a query of ~65 kb)
# Postings are stored only for k-mers held by at most this many references: every search caps at KMER_MAX_DF or
# KMER_FALLBACK_DF, so the commoner k-mers' postings (45% of all on 123k real barcodes) are never read.
KMER_STORED_DF = KMER_FALLBACK_DF
KMER_BUILD_CELLS = 1 << 22  # KmerIndex: bases (padded) whose k-mers are taken at once while building
KMER_MOVE_POSTINGS = 1 << 22   # KmerIndex.extended: old postings moved to their new offsets at a time
# shared_kmer_counts: short k-mers, which follow identity further from the query than 12-mers do (COI's third
# codon positions break most 12-mers of a barcode 10% away), counted for a few candidates only
SHARED_K = 8
SHARED_BATCH = 16           # queries whose k-mer tables (4^k bytes each) are held at once (in cache)


def _kept_share(q_of: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
    """float [n]: per query, the share of its looked-up k-mers (one entry each in `q_of`) marked in `kept`."""
    return np.bincount(q_of[kept], minlength=n) / np.maximum(1, np.bincount(q_of, minlength=n))


def _distinct_kmers(store: SequenceStore, k: int, cells: int):
    """(rows int32, k-mers int32) of each sequence's distinct valid k-mers, in row order (k-mers ascending within
    a row), for blocks of consecutive sequences whose padded matrix holds about `cells` bases (a few very long
    records, such as whole mRNAs, must not widen a block of thousands)."""
    c0 = 0
    while c0 < len(store):
        # the block's width is the longest of its sequences: grow it while rows x width fits (65,536 rows at most)
        width = np.maximum.accumulate(store.lengths[c0:c0 + 65536].astype(np.int64))
        rows_fit = np.flatnonzero(width * np.arange(1, len(width) + 1) > cells)
        c1 = c0 + max(1, int(rows_fit[0]) if len(rows_fit) else len(width))
        rows = np.arange(c0, c1)
        c0 = c1
        kmers = np.sort(kmer_codes(store.rows(rows), k), axis=1)        # [rows, width - k + 1], -1 first
        fresh = kmers >= 0
        fresh[:, 1:] &= kmers[:, 1:] != kmers[:, :-1]
        r, c = np.nonzero(fresh)
        yield rows[r].astype(np.int32), kmers[r, c]


def _kmer_counts(store: SequenceStore, k: int, cells: int) -> np.ndarray:
    """int64 [4^k]: how many sequences of `store` hold each k-mer (a dense table of all k-mers)."""
    counts = np.zeros(4 ** k, dtype=np.int64)
    for _rows, values in _distinct_kmers(store, k, cells):
        counts += np.bincount(values, minlength=len(counts))
    return counts


def _place_postings(refs: np.ndarray, cursor: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """Write the postings (`rows`, k-mers `values`; rows ascending) at `cursor[k-mer]` onwards in `refs`, in row
    order within each k-mer, and advance the cursors past them (a counting sort's placing step)."""
    if not len(values):
        return
    order = np.argsort(values, kind="stable")       # by k-mer, rows ascending within each
    values, rows = values[order], rows[order]
    run_start = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    run_length = np.diff(np.r_[run_start, len(values)])
    rank = np.arange(len(values)) - np.repeat(run_start, run_length)
    refs[cursor[values] + rank] = rows
    cursor[values[run_start]] += run_length


def shared_kmer_counts(queries, ref_store, candidate_idx: np.ndarray, *, k: int = SHARED_K, stride: int = 1,
                       batch: int = SHARED_BATCH) -> np.ndarray:
    """int32 [Q, N]: for each query and candidate (rows of `ref_store`, -1 = none, counted -1), how many of the
    candidate's valid k-mer positions hold a k-mer of the query. A cheap ranking of candidates by similarity, for
    a few dozen candidates a query (each query's k-mers as a table of 4^k + 1 bytes)."""
    if not 4 <= k <= 10:
        raise UsageError(f"k must be 4 to 10, got {k}")
    queries, ref_store = as_store(queries), as_store(ref_store)
    candidate_idx = np.asarray(candidate_idx, dtype=np.int64)
    if candidate_idx.ndim != 2 or len(candidate_idx) != len(queries):
        raise UsageError(f"candidate_idx must be [{len(queries)}, N], got {list(candidate_idx.shape)}")
    counts = np.full(candidate_idx.shape, -1, dtype=np.int32)
    width = 4 ** k + 1           # a query's table: cell 0 for k-mers with anything but A/C/G/T (code -1), never set
    for q0 in range(0, len(queries), batch):
        rows = np.arange(q0, min(len(queries), q0 + batch))
        block = candidate_idx[rows]
        pair_query, pair_column = np.nonzero(block >= 0)
        if not len(pair_query):
            continue
        query_kmers = kmer_codes(queries.rows(rows), k)
        r, c = np.nonzero(query_kmers >= 0)
        held = np.zeros(len(rows) * width, dtype=np.uint8)
        held[r * width + query_kmers[r, c] + 1] = 1
        unique, of_pair = np.unique(block[pair_query, pair_column], return_inverse=True)
        ref_kmers = kmer_codes(ref_store.rows(unique), k, stride)
        ref_kmers += 1
        cells = ref_kmers[of_pair]                                             # int32 [pairs, positions]
        cells += (pair_query * width).astype(np.int32)[:, None]
        counts[rows[pair_query], pair_column] = held[cells].sum(axis=1, dtype=np.int32)
    return counts


class KmerIndex:
    """Inverted index of the distinct k-mers of reference sequences, for candidate generation by shared k-mers
    (the VSEARCH/USEARCH idea): a query's candidates are the references sharing most of its distinct k-mers.

    K-mers found in more than `max_df` references (conserved stretches shared across genera and families) are
    skipped at search time: they cost most of the work and hardly rank anything, and their postings are not
    stored (`max_stored_df`). Memory: 4 bytes per stored posting (12 M for 31 k barcodes with k = 12, 46 M for
    123 k, 293 M for a million), and up to SPARSE_COUNT_POSTINGS of them 2 bytes more once searched (the
    postings as a sparse matrix of ones: `_shared_counts`).
    """

    _matrix_lock = threading.Lock()   # classify's worker threads may search an index for the first time at once

    def __init__(self, store, k: int = KMER_K, *, max_stored_df: int | None = KMER_STORED_DF,
                 cells: int = KMER_BUILD_CELLS):
        """Index the distinct k-mers of `store` (a SequenceStore or a list of sequences). Postings are kept only
        for k-mers held by at most `max_stored_df` references (None: all): no search uses the others, which are
        ~45% of all postings on 123k real barcodes; their counts are kept (`df`)."""
        if not 4 <= k <= 15:
            raise UsageError(f"k must be 4 to 15, got {k}")
        store = as_store(store)
        self.k = k
        self.size = len(store)
        self.max_stored_df = None if max_stored_df is None else int(max_stored_df)
        # Two passes over the sequences, memory bounded by the output: count each k-mer's references (a dense
        # table of the 4^k k-mers), then place every stored posting at its k-mer's offset (a counting sort).
        df = _kmer_counts(store, k, cells)
        self.kmers = np.flatnonzero(df).astype(np.int32)   # int32 [distinct k-mers], ascending
        self.df = df[self.kmers].astype(np.int32)          # references holding each distinct k-mer
        stored = df if self.max_stored_df is None else np.where(df <= self.max_stored_df, df, 0)
        cursor = np.zeros(len(df), dtype=np.int64)          # next free posting of each k-mer
        np.cumsum(stored[:-1], out=cursor[1:])
        self.refs = np.empty(int(stored.sum()), dtype=np.int32)   # int32 [postings] reference rows, by k-mer
        del df
        for rows, values in _distinct_kmers(store, k, cells):
            keep = stored[values] > 0
            _place_postings(self.refs, cursor, rows[keep], values[keep])
        self._offsets = self._left_out = self._matrix = None

    @property
    def postings_left_out(self) -> bool:
        """Whether some k-mer is held by more than max_stored_df references (its postings not stored): searches
        may then not cap above max_stored_df."""
        if self._left_out is None:
            self._left_out = self.max_stored_df is not None and bool((self.df > self.max_stored_df).any())
        return self._left_out

    @property
    def stored_df(self) -> np.ndarray:
        """int32 [distinct k-mers]: the postings stored for each k-mer (its df, or 0 above max_stored_df)."""
        if self.max_stored_df is None:
            return self.df
        return np.where(self.df <= self.max_stored_df, self.df, 0).astype(np.int32)

    @classmethod
    def from_arrays(cls, k: int, size: int, kmers: np.ndarray, df: np.ndarray, refs: np.ndarray,
                    max_stored_df: int | None = None) -> KmerIndex:
        """An index from its stored arrays (`kmers`, `df`, `refs` and `max_stored_df` as built)."""
        kmers = np.asarray(kmers, dtype=np.int32)
        df = np.asarray(df, dtype=np.int32)
        refs = np.asarray(refs, dtype=np.int32)
        index = cls.__new__(cls)
        index.k, index.size, index.kmers, index.df, index.refs = int(k), int(size), kmers, df, refs
        index.max_stored_df = None if max_stored_df is None else int(max_stored_df)
        index._offsets = index._left_out = index._matrix = None
        if not 4 <= k <= 15 or kmers.shape != df.shape \
                or int(index.stored_df.sum(dtype=np.int64)) != len(refs) \
                or (len(refs) and (int(refs.min()) < 0 or int(refs.max()) >= size)) \
                or (len(kmers) > 1 and (np.diff(kmers) <= 0).any()):
            raise InputError("the stored k-mer index is inconsistent", fix="rebuild the reference index")
        return index

    def extended(self, store, *, cells: int = KMER_BUILD_CELLS) -> KmerIndex:
        """A new index of this one's sequences followed by those of `store` (a SequenceStore or a list of
        sequences), which become rows size, size + 1, ...: equal, array for array, to the index built at once over
        all of them with this index's k and max_stored_df, without reading the indexed sequences again.

        Each k-mer's postings stay ascending (the new rows come after the old ones), and a k-mer whose count
        passes max_stored_df with the new sequences loses its stored postings, as a build drops them. Memory: the
        result, plus two tables of the 4^k k-mers (as in a build) and a bounded block of the old postings."""
        store = as_store(store)
        k, cap, base = self.k, self.max_stored_df, self.size
        if base + len(store) >= 1 << 31:
            raise UsageError("a k-mer index holds at most 2^31 - 1 sequences")
        # 1. the new sequences' references per k-mer, and the merged k-mers and counts
        added = _kmer_counts(store, k, cells)
        added_kmers = np.flatnonzero(added)
        added_df = added[added_kmers]
        del added
        at = np.searchsorted(self.kmers, added_kmers)
        known = np.zeros(len(added_kmers), dtype=bool)
        inside = at < len(self.kmers)
        known[inside] = self.kmers[at[inside]] == added_kmers[inside]
        # the k-mers new to the index inserted in order (np.insert keeps equal positions in the order given)
        kmers = np.insert(self.kmers, at[~known], added_kmers[~known].astype(np.int32)).astype(np.int32, copy=False)
        at_old = np.searchsorted(kmers, self.kmers)
        at_new = np.searchsorted(kmers, added_kmers)
        old_df = np.zeros(len(kmers), dtype=np.int64)
        old_df[at_old] = self.df
        df = old_df.copy()
        df[at_new] += added_df
        stored = df if cap is None else np.where(df <= cap, df, 0)
        offsets = np.zeros(len(kmers) + 1, dtype=np.int64)
        np.cumsum(stored, out=offsets[1:])
        refs = np.empty(int(offsets[-1]), dtype=np.int32)
        # 2. the old postings of every k-mer still stored (all of them were: its count was lower), moved block by
        # block to their new offsets
        old_offsets = self.offsets()
        old_stored = np.diff(old_offsets)
        keep = stored[at_old] > 0
        shift = offsets[at_old] - old_offsets[:-1]
        first = 0
        while first < len(self.kmers):
            last = int(np.searchsorted(old_offsets, old_offsets[first] + KMER_MOVE_POSTINGS, side="right")) - 1
            last = min(len(self.kmers), max(last, first + 1))
            p0, p1 = int(old_offsets[first]), int(old_offsets[last])
            if p1 > p0:
                counts = old_stored[first:last]
                take = np.repeat(keep[first:last], counts)
                target = np.arange(p0, p1) + np.repeat(shift[first:last], counts)
                refs[target[take]] = self.refs[p0:p1][take]
            first = last
        # 3. the new postings after them (a counting sort as in __init__; -1: the k-mer's postings are not stored)
        cursor = np.full(4 ** k, -1, dtype=np.int64)
        kept = stored[at_new] > 0
        cursor[added_kmers[kept]] = offsets[at_new[kept]] + old_df[at_new[kept]]
        for rows, values in _distinct_kmers(store, k, cells):
            use = cursor[values] >= 0
            _place_postings(refs, cursor, rows[use] + base, values[use])
        return KmerIndex.from_arrays(k, base + len(store), kmers, df.astype(np.int32), refs, cap)

    def search(self, queries, n: int, *, max_df: int = KMER_MAX_DF, stride: int = 1,
               exclude: tuple[np.ndarray, np.ndarray] | None = None, batch: int = 64,
               fallback: tuple[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n references by distinct shared k-mers: (counts int32 [Q, n], idx int64 [Q, n]), best first
        (ties by row); slots without a shared k-mer hold 0 and -1. `stride`: use every stride-th query k-mer.
        `exclude`: (query_groups [Q], reference_groups [size]): skip references of the query's own group.
        `fallback` (max_df, below): a query with fewer than `below` of its k-mers within `max_df` (`kept_fraction`)
        is searched with the fallback's max_df instead."""
        queries = as_store(queries)
        if n < 1:
            raise UsageError(f"n must be at least 1, got {n}")
        nq = len(queries)
        out_c = np.zeros((nq, n), dtype=np.int32)
        out_i = np.full((nq, n), -1, dtype=np.int64)
        if nq == 0 or self.size == 0 or len(self.kmers) == 0:
            return out_c, out_i
        for cap in (max_df, fallback[0] if fallback is not None else None):
            if cap is not None and self.postings_left_out and cap > self.max_stored_df:
                raise UsageError(f"max_df {cap} is above the {self.max_stored_df} up to which this k-mer index "
                                 "stores postings")
        kk = min(n, self.size)
        batch = max(1, min(batch, KMER_COUNT_ELEMENTS // max(1, self.size)))   # bound the [batch, size] counts
        descending = np.arange(self.size - 1, -1, -1, dtype=np.int64)
        for q0 in range(0, nq, batch):
            rows = np.arange(q0, min(nq, q0 + batch))
            q_of, at = self._lookup(queries, rows, stride)
            keep = self.df[at] <= max_df
            if fallback is not None:
                kept = _kept_share(q_of, keep, len(rows))
                keep |= (kept[q_of] < fallback[1]) & (self.df[at] <= fallback[0])
            q_of, at = q_of[keep], at[keep]
            counts = self._shared_counts(q_of, at, len(rows))                             # int64 [rows, size]
            if exclude is not None:
                query_groups, ref_groups = exclude
                counts[np.asarray(query_groups)[rows][:, None] == np.asarray(ref_groups)[None, :]] = 0
            # unique keys (count, then lower row first): the top n does not depend on n at ties
            key = counts                                     # in place: counts are read back from the key
            key *= self.size
            key += descending
            top = largest_columns(key, kk)
            top_c = (np.take_along_axis(key, top, axis=1) // self.size).astype(np.int32)
            order = np.lexsort((top, -top_c), axis=1)
            top, top_c = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_c, order, axis=1)
            out_c[rows, :kk] = top_c
            out_i[rows, :kk] = np.where(top_c > 0, top, -1)
        return out_c, out_i

    def offsets(self) -> np.ndarray:
        """int64 [kmers + 1]: where each k-mer's stored postings start in `refs` (made once, on first use)."""
        if self._offsets is None:
            offsets = np.zeros(len(self.df) + 1, dtype=np.int64)
            np.cumsum(self.stored_df, out=offsets[1:])
            self._offsets = offsets
        return self._offsets

    def _shared_counts(self, q_of: np.ndarray, at: np.ndarray, rows: int) -> np.ndarray:
        """int64 [rows, size]: distinct k-mers (positions `at` in self.kmers, one pair per query and k-mer, queries
        `q_of`) shared by each query and reference. Up to SPARSE_COUNT_POSTINGS stored postings, a sparse product
        (`_sparse_counts`: the search of the 8,854 `test` queries against 31k references 3.0 s instead of 6.0 s,
        the same candidates); above it the k-mers' postings are gathered and counted, which needs no data array as
        large as the postings (0.6 GB for a million references) and is as fast there (1,500 queries against 123k
        references, in turn: 1.09-1.34 s against 1.19-1.46 s)."""
        if len(self.refs) <= SPARSE_COUNT_POSTINGS:
            return self._sparse_counts(q_of, at, rows)
        offsets = self.offsets()
        start = offsets[at]
        length = offsets[at + 1] - start
        ends = np.cumsum(length)
        position = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        position += np.repeat(start - (ends - length), length)
        key = np.repeat(q_of * self.size, length)
        key += self.refs[position]
        return np.bincount(key, minlength=rows * self.size).reshape(rows, self.size)

    def _sparse_counts(self, q_of: np.ndarray, at: np.ndarray, rows: int) -> np.ndarray:
        """`_shared_counts` as a sparse product (query x k-mer incidence) @ (k-mer x reference postings)."""
        from scipy.sparse import csr_matrix

        with self._matrix_lock:
            if self._matrix is None:   # int32 offsets, so that scipy keeps the postings as they are (no int64 copy)
                self._matrix = csr_matrix((np.ones(len(self.refs), dtype=np.int16), self.refs,
                                           self.offsets().astype(np.int32)), shape=(len(self.kmers), self.size))
        per_query = np.bincount(q_of, minlength=rows)                      # q_of is ascending (see _lookup)
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(per_query, out=indptr[1:])
        # int16 counts, unless a query has more k-mers than int16 holds: int32 for that batch (scipy then upcasts
        # the postings' ones for that product only)
        dtype = np.int16 if per_query.max(initial=0) <= SPARSE_COUNT_MAX else np.int32
        incidence = csr_matrix((np.ones(len(at), dtype=dtype), at, indptr), shape=(rows, len(self.kmers)))
        return (incidence @ self._matrix).toarray().astype(np.int64)

    def _lookup(self, queries: SequenceStore, rows: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """The distinct indexed k-mers (every stride-th) of queries[rows]: (position in rows int64, position in
        self.kmers int64), one pair per (query, k-mer)."""
        kmers = kmer_codes(queries.rows(rows), self.k)[:, ::stride]
        r, c = np.nonzero(kmers >= 0)
        unique = np.unique((r.astype(np.int64) << 32) | kmers[r, c].astype(np.int64))
        q_of = unique >> 32
        kmer = (unique & 0xFFFFFFFF).astype(np.int32)
        at = np.minimum(np.searchsorted(self.kmers, kmer), len(self.kmers) - 1)
        found = self.kmers[at] == kmer
        return q_of[found], at[found]

    def indexed_share(self, queries, *, stride: int = 3) -> np.ndarray:
        """float [Q]: the share of each query's k-mers (every stride-th position, A/C/G/T only) that some reference
        holds: near 1 for a barcode of the reference's strand, a third or less for one of the other strand."""
        def share(store: SequenceStore, rows: np.ndarray) -> np.ndarray:
            kmers = kmer_codes(store.rows(rows), self.k)[:, ::stride]
            valid = kmers >= 0
            at = np.minimum(np.searchsorted(self.kmers, kmers), len(self.kmers) - 1)
            found = valid & (self.kmers[at] == kmers)
            return found.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)

        return self._per_query(queries, 2048, share)

    def kept_fraction(self, queries, *, max_df: int = KMER_MAX_DF, stride: int = 1) -> np.ndarray:
        """float [Q]: the fraction of each query's distinct indexed k-mers (every stride-th) held by at most
        max_df references, i.e. those `search` uses (0 for a query with no indexed k-mer)."""
        def kept(store: SequenceStore, rows: np.ndarray) -> np.ndarray:
            q_of, at = self._lookup(store, rows, stride)
            return _kept_share(q_of, self.df[at] <= max_df, len(rows))

        return self._per_query(queries, 1024, kept)

    def _per_query(self, queries, block: int, value) -> np.ndarray:
        """float [Q]: value(store, rows) of the queries, `block` rows at a time (0 where the index is empty)."""
        queries = as_store(queries)
        out = np.zeros(len(queries), dtype=np.float64)
        if len(self.kmers) == 0:
            return out
        for q0 in range(0, len(queries), block):
            rows = np.arange(q0, min(len(queries), q0 + block))
            out[rows] = value(queries, rows)
        return out
