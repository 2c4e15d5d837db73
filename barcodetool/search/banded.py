"""Global alignment with free end gaps: Biopython's PairwiseAligner one pair at a time (`aligned_identity`, the
reference), and a banded numpy equivalent that aligns many pairs at once (`banded_identity`, ~30x faster).

Method (docs/research/identity-rerank.md, section 11, has the measurements)
--------------------------------------------------------------------------------
Both run the same dynamic programme: global alignment, Gotoh's three states (M: a column pairing two letters,
Ix: a letter of `a` against a gap, Iy: a letter of `b` against a gap), match 2, mismatch -4, any ambiguity code 0,
an internal gap of length L scores -22 - 2 (L - 1), end gaps 0. The banded aligner restricts it three ways:

* **A band.** Cell (i, j) pairs a[i-1] with b[j-1] and lies on diagonal d = j - i, the anchors' offset
  (a[i] ~ b[i + d]). Only diagonals in [low - BAND_MARGIN, high + BAND_MARGIN] are computed, low and high being
  the smallest and largest supported anchor offsets of the pair (`anchors.offset_votes`). A block of pairs runs row
  by row of `a`; a row of the band is a [W, pairs] int16 array (contiguous: every step is one numpy call over all
  pairs), so a pair costs rows x W cells instead of len(a) x len(b). M comes from the previous row's three
  states on the same diagonal, Ix from the previous row, Iy (a run inside the row) is a prefix maximum of
  H(w') - 2 (w - w') over the row (H = max(M, Ix)), computed by doubling: no step loops over columns.
* **Keys.** A state's value is stored as 4 x score + state code (M 3, Ix 2, Iy 1), so one maximum over candidate
  keys picks the best score and, among equal scores, the predecessor PairwiseAligner's traceback prefers (M,
  then Ix, then Iy; a gap opens rather than extends). Cells left of column 0 keep a constant key below
  column 0's free start (key 3), cells right of `b` never feed a cell of `b`: nothing is clamped, and every key
  of a cell of `b` (4 x a score between -4 and +2 x the length, plus gaps) fits int16 up to MAX_LENGTH.
* **Ends.** Free starts: row 0 and column 0 (score 0). The path ends on the last row or column, from which free
  end gaps reach (len a, len b); among equal ends, PairwiseAligner's choice: M at the corner, then the latest M
  (else the earliest Iy) on the last column, then the latest cell on the last row. Outside any band, the
  gap-free overlaps of up to DOVETAIL_REACH bases of one sequence's start with the other's end, and the empty
  alignment, compete too: that is PairwiseAligner's answer for unrelated pairs (a few bases slid off the ends).

Each cell keeps the state each of its three values came from (one byte each); the traceback follows those
choices, as PairwiseAligner's first alignment does, a run of M cells down a diagonal at a step (vectorised over
pairs). Dropped: an internal gap in `b` right after one in `a` (Iy -> Ix); a pair of letters in its place scores
at least 20 more, so it is never on an optimal path. Identity: matching columns / (compared columns + internal
gap columns), counted as `aligned_identity` counts them (gap columns before the first and after the last pair of
letters left out; ambiguity columns by `iupac`).

A banded score never exceeds the best alignment's. Where the path's first or last END_COLUMNS pairs of letters
are misaligned (below END_FLOOR identity: an indel of more than BAND_MARGIN bases near an end of the alignment,
that no anchor voted for), the pair is aligned again with a band of +-WIDE_MARGIN and the higher score kept. A
pair whose traced path touches the edge of its band (a better path may run outside) comes back ok=False, as do
bands wider than MAX_BAND and sequences longer than MAX_LENGTH: `identity._align_pairs` gives those to
PairwiseAligner. Not detected: a better path entirely outside the band (an indel of more than WIDE_MARGIN bases
near an end; a pair below ~70 % identity whose anchors lie off its homologous diagonal): 0.03-0.1 % of real pairs
(section 11). `identity._align_pairs` anchors pairs with two votes again where their band held nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .sequences import IS_BASE, LETTERS, SequenceStore, encode

IUPAC_MODES = ("ignore", "compatible")
MATCH, MISMATCH = 2, -4           # PairwiseAligner's scores (_aligner); ambiguity codes score 0
GAP_OPEN, GAP_EXTEND = -22, -2    # an internal gap's first column, each further column; end gaps score 0
# Diagonals computed on either side of the anchors' offsets. A path that leaves the band needs an indel run of
# more than this many bases that no pair of anchors voted for (anchors: 10-mers at every second position); one that
# touches the band's edge goes to PairwiseAligner. 16 on real approximate pairs (section 11): 0.2 % disagree with
# PairwiseAligner (end segments after long unvoted indels), 0.03 % after the second pass at misaligned ends (below),
# for half the cost of a margin of 32
BAND_MARGIN = 16
MAX_BAND = 200                    # wider bands (anchors over 130+ diagonals: repeats, rearrangements): aligner
MAX_LENGTH = 1800                 # keys of scores down to -4 x length fit int16 (8 x 1800 + gaps < 32,767)
# Gap-free overlaps of up to this many bases of one sequence's start with the other's end compete with the band;
# a longer overlap of unrelated sequence scores -2.5 a base on average and never beats the empty alignment
DOVETAIL_REACH = 32
END_COLUMNS = 40                  # an alignment whose first or last this many pairs of letters ...
END_FLOOR = 0.6                   # ... are below this identity is aligned again with a band of +-WIDE_MARGIN:
WIDE_MARGIN = 64                  # 5-7 % of real approximate pairs (48 left 0.23 % of genus-level pairs off, 64 0.1 %)
TRACE_RUN = 32                    # traceback: M cells read at once down a diagonal
WIDTH_GROUPS = (36, 40, 48, 64, 96)     # pairs are blocked by band width and length of `a` in these groups
LENGTH_GROUPS = (700, 1000, 1300)
BLOCK_ROW_CELLS = 12_000          # a block's fixed cost a row (~30 numpy calls), in cells of band (measured)
BLOCK_PAIRS = 2048                # pairs aligned together (each numpy call serves all of them) ...
BLOCK_BYTES = 192 << 20           # ... within this many bytes of traceback codes (3 a cell: rows x W x pairs)

_M, _IX, _IY = 3, 2, 1            # state codes, the low two bits of a key (0: traceback done)
_LOW = 4 * -3700 + _M             # key of cells left of column 0: far below column 0's free start (3)
_START_STEP = _M - 4 * -3700      # key step into column 0: a free start (key 3, score 0)
# a pair of letters' key step = mismatch step + (b's code | 16 if a base, else 0) & _BIT[a] x _GAIN[a]: a base of a
# turns a mismatch into a match (4 x (2 - -4) = 24 = its bit x gain), an ambiguity code turns it into 0 (bit 4: b is
# a base, gain 16); b's ambiguity codes have step 0 and no bits
_BIT = np.full(16, 16, dtype=np.int16)
_BIT[[1, 2, 4, 8]] = [1, 2, 4, 8]
_GAIN = np.ones(16, dtype=np.int16)
_GAIN[[1, 2, 4, 8]] = [24, 12, 6, 3]
_ABSENT = -(1 << 40)
_STRICT = np.where(IS_BASE, np.arange(16), 0).astype(np.uint8)   # ambiguity codes -> 0 (left out)


def _comparable(codes: np.ndarray, iupac: str) -> np.ndarray:
    """Codes for column comparison: match = (a & b) != 0, compared = both != 0. With `ignore`, ambiguity codes
    become 0 (never compared); with `compatible` they stay bit masks (a match when they share a base)."""
    return _STRICT[codes] if iupac == "ignore" else codes


def _column_scores(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(match, compared) bool arrays of comparable code arrays `a`, `b` (0 = not compared)."""
    return (a & b) != 0, (a != 0) & (b != 0)


