"""Fast exact pairwise identity of COI barcodes: re-ranking of search candidates, and average-linkage clustering
on identity distance.

Method (docs/research/identity-rerank.md has the measurements)
-----------------------------------------------------
COI-5P barcodes are protein-coding and almost free of indels, so two barcodes of the region align without gaps
once their relative offset is known; only their ends differ (primers, trimming). For each pair (a, b):

1. **Anchoring.** Every k-mer (k = 10) of `a` made of A/C/G/T only and occurring once in `a` is looked up among
   the k-mers of `b` at every `stride`-th position (stride 2); each shared k-mer votes for the offset
   d = pos_b - pos_a. The most voted offset d1 aligns a[i] with b[i + d1]; at least `min_votes` (2) are needed.
2. **Gap-free identity.** identity = matches / compared columns over the overlap of the two sequences at d1. End
   overhangs are not counted (like VSEARCH's default `--iddef 2`, or an alignment with free end gaps). A column
   with an ambiguity code (N or another IUPAC code) in either sequence is left out of both counts
   (`iupac="ignore"`, the default) or counts as a match when the two codes share a base (`iupac="compatible"`).
3. **One indel.** When the second most voted offset d2 has two votes, or one vote within INDEL_NEAR (30) of d1,
   the "two-offset" model aligns a prefix of `a` at one offset and the suffix at the other with |d1 - d2| gap
   columns between them, the breakpoint placed where matches - mismatches is largest (a vectorised cumulative
   sum), and is kept when its identity beats the gap-free one. That is the exact alignment of a pair with one
   indel run, the usual case for COI pairs that have any (codon indels; 1-base sequencing errors near the ends).
4. **Suspect pairs.** A pair whose final alignment holds a 40-column stretch below 40 % identity (no better
   than unrelated sequence: more than one indel, or a chance anchor) is marked `suspect`; with
   `fallback="align"` it is aligned instead (`_align_pairs`: Biopython PairwiseAligner's alignment, computed for
   many pairs at once by the banded aligner around the pair's anchored offsets, `banded.banded_identity`, ~0.2 ms
   a pair; by PairwiseAligner itself, `aligned_identity`, ~5-10 ms a pair, where the band cannot be trusted).
   Pairs without enough anchors (roughly below 70-75 % identity) get identity 0 and overlap 0, or are aligned
   (by PairwiseAligner) with `fallback="align"`; for species, genus and BIN decisions they are irrelevant anyway.
5. **Deciding realignment.** `score_candidates`, `rerank`, `neighbour_pairs` and `identity_graph_cluster`
   (`realign="deciding"`, the default) align only the approximate pairs (suspect, or anchorless sharing an
   anchor) whose ceiling (`PairIdentity.ceiling`: misaligned stretches counted as matches) could make them the
   query's best candidate, or put them within the clustering threshold; `realign="none"` keeps the approximation.

Against PairwiseAligner on 3,000 real query/candidate pairs the default mode is within 0.5 identity points for
99.3-99.6 % of pairs (mean absolute error 0.0001-0.0005) at ~20-30 us a pair when a query meets N candidates.

Limits: two or more separate indel runs are approximated (marked `suspect`; use `fallback="align"`); other
genes or reverse complements share no anchors and get 0; identity over a short overlap says little, so rankings
use `coverage_score`, which scales the identity down when the overlap covers less than 70 % of the query (of
its first 658 bp for a query longer than the COI-5P barcode region).

Ranking: `rerank` orders candidate references of each query by `coverage_score` (the candidates come from
`barcodetool.search.kmer_index.KmerIndex`, shared distinct 12-mers, and from the embedding's k-NN).
`identity_graph_cluster` runs average linkage on identity distance over a candidate graph.

Everything is vectorised with numpy over many pairs at once; sequences are encoded once into a
`SequenceStore` (barcodetool.search.sequences: 4-bit codes packed two a byte, bit masks A=1 C=2 G=4 T=8,
ambiguity codes the union of their bases).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

from ..errors import UsageError
from .banded import IUPAC_MODES, _column_scores, _comparable, aligned_identity, banded_identity
from .anchors import ANCHOR_K, ANCHOR_STRIDE, INDEL_NEAR, MIN_VOTES, offset_votes
from .sequences import SequenceStore, as_store

MISALIGNED_BLOCK = 20       # two consecutive blocks of this many columns ...
MISALIGNED_FLOOR = 0.4      # ... below this identity mark an alignment as suspect (an unmodelled indel)
DEFAULT_COVERAGE = 0.7      # rerank: references covering less of the query than this are scaled down
# Length of the COI-5P barcode region: a longer query (a whole COI gene, 1.5 kb) is expected to be covered over
# this much only, since most references hold just the region; without the cap a 658-bp reference at 99.9%
# ranked below a 1.5-kb one of another species at 80% (val species top hit 99.10% -> 99.28%, long queries
# 93.2% -> 97.4%).
BARCODE_REGION = 658
# realign="deciding" (score_candidates, rerank, neighbour_pairs, identity_graph_cluster): an approximate pair
# (PairIdentity.approximate) is aligned (_align_pairs) when its ceiling could decide: within REALIGN_MARGIN
# of the best score among the query's other candidates (or of the clustering threshold)
REALIGN_MODES = ("deciding", "none")
REALIGN_MARGIN = 0.02       # measured: an alignment exceeds the ceiling by 0.013 at most (coi_extra, BCDM sample)
CLUSTER_REALIGN_ABOVE = 0.95   # neighbour_pairs: approximate pairs that could be within 5 % identity distance
CEILING_BLOCK_FLOOR = 0.7   # a suspect pair's ceiling counts the mismatches of its 20-column blocks below this
ANCHORLESS_CEILING = 0.8    # under MIN_VOTES anchors: below ~70-75 % identity (module docstring), with a margin
MAX_COMPONENT = 20_000      # identity_graph_cluster: largest linked group clustered exactly (m^2 / 2 pairs)
PAIR_BLOCK = 2048           # pairs processed at once (memory ~ PAIR_BLOCK x longest sequence x 40 B)
# The longest sequence the commands that align whole sequences read (classify, cluster, reference build): 5x a
# full COI gene (~1,540 nt; the longest record of the shared data is 1,979). A pair costs time and memory in
# proportion to the longer sequence: one 80 kb record took 39 s of classify, a 3 Mb contig minutes.
MAX_ALIGNED_LENGTH = 10_000
REANCHOR_K = 7              # _align_pairs: k-mers that anchor a pair again when its two anchors were chance hits
FALLBACKS = ("none", "two-offset", "align")

# ============================================================================================ identity
def _shifted(b_codes: np.ndarray, offsets: np.ndarray, width_a: int) -> np.ndarray:
    """uint8 [pairs, width_a]: b[i + d] for each column i of a (0 outside b); d in [-width_a, width_b]."""
    n, width_b = b_codes.shape
    padded = np.zeros((n, 2 * width_a + width_b + 1), dtype=np.uint8)
    padded[:, width_a:width_a + width_b] = b_codes
    windows = np.lib.stride_tricks.sliding_window_view(padded, width_a, axis=1)   # view [n, starts, width_a]
    starts = np.clip(offsets + width_a, 0, width_a + width_b + 1)
    return windows[np.arange(n), starts]                                           # row copies, no gathers


def _block_sums(x: np.ndarray) -> np.ndarray:
    """int32 [n, width / MISALIGNED_BLOCK] sums of consecutive column blocks (width a multiple of the block)."""
    n, width = x.shape
    return x.reshape(n, width // MISALIGNED_BLOCK, MISALIGNED_BLOCK).sum(axis=2, dtype=np.int32)


def _misaligned(block_match: np.ndarray, block_compared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bool [pairs], int [pairs]): whether two consecutive column blocks (40 columns) with at least half their
    columns compared are below MISALIGNED_FLOOR identity, i.e. no better than unrelated sequence: a sign that the
    offset is wrong there (an indel the model does not cover); and the mismatched columns of those stretches and
    of the block on each side of them (partly misaligned), which a correct alignment might turn into matches."""
    if block_match.shape[1] < 2:
        wm, wc = block_match, block_compared
    else:
        wm = block_match[:, 1:] + block_match[:, :-1]
        wc = block_compared[:, 1:] + block_compared[:, :-1]
    bad = (wc >= MISALIGNED_BLOCK) & (wm < MISALIGNED_FLOOR * wc)          # [pairs, windows]
    if block_match.shape[1] >= 2:                 # window w covers blocks w and w + 1; one more block each side
        blocks = np.zeros(block_match.shape, dtype=bool)
        blocks[:, :-1] |= bad
        blocks[:, 1:] |= bad
        grown = blocks.copy()
        grown[:, 1:] |= blocks[:, :-1]
        grown[:, :-1] |= blocks[:, 1:]
    else:
        grown = bad.copy()
    grown |= block_match < CEILING_BLOCK_FLOOR * block_compared      # partly misaligned blocks, wherever they are
    lost = np.where(grown, block_compared - block_match, 0).sum(axis=1)
    return bad.any(axis=1), lost


