"""Anchoring: the relative offsets of sequence pairs, voted by the k-mers they share (step 1 of
`barcodetool.search.identity`).

For a pair (a, b), every k-mer of `a` made of A/C/G/T and occurring once in `a` is looked up among the k-mers of
`b` at every `stride`-th position; each shared k-mer votes for the offset d = pos_b - pos_a (a[i] ~ b[i + d]).
`offset_votes` returns each pair's two most voted offsets, their votes, and every anchor hit (for the band of an
alignment, `OffsetVotes.band`). The lookups go through a direct table of every k-mer for k <= DENSE_ANCHOR_K,
through a binary search of sorted keys above.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .sequences import kmer_codes

ANCHOR_K = 10               # anchor k-mer length (2 bits a base: fits int32)
ANCHOR_STRIDE = 2           # k-mers of the second sequence looked up at every `stride`-th position
MIN_VOTES = 2               # anchors needed to accept an offset
INDEL_NEAR = 30             # a second offset this close to the best one needs a single vote to try an indel
BAND_VOTES = 4              # an offset this voted widens the alignment band wherever it is (MIN_VOTES: if near)
DENSE_ANCHOR_K = 10         # offset_votes: anchor k-mers up to this long go through a direct table (4^k int32)
DENSE_ANCHOR_ROWS = 4       # ... for this many a rows at a time (a table each: 16 MiB a thread for k = 10)
VOTE_TABLE_PAIRS = 256      # offset_votes: pairs counted in one vote table (cache-sized: 0.08 -> 0.06 s)
_DENSE = threading.local()   # _anchor_positions_dense: each thread's tables


@dataclass
class OffsetVotes:
    """The offset votes of pairs (offset_votes), one entry a pair, and every anchor hit."""

    best: np.ndarray          # int64 [pairs] most voted offset d1 (a[i] ~ b[i + d1]); 0 where no anchor
    votes: np.ndarray         # int64 [pairs] its votes
    second: np.ndarray        # int64 [pairs] the next most voted offset
    second_votes: np.ndarray  # int64 [pairs] its votes (0 = none)
    hit_pair: np.ndarray      # int64 [anchor hits] pair of each shared k-mer (ascending) ...
    hit_offset: np.ndarray    # int64 [anchor hits] ... and its offset

    def band(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) int64 [len(rows)]: the smallest and largest supported offsets of pairs `rows` (the best one;
        MIN_VOTES votes within INDEL_NEAR of it; BAND_VOTES anywhere: a large indel), the band an alignment of the
        pair needs (banded.banded_identity)."""
        low, high = self.best[rows].copy(), self.best[rows].copy()
        first = np.searchsorted(self.hit_pair, rows)
        count = np.searchsorted(self.hit_pair, rows, side="right") - first
        if count.sum() == 0:
            return low, high
        slot = np.repeat(np.arange(len(rows)), count)
        at = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + np.repeat(first, count)
        offset = self.hit_offset[at]
        base, span = int(offset.min()), int(offset.max() - offset.min()) + 1
        keys, votes = np.unique(slot * span + offset - base, return_counts=True)     # votes of (pair, offset)
        slot, offset = keys // span, keys % span + base
        near = np.abs(offset - self.best[rows][slot]) <= INDEL_NEAR
        keep = ((votes >= MIN_VOTES) & near) | (votes >= BAND_VOTES)
        np.minimum.at(low, slot[keep], offset[keep])
        np.maximum.at(high, slot[keep], offset[keep])
        return low, high