def _check_iupac(iupac: str) -> None:
    if iupac not in IUPAC_MODES:
        raise UsageError(f"iupac must be one of {', '.join(IUPAC_MODES)}, got {iupac!r}")


# ============================================================================================ PairwiseAligner
_ALIGNER = None


def _aligner():
    """Global alignment with free end gaps; VSEARCH-like scores (match 2, mismatch -4, gap 20 + 2/base);
    ambiguity codes score 0 against anything."""
    global _ALIGNER
    if _ALIGNER is None:
        from Bio.Align import PairwiseAligner, substitution_matrices

        letters = "ACGTRYSWKMBDHVN"
        matrix = substitution_matrices.Array(alphabet=letters, dims=2)
        for x in letters:
            for y in letters:
                if x in "ACGT" and y in "ACGT":
                    matrix[x, y] = float(MATCH) if x == y else float(MISMATCH)
                else:
                    matrix[x, y] = 0.0
        aligner = PairwiseAligner(mode="global", substitution_matrix=matrix, open_gap_score=float(GAP_OPEN),
                                  extend_gap_score=float(GAP_EXTEND))
        aligner.end_gap_score = 0.0
        _ALIGNER = aligner
    return _ALIGNER


def aligned_identity(a: str, b: str, *, iupac: str = "ignore", detail: bool = False):
    """Identity of the best global alignment of `a` and `b` with free end gaps (Biopython PairwiseAligner).

    identity = matching columns / (compared columns + internal gap columns); end gaps are not counted and
    ambiguity codes follow `iupac` as in `pair_identity`. This is the reference the anchored identity and the
    banded aligner are measured against. ~5-15 ms for two 658 bp barcodes. With `detail`, returns
    (identity, columns).
    """
    _check_iupac(iupac)
    ca, cb = encode(a), encode(b)
    if len(ca) == 0 or len(cb) == 0:
        return (0.0, 0) if detail else 0.0
    letters_a = LETTERS[ca].tobytes().decode("ascii")      # U -> T, lower -> upper
    letters_b = LETTERS[cb].tobytes().decode("ascii")
    alignment = _aligner().align(letters_a, letters_b)[0]
    coordinates = alignment.coordinates                    # [2, m] breakpoints of gap-free blocks and gaps
    matches = compared = gaps = 0
    blocks = []
    for s in range(coordinates.shape[1] - 1):
        a0, a1 = int(coordinates[0, s]), int(coordinates[0, s + 1])
        b0, b1 = int(coordinates[1, s]), int(coordinates[1, s + 1])
        blocks.append((a0, a1, b0, b1))
    aligned = [i for i, (a0, a1, b0, b1) in enumerate(blocks) if a1 > a0 and b1 > b0]
    if not aligned:
        return (0.0, 0) if detail else 0.0
    for i in range(aligned[0], aligned[-1] + 1):
        a0, a1, b0, b1 = blocks[i]
        if a1 > a0 and b1 > b0:
            m, c = _column_scores(_comparable(ca[a0:a1], iupac), _comparable(cb[b0:b1], iupac))
            matches += int(m.sum())
            compared += int(c.sum())
        else:
            gaps += max(a1 - a0, b1 - b0)
    columns = compared + gaps
    identity = matches / columns if columns else 0.0
    return (identity, columns) if detail else identity