def _two_offset(a_rows: np.ndarray, b_rows: np.ndarray, d1: np.ndarray, d2: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best piecewise alignment of each pair: a prefix of a at one offset, the suffix at the other.

    Gap length g = |d1 - d2|. If the suffix offset is smaller (a holds g extra bases), a[t:t+g] are gap columns;
    if larger (b holds g extra bases), g gap columns sit between a[t-1] and a[t]. Both orders are tried and the
    breakpoint t maximising matches - mismatches is kept. Returns (matches, columns = compared + g, misaligned,
    mismatches of misaligned stretches) for the winner; a-side gap columns count as compared mismatches in the
    misalignment check.
    """
    n, width = a_rows.shape
    best_score = np.full(n, -np.inf)
    best_t = np.zeros(n, dtype=np.int64)
    best_first, best_then = d1.copy(), d2.copy()
    rows = np.arange(n)
    t = np.arange(width + 1, dtype=np.int64)[None, :]
    zero = np.zeros((n, 1), dtype=np.int32)
    for first, then in ((d1, d2), (d2, d1)):
        m1, c1 = _column_scores(a_rows, _shifted(b_rows, first, width))
        m2, c2 = _column_scores(a_rows, _shifted(b_rows, then, width))
        s1 = np.concatenate([zero, np.cumsum(2 * m1.astype(np.int32) - c1, axis=1)], axis=1)   # [n, width + 1]
        s2 = np.concatenate([zero, np.cumsum(2 * m2.astype(np.int32) - c2, axis=1)], axis=1)
        skip = np.where(then < first, first - then, 0)  # a-side gap: the suffix starts g columns after the break
        suffix_start = t + skip[:, None]
        score = s1 + (s2[:, -1:] - np.take_along_axis(s2, np.minimum(suffix_start, width), axis=1))
        score = np.where(suffix_start <= width, score, -(10 ** 9))
        at = np.argmax(score, axis=1)
        take = score[rows, at] > best_score
        best_score = np.where(take, score[rows, at], best_score)
        best_t = np.where(take, at, best_t)
        best_first = np.where(take, first, best_first)
        best_then = np.where(take, then, best_then)
    # the per-column picture of the winner
    m1, c1 = _column_scores(a_rows, _shifted(b_rows, best_first, width))
    m2, c2 = _column_scores(a_rows, _shifted(b_rows, best_then, width))
    gap = np.abs(best_first - best_then)
    skip = np.where(best_then < best_first, gap, 0)
    column = np.arange(width)[None, :]
    prefix = column < best_t[:, None]
    suffix = column >= (best_t + skip)[:, None]
    match = np.where(prefix, m1, m2 & suffix)
    compared = np.where(prefix, c1, (c2 & suffix) | (~prefix & ~suffix))
    block_match, block_compared = _block_sums(match), _block_sums(compared)
    matches = block_match.sum(axis=1)
    columns = block_compared.sum(axis=1) + np.where(skip > 0, 0, gap)   # a-side gap columns already counted
    return (matches, columns) + _misaligned(block_match, block_compared)


@dataclass
class PairIdentity:
    """Identity of pairs with its evidence (arrays, one entry a pair)."""

    identity: np.ndarray   # float32 matches / columns over the overlap; 0 where no offset was found
    overlap: np.ndarray    # int32 columns: compared columns (+ internal gap columns)
    offset: np.ndarray     # int32 best anchor offset d1 (a[i] ~ b[i + d1])
    votes: np.ndarray      # int32 anchors voting for d1
    method: np.ndarray     # uint8 0 = no anchor, 1 = gap-free, 2 = two-offset (indel), 3 = aligned
    suspect: np.ndarray    # bool: a 40-column stretch looks unrelated (several indels?): identity approximate
    # What an alignment of the pair might reach (for `realign`): the identity and overlap themselves, except for
    # suspect pairs (mismatches of their misaligned stretches counted as matches) and anchorless pairs sharing an
    # anchor k-mer (ANCHORLESS_CEILING over the shorter sequence's length)
    ceiling: np.ndarray          # float32
    ceiling_overlap: np.ndarray  # int32
    # The anchored offsets an alignment's band must cover (banded.banded_identity): the smallest and largest of
    # the best offset, a second one within INDEL_NEAR and, for suspect pairs, the supported ones
    # (anchors.OffsetVotes.band); meaningless where votes < MIN_VOTES
    band_low: np.ndarray         # int32
    band_high: np.ndarray        # int32

    FIELDS = ("identity", "overlap", "offset", "votes", "method", "suspect", "ceiling", "ceiling_overlap",
              "band_low", "band_high")

    @classmethod
    def empty(cls, n: int) -> PairIdentity:
        return cls(np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32),
                   np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=bool),
                   np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32),
                   np.zeros(n, dtype=np.int32))

    def put(self, where: np.ndarray, part: PairIdentity) -> None:
        for name in self.FIELDS:
            getattr(self, name)[where] = getattr(part, name)

    def approximate(self) -> np.ndarray:
        """bool [pairs]: the pairs an alignment may score higher: suspect ones, and anchorless ones sharing an
        anchor k-mer."""
        return self.suspect | ((self.method == 0) & (self.ceiling > 0))


METHOD_NAMES = ("none", "gap-free", "two-offset", "align")


def _check_options(iupac: str, fallback: str, k: int, stride: int) -> None:
    if iupac not in IUPAC_MODES:
        raise UsageError(f"iupac must be one of {', '.join(IUPAC_MODES)}, got {iupac!r}")
    if fallback not in FALLBACKS:
        raise UsageError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    if not 4 <= k <= 15:
        raise UsageError(f"anchor k must be 4 to 15, got {k}")
    if stride < 1:
        raise UsageError(f"stride must be at least 1, got {stride}")


def pair_identity(a_store, a_idx, b_store, b_idx, *, iupac: str = "ignore", fallback: str = "two-offset",
                  k: int = ANCHOR_K, stride: int = ANCHOR_STRIDE, min_votes: int = MIN_VOTES,
                  block: int = PAIR_BLOCK) -> PairIdentity:
    """Identity of the pairs (a_store[a_idx[p]], b_store[b_idx[p]]), vectorised (see the module docstring).

    a_store/b_store: SequenceStore or lists of strings (may be the same object). Each distinct row of `a_idx`
    is k-mer indexed once per block of pairs, so put the side with fewer distinct rows (the queries) first.
    iupac: "ignore" (default) or "compatible"; fallback: "none", "two-offset" (default) or "align"; k, stride:
    anchor k-mer length and the step between the looked-up k-mers of b; min_votes: anchors needed (fewer:
    identity 0, or an alignment with fallback="align").
    """
    _check_options(iupac, fallback, k, stride)
    a_store, b_store = as_store(a_store), as_store(b_store)
    a_idx = np.asarray(a_idx, dtype=np.int64).ravel()
    b_idx = np.asarray(b_idx, dtype=np.int64).ravel()
    if a_idx.shape != b_idx.shape:
        raise UsageError(f"{len(a_idx)} first rows but {len(b_idx)} second rows")
    for name, idx, store in (("first", a_idx, a_store), ("second", b_idx, b_store)):
        if len(idx) and (idx.min() < 0 or idx.max() >= len(store)):
            raise UsageError(f"{name} row index out of range (0..{len(store) - 1})")
    n = len(a_idx)
    out = PairIdentity.empty(n)
    # blocks of pairs of similar length (every row of a block is padded to its longest sequence), and inside a
    # length bucket by first row (each distinct first row is k-mer indexed once per block)
    bucket = np.maximum(a_store.lengths[a_idx], b_store.lengths[b_idx]) // 128
    order = np.lexsort((a_idx, bucket))
    for p0 in range(0, n, block):
        chosen = order[p0:p0 + block]
        out.put(chosen, _pair_block(a_store, a_idx[chosen], b_store, b_idx[chosen], iupac=iupac,
                                    fallback=fallback, k=k, stride=stride, min_votes=min_votes))
    return out


def _pair_block(a_store: SequenceStore, a_idx: np.ndarray, b_store: SequenceStore, b_idx: np.ndarray, *,
                iupac: str, fallback: str, k: int, stride: int, min_votes: int) -> PairIdentity:
    unique_a, a_of_pair = np.unique(a_idx, return_inverse=True)
    unique_b, b_of_pair = np.unique(b_idx, return_inverse=True)
    width_a = -(-int(a_store.lengths[unique_a].max()) // MISALIGNED_BLOCK) * MISALIGNED_BLOCK
    a_codes = a_store.rows(unique_a, width_a)             # uint8 [distinct a rows, width_a] (block multiple)
    distinct_b = b_store.rows(unique_b)                   # uint8 [distinct b rows, width_b]
    found = offset_votes(a_codes, a_of_pair, distinct_b, k, stride, b_of_pair)
    b_codes = distinct_b[b_of_pair]                       # uint8 [pairs, width_b]
    anchored = found.votes >= min_votes
    a_rows = _comparable(a_codes, iupac)[a_of_pair]       # [pairs, width_a]
    b_rows = _comparable(b_codes, iupac)
    # gap-free identity at the best offset
    match, compared = _column_scores(a_rows, _shifted(b_rows, found.best, width_a))
    block_match, block_compared = _block_sums(match), _block_sums(compared)
    matches = block_match.sum(axis=1)
    columns = block_compared.sum(axis=1)
    suspect, lost = _misaligned(block_match, block_compared)
    suspect &= anchored
    method = anchored.astype(np.uint8)
    # a second offset with two votes, or one vote near the first (an indel; a lone far vote is a chance hit)
    indel = anchored & ((found.second_votes >= 2) |
                        ((found.second_votes >= 1) & (np.abs(found.second - found.best) <= INDEL_NEAR)))
    if fallback in ("two-offset", "align") and indel.any():
        f = np.flatnonzero(indel)
        m2, c2, suspect2, lost2 = _two_offset(a_rows[f], b_rows[f], found.best[f], found.second[f])
        better = m2 * np.maximum(columns[f], 1) > matches[f] * np.maximum(c2, 1)   # higher identity
        g = f[better]
        matches[g], columns[g], method[g], suspect[g] = m2[better], c2[better], 2, suspect2[better]
        lost[g] = lost2[better]
    identity = np.where(anchored & (columns > 0), matches / np.maximum(columns, 1), 0.0)
    # what an alignment might reach: misaligned stretches matched throughout; anchorless pairs sharing an anchor
    # k-mer: ANCHORLESS_CEILING over the shorter sequence (0 when none is shared)
    shorter = np.minimum(a_store.lengths[a_idx], b_store.lengths[b_idx])
    ceiling = np.where(suspect, (matches + lost) / np.maximum(columns, 1), identity)
    ceiling = np.where(anchored, ceiling, np.where(found.votes >= 1, ANCHORLESS_CEILING, 0.0))
    columns = np.where(anchored, columns, 0)
    ceiling_overlap = np.where(anchored, columns, np.where(found.votes >= 1, shorter, 0))
    # the band an alignment needs: the supported offsets (of suspect pairs: the others are exact), and a second
    # offset near the best one with one vote
    band_low, band_high = found.best.copy(), found.best.copy()
    if suspect.any():
        band_low[suspect], band_high[suspect] = found.band(np.flatnonzero(suspect))
    near = (found.second_votes >= 1) & (np.abs(found.second - found.best) <= INDEL_NEAR)
    band_low = np.where(near, np.minimum(band_low, found.second), band_low)
    band_high = np.where(near, np.maximum(band_high, found.second), band_high)
    out = PairIdentity(identity.astype(np.float32), columns.astype(np.int32), found.best.astype(np.int32),
                       found.votes.astype(np.int32), method, suspect, ceiling.astype(np.float32),
                       ceiling_overlap.astype(np.int32), band_low.astype(np.int32), band_high.astype(np.int32))
    if fallback == "align":
        _align_pairs(a_store, a_idx, b_store, b_idx, out, np.flatnonzero(~anchored | suspect), iupac)
    return out


def anchored_identity(query: str, candidates: Sequence[str] | SequenceStore, **options) -> np.ndarray:
    """float32 [len(candidates)] identity of one query against each candidate (options: see pair_identity)."""
    store = as_store(candidates)
    n = len(store)
    result = pair_identity([query], np.zeros(n, dtype=np.int64), store, np.arange(n), **options)
    return result.identity


def coverage_score(identity: np.ndarray, overlap: np.ndarray, query_length: np.ndarray,
                   coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
    """Ranking score: identity x min(1, overlap / (coverage x min(query length, BARCODE_REGION))).

    Identity alone ranks a reference that overlaps the query over a few dozen columns (a short fragment, or a
    chance anchor) above a full-length one; this keeps the identity for every reference that covers at least
    `coverage` of the query (of the barcode region's length for longer queries) and scales it down in
    proportion below that.
    """
    expected = np.minimum(np.asarray(query_length, dtype=np.float64), BARCODE_REGION)
    need = np.maximum(coverage * expected, 1.0)
    return (np.asarray(identity, dtype=np.float64) * np.minimum(1.0, np.asarray(overlap) / need)).astype(np.float32)


def rerank(queries, ref_store, candidate_idx: np.ndarray, *, coverage: float = DEFAULT_COVERAGE,
           detail: bool = False, realign: str = "deciding", **options):
    """Re-rank candidates (from an embedding or k-mer search) by identity.

    queries: SequenceStore or list of Q strings; candidate_idx: int [Q, N] reference rows (-1 = empty slot, as
    knn_search returns them). Candidates are ranked by `coverage_score` (= the identity whenever the overlap
    covers `coverage` of the query), ties by longer overlap, then by the given order. Returns (idx int64 [Q, N],
    score float32 [Q, N]) in that order, empty slots last (-1, -inf); with `detail`, (idx, score, identity,
    overlap). `realign` and the other options: see score_candidates. Duplicate candidates in a row are computed
    once.
    """
    queries, ref_store = as_store(queries), as_store(ref_store)
    candidate_idx = np.asarray(candidate_idx, dtype=np.int64)
    if not 0 <= coverage <= 1:
        raise UsageError(f"coverage must be in [0, 1], got {coverage}")
    score, identity, overlap = score_candidates(queries, ref_store, candidate_idx, coverage=coverage,
                                                realign=realign, **options)
    idx, score, overlap, identity = rank_scored(candidate_idx, score, overlap, identity)
    return (idx, score, identity, overlap) if detail else (idx, score)


def candidate_union(*tables: np.ndarray) -> np.ndarray:
    """Row-wise union of candidate tables [Q, N_i] (-1 = empty): concatenated in the given order, a repeated
    candidate replaced by -1 after its first occurrence."""
    both = np.concatenate([np.asarray(t, dtype=np.int64) for t in tables], axis=1)
    if both.shape[1] < 2:
        return both
    order = np.argsort(both, axis=1, kind="stable")
    ordered = np.take_along_axis(both, order, axis=1)
    repeat = np.zeros_like(ordered, dtype=bool)
    repeat[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    dup = np.zeros_like(repeat)
    np.put_along_axis(dup, order, repeat, axis=1)
    return np.where(dup, -1, both)


def score_candidates(queries, ref_store, candidate_idx: np.ndarray, *, coverage: float = DEFAULT_COVERAGE,
                     realign: str = "deciding", **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score float32, identity float32, overlap int32), each [Q, N], of candidates in their given positions
    (not re-ranked; -1 slots get -inf, -inf, 0). A (query, reference) pair repeated in a row is computed once.

    realign: "deciding" (default): an approximate pair (suspect: two indels or more; or anchorless but sharing an
    anchor k-mer) whose ceiling could make it the query's best candidate (`realign_deciding`) is aligned
    (PairwiseAligner's alignment, `_align_pairs`), so that the top hit matches an alignment's; "none":
    pair_identity's values as they are.
    Other options go to pair_identity (fallback="align" aligns every approximate pair instead)."""
    queries, ref_store = as_store(queries), as_store(ref_store)
    candidate_idx = np.asarray(candidate_idx, dtype=np.int64)
    if candidate_idx.ndim != 2 or candidate_idx.shape[0] != len(queries):
        raise UsageError(f"candidate_idx must be [{len(queries)}, N], got {list(candidate_idx.shape)}")
    if len(ref_store) and candidate_idx.max(initial=-1) >= len(ref_store):
        raise UsageError(f"candidate index out of range (0..{len(ref_store) - 1})")
    if realign not in REALIGN_MODES:
        raise UsageError(f"realign must be one of {', '.join(REALIGN_MODES)}, got {realign!r}")
    q, n = candidate_idx.shape
    score = np.full((q, n), -np.inf, dtype=np.float32)
    identity = np.full((q, n), -np.inf, dtype=np.float32)
    overlap = np.zeros((q, n), dtype=np.int32)
    valid = candidate_idx >= 0
    if not valid.any():
        return score, identity, overlap
    qi = np.broadcast_to(np.arange(q)[:, None], (q, n))[valid]
    keys = qi * max(1, len(ref_store)) + candidate_idx[valid]
    unique, inverse = np.unique(keys, return_inverse=True)
    uq, ur = unique // max(1, len(ref_store)), unique % max(1, len(ref_store))
    result = pair_identity(queries, uq, ref_store, ur, **options)
    if realign == "deciding":
        realign_deciding(queries, uq, ref_store, ur, result, coverage=coverage, iupac=options.get("iupac", "ignore"))
    identity[valid] = result.identity[inverse]
    overlap[valid] = result.overlap[inverse]
    score[valid] = coverage_score(result.identity, result.overlap, queries.lengths[uq], coverage)[inverse]
    return score, identity, overlap


def realign_deciding(queries: SequenceStore, q_idx: np.ndarray, ref_store: SequenceStore, r_idx: np.ndarray,
                     result: PairIdentity, *, coverage: float = DEFAULT_COVERAGE, iupac: str = "ignore") -> int:
    """Align (`_align_pairs`, in place in `result`) the approximate pairs (PairIdentity.approximate) of
    (queries[q_idx[p]], ref_store[r_idx[p]]) that could decide their query: those whose ceiling (`ceiling`,
    `ceiling_overlap`, as a coverage_score) comes within REALIGN_MARGIN of the best score of the query's
    reliable pairs (exact ones, and those aligned here). Rounds: each query's highest ceiling first, so that an
    aligned pair that scores well rules out the rest. Returns the number of pairs aligned."""
    q_idx = np.asarray(q_idx, dtype=np.int64)
    pending = result.approximate()
    if not pending.any():
        return 0
    lengths = queries.lengths[q_idx]
    ceiling = coverage_score(result.ceiling, result.ceiling_overlap, lengths, coverage).astype(np.float64)
    groups, group = np.unique(q_idx, return_inverse=True)
    best = np.full(len(groups), -np.inf)
    reliable = ~pending
    score = coverage_score(result.identity, result.overlap, lengths, coverage)
    np.maximum.at(best, group[reliable], score[reliable])
    aligned = 0
    while True:
        could = np.flatnonzero(pending & (ceiling + REALIGN_MARGIN >= best[group]))
        if len(could) == 0:
            return aligned
        order = could[np.lexsort((-ceiling[could], group[could]))]     # by query, highest ceiling first
        first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
        _align_pairs(queries, q_idx, ref_store, r_idx, result, first, iupac)
        pending[first] = False
        aligned += len(first)
        new = coverage_score(result.identity[first], result.overlap[first], lengths[first], coverage)
        np.maximum.at(best, group[first], new)


def _align_pairs(a_store: SequenceStore, a_idx: np.ndarray, b_store: SequenceStore, b_idx: np.ndarray,
                 result: PairIdentity, which: np.ndarray, iupac: str) -> None:
    """Align the pairs `which` as PairwiseAligner does, in place in `result` (method 3): those with anchors
    (votes >= MIN_VOTES) with the banded aligner around their anchored offsets (`banded.banded_identity`: the
    same scores, choices and identity, many pairs at once); the others, and those the band cannot be trusted
    for, with PairwiseAligner itself (`aligned_identity`). Each pair's answer is its own: the same whatever other
    pairs are aligned with it (a lone anchored pair is banded too: PairwiseAligner can find a path outside the
    band that the banded aligner would not, and a query's identity must not depend on its chunk)."""
    which = np.asarray(which, dtype=np.int64)
    a_idx = np.asarray(a_idx, dtype=np.int64)
    b_idx = np.asarray(b_idx, dtype=np.int64)
    banded = which[result.votes[which] >= MIN_VOTES]
    rest = which[result.votes[which] < MIN_VOTES]
    if len(banded):
        got = banded_identity(a_store, a_idx[banded], b_store, b_idx[banded], result.band_low[banded],
                              result.band_high[banded], iupac=iupac)
        weak = np.flatnonzero(got.ok & ~got.in_band & (result.votes[banded] <= MIN_VOTES))
        if len(weak):
            _anchor_again(a_store, a_idx[banded[weak]], b_store, b_idx[banded[weak]], got, weak, iupac)
        done = banded[got.ok]
        _set_aligned(result, done, got.identity[got.ok], got.columns[got.ok])
        rest = np.concatenate([rest, banded[~got.ok]])
    for p in np.sort(rest).tolist():
        ident, cols = aligned_identity(a_store.sequence(int(a_idx[p])), b_store.sequence(int(b_idx[p])),
                                       iupac=iupac, detail=True)
        _set_aligned(result, np.array([p]), np.array([ident]), np.array([cols]))


def _anchor_again(a_store, a_idx, b_store, b_idx, got, where: np.ndarray, iupac: str) -> None:
    """Pairs anchored by two votes (one 12-base match can be chance) whose band held nothing better than sliding off
    the ends: anchored again with REANCHOR_K-mers at every position and aligned around that offset; kept (in the
    banded results `got`, at `where`) where that scores higher."""
    found = offset_votes(a_store.rows(a_idx), np.arange(len(a_idx)), b_store.rows(b_idx), REANCHOR_K, 1)
    keep = found.votes >= MIN_VOTES
    again = banded_identity(a_store, a_idx[keep], b_store, b_idx[keep], found.best[keep], found.best[keep],
                            iupac=iupac)
    higher = again.score > got.score[where[keep]]
    for name in ("identity", "columns", "score", "ok"):
        getattr(got, name)[where[keep][higher]] = getattr(again, name)[higher]


def _set_aligned(result: PairIdentity, where: np.ndarray, identity: np.ndarray, columns: np.ndarray) -> None:
    result.identity[where], result.overlap[where] = identity, columns
    result.method[where], result.suspect[where] = 3, False
    result.ceiling[where], result.ceiling_overlap[where] = identity, columns


def realign_above(a_store, a_idx: np.ndarray, b_store, b_idx: np.ndarray, result: PairIdentity,
                  above: float, *, iupac: str = "ignore") -> int:
    """Align (`_align_pairs`, in place in `result`) the approximate pairs whose ceiling identity reaches
    `above` - REALIGN_MARGIN (those that could be within a clustering threshold). Returns their number."""
    which = np.flatnonzero(result.approximate() & (result.ceiling + REALIGN_MARGIN >= above))
    if len(which):
        _align_pairs(as_store(a_store), np.asarray(a_idx), as_store(b_store), np.asarray(b_idx), result, which,
                     iupac)
    return len(which)


def rank_scored(candidate_idx: np.ndarray, score: np.ndarray, *others: np.ndarray):
    """Sort scored candidates as `rerank` does: score, then longer overlap (`others[0]` when given), then the
    given order; empty slots (-1) last. Returns (idx, score, *others) sorted."""
    q, n = candidate_idx.shape
    score = np.where(candidate_idx >= 0, score, -np.inf)
    overlap = others[0] if others else np.zeros((q, n), dtype=np.int32)
    order = np.lexsort((np.broadcast_to(np.arange(n), (q, n)), -overlap, -score), axis=1)
    out = [np.take_along_axis(np.where(candidate_idx >= 0, candidate_idx, -1), order, axis=1),
           np.take_along_axis(score, order, axis=1)]
    return tuple(out + [np.take_along_axis(x, order, axis=1) for x in others])


# ============================================================================================ clustering
# Fewer columns than this say too little to place a sequence: a 30-base window is 100% identical to barcodes of
# several BINs (linked to them, 40 such windows among 800 `val` barcodes moved 13 clusters), and a taxon named from
# such a hit is a guess (reference/decide.py, MIN_NAMED_COLUMNS, with the measurement). Clustering leaves a
# sequence shorter than this in a cluster of its own; classification names nothing from a hit aligned over fewer.
MIN_COMPARED_COLUMNS = 100


def identity_graph_cluster(store, neighbours: np.ndarray, threshold: float, *, iupac: str = "ignore",
                           pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                           max_component: int = MAX_COMPONENT, realign: str = "deciding", **options) -> np.ndarray:
    """Average-linkage clusters of `store`'s sequences on identity distance (1 - identity), cut at `threshold`.

    neighbours: int [n, k] candidate neighbours of each sequence (e.g. embedding k-NN; -1 = none). Identity is
    computed exactly on these edges (or taken from `pairs` = (i, j, identity) computed before); edges with
    distance <= threshold give connected components, and inside each component average linkage runs on the
    exact identity distances of all its pairs (computed here). Average linkage never merges groups whose every
    cross pair is farther than the threshold, so this equals full average linkage on identity distance whenever
    every within-threshold pair is reachable through within-threshold candidate edges.
    Cost: all m (m - 1) / 2 pairs of each component of m members (COI BINs at 3 %: components of at most a few
    hundred); a component larger than `max_component` raises UsageError (lower the threshold).
    realign: "deciding" (default): approximate pairs (two indels or more) whose ceiling could be within the
    threshold are aligned (`realign_above`); "none": left as pair_identity gives them.
    Returns int64 [n] cluster numbers 0.. in order of first member.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    store = as_store(store)
    n = len(store)
    if not 0 <= threshold <= 1:
        raise UsageError(f"the identity distance threshold must be in [0, 1], got {threshold}")
    if realign not in REALIGN_MODES:
        raise UsageError(f"realign must be one of {', '.join(REALIGN_MODES)}, got {realign!r}")
    if pairs is None:
        pairs = neighbour_pairs(store, neighbours, iupac=iupac, realign=realign, realign_at=1.0 - threshold,
                                **options)
    i, j, identity = pairs
    keep = (1.0 - identity) <= threshold + 1e-9
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (i[keep], j[keep])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    labels = np.full(n, -1, dtype=np.int64)
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.r_[True, component[order][1:] != component[order][:-1], True])
    largest = int(np.diff(bounds).max()) if n else 0
    if largest > max_component:
        raise UsageError(f"a linked group of {largest:,} barcodes at identity distance {threshold} exceeds "
                         f"max_component={max_component:,}; use a lower threshold")
    next_label = 0
    for s in range(len(bounds) - 1):
        members = order[bounds[s]:bounds[s + 1]]
        if len(members) == 1:
            labels[members] = next_label
            next_label += 1
            continue
        ii, jj = np.triu_indices(len(members), k=1)       # condensed (pdist) order
        result = pair_identity(store, members[ii], store, members[jj], iupac=iupac, **options)
        if realign == "deciding":
            realign_above(store, members[ii], store, members[jj], result, 1.0 - threshold, iupac=iupac)
        distances = 1.0 - result.identity.astype(np.float64)
        tree = linkage(np.clip(distances, 0.0, 1.0), method="average")
        local = fcluster(tree, threshold, criterion="distance")
        labels[members] = next_label + local - 1
        next_label += int(local.max())
    # renumber by first member
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def neighbour_pairs(store, neighbours: np.ndarray, *, realign: str = "deciding",
                    realign_at: float = CLUSTER_REALIGN_ABOVE, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, identity) of the distinct undirected candidate edges i < j of a k-NN table [n, k] (-1 = none).
    realign: "deciding" (default): approximate pairs whose ceiling reaches `realign_at` (within REALIGN_MARGIN)
    are aligned (`realign_above`); "none": pair_identity's values."""
    if realign not in REALIGN_MODES:
        raise UsageError(f"realign must be one of {', '.join(REALIGN_MODES)}, got {realign!r}")
    store = as_store(store)
    neighbours = np.asarray(neighbours, dtype=np.int64)
    n = len(store)
    if neighbours.ndim != 2 or neighbours.shape[0] != n:
        raise UsageError(f"neighbours must be [{n}, k], got {list(neighbours.shape)}")
    rows = np.repeat(np.arange(n), neighbours.shape[1])
    cols = neighbours.ravel()
    ok = (cols >= 0) & (cols != rows)
    lo, hi = np.minimum(rows[ok], cols[ok]), np.maximum(rows[ok], cols[ok])
    edge = np.unique(lo * n + hi)
    i, j = edge // n, edge % n
    result = pair_identity(store, i, store, j, **options)
    if realign == "deciding":
        realign_above(store, i, store, j, result, realign_at, iupac=options.get("iupac", "ignore"))
    return i, j, result.identity