def offset_votes(a_codes: np.ndarray, a_of_pair: np.ndarray, b_codes: np.ndarray, k: int, stride: int,
                 b_of_pair: np.ndarray | None = None) -> OffsetVotes:
    """Offset votes of pairs (row a_of_pair[p] of a_codes, row b_of_pair[p] of b_codes) from shared k-mers
    (b_of_pair None: row p of b_codes). Each distinct row's k-mers are computed once on either side (a block of
    candidate pairs holds each reference ~4 times)."""
    n_pairs = len(a_of_pair)
    zero = np.zeros(n_pairs, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    a_kmers = kmer_codes(a_codes, k)                                        # [n_a, width_a - k + 1]
    # b side: k-mers at every `stride`-th position, looked up among the k-mers of the pair's a row
    b_kmers = kmer_codes(b_codes, k, stride)                                    # [b rows, P]
    if b_of_pair is None:
        b_of_pair = np.arange(n_pairs)
    lookup = _anchor_positions_dense if k <= DENSE_ANCHOR_K else _anchor_positions_sorted
    found = lookup(a_kmers, a_of_pair, b_kmers, b_of_pair, k)  # int32 [n_pairs, P] position in a (-1: none)
    where = np.flatnonzero(found >= 0)                                       # ascending: by pair, then position
    if len(where) == 0:
        return OffsetVotes(zero, zero.copy(), zero.copy(), zero.copy(), none, none)
    pair = where // b_kmers.shape[1]
    diff = (where % b_kmers.shape[1]) * stride - found.ravel()[where].astype(np.int64)   # d = pos_b - pos_a
    low = int(diff.min())
    span = int(diff.max()) - low + 1
    # votes of each (pair, offset) in a dense [pairs, span] table, VOTE_TABLE_PAIRS pairs at a time (hits are in
    # pair order); the two most voted offsets of each pair
    top, votes, runner, second_votes = (np.zeros(n_pairs, dtype=np.int64) for _ in range(4))
    starts = np.arange(0, n_pairs, VOTE_TABLE_PAIRS)
    first_hit = np.searchsorted(pair, np.append(starts, n_pairs))
    for p0, h0, h1 in zip(starts.tolist(), first_hit[:-1].tolist(), first_hit[1:].tolist()):
        m = min(n_pairs, p0 + VOTE_TABLE_PAIRS) - p0
        table = np.bincount((pair[h0:h1] - p0) * span + (diff[h0:h1] - low), minlength=m * span).reshape(m, span)
        rows, done = np.arange(m), slice(p0, p0 + m)
        top[done] = np.argmax(table, axis=1)                 # ties: the smallest offset
        votes[done] = table[rows, top[done]]
        table[rows, top[done]] = 0
        runner[done] = np.argmax(table, axis=1)
        second_votes[done] = table[rows, runner[done]]
    best = np.where(votes > 0, top + low, 0)
    second = np.where(second_votes > 0, runner + low, 0)
    return OffsetVotes(best, votes, second, second_votes, pair, diff)


def _anchor_positions_dense(a_kmers: np.ndarray, a_of_pair: np.ndarray, b_kmers: np.ndarray, b_of_pair: np.ndarray,
                            k: int) -> np.ndarray:
    """int32 [pairs, P]: where each k-mer of pair p's b row (b_kmers[b_of_pair[p]], b_kmers [b rows, P], -1 =
    invalid) occurs in its a row (a_kmers[a_of_pair[p]], a_kmers [n_a, W]), -1 where nowhere or more than once.

    A direct table of every k-mer per a row (4^k entries, +1 that invalid k-mers of b look up) is filled with the
    row's positions and read by the row's pairs: 2.4x faster than a binary search of sorted (row, k-mer) keys on a
    test_unseen run (0.74 against 1.75 s for its 67,048 pairs). DENSE_ANCHOR_ROWS rows share a step, each in its
    own table (one array per thread, kept between calls): fewer, longer numpy steps, which hold the interpreter's
    lock less while another worker runs."""
    size = 4 ** k + 1
    table = getattr(_DENSE, "tables", {}).get(k)
    if table is None:
        table = np.full(DENSE_ANCHOR_ROWS * size, -1, dtype=np.int32)
        _DENSE.tables = {**getattr(_DENSE, "tables", {}), k: table}
    n_a = a_kmers.shape[0]
    slot = (np.arange(n_a) % DENSE_ANCHOR_ROWS).astype(np.int32) * size        # each row's table, in turn
    # pairs in order of their a row (a group of rows' lookups one slice), the rows' valid k-mers one slice
    order = np.argsort(a_of_pair, kind="stable")
    lookups = np.where(b_kmers >= 0, b_kmers, size - 1)[b_of_pair[order]] + slot[a_of_pair[order]][:, None]
    group_rows = np.arange(0, n_a + DENSE_ANCHOR_ROWS, DENSE_ANCHOR_ROWS).clip(max=n_a)
    pair_bounds = np.searchsorted(a_of_pair[order], group_rows).tolist()
    rows, positions = np.nonzero(a_kmers >= 0)                      # rows ascending
    keys = a_kmers[rows, positions] + slot[rows]
    positions = positions.astype(np.int32)
    key_bounds = np.searchsorted(rows, group_rows).tolist()
    found = np.empty(lookups.shape, dtype=np.int32)                  # in `order`
    try:
        for group in range(len(group_rows) - 1):
            p0, p1 = pair_bounds[group], pair_bounds[group + 1]
            if p0 == p1:
                continue
            own, at = keys[key_bounds[group]:key_bounds[group + 1]], positions[key_bounds[group]:key_bounds[group + 1]]
            table[own] = at
            repeated = table[own] != at                  # a k-mer repeated in its row: an ambiguous anchor
            if repeated.any():
                table[own[repeated]] = -1
            np.take(table, lookups[p0:p1], out=found[p0:p1])
            table[own] = -1
    except BaseException:
        table.fill(-1)   # interrupted with rows' entries in it: the next call must find the table empty
        raise
    out = np.empty_like(found)
    out[order] = found
    return out


def _anchor_positions_sorted(a_kmers: np.ndarray, a_of_pair: np.ndarray, b_kmers: np.ndarray, b_of_pair: np.ndarray,
                             k: int) -> np.ndarray:
    """_anchor_positions_dense for a k whose table would be too large: a binary search of the a rows' (row, k-mer)
    keys, sorted."""
    b_kmers = b_kmers[b_of_pair]                                                # [pairs, P]
    found = np.full(b_kmers.shape, -1, dtype=np.int32)
    rows, pos_a = np.nonzero(a_kmers >= 0)
    keys = (rows.astype(np.int64) << (2 * k)) | a_kmers[rows, pos_a].astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, pos_a = keys[order], pos_a[order]
    if len(keys) > 1:                                 # drop k-mers repeated inside a row: ambiguous anchors
        single = np.ones(len(keys), dtype=bool)
        repeat = keys[1:] == keys[:-1]
        single[1:] &= ~repeat
        single[:-1] &= ~repeat
        keys, pos_a = keys[single], pos_a[single]
    flat = b_kmers.ravel()
    where = np.flatnonzero(flat >= 0)
    if len(keys) == 0 or len(where) == 0:
        return found
    pair = where // b_kmers.shape[1]
    lookup = (a_of_pair[pair].astype(np.int64) << (2 * k)) | flat[where].astype(np.int64)
    at = np.minimum(np.searchsorted(keys, lookup), len(keys) - 1)
    hit = keys[at] == lookup
    found.ravel()[where[hit]] = pos_a[at[hit]]
    return found