# ============================================================================================ banded
@dataclass
class BandedAlignment:
    """Results of `banded_identity`, one entry a pair."""

    identity: np.ndarray       # float64 matches / (compared + internal gap columns); 0 for an empty alignment
    end_identity: np.ndarray   # float64 the lower identity of the path's first and last END_COLUMNS letter pairs
    columns: np.ndarray        # int64 compared + internal gap columns
    score: np.ndarray          # int64 alignment score (PairwiseAligner's, where ok)
    ok: np.ndarray             # bool: usable (banded, and the path kept off the band's edges)
    in_band: np.ndarray        # bool: traced through the band (not a gap-free end overlap or the empty alignment)


def band_width(low, high, margin: int = BAND_MARGIN) -> np.ndarray:
    """int64 [pairs] diagonals in a pair's band."""
    return np.abs(np.asarray(high, dtype=np.int64) - np.asarray(low, dtype=np.int64)) + 2 * margin + 1


def banded_identity(a_store: SequenceStore, a_idx, b_store: SequenceStore, b_idx, low, high, *,
                    iupac: str = "ignore", margin: int = BAND_MARGIN, block: int = BLOCK_PAIRS
                    ) -> BandedAlignment:
    """Alignment of the pairs (a_store[a_idx[p]], b_store[b_idx[p]]) inside a band around their anchor offsets
    low[p]..high[p] (a[i] ~ b[i + d]), with PairwiseAligner's scores and `aligned_identity`'s identity.

    Pairs with ok=False (path on the band's edge, band wider than MAX_BAND, a sequence longer than MAX_LENGTH)
    carry no result: align them with `aligned_identity`. An empty sequence gives identity 0 over 0 columns.
    """
    _check_iupac(iupac)
    if margin < 1:
        raise UsageError(f"the band margin must be at least 1, got {margin}")
    a_idx = np.asarray(a_idx, dtype=np.int64).ravel()
    b_idx = np.asarray(b_idx, dtype=np.int64).ravel()
    low = np.asarray(low, dtype=np.int64).ravel()
    high = np.asarray(high, dtype=np.int64).ravel()
    n = len(a_idx)
    if not len(b_idx) == len(low) == len(high) == n:
        raise UsageError("a_idx, b_idx, low and high must have the same length")
    out = BandedAlignment(np.zeros(n), np.ones(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                          np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    len_a = a_store.lengths[a_idx].astype(np.int64)
    len_b = b_store.lengths[b_idx].astype(np.int64)
    width = band_width(low, high, margin)
    out.ok[(len_a == 0) | (len_b == 0)] = True
    banded = np.flatnonzero((len_a > 0) & (len_b > 0) & (width <= MAX_BAND) & (len_a <= MAX_LENGTH)
                            & (len_b <= MAX_LENGTH))
    for group in _groups(width[banded], len_a[banded], block):
        group = banded[group[np.argsort(len_a[banded][group], kind="stable")]]
        start = 0
        while start < len(group):
            stop = min(start + block, len(group))
            cells = 3 * (int(len_a[group[start:stop]].max()) + 1) * int(width[group].max())
            chosen = group[start:start + max(1, min(stop - start, BLOCK_BYTES // cells))]
            part = _Block(a_store.rows(a_idx[chosen]), b_store.rows(b_idx[chosen]), len_a[chosen], len_b[chosen],
                          np.minimum(low, high)[chosen] - margin, width[chosen], iupac)
            (out.identity[chosen], out.columns[chosen], out.score[chosen], out.ok[chosen],
             out.end_identity[chosen], out.in_band[chosen]) = part.align()
            start += len(chosen)
    # a misaligned end (an indel beyond the band near an end of the alignment?): again with a wider band, kept if
    # it scores higher (a banded score never exceeds the best alignment's), PairwiseAligner's if that touches its edge
    again = np.flatnonzero(out.ok & (out.end_identity < END_FLOOR)) if margin < WIDE_MARGIN else []
    if len(again):
        wide = banded_identity(a_store, a_idx[again], b_store, b_idx[again], low[again], high[again], iupac=iupac,
                               margin=WIDE_MARGIN, block=block)
        better = wide.score > out.score[again]
        for name in ("identity", "end_identity", "columns", "score", "ok", "in_band"):
            getattr(out, name)[again[better]] = getattr(wide, name)[better]
    return out


def _groups(width: np.ndarray, len_a: np.ndarray, block: int) -> list[np.ndarray]:
    """Pairs grouped for blocks: by band width and length of `a` (WIDTH_GROUPS, LENGTH_GROUPS), then small groups
    merged where a block's fixed cost (BLOCK_ROW_CELLS a row) exceeds the cells their pairs add to a wider or longer
    block."""
    key = np.searchsorted(WIDTH_GROUPS, width) * (len(LENGTH_GROUPS) + 1) + np.searchsorted(LENGTH_GROUPS, len_a)
    groups = [np.flatnonzero(key == k) for k in np.unique(key)]

    def cost(n, rows, wide):
        return (-(-n // block)) * rows * BLOCK_ROW_CELLS + n * rows * wide

    shape = [(len(g), int(len_a[g].max()) + 1, int(width[g].max())) for g in groups]
    while len(groups) > 1:
        best, pair = 0, None
        for x in range(len(groups)):
            for y in range(x + 1, len(groups)):
                (n1, r1, w1), (n2, r2, w2) = shape[x], shape[y]
                saved = cost(n1, r1, w1) + cost(n2, r2, w2) - cost(n1 + n2, max(r1, r2), max(w1, w2))
                if saved > best:
                    best, pair = saved, (x, y)
        if pair is None:
            break
        x, y = pair
        groups[x] = np.concatenate([groups[x], groups.pop(y)])
        (n1, r1, w1), (n2, r2, w2) = shape[x], shape.pop(y)
        shape[x] = (n1 + n2, max(r1, r2), max(w1, w2))
    return groups


class _Block:
    """One block of pairs p, band columns w: row i, band column w is cell (i, j = i + dlo[p] + w).

    The block computes W = max(width) band columns for every pair, but a pair's path keeps to its own width[p]
    (its Ix is cut at its own last column, its ends and band edge are its own): a pair aligns as it would alone,
    whatever pairs share its block."""

    def __init__(self, a_rows, b_rows, len_a, len_b, dlo, width, iupac):
        W = int(width.max())
        self.a_rows, self.b_rows, self.len_a, self.len_b, self.dlo, self.W = a_rows, b_rows, len_a, len_b, dlo, W
        self.width = width.astype(np.int64)
        self.iupac = iupac
        self.P, self.R = len(len_a), int(len_a.max())
        # b along the band: x = i + w is column j = x + dlo, holding b[j - 1]
        self.j = np.arange(self.R + W + 1)[:, None] + dlo[None, :]                           # [X, P]
        inside = (self.j >= 1) & (self.j <= len_b[None, :])
        at = np.clip(self.j - 1, 0, max(b_rows.shape[1] - 1, 0))
        self.b_code = np.where(inside, b_rows[np.arange(self.P)[None, :], at], 0).astype(np.uint8)
        self.col_x = len_b - dlo                      # the last column's x

    def align(self):
        self._forward()
        return self._finish()

    def _forward(self):
        """Fill the traceback codes (state each value of each cell came from) and keep the last column's M and Iy
        keys of every row and the last row's M and Ix keys of every pair."""
        P, R, W, j = self.P, self.R, self.W, self.j
        base = IS_BASE[self.b_code]
        one_hot = np.where(base, self.b_code.astype(np.int16) | 16, 0).astype(np.int16)   # bit 4: b is a base
        step = np.where((j >= 1) & (j <= self.len_b[None, :]), np.where(base, 4 * MISMATCH + _M, _M),
                        np.where(j == 0, _START_STEP, _M)).astype(np.int16)     # key step without a match
        a_pad = np.zeros((R + 1, P), dtype=np.uint8)
        a_pad[1:] = self.a_rows.T
        a_bit, a_gain = _BIT[a_pad], _GAIN[a_pad]                       # match step = (one_hot & bit) x gain
        Mk = np.where((j[:W] >= 0) & (j[:W] <= self.len_b[None, :]), _M, _LOW).astype(np.int16)   # row 0
        Xk = np.full((W, P), _LOW - 1, dtype=np.int16)
        Yk = np.full((W, P), _LOW - 2, dtype=np.int16)
        Mn, Xn, Yn, c, t, t2, H, ping, pong = (np.empty_like(Mk) for _ in range(9))
        full = lambda column: np.ascontiguousarray(np.broadcast_to(column.astype(np.int16)[:, None], (len(column), P)))
        slope = full(-4 * GAP_EXTEND * np.arange(W))                                # V(w) = H(w) - extend w
        y_step = full(4 * (GAP_OPEN + GAP_EXTEND * np.arange(W - 1)) + _IY)
        self.codes = [np.empty((R + 1, W, P), dtype=np.uint8) for _ in range(3)]  # M's, Ix's, Iy's origin
        code_m, code_x, code_y = self.codes
        # the last column (j = len_b) is band column w = col_x - i of row i: kept as M and Iy keys by w
        by_col = np.argsort(self.col_x, kind="stable")
        col_bounds = np.searchsorted(self.col_x[by_col], np.arange(R + 2) + np.array([[0], [W]]))   # [2, R+2]
        self.col_M = np.full((W, P), _LOW, dtype=np.int16)
        self.col_Y = np.full((W, P), _LOW, dtype=np.int16)
        self.last_M, self.last_X = np.empty((W, P), dtype=np.int16), np.empty((W, P), dtype=np.int16)
        ends = np.argsort(self.len_a, kind="stable")
        bounds = np.searchsorted(self.len_a[ends], np.arange(R + 2))
        o4, e4 = 4 * GAP_OPEN, 4 * GAP_EXTEND
        # Ix of a pair's own last band column and beyond: nothing enters from outside its band (as Xn[-1] below)
        cut_x = np.arange(W)[:, None] >= self.width[None, :] - 1                    # [W, P]
        cut_any = bool(cut_x[:-1].any())
        for i in range(1, R + 1):
            # M: the best state of (i-1, j-1), same band column, plus the letter pair's step
            np.bitwise_and(one_hot[i:i + W], a_bit[i], out=t)
            t *= a_gain[i]
            t += step[i:i + W]
            np.maximum(Mk, Xk, out=c)
            np.maximum(c, Yk, out=c)
            np.bitwise_and(c, 3, out=code_m[i], casting="unsafe")
            np.bitwise_and(c, -4, out=Mn)
            Mn += t
            # Ix: (i-1, j) is band column w + 1 of the previous row; open from M (code 3) or extend (2)
            np.add(Mk[1:], o4, out=t[:-1])
            np.add(Xk[1:], e4, out=t2[:-1])
            np.maximum(t[:-1], t2[:-1], out=Xn[:-1])
            Xn[-1] = _LOW - 1
            if cut_any:
                np.putmask(Xn, cut_x, _LOW - 1)
            np.bitwise_and(Xn, 3, out=code_x[i], casting="unsafe")
            Xn &= -2
            # Iy(w) = max_{w' < w} H(w') + open + extend (w - 1 - w'): prefix maximum of V(w') = H(w') - extend w'
            np.maximum(Mn, Xn, out=H)
            np.add(H, slope, out=ping)
            np.maximum.accumulate(ping, axis=0, out=pong)
            src, dst = pong, ping
            np.bitwise_and(src[:-1], -4, out=Yn[1:])
            Yn[1:] += y_step
            Yn[0] = _LOW - 2
            # Iy's origin at (i, j-1): H's state where the gap opens (a tie opens), else Iy (extends)
            np.add(H[:-1], o4, out=t[1:])
            np.add(Yn[:-1], e4, out=dst[1:])
            np.maximum(t[1:], dst[1:], out=t[1:])
            t[0] = _IY
            np.bitwise_and(t, 3, out=code_y[i], casting="unsafe")
            Mk, Mn, Xk, Xn, Yk, Yn = Mn, Mk, Xn, Xk, Yn, Yk
            here = by_col[col_bounds[0, i]:col_bounds[1, i]]              # col_x - W < i <= col_x
            if len(here):
                at = (self.col_x[here] - i) * P + here
                self.col_M.ravel()[at], self.col_Y.ravel()[at] = Mk.ravel()[at], Yk.ravel()[at]
            done = ends[bounds[i]:bounds[i + 1]]
            if len(done):
                self.last_M[:, done], self.last_X[:, done] = Mk[:, done], Xk[:, done]

    def _finish(self):
        """Where the best alignment ends (PairwiseAligner's choice among equal ends), and its identity: traced
        back through the band, or a gap-free end overlap, or the empty alignment."""
        P, R, W, C = self.P, self.R, self.W, DOVETAIL_REACH
        ar = np.arange(P)
        len_a, len_b, dlo = self.len_a, self.len_b, self.dlo
        own = np.arange(W)[:, None] < self.width[None, :]                             # [W, P] the pair's band
        score_of = lambda key: key.astype(np.int64) >> 2
        # (1) M at (len_a, len_b)
        w_end = len_b - len_a - dlo
        s_m = np.where((w_end >= 0) & (w_end < self.width), score_of(self.last_M[np.clip(w_end, 0, W - 1), ar]),
                       _ABSENT)
        # (2) Ix there: a free end gap down the last column from row r = col_x - w < len_a, out of M or Iy
        col_row = self.col_x[None, :] - np.arange(W)[:, None]                       # [W, P]
        usable = (col_row >= 1) & (col_row < len_a[None, :]) & (col_row <= R) & own
        cm = np.where(usable, score_of(self.col_M), _ABSENT)
        cy = np.where(usable, score_of(self.col_Y), _ABSENT)
        # (3) Iy there: a free end gap along the last row from column j' < len_b, out of M or Ix
        j_last = len_a[None, :] + dlo[None, :] + np.arange(W)[:, None]                 # [W, P]
        before = (j_last >= 1) & (j_last < len_b[None, :]) & own
        lm = np.where(before, score_of(self.last_M), _ABSENT)
        lx = np.where(before, score_of(self.last_X), _ABSENT)
        # gap-free end overlaps and the empty alignment: only where the band's best could lose to them
        tr = bl = np.full((C + 1, P), _ABSENT, dtype=np.int64)
        tr_mc = bl_mc = None
        low = np.maximum(np.maximum(s_m, cm.max(axis=0)), np.maximum(cy.max(axis=0), lm.max(axis=0)))
        low = np.flatnonzero(np.maximum(low, lx.max(axis=0)) <= 2 * C)
        if len(low):
            tr, bl = tr.copy(), bl.copy()
            (tr[:, low], *tr_mc), (bl[:, low], *bl_mc) = _dovetails(self.a_rows[low], self.b_rows[low], len_a[low],
                                                                    len_b[low], self.iupac, C)
        # M at the corner may be an overlap of the whole shorter sequence
        whole_a = np.where(len_a <= C, tr[np.minimum(len_a, C), ar], _ABSENT)
        whole_b = np.where(len_b <= C, bl[np.minimum(len_b, C), ar], _ABSENT)
        s_m_all = np.maximum(s_m, np.maximum(whole_a, whole_b))
        # last column: the latest row whose M reaches the best, else the earliest row whose Iy does; row 0 is the
        # empty alignment (an Iy start at (0, len_b)); top-right overlaps of L bases end on row L
        reach = np.arange(C + 1)[:, None]
        tm = np.where((reach >= 1) & (reach < len_a[None, :]), tr, _ABSENT)
        s_x = np.maximum(np.maximum(cm.max(axis=0), tm.max(axis=0)), np.maximum(cy.max(axis=0), 0))
        hit = cm == s_x[None, :]
        band_row = np.where(hit.any(axis=0), col_row[np.argmax(hit, axis=0), ar], -1)     # smallest w: latest
        hit = tm == s_x[None, :]
        tr_row = np.where(hit.any(axis=0), C - np.argmax(hit[::-1], axis=0), -1)
        x_from_m = np.maximum(band_row, tr_row) >= 0
        hit = cy == s_x[None, :]
        y_row = np.where(hit.any(axis=0), col_row[W - 1 - np.argmax(hit[::-1], axis=0), ar], -1)   # earliest
        x_band = np.where(x_from_m, band_row >= tr_row, (y_row >= 1) & (s_x > 0))
        x_row = np.where(x_from_m, np.maximum(band_row, tr_row), np.where(s_x > 0, y_row, 0))
        # last row: the latest column reaching the best (M before Ix on it); column 0 is the empty alignment;
        # bottom-left overlaps of L bases end on column L
        bl_row = np.where((np.arange(C + 1)[:, None] >= 1) & (np.arange(C + 1)[:, None] < len_b[None, :]), bl,
                          _ABSENT)
        s_y = np.maximum(np.maximum(lm.max(axis=0), lx.max(axis=0)), np.maximum(bl_row.max(axis=0), 0))
        hit = (lm == s_y[None, :]) | (lx == s_y[None, :])
        band_w = W - 1 - np.argmax(hit[::-1], axis=0)
        band_j = np.where(hit.any(axis=0), j_last[band_w, ar], -1)
        hit_bl = bl_row == s_y[None, :]
        bl_L = np.where(hit_bl.any(axis=0), C - np.argmax(hit_bl[::-1], axis=0), 0)
        y_band = (band_j >= bl_L) & (band_j >= 1)
        # the end: M, then Ix, then Iy among equal scores
        score = np.maximum(s_m_all, np.maximum(s_x, s_y))
        take_m = s_m_all == score
        take_x = ~take_m & (s_x == score)
        take_y = ~take_m & ~take_x
        matches = np.zeros(P, dtype=np.int64)
        columns = np.zeros(P, dtype=np.int64)
        if tr_mc is not None:
            for chosen, (m, c), L in (((take_m & (s_m < s_m_all) & (whole_a == s_m_all)), tr_mc, len_a),
                                      ((take_m & (s_m < s_m_all) & (whole_a < s_m_all)), bl_mc, len_b),
                                      (take_x & ~x_band, tr_mc, x_row), (take_y & ~y_band, bl_mc, bl_L)):
                chosen = np.flatnonzero(chosen & np.isin(ar, low))
                where = np.searchsorted(low, chosen)
                matches[chosen] = m[np.minimum(L[chosen], C), where]
                columns[chosen] = c[np.minimum(L[chosen], C), where]
        # band cells: traced back
        i = np.full(P, -1, dtype=np.int64)
        w = np.zeros(P, dtype=np.int64)
        state = np.zeros(P, dtype=np.int64)
        sel = take_m & (s_m == s_m_all)
        i[sel], w[sel], state[sel] = len_a[sel], w_end[sel], _M
        sel = np.flatnonzero(take_x & x_band)
        i[sel], w[sel], state[sel] = x_row[sel], self.col_x[sel] - x_row[sel], np.where(x_from_m[sel], _M, _IY)
        sel = take_y & y_band
        i[sel], w[sel] = len_a[sel], band_w[sel]
        state[sel] = np.where(lm[band_w, ar] == s_y, _M, _IX)[sel]
        self.end_identity = np.ones(P)
        m, c, edge = self._traceback(i, w, state)
        traced = state > 0
        matches[traced], columns[traced] = m[traced], c[traced]
        identity = np.where(columns > 0, matches / np.maximum(columns, 1), 0.0)
        return identity, columns, score, ~(edge & traced), np.where(traced, self.end_identity, 1.0), traced

    def _traceback(self, i, w, state):
        """(matches, compared + internal gap columns, touched the band's edge) of the paths traced back from cells
        (i, w) in `state` (0: none). A step reads TRACE_RUN cells of a run of M cells down the diagonal, or one gap
        cell. Gap columns wait in `pending` until a pair of letters is found before them (in the alignment)."""
        P, W, K, dlo = self.P, self.W, TRACE_RUN, self.dlo
        code_m, code_x, code_y = (codes.reshape(-1) for codes in self.codes)
        gaps, pending = np.zeros(P, dtype=np.int64), np.zeros(P, dtype=np.int64)
        seen, edge = np.zeros(P, dtype=bool), np.zeros(P, dtype=bool)
        segments = []                                          # (pair, w, first row, last row) of M runs
        i, w, state = i.copy(), w.copy(), state.copy()
        back = np.arange(K)[None, :]
        active = np.flatnonzero(state > 0)
        while len(active):
            ii, ww, st = i[active], w[active], state[active]
            edge[active] |= (ww == 0) | (ww == self.width[active] - 1)
            is_m = st == _M
            if is_m.any():
                # M cells at rows ii, ii - 1, ...: a start cell (row or column 0) ends the path before it; a cell
                # entered from a gap state is the run's last
                pm, im, wm = active[is_m], ii[is_m], ww[is_m]
                row = im[:, None] - back
                start = (row <= 0) | (row + dlo[pm][:, None] + wm[:, None] == 0)
                came = code_m[(np.maximum(row, 0) * W + wm[:, None]) * P + pm[:, None]]
                first_start = np.where(start.any(axis=1), np.argmax(start, axis=1), K)
                leaves = (came != _M) & ~start
                first_gap = np.where(leaves.any(axis=1), np.argmax(leaves, axis=1), K)
                last = np.minimum(first_start - 1, first_gap)              # M cells t = 0..last on the path
                real = last >= 0
                segments.append((pm[real], wm[real], (im - last)[real], im[real]))
                commit = pm[real]
                gaps[commit] += np.where(seen[commit], pending[commit], 0)
                pending[commit] = 0
                seen[commit] = True
                ends = (first_start <= first_gap) & (first_start < K)
                state[pm[ends]] = 0
                on = ~ends & (first_gap < K)
                state[pm[on]] = came[on, first_gap[on]]
                i[pm[on]] = im[on] - first_gap[on] - 1
                i[pm[~ends & ~on]] = im[~ends & ~on] - K
            gap = ~is_m
            if gap.any():
                pg, ig, wg, is_x = active[gap], ii[gap], ww[gap], st[gap] == _IX
                pending[pg] += 1
                at = (ig * W + wg) * P + pg
                state[pg] = np.where(is_x, code_x[at], code_y[at])
                i[pg] = ig - is_x
                w[pg] = wg + np.where(is_x, 1, -1)
            lost = (i[active] < 0) | (w[active] < 0) | (w[active] >= self.width[active])   # cannot happen
            edge[active[lost]] = True
            state[active[lost]] = 0
            active = active[state[active] > 0]
        matches, compared = np.zeros(P, dtype=np.int64), np.zeros(P, dtype=np.int64)
        if segments:
            pair, seg_w, first, last = (np.concatenate(parts) for parts in zip(*segments))
            length = last - first + 1
            pair_of = np.repeat(pair, length)
            rows = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length) + np.repeat(first,
                                                                                                          length)
            ac = _comparable(self.a_rows[pair_of, rows - 1], self.iupac)
            bc = _comparable(self.b_code[rows + np.repeat(seg_w, length), pair_of], self.iupac)
            match, compare = _column_scores(ac, bc)
            matches = np.bincount(pair_of, weights=match, minlength=P).astype(np.int64)
            compared = np.bincount(pair_of, weights=compare, minlength=P).astype(np.int64)
            self.end_identity = _end_identity(pair_of, rows, match, compare, P)
        return matches, compared + gaps, edge


def _end_identity(pair_of, rows, match, compare, P):
    """float64 [P]: the lower identity of the first and of the last END_COLUMNS pairs of letters of each path
    (1 where none)."""
    order = np.lexsort((rows, pair_of))
    pair_of, match, compare = pair_of[order], match[order], compare[order]
    count = np.bincount(pair_of, minlength=P)
    at = np.arange(len(pair_of)) - (np.cumsum(count) - count)[pair_of]
    out = np.ones(P)
    for end in (at < END_COLUMNS, at >= count[pair_of] - END_COLUMNS):
        m = np.bincount(pair_of[end], weights=match[end], minlength=P)
        c = np.bincount(pair_of[end], weights=compare[end], minlength=P)
        out = np.minimum(out, np.where(c > 0, m / np.maximum(c, 1), 1.0))
    return out


def _dovetails(a_rows, b_rows, len_a, len_b, iupac, reach):
    """Gap-free overlaps of a's start with b's end (top right: a[:L] ~ b[-L:]) and of a's end with b's start
    (bottom left: a[-L:] ~ b[:L]), L = 0..reach: for each, score [L, P] (_ABSENT where L exceeds a sequence),
    matches and compared columns."""
    P = len(len_a)
    L = np.arange(reach + 1)[:, None, None]                       # [L, 1, 1]
    t = np.arange(reach)[None, None, :]                           # [1, 1, t]
    p = np.arange(P)[None, :, None]
    fits = np.minimum(len_a, len_b)[None, :, None] >= L            # [L, P, 1]
    use = (t < L) & fits
    out = []
    for a_at, b_at in ((t, len_b[None, :, None] - L + t), (len_a[None, :, None] - L + t, t)):
        a = np.where(use, a_rows[p, np.clip(a_at, 0, a_rows.shape[1] - 1)], 0)
        b = np.where(use, b_rows[p, np.clip(b_at, 0, b_rows.shape[1] - 1)], 0)
        score = np.where(IS_BASE[a] & IS_BASE[b], np.where(a == b, MATCH, MISMATCH), 0).sum(axis=2)
        match, compare = _column_scores(_comparable(a, iupac), _comparable(b, iupac))
        out.append((np.where(fits[:, :, 0], score, _ABSENT), match.sum(axis=2), compare.sum(axis=2)))
    return out
