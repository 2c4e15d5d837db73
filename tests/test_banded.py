"""The banded aligner (barcodetool.search.banded) against PairwiseAligner (aligned_identity): the same score, the
same identity and the same columns wherever it reports its result usable, and PairwiseAligner's answer through
identity._align_pairs where it does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barcodetool.errors import UsageError
from barcodetool.io.readers import read_barcodes
from barcodetool.search import KmerIndex, SequenceStore, aligned_identity, pair_identity, rerank
from barcodetool.search.banded import BAND_MARGIN, MAX_BAND, MAX_LENGTH, _aligner, banded_identity
from barcodetool.search.identity import PairIdentity, _align_pairs, anchored_identity, realign_deciding

DATA = Path(__file__).parent / "data"
AMBIGUOUS = "NRYSWKMBDHV"


@pytest.fixture(scope="module")
def barcodes() -> list[str]:
    """Distinct fixture barcodes of at least 600 nt made of A/C/G/T only."""
    seen = {r.sequence: None for r in read_barcodes(DATA / "bioscan_sample.csv")
            if len(r.sequence) >= 600 and set(r.sequence) <= set("ACGT")}
    return list(seen)


def band_of(a: list[str], b: list[str]):
    """Stores and the anchored band (pair_identity's) of pairs (a[p], b[p])."""
    sa, sb = SequenceStore.from_sequences(a), SequenceStore.from_sequences(b)
    idx = np.arange(len(a))
    found = pair_identity(sa, idx, sb, idx)
    return sa, sb, idx, found


def assert_like_the_aligner(a: list[str], b: list[str], got, iupac: str, *, require_ok: bool = True) -> None:
    aligner = _aligner()
    for p, (x, y) in enumerate(zip(a, b)):
        if not got.ok[p]:
            assert not require_ok, (p, x, y)
            continue
        identity, columns = aligned_identity(x, y, iupac=iupac, detail=True)
        score = aligner.score(x, y) if x and y else 0
        assert (got.identity[p], got.columns[p], got.score[p]) == (pytest.approx(identity, abs=1e-12), columns,
                                                                   score), (p, x, y)


# ============================================================================================ real pairs
@pytest.mark.parametrize("iupac", ["ignore", "compatible"])
def test_real_pairs_of_an_indel_rich_sample_score_like_the_aligner(iupac):
    """Each BOLD BCDM sample barcode (several with indels, ambiguity codes) against its 5 nearest k-mer neighbours:
    every pair is banded and gives PairwiseAligner's score, identity and columns."""
    sequences = sorted({r.sequence for r in read_barcodes(DATA / "bold_bcdm_sample.tsv") if len(r.sequence) >= 100})
    _, neighbours = KmerIndex(sequences).search(sequences, 6)
    q = np.repeat(np.arange(len(sequences)), neighbours.shape[1])
    r = neighbours.ravel()
    keep = (r >= 0) & (r != q)
    a, b = [sequences[i] for i in q[keep]], [sequences[i] for i in r[keep]]
    sa, sb, idx, found = band_of(a, b)
    assert found.suspect.sum() >= 10 and (found.method == 2).sum() >= 20    # indel-rich: the reason for aligning
    got = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, iupac=iupac)
    assert_like_the_aligner(a, b, got, iupac)


# ============================================================================================ synthetic
def mutate(parent: str, rng: np.random.Generator, indels: int, rate: float, ambiguous: float) -> str:
    child = list(parent)
    for _ in range(indels):
        at, length = int(rng.integers(0, len(child))), int(rng.integers(1, 7))
        if rng.random() < 0.5:
            del child[at:at + length]
        else:
            child[at:at] = list(rng.choice(list("ACGT"), length))
    for at in np.flatnonzero(rng.random(len(child)) < rate):
        child[at] = "ACGT"[rng.integers(4)]
    for at in np.flatnonzero(rng.random(len(child)) < ambiguous):
        child[at] = AMBIGUOUS[rng.integers(len(AMBIGUOUS))]
    return "".join(child)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 32 - 1), indels=st.integers(0, 4), rate=st.floats(0.0, 0.15),
       ambiguous=st.sampled_from([0.0, 0.005, 0.03]), iupac=st.sampled_from(["ignore", "compatible"]))
