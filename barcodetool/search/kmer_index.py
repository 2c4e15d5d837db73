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


def _kept_share(q_of: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
    """float [n]: per query, the share of its looked-up k-mers (one entry each in `q_of`) marked in `kept`."""
    return np.bincount(q_of[kept], minlength=n) / np.maximum(1, np.bincount(q_of, minlength=n))


def _sparse():
    """scipy.sparse, imported on first use (0.1 s; scipy comes with scikit-learn)."""
    import scipy.sparse

    return scipy.sparse


class KmerIndex:
    """Inverted index of the distinct k-mers of reference sequences, for candidate generation by shared k-mers
    (the VSEARCH/USEARCH idea): a query's candidates are the references sharing most of its distinct k-mers.

    K-mers found in more than `max_df` references (conserved stretches shared across genera and families) are
    skipped at search time: they cost most of the work and hardly rank anything. Memory: 4 bytes per distinct
    (k-mer, reference) pair (~19 M pairs, 80 MB, for 31 k barcodes with k = 12), 4 more once searched (the
    postings as a sparse matrix: shared k-mers are counted by a sparse product, 2.2x faster than gathering the
    postings and counting them with numpy).
    """

    _matrix_lock = threading.Lock()

    def __init__(self, store, k: int = KMER_K, *, chunk: int = 2048):
        if not 4 <= k <= 15:
            raise UsageError(f"k must be 4 to 15, got {k}")
        store = as_store(store)
        self.k = k
        self.size = len(store)
        keys = []
        for c0 in range(0, len(store), chunk):
            rows = np.arange(c0, min(len(store), c0 + chunk))
            kmers = kmer_codes(store.rows(rows), k)                      # [rows, width - k + 1]
            r, c = np.nonzero(kmers >= 0)
            keys.append(np.unique((kmers[r, c].astype(np.int64) << 32) | rows[r]))
        keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        keys.sort()
        kmers = (keys >> 32).astype(np.int32)
        self.refs = (keys & 0xFFFFFFFF).astype(np.int32)   # int32 [postings] reference rows, grouped by k-mer
        self.kmers, self.starts, counts = np.unique(kmers, return_index=True, return_counts=True)
        self.df = counts.astype(np.int32)                  # references holding each distinct k-mer
        self._matrix = None

    @classmethod
    def from_arrays(cls, k: int, size: int, kmers: np.ndarray, df: np.ndarray, refs: np.ndarray) -> KmerIndex:
        """An index from its stored arrays (`kmers`, `df`, `refs` as built; `starts` is derived from `df`)."""
        kmers = np.asarray(kmers, dtype=np.int32)
        df = np.asarray(df, dtype=np.int32)
        refs = np.asarray(refs, dtype=np.int32)
        if not 4 <= k <= 15 or kmers.shape != df.shape or int(df.sum(dtype=np.int64)) != len(refs) \
                or (len(refs) and (refs.min() < 0 or refs.max() >= size)) \
                or (len(kmers) > 1 and (np.diff(kmers) <= 0).any()):
            raise InputError("the stored k-mer index is inconsistent", fix="rebuild the reference index")
        index = cls.__new__(cls)
        index.k, index.size, index.kmers, index.df, index.refs = int(k), int(size), kmers, df, refs
        index._matrix = None
        index.starts = np.zeros(len(df), dtype=np.int64)
        if len(df) > 1:
            np.cumsum(df[:-1], out=index.starts[1:])
        return index

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
            # [rows, kmers] x [kmers, size] sparse product: shared kept k-mers of each query and reference.
            # The (q_of, at) pairs come sorted by query, then k-mer: the CSR layout, built directly with the
            # postings' index type (mixed types would make scipy copy the postings on every product).
            matrix = self.matrix()
            indptr = np.zeros(len(rows) + 1, dtype=matrix.indptr.dtype)
            np.cumsum(np.bincount(q_of, minlength=len(rows)), out=indptr[1:])
            chosen = _sparse().csr_array((np.ones(len(at), dtype=np.int32), at.astype(matrix.indices.dtype),
                                          indptr), shape=(len(rows), len(self.kmers)))
            counts = (chosen @ matrix).toarray()                                          # int32 [rows, size]
            if exclude is not None:
                query_groups, ref_groups = exclude
                counts[np.asarray(query_groups)[rows][:, None] == np.asarray(ref_groups)[None, :]] = 0
            # unique keys (count, then lower row first): the top n does not depend on n at ties
            key = counts.astype(np.int64)
            key *= self.size
            key += descending
            top = largest_columns(key, kk)
            top_c = np.take_along_axis(counts, top, axis=1)
            order = np.lexsort((top, -top_c), axis=1)
            top, top_c = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_c, order, axis=1)
            out_c[rows, :kk] = top_c
            out_i[rows, :kk] = np.where(top_c > 0, top, -1)
        return out_c, out_i

    def matrix(self):
        """The postings as a sparse int32 [kmers, size] matrix of ones (built once, on first use)."""
        with self._matrix_lock:
            if self._matrix is None:
                # int32 offsets where they fit: with int64 ones scipy would copy the postings to int64 too
                indptr = np.zeros(len(self.df) + 1, dtype=np.int32 if len(self.refs) < 2 ** 31 else np.int64)
                np.cumsum(self.df, out=indptr[1:])
                self._matrix = _sparse().csr_array((np.ones(len(self.refs), dtype=np.int32), self.refs, indptr),
                                                   shape=(len(self.kmers), self.size))
            return self._matrix

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

    def kept_fraction(self, queries, *, max_df: int = KMER_MAX_DF, stride: int = 1) -> np.ndarray:
        """float [Q]: the fraction of each query's distinct indexed k-mers (every stride-th) held by at most
        max_df references, i.e. those `search` uses (0 for a query with no indexed k-mer)."""
        queries = as_store(queries)
        out = np.zeros(len(queries), dtype=np.float64)
        if len(self.kmers) == 0:
            return out
        for q0 in range(0, len(queries), 1024):
            rows = np.arange(q0, min(len(queries), q0 + 1024))
            q_of, at = self._lookup(queries, rows, stride)
            out[rows] = _kept_share(q_of, self.df[at] <= max_df, len(rows))
        return out
