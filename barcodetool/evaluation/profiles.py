"""The baseline every embedding is measured against: a count profile of overlapping k-mers.

A barcode's k-mer profile counts each of its 4^k overlapping k-mers of A/C/G/T (k-mers holding another code are
skipped); profiles are compared by cosine, as the embeddings are. With k = 4 or 5 this alignment-free vector
already separates species and BINs well (issue 15's table: 4-mers 98.97% species 1-NN on the shared split), so a
model's embedding earns its cost only above it. `barcodetool benchmark` scores these profiles with the papers'
protocol beside the model's embedding (species and genus 1-NN, BIN AMI with the true number of BINs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UsageError
from ..search import knn_search, normalize
from ..search.sequences import as_store, kmer_codes

PROFILE_KS = (4, 5)      # the baselines `barcodetool benchmark` reports
PROFILE_BLOCK = 2048     # sequences profiled at once (a block's k-mer codes: ~2048 x 1,600 int32 at most)
PROFILE_MAX_BYTES = 2 << 30   # the benchmark holds a reference's profiles up to this (5-mers: ~520k barcodes)


def kmer_profiles(sequences: Sequence[str], k: int) -> np.ndarray:
    """float32 [n, 4^k]: unit-length counts of each sequence's overlapping k-mers of A/C/G/T (a row of zeros where
    a sequence has none), columns in lexicographic order of the k-mers (AAAA, AAAC, ...)."""
    if not 1 <= k <= 8:
        raise UsageError(f"a k-mer profile needs 1 <= k <= 8, got {k}")
    store = as_store(sequences)
    size = 4 ** k
    out = np.zeros((len(store), size), dtype=np.float32)
    for start in range(0, len(store), PROFILE_BLOCK):
        rows = np.arange(start, min(len(store), start + PROFILE_BLOCK))
        codes = kmer_codes(store.rows(rows), k)                                   # int32 [block, P], -1 = none
        row, column = np.nonzero(codes >= 0)
        counts = np.bincount(row * size + codes[row, column], minlength=len(rows) * size)
        out[rows] = counts.reshape(len(rows), size)
    return normalize(out)


def profile_nearest(queries: Sequence[str], reference_profiles: np.ndarray, k: int) -> np.ndarray:
    """int64 [len(queries)]: the row of each query's cosine-nearest reference by k-mer profile (-1: none), the
    references' k-mer profiles [n, 4^k] given (kmer_profiles: made once, searched by every task)."""
    if reference_profiles.ndim != 2 or reference_profiles.shape[1] != 4 ** k:
        raise UsageError(f"reference profiles of {k}-mers have 4^{k} columns, got shape {reference_profiles.shape}")
    _, idx = knn_search(kmer_profiles(queries, k), reference_profiles, 1)
    return idx[:, 0]