def test_indels_substitutions_and_ambiguity_codes_score_like_the_aligner(barcodes, seed, indels, rate, ambiguous,
                                                                          iupac):
    """0-4 indels of 1-6 bases at random places, substitutions, ambiguity codes in either sequence and both ends
    trimmed: the same score, identity and columns as PairwiseAligner, and always inside the band."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(6):
        parent = barcodes[int(rng.integers(len(barcodes)))]
        child = mutate(parent, rng, indels, rate, ambiguous)
        x = parent[int(rng.integers(0, 60)):len(parent) - int(rng.integers(0, 60))]
        y = child[int(rng.integers(0, 60)):len(child) - int(rng.integers(0, 60))]
        a.append(x if rng.random() < 0.5 else y)
        b.append(y if a[-1] is x else x)
    sa, sb, idx, found = band_of(a, b)
    assert (found.votes >= 2).all()
    got = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, iupac=iupac)
    assert_like_the_aligner(a, b, got, iupac)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), iupac=st.sampled_from(["ignore", "compatible"]))
def test_a_band_over_the_whole_matrix_is_exactly_the_aligner(seed, iupac):
    """Short random sequences (empty ones, ambiguity codes: many equal-scoring alignments) with a band covering
    every diagonal: PairwiseAligner's choice among equal alignments, its score and identity, every time."""
    rng = np.random.default_rng(seed)
    letters = list("ACGT") * 6 + list("NRY")
    a = ["".join(rng.choice(letters, int(rng.integers(0, 25)))) for _ in range(12)]
    b = ["".join(rng.choice(letters, int(rng.integers(0, 25)))) for _ in range(12)]
    sa, sb = SequenceStore.from_sequences(a), SequenceStore.from_sequences(b)
    offset = rng.integers(-3, 4, len(a))
    got = banded_identity(sa, np.arange(len(a)), sb, np.arange(len(b)), offset, offset, iupac=iupac, margin=30)
    assert got.ok.all()
    assert_like_the_aligner(a, b, got, iupac)


# ============================================================================================ golden cases
def test_end_gaps_are_free_and_not_counted(barcodes):
    s = barcodes[0]
    a = [s[40:], s[:500], "ACGTTGCA" * 5 + s[100:600], s]           # overhangs on one side or the other
    b = [s[:600], s[60:], s[100:] + "TTGACA" * 7, s[:300] + s[303:]]
    sa, sb, idx, found = band_of(a, b)
    got = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high)
    assert got.ok.all()
    assert got.identity.tolist()[:3] == [1.0, 1.0, 1.0]
    assert got.columns.tolist()[:3] == [560, 440, 500]
    assert got.columns[3] == len(s) and got.identity[3] == pytest.approx((len(s) - 3) / len(s))  # one internal gap
    assert_like_the_aligner(a, b, got, "ignore")


def test_iupac_modes_leave_out_or_compare_ambiguity_columns(barcodes):
    s = barcodes[1][:600]
    with_codes = s[:100] + "N" + s[101:200] + "R" + s[201:]          # N over anything; R = A/G
    sa, sb, idx, found = band_of([s], [with_codes])
    ignore = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, iupac="ignore")
    compatible = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, iupac="compatible")
    assert (ignore.identity[0], ignore.columns[0]) == (1.0, 598)
    r_matches = s[200] in "AG"
    assert compatible.columns[0] == 600
    assert compatible.identity[0] == pytest.approx((599 + r_matches) / 600)
    assert_like_the_aligner([s], [with_codes], ignore, "ignore")
    assert_like_the_aligner([s], [with_codes], compatible, "compatible")
    with pytest.raises(UsageError):
        banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, iupac="strict")


def test_unrelated_and_tiny_pairs_slide_off_the_ends_as_the_aligner_does(barcodes):
    """An unrelated pair's best alignment is a few bases of one end over the other's start (or nothing), far
    outside the band: the gap-free end overlaps and the empty alignment give PairwiseAligner's answer."""
    rng = np.random.default_rng(5)
    a = ["".join(rng.choice(list("ACGT"), 640)) for _ in range(20)] + ["", "A", "ACGT", barcodes[2]]
    b = ["".join(rng.choice(list("ACGT"), 610)) for _ in range(20)] + [barcodes[2], "A", "T", ""]
    sa, sb = SequenceStore.from_sequences(a), SequenceStore.from_sequences(b)
    offset = rng.integers(-20, 20, len(a))
    got = banded_identity(sa, np.arange(len(a)), sb, np.arange(len(b)), offset, offset)
    assert got.ok.all()
    assert (got.columns[:20] <= 10).all()                  # slid off: a few columns, or none
    assert_like_the_aligner(a, b, got, "ignore")


# ============================================================================================ fallback
def test_a_path_on_the_band_edge_or_a_band_too_wide_goes_to_the_aligner(barcodes):
    s, t = barcodes[3], barcodes[4]
    sa, sb = SequenceStore.from_sequences([s, s, s, "A" * (MAX_LENGTH + 1)]), SequenceStore.from_sequences(
        [s[30:], s[30:], t, "A" * 50])
    idx = np.arange(4)
    true_offset = -30
    low = np.array([true_offset - BAND_MARGIN, true_offset, 0, 0])       # the path on the band's edge; in the middle
    high = np.array([true_offset - BAND_MARGIN, true_offset, MAX_BAND, 0])
    got = banded_identity(sa, idx, sb, idx, low, high)
    assert got.ok.tolist() == [False, True, False, False]
    assert got.identity[1] == 1.0
    # through _align_pairs, every pair gets PairwiseAligner's identity (method 3)
    pairs = [(sa.sequence(p), sb.sequence(p)) for p in range(4)] * 3       # enough pairs to band them
    a_store = SequenceStore.from_sequences([x for x, _ in pairs])
    b_store = SequenceStore.from_sequences([y for _, y in pairs])
    n = len(pairs)
    result = PairIdentity.empty(n)
    result.votes[:] = 2
    result.band_low[:], result.band_high[:] = np.tile(low, 3), np.tile(high, 3)
    _align_pairs(a_store, np.arange(n), b_store, np.arange(n), result, np.arange(n), "ignore")
    assert (result.method == 3).all() and not result.suspect.any()
    expected = [aligned_identity(x, y, detail=True) for x, y in pairs]
    assert result.identity.tolist() == pytest.approx([e[0] for e in expected], abs=1e-6)
    assert result.overlap.tolist() == [e[1] for e in expected]


def test_blocks_and_small_groups_give_the_same_results(barcodes):
    rng = np.random.default_rng(11)
    a = [barcodes[i % len(barcodes)] for i in range(10)]
    b = [mutate(x, rng, 3, 0.05, 0.0)[int(rng.integers(0, 40)):] for x in a]
    b[3] = b[3][:200] + "ACGTACGTAC" * 8 + b[3][200:]                # a wide band for one pair
    sa, sb, idx, found = band_of(a, b)
    whole = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high)
    small = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, block=3)
    assert whole.identity.tolist() == small.identity.tolist() and whole.ok.tolist() == small.ok.tolist()
    with pytest.raises(UsageError):
        banded_identity(sa, idx, sb, idx[:3], found.band_low, found.band_high)
    with pytest.raises(UsageError):
        banded_identity(sa, idx, sb, idx, found.band_low, found.band_high, margin=0)


def test_a_pair_aligns_as_it_would_alone_whatever_shares_its_block(barcodes):
    """A block computes the widest band of its pairs; each pair still keeps to its own. Pairs whose second barcode
    lost 18-29 bases 60-120 bases from its start (the start's diagonal outside the anchored band) are aligned
    alone and beside a pair with a band 60 diagonals wide: the same answers (before, the wider block found the
    start for some and the pair alone went to PairwiseAligner: a query's answer depended on its chunk)."""
    rng = np.random.default_rng(0)
    a, b, offset = [], [], []
    for r in barcodes[:30]:
        lost, at = int(rng.integers(18, 30)), int(rng.integers(60, 120))
        a.append(r[:at] + "".join(rng.choice(list("ACGT"), lost)) + r[at:])
        b.append(r)
        offset.append(-lost)
    a.append(barcodes[40])
    b.append(barcodes[41])
    sa, sb = SequenceStore.from_sequences(a), SequenceStore.from_sequences(b)
    offset = np.array(offset)
    wide = len(a) - 1
    fields = ("identity", "columns", "score", "ok", "in_band", "end_identity")
    for p in range(len(offset)):
        alone = banded_identity(sa, [p], sb, [p], offset[[p]], offset[[p]])
        shared = banded_identity(sa, [p, wide], sb, [p, wide], np.array([offset[p], -30]),
                                 np.array([offset[p], 30]))
        assert [getattr(alone, f)[0] for f in fields] == [getattr(shared, f)[0] for f in fields], p


def test_a_lone_pair_is_aligned_as_in_a_batch():
    """A real pair (an Aedes aegypti barcode with a ~125-base tandem duplication at its start, against another of
    its species) where PairwiseAligner finds a path outside the anchored band (score 1114 against the band's
    1104): aligned alone and among other pairs, _align_pairs gives the same identity, and so does
    anchored_identity for one candidate and for several (classify with --chunk-size 1 and 4096 gave 0.9491 and
    0.9522)."""
    duplicated, other = (r.sequence for r in read_barcodes(DATA / "tandem_pair.fasta"))
    others = [r.sequence for r in read_barcodes(DATA / "bioscan_sample.csv")][:7]
    alone = anchored_identity(duplicated, [other], fallback="align")
    among = anchored_identity(duplicated, [other] + others, fallback="align")
    assert alone[0] == among[0] and alone[0] == pytest.approx(617 / 648)
    sa, sb, idx, found = band_of([duplicated] * 5, [other] + others[:4])
    assert found.suspect[0]
    batch = PairIdentity(*(getattr(found, f).copy() for f in PairIdentity.FIELDS))
    _align_pairs(sa, idx, sb, idx, batch, idx, "ignore")
    _align_pairs(sa, idx, sb, idx, found, idx[:1], "ignore")
    assert (found.identity[0], found.overlap[0]) == (batch.identity[0], batch.overlap[0])


# ============================================================================================ integration
def test_realignment_of_approximate_pairs_equals_the_aligner(barcodes):
    """Two-indel children of real barcodes (suspect pairs) re-ranked with fallback="align" and with the deciding
    realignment: PairwiseAligner's identities, computed by the banded aligner (method 3)."""
    rng = np.random.default_rng(3)
    parents = barcodes[:12]
    children = []
    for parent in parents:
        first, second = int(rng.integers(80, 250)), int(rng.integers(350, 520))
        children.append(parent[:first] + parent[first + 4:second] + "ACG" + parent[second:])
    queries = SequenceStore.from_sequences(parents)
    refs = SequenceStore.from_sequences(children)
    candidates = np.arange(len(parents))[:, None]
    _, _, identity, _ = rerank(queries, refs, candidates, detail=True, fallback="align")
    exact = [aligned_identity(p, c) for p, c in zip(parents, children)]
    assert identity[:, 0].tolist() == pytest.approx(exact, abs=1e-6)
    result = pair_identity(queries, np.arange(len(parents)), refs, np.arange(len(parents)))
    assert result.suspect.sum() >= 4
    realign_deciding(queries, np.arange(len(parents)), refs, np.arange(len(parents)), result)
    assert (result.method[result.suspect | (result.method == 3)] == 3).all()
    done = result.method == 3
    assert result.identity[done].tolist() == pytest.approx(np.array(exact)[done].tolist(), abs=1e-6)


def test_pairs_anchored_by_chance_are_anchored_again():
    """Two votes from one shared 12-mer far from the homologous diagonal, whose 10-mers a substitution at every 8th
    base destroys: nothing in that band beats sliding off the ends, so _align_pairs anchors the pair again with
    7-mers and gets PairwiseAligner's alignment (87.5 % identity over the whole length)."""
    rng = np.random.default_rng(2)
    motif = "ACGTTGCAAGCT"
    a, b = [], []
    for _ in range(6):
        x = "".join(rng.choice(list("ACGT"), 600))
        x = x[:100] + motif + x[112:]
        y = "".join(("C" if c != "C" else "G") if i % 8 == 3 else c for i, c in enumerate(x))
        a.append(x)
        b.append(y[:400] + motif + y[412:])
    sa, sb, idx, found = band_of(a, b)
    assert (found.votes == 2).all() and (found.offset == 300).all() and found.suspect.all()
    alone = banded_identity(sa, idx, sb, idx, found.band_low, found.band_high)
    assert alone.ok.all() and not alone.in_band.any() and (alone.columns <= 12).all()    # slid off the ends
    _align_pairs(sa, idx, sb, idx, found, idx, "ignore")
    exact = [aligned_identity(x, y, detail=True) for x, y in zip(a, b)]
    assert found.identity.tolist() == pytest.approx([e[0] for e in exact], abs=1e-6)
    assert found.overlap.tolist() == [e[1] for e in exact] and (found.overlap > 550).all()
