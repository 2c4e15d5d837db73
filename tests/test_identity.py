"""Anchored pairwise identity: golden cases, indels, IUPAC rules, re-ranking, graph clustering, and a property test
against Biopython's PairwiseAligner on mutated real barcodes (tests/data/bioscan_sample.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barcodetool.errors import InputError, UsageError
from barcodetool.search import (KmerIndex, SequenceStore, aligned_identity, anchored_identity, coverage_score,
                                  decode, encode, identity_graph_cluster, neighbour_pairs, pair_identity, rerank,
                                  score_candidates)
from barcodetool.search.identity import REALIGN_MARGIN, realign_deciding
from barcodetool.io.readers import read_barcodes
from barcodetool.search.knn import largest_columns

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def barcodes() -> list[str]:
    """Distinct fixture barcodes of at least 600 nt made of A/C/G/T only."""
    seen: dict[str, None] = {}
    for record in read_barcodes(DATA / "bioscan_sample.csv"):
        sequence = record.sequence
        if len(sequence) >= 600 and set(sequence) <= set("ACGT"):
            seen.setdefault(sequence)
    out = list(seen)
    assert len(out) >= 20
    return out


def substitute(sequence: str, position: int) -> str:
    old = sequence[position]
    new = "C" if old != "C" else "G"
    return sequence[:position] + new + sequence[position + 1:]


# ============================================================================================ golden cases
def test_identical_is_one(barcodes):
    s = barcodes[0]
    result = pair_identity([s], [0], [s], [0])
    assert result.identity[0] == 1.0
    assert result.overlap[0] == len(s)
    assert result.offset[0] == 0
    assert result.method[0] == 1  # gap-free


def test_one_substitution_in_600(barcodes):
    s = barcodes[0][:600]
    assert anchored_identity(s, [substitute(s, 300)])[0] == pytest.approx(599 / 600)
    # near an end too (few anchors cover the last bases, the offset comes from the rest)
    assert anchored_identity(s, [substitute(s, 598)])[0] == pytest.approx(599 / 600)


def test_shifted_start_is_identity_over_the_overlap(barcodes):
    s = barcodes[1]
    shifted = s[30:]
    result = pair_identity([s], [0], [shifted], [0])
    assert result.identity[0] == 1.0
    assert result.overlap[0] == len(shifted)
    assert result.offset[0] == -30       # s[i] ~ shifted[i - 30]
    # overhangs on both sides: a = s[:500], b = s[100:] overlap on s[100:500]; one substitution inside
    a, b = s[:500], substitute(s, 250)[100:]
    result = pair_identity([a], [0], [b], [0])
    assert result.overlap[0] == 400
    assert result.identity[0] == pytest.approx(399 / 400)
    assert result.identity[0] == pytest.approx(aligned_identity(a, b))


def test_symmetric(barcodes):
    a, b = barcodes[2][:620], substitute(substitute(barcodes[2], 10), 400)[25:]
    forward = pair_identity([a], [0], [b], [0])
    backward = pair_identity([b], [0], [a], [0])
    assert forward.identity[0] == backward.identity[0]
    assert forward.offset[0] == -backward.offset[0]


def test_codon_deletion_uses_the_two_offset_model(barcodes):
    s = barcodes[3][:600]
    deleted = s[:300] + s[303:]          # one codon missing: 597 matches + 3 gap columns
    result = pair_identity([s], [0], [deleted], [0])
    assert result.method[0] == 2
    assert result.identity[0] == pytest.approx(597 / 600)
    assert result.identity[0] == pytest.approx(aligned_identity(s, deleted), abs=1e-6)
    # an insertion in the other sequence, and a 1-base indel close to an end (few votes for the second offset)
    inserted = s[:200] + "GGA" + s[200:]
    assert anchored_identity(s, [inserted])[0] == pytest.approx(aligned_identity(s, inserted), abs=1e-6)
    near_end = s[:20] + s[21:]
    assert anchored_identity(s, [near_end])[0] == pytest.approx(aligned_identity(s, near_end), abs=1e-6)
    # without the indel model the suffix is misaligned and the identity collapses
    assert anchored_identity(s, [deleted], fallback="none")[0] < 0.8


def test_two_indels_need_the_aligner(barcodes):
    s = barcodes[4][:600]
    twice = s[:200] + s[203:400] + s[409:]      # a codon and three codons missing
    exact = aligned_identity(s, twice)
    vectorised = pair_identity([s], [0], [twice], [0])
    assert vectorised.suspect[0]                  # flagged: part of it is misaligned
    assert vectorised.identity[0] < exact - 0.05
    aligned = pair_identity([s], [0], [twice], [0], fallback="align")
    assert aligned.method[0] == 3 and not aligned.suspect[0]
    assert aligned.identity[0] == pytest.approx(exact, abs=1e-6)
    assert exact == pytest.approx(588 / 600)


def test_unrelated_sequences_have_no_anchor():
    rng = np.random.default_rng(0)
    a = decode(rng.choice(np.array([1, 2, 4, 8], dtype=np.uint8), 600))
    b = decode(rng.choice(np.array([1, 2, 4, 8], dtype=np.uint8), 600))
    result = pair_identity([a], [0], [b], [0])
    assert result.method[0] == 0 and result.identity[0] == 0.0 and result.overlap[0] == 0


# ============================================================================================ IUPAC
def test_iupac_ignore_leaves_ambiguous_columns_out(barcodes):
    """Default `ignore`: a column holding N (or any ambiguity code) in either sequence is neither a match nor a
    mismatch; identity is over the columns where both have A/C/G/T."""
    s = barcodes[5][:600]
    with_n = s[:100] + "N" + s[101:]
    result = pair_identity([s], [0], [with_n], [0])
    assert result.identity[0] == 1.0 and result.overlap[0] == 599
    assert aligned_identity(s, with_n) == 1.0
    # R (A or G) against C: still left out, not a mismatch
    position = next(i for i in range(50, 600) if s[i] == "C")
    with_r = s[:position] + "R" + s[position + 1:]
    assert anchored_identity(s, [with_r])[0] == 1.0


def test_iupac_compatible_counts_shared_bases(barcodes):
    """`compatible`: an ambiguity code matches any base it includes (N matches everything) and is a mismatch
    otherwise; every column counts."""
    s = barcodes[5][:600]
    a_at = next(i for i in range(50, 600) if s[i] == "A")
    c_at = next(i for i in range(50, 600) if s[i] == "C")
    both = s[:a_at] + "R" + s[a_at + 1:]
    both = both[:c_at] + "R" + both[c_at + 1:]          # R vs A: match; R vs C: mismatch
    result = pair_identity([s], [0], [both], [0], iupac="compatible")
    assert result.overlap[0] == 600
    assert result.identity[0] == pytest.approx(599 / 600)
    assert aligned_identity(s, both, iupac="compatible") == pytest.approx(599 / 600)
    assert anchored_identity(s, [both])[0] == 1.0          # ignore: both R columns left out


def test_encoding_and_errors(barcodes):
    assert decode(encode("ACGTNRYU")) == "ACGTNRYT"
    with pytest.raises(InputError):
        encode("ACG-T")
    with pytest.raises(InputError):
        SequenceStore.from_sequences(["ACGT", "ACXT"])
    with pytest.raises(UsageError):
        pair_identity(["ACGT"], [0], ["ACGT"], [0], iupac="maybe")
    with pytest.raises(UsageError):
        pair_identity(["ACGT"], [0], ["ACGT"], [1])
    with pytest.raises(UsageError):
        pair_identity(["ACGT"], [0, 0], ["ACGT"], [0])
    store = SequenceStore.from_sequences(barcodes[:3])
    assert len(store) == 3 and store.sequence(1) == barcodes[1]
    rows = store.rows(np.array([2, 0]))
    assert rows.shape == (2, max(len(barcodes[0]), len(barcodes[2])))
    assert decode(rows[1][:len(barcodes[0])]) == barcodes[0]
    assert pair_identity([], [], [], []).identity.shape == (0,)


# ============================================================================================ re-ranking
def test_rerank_orders_by_identity(barcodes):
    query = barcodes[6][:620]
    farthest = min(barcodes, key=lambda other: anchored_identity(query, [other])[0])
    references = [farthest, substitute(substitute(query, 50), 500), query, substitute(query, 300)]
    candidates = np.array([[0, 1, 2, 3, -1]])
    idx, score = rerank([query], references, candidates)
    assert idx[0].tolist() == [2, 3, 1, 0, -1]
    assert score[0, 0] == 1.0 and score[0, 4] == -np.inf
    assert np.all(np.diff(score[0, :4]) <= 0)
    with pytest.raises(UsageError):
        rerank([query], references, np.array([0, 1]))


def test_rerank_ties_prefer_the_longer_overlap_then_the_given_order(barcodes):
    query = barcodes[8][:600]
    references = [query, query + "ACG", query[5:]]   # all identity 1.0; overlaps 600, 600, 595
    idx, score = rerank([query], references, np.array([[1, 2, 0]]))
    assert idx[0].tolist() == [1, 0, 2]
    assert score[0].tolist() == [1.0, 1.0, 1.0]


def test_rerank_scales_down_short_overlaps(barcodes):
    """A short fragment identical to part of the query must not outrank a full-length 99 % neighbour."""
    query = barcodes[9][:600]
    close = query
    for position in range(10, 600, 100):
        close = substitute(close, position)                    # 6 substitutions: 99 % identical
    fragment = query[100:300]                                   # identical over 200 columns only
    idx, score, identity, overlap = rerank([query], [fragment, close], np.array([[0, 1]]), detail=True)
    assert idx[0].tolist() == [1, 0]
    assert identity[0].tolist() == pytest.approx([594 / 600, 1.0])
    assert overlap[0].tolist() == [600, 200]
    assert score[0, 1] == pytest.approx(200 / (0.7 * 600))      # coverage 0.7 of the query expected
    assert coverage_score(np.array([1.0]), np.array([200]), np.array([600]), coverage=0.0)[0] == 1.0
    with pytest.raises(UsageError):
        rerank([query], [fragment], np.array([[5]]))


def test_kmer_index_finds_the_closest(barcodes):
    references = barcodes[:30]
    index = KmerIndex(references)
    queries = [substitute(references[3], 100), references[17][20:]]
    counts, idx = index.search(queries, 3)
    assert idx[:, 0].tolist() == [3, 17]
    assert (np.diff(counts, axis=1) <= 0).all()
    # excluding the query's own group (here: the reference row itself) removes it
    _, idx = index.search(queries, 3, exclude=(np.array([3, 17]), np.arange(30)))
    assert 3 not in idx[0] and 17 not in idx[1]
    # a k-mer held by more references than max_df is skipped; none left -> empty slots
    counts, idx = index.search(queries[:1], 2, max_df=0)
    assert idx.tolist() == [[-1, -1]] and counts.tolist() == [[0, 0]]


@pytest.mark.parametrize("k,batch", [(8, 64), (6, 3)])
def test_shared_kmer_counts_count_the_candidates_positions_holding_a_query_kmer(barcodes, k, batch):
    """Each candidate's valid k-mer positions whose k-mer the query holds (brute force with Python sets), -1 for
    empty slots, in batches of any size; a k-mer with an N is nobody's."""
    from barcodetool.search import shared_kmer_counts

    references = barcodes[:12] + [barcodes[12][:300] + "N" + barcodes[12][301:]]
    queries = [barcodes[0], substitute(substitute(barcodes[5], 50), 300), barcodes[12][100:500], "ACGT" * 20]
    candidates = np.array([[0, 1, -1, 12], [5, 4, 3, 2], [12, 11, -1, -1], [0, 6, 7, 12]])

    def kmers(sequence):
        return [sequence[i:i + k] for i in range(len(sequence) - k + 1) if set(sequence[i:i + k]) <= set("ACGT")]

    expected = np.array([[-1 if ref < 0 else sum(kmer in set(kmers(query)) for kmer in kmers(references[ref]))
                          for ref in row] for query, row in zip(queries, candidates)])
    counts = shared_kmer_counts(queries, references, candidates, k=k, batch=batch)
    np.testing.assert_array_equal(counts, expected)
    assert counts[0, 0] == len(barcodes[0]) - k + 1          # the query itself: every position
    assert counts[1, 0] > counts[1, 1]                       # its own barcode, two substitutions away, first
    with pytest.raises(UsageError, match="k must be"):
        shared_kmer_counts(queries, references, candidates, k=12)
    with pytest.raises(UsageError, match="candidate_idx"):
        shared_kmer_counts(queries, references, candidates[:2])


@pytest.mark.parametrize("max_stored_df", [None, 4])
def test_sparse_and_gathered_kmer_counts_agree(barcodes, monkeypatch, max_stored_df):
    """Small indexes count shared k-mers by a sparse product, large ones by gathering postings: the same counts, so
    the same candidates, with exclusion, caps and the fallback search."""
    import barcodetool.search.kmer_index as kmer_module

    references = barcodes[:60]
    queries = [substitute(references[i], 40 * (i % 5)) for i in range(0, 60, 3)] + [references[7][50:400]]
    exclude = (np.arange(len(queries)) % 7, np.arange(60) % 7)
    index = KmerIndex(references, max_stored_df=max_stored_df)
    searches = [dict(max_df=3, fallback=(4, 0.5)), dict(max_df=4, stride=2, exclude=exclude), dict(max_df=2)]
    results = {}
    for name, limit in (("sparse", kmer_module.SPARSE_COUNT_POSTINGS), ("gathered", -1)):
        monkeypatch.setattr(kmer_module, "SPARSE_COUNT_POSTINGS", limit)
        results[name] = [index.search(queries, 8, **options) for options in searches]
    for (c1, i1), (c2, i2) in zip(results["sparse"], results["gathered"]):
        assert np.array_equal(c1, c2) and np.array_equal(i1, i2)
    assert (results["sparse"][0][0] > 0).any()


def test_sparse_kmer_counts_of_a_query_longer_than_int16_counts(monkeypatch):
    """A query sharing more k-mers with a reference than int16 holds (a 40 kb sequence) is counted exactly by the
    sparse product too (int32 for that batch), as by gathering postings."""
    import barcodetool.search.kmer_index as kmer_module

    rng = np.random.default_rng(5)
    long = ["".join(rng.choice(list("ACGT"), 40_000)) for _ in range(2)]
    index = KmerIndex(long + ["ACGT" * 200])
    queries = [long[1], long[0][:1000]]
    sparse = index.search(queries, 2, max_df=10)
    assert sparse[1][0, 0] == 1 and sparse[0][0, 0] > kmer_module.SPARSE_COUNT_MAX
    monkeypatch.setattr(kmer_module, "SPARSE_COUNT_POSTINGS", -1)
    gathered = index.search(queries, 2, max_df=10)
    assert np.array_equal(sparse[0], gathered[0]) and np.array_equal(sparse[1], gathered[1])


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 4), columns=st.integers(1, 700), n=st.integers(1, 12), block=st.sampled_from([2, 8, 64]),
       spread=st.integers(1, 50), seed=st.integers(0, 2 ** 31 - 1))
def test_largest_columns_are_those_of_a_full_sort(rows, columns, n, block, spread, seed):
    # keys built as the k-mer search builds them: small counts (many ties), made distinct by the column
    n = min(n, columns)
    counts = np.random.default_rng(seed).integers(0, spread, size=(rows, columns))
    key = counts * columns + (columns - 1 - np.arange(columns))
    chosen = largest_columns(key, n, block=block)
    assert chosen.shape == (rows, n)
    expected = np.argsort(-key, axis=1)[:, :n]
    assert (np.sort(chosen, axis=1) == np.sort(expected, axis=1)).all()


def test_kept_fraction_counts_the_kmers_search_uses(barcodes):
    references = barcodes[:30]
    index = KmerIndex(references)
    query = references[3][:300] + "N" + references[5][300:]
    kmers = {query[i:i + index.k] for i in range(len(query) - index.k + 1)} - {""}
    kmers = {kmer for kmer in kmers if set(kmer) <= set("ACGT")}
    df = {kmer: sum(kmer in reference for reference in references) for kmer in kmers}
    indexed = [kmer for kmer in kmers if df[kmer] > 0]
    for max_df in (0, 1, 2, 5, 10 ** 6):
        expected = sum(df[kmer] <= max_df for kmer in indexed) / len(indexed)
        assert index.kept_fraction([query], max_df=max_df)[0] == pytest.approx(expected)
    assert index.kept_fraction(["A" * 40], max_df=5)[0] == 0.0  # no indexed k-mer


# ============================================================================================ clustering
def test_identity_graph_cluster_separates_groups(barcodes):
    rng = np.random.default_rng(1)
    parents = [barcodes[0]]                      # four barcodes less than 90 % identical to each other
    for other in barcodes:
        if len(parents) < 4 and anchored_identity(other, parents).max() < 0.9:
            parents.append(other)
    sequences, truth = [], []
    for group, parent in enumerate(parents):
        parent = parent[:600]
        for _ in range(6):
            child = list(parent)
            for position in rng.choice(600, size=3, replace=False):   # 0.5 % apart from the parent
                child[position] = "ACGT"[("ACGT".index(child[position]) + 1) % 4]
            sequences.append("".join(child))
            truth.append(group)
    n = len(sequences)
    everyone = np.array([[j for j in range(n) if j != i] for i in range(n)])
    labels = identity_graph_cluster(sequences, everyone, threshold=0.03)
    assert len(set(labels.tolist())) == 4
    for group in range(4):
        assert len({labels[i] for i in range(n) if truth[i] == group}) == 1
    assert labels[0] == 0                        # numbered by first member
    # a sparse candidate graph (each point's 3 next in its group) gives the same clusters
    sparse = np.array([[i - i % 6 + (i % 6 + s) % 6 for s in (1, 2, 3)] for i in range(n)])
    assert (identity_graph_cluster(sequences, sparse, threshold=0.03) == labels).all()
    i, j, identity = neighbour_pairs(sequences, sparse)
    assert (i < j).all() and len(set(zip(i.tolist(), j.tolist()))) == len(i)
    assert (identity > 0.98).all()
    with pytest.raises(UsageError):
        identity_graph_cluster(sequences, sparse, threshold=2.0)


# ============================================================================================ property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10_000), rate=st.floats(0.0, 0.12), seed=st.integers(0, 2 ** 32 - 1),
       trim_a=st.integers(0, 60), trim_b=st.integers(0, 60), end_a=st.integers(0, 60), end_b=st.integers(0, 60))
def test_matches_pairwise_aligner_without_indels(barcodes, which, rate, seed, trim_a, trim_b, end_a, end_b):
    """Substitutions only (up to 12 %) and independent trimming of both ends: the anchored identity equals the
    identity of Biopython's global alignment with free end gaps, within 0.5 percentage points."""
    rng = np.random.default_rng(seed)
    parent = barcodes[which % len(barcodes)]
    child = np.frombuffer(parent.encode(), dtype=np.uint8).copy()
    hit = rng.random(len(child)) < rate
    child[hit] = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, int(hit.sum()))]
    child = child.tobytes().decode()
    a = parent[trim_a:len(parent) - end_a]
    b = child[trim_b:len(child) - end_b]
    fast = anchored_identity(a, [b])[0]
    exact = aligned_identity(a, b)
    assert abs(fast - exact) <= 0.005, (fast, exact)


def test_kmer_search_fallback_equals_a_second_search_of_the_queries_it_concerns(barcodes):
    """search(fallback=(df, below)) looks the k-mers up once and gives exactly what searching the queries whose
    kept fraction is below `below` a second time, with the fallback cap, gives."""
    references = barcodes[:30] + [substitute(barcodes[3], 5 + i) for i in range(6)]   # barcode 3: a dense species
    index = KmerIndex(references)
    queries = [substitute(barcodes[3], 40), barcodes[17][20:], substitute(barcodes[8], 30), "A" * 40]
    for max_df, below in ((3, 0.5), (3, 0.0), (1, 1.01), (10 ** 6, 0.1)):
        _, fused = index.search(queries, 4, max_df=max_df, fallback=(1000, below))
        _, separate = index.search(queries, 4, max_df=max_df)
        redo = np.nonzero(index.kept_fraction(queries, max_df=max_df) < below)[0]
        if len(redo):
            _, separate[redo] = index.search([queries[i] for i in redo], 4, max_df=1000)
        assert fused.tolist() == separate.tolist(), (max_df, below)
    # the dense species' k-mers are nearly all over a cap of 3: the fallback finds it
    assert index.kept_fraction(queries[:1], max_df=3)[0] < 0.5
    assert index.search(queries[:1], 1, max_df=3, fallback=(1000, 0.5))[1][0, 0] in (3, 30, 31, 32, 33, 34, 35)


def test_long_query_is_judged_over_the_barcode_region(barcodes):
    """A query longer than the COI-5P region (here two barcodes end to end, 1.3 kb) matched exactly over a
    658-bp-like reference outranks a full-length reference of 85% identity; a short fragment still does not."""
    query = barcodes[0] + barcodes[1]
    rng = np.random.default_rng(0)
    distant = list(query)
    for position in rng.choice(len(query), size=int(0.15 * len(query)), replace=False):
        distant[position] = "C" if distant[position] != "C" else "G"
    distant = "".join(distant)
    idx, score, identity, overlap = rerank([query], [barcodes[0], distant], np.array([[1, 0]]), detail=True)
    assert idx[0].tolist() == [0, 1] and identity[0, 0] == 1.0 and overlap[0, 0] == len(barcodes[0])
    assert score[0, 0] == pytest.approx(1.0) and score[0, 1] == pytest.approx(identity[0, 1])
    fragment = barcodes[0][:200]
    idx, score = rerank([query], [fragment, distant], np.array([[0, 1]]))
    assert idx[0].tolist() == [1, 0]
    assert score[0, 1] == pytest.approx(200 / (0.7 * 658))


# ============================================================================================ deciding realignment
# A real pair of coi_extra.csv.gz (two Allolobophora chlorotica L1 earthworm barcodes, distinct sequences): three
# 1-base indels (sequencing errors), so the two-offset model leaves a long misaligned stretch (suspect, 0.708)
# where PairwiseAligner (like VSEARCH) gives 0.983.
INDEL_QUERY = (
    "GTCTGAGCAGGGATAGTGGGAGCTGGCATAAGACTTCTAATTCGAATCGAACTAAGACAGCCGGGAGCATTCCTAGGGAGAGATCAACTCTATAATACTA"
    "TTGTAACTGCACATGCATTCGTAATAATTTTCTTTTTAGTAATACCTGTATTTATTGGGGGTTTTGGAAATTGATTATTACCCCTGATACTTGGAGCTCC"
    "GGATATGGCATTTCCACGACTCAATAATATAAGGTTCTGACTTCTACCCCCCTCACTAATTCTTCTAGTATCCTCTGCTGCCGTAGAAAAGGGGGCAGGA"
    "ACTGGATGAACTGTCTATCCACCCTTAGCAAGAAATCTTGCCCACGCAGGCCCATCTGTAGACTTAGCTATTTTCTCTCTCCATCTAGCAGGTGCTTCAT"
    "CAATTTTAGGGGCAATTAATTTTATCACTACAGTTATTAATATGCGCTGAAGAGGTTTACGTCTTGAACGAATTCCACTATTCGTTTGAGCGGTACTAAT"
    "TACAGTAGTGCTTCTACTTCTATCCTTACCAGTGCTAGCGGGTGCTATCACTATACTTCTTACCGATCGAAATCTAAATACCTCTTTCTTTGACCCTGCT"
    "GGGGGTGGGGACCCAATTCTATACCAACACTTATTC")
INDEL_REFERENCE = (
    "AACTTTATACTTCATTCTAGGCGTCTGAGCAGGGATAGTAGGTGCTGGCATAAGACTTCTAATTCGAATCGAACTAAGACAGCCAGGAGCATTCCTAGGG"
    "AGAGATCAACTCTATAATACTATTGTAACTGCACATGCATTCGTAATAATTTTCTTTTTAGTAATACCCTGTATTTATTGGGGGTTTTGGAAATTGATTA"
    "TTACCCCTGATACTTGGAGCTCCGGATATGGCATTTCCACGACTCAATAATATAAGGTTCTGACTTCTACCCCCCTCACTAATTCGTCTAGTATCCTCTG"
    "CTGCCGTAGAAAAGGGGGCAGGAACTGGATGAACTGTCTATCCACCCTTAGCAAGAAATCTTGCCCACGCAGGCCCATCTGTAGACTTAGCTATTTTCTC"
    "CCTCCATCTAGCAGGTGGCTTCGTCAATTTTAGGGGCAATTAATTTTATCACTACAGTTATTAATATGCGCTGAAGAGGTTTACGTCTTGAACGAATTCC"
    "ACTATTCGTTTGAGCGGTACTAATTACAGTAGTGCTTCTACTTCTATCCTTACCAGTCTAGCGGGTGCTATCACTATGCTACTTACCGATCGAAATCTAA"
    "ATACCTCTTTCTTTGACCCTGCTGGGGGTGGGGACCCAATTCTATACCAACACTTATTC")


def mutated(sequence: str, every: int, start: int = 0) -> str:
    """`sequence` with a substitution at every `every`-th position from `start` (no indel: never suspect; `every`
    at least 12 leaves anchors)."""
    letters = list(sequence)
    for i in range(start, len(letters), every):
        letters[i] = "C" if letters[i] != "C" else "G"
    return "".join(letters)


def test_real_pair_with_three_indels_scores_like_the_aligner_by_default():
    exact, columns = aligned_identity(INDEL_QUERY, INDEL_REFERENCE, detail=True)
    assert exact == pytest.approx(0.9828, abs=1e-4)
    plain = pair_identity([INDEL_QUERY], [0], [INDEL_REFERENCE], [0])
    assert plain.suspect[0] and plain.identity[0] < 0.72               # the two-offset approximation
    assert plain.ceiling[0] >= exact - REALIGN_MARGIN                   # the ceiling lets it compete
    # a decoy of "another order" at 91.7 % identity, gap-free: it wins without the realignment
    decoy = mutated(INDEL_QUERY, 12, 3)
    idx, score, identity, overlap = rerank([INDEL_QUERY], [decoy, INDEL_REFERENCE], [[0, 1]], detail=True)
    assert idx[0].tolist() == [1, 0]
    assert identity[0, 0] == pytest.approx(exact, abs=1e-6) and overlap[0, 0] == columns
    score_d, identity_d, _ = score_candidates([INDEL_QUERY], [decoy, INDEL_REFERENCE], [[0, 1]])
    assert identity_d[0, 1] == pytest.approx(exact, abs=1e-6) and score_d[0, 1] > score_d[0, 0]
    # the off switch keeps the old values and ranking
    idx_off, _, identity_off, _ = rerank([INDEL_QUERY], [decoy, INDEL_REFERENCE], [[0, 1]], detail=True,
                                         realign="none")
    assert idx_off[0].tolist() == [0, 1]
    assert identity_off[0, 1] == pytest.approx(float(plain.identity[0]))
    _, identity_none, _ = score_candidates([INDEL_QUERY], [decoy, INDEL_REFERENCE], [[0, 1]], realign="none")
    assert identity_none[0, 1] == pytest.approx(float(plain.identity[0]))
    with pytest.raises(UsageError):
        score_candidates([INDEL_QUERY], [decoy], [[0]], realign="always")


def test_only_pairs_that_could_decide_are_realigned():
    far = mutated(INDEL_REFERENCE, 12, 1)         # the indel pair at ~90 %: suspect, ceiling below 1.0
    refs = SequenceStore.from_sequences([INDEL_QUERY, far, INDEL_REFERENCE])
    queries = SequenceStore.from_sequences([INDEL_QUERY])
    # with an exact candidate the far suspect pair cannot decide: left as it is
    result = pair_identity(queries, [0, 0], refs, [0, 1])
    assert result.suspect[1] and result.ceiling[1] + REALIGN_MARGIN < 1.0
    assert realign_deciding(queries, np.array([0, 0]), refs, np.array([0, 1]), result) == 0
    assert result.method[1] == 2
    # alone, it is the query's best candidate: aligned
    result = pair_identity(queries, [0], refs, [1])
    assert realign_deciding(queries, np.array([0]), refs, np.array([1]), result) == 1
    assert result.method[0] == 3 and not result.suspect[0]
    assert result.identity[0] == pytest.approx(aligned_identity(INDEL_QUERY, far), abs=1e-6)
    # two suspect candidates: the better ceiling is aligned first and rules the other out
    result = pair_identity(queries, [0, 0], refs, [2, 1])
    assert realign_deciding(queries, np.array([0, 0]), refs, np.array([2, 1]), result) == 1
    assert result.method.tolist() == [3, 2]


def test_clustering_realigns_pairs_that_could_be_within_the_threshold():
    sequences = [INDEL_QUERY, INDEL_REFERENCE]
    neighbours = np.array([[1], [0]])
    _, _, identity = neighbour_pairs(sequences, neighbours)
    assert identity[0] == pytest.approx(aligned_identity(INDEL_QUERY, INDEL_REFERENCE), abs=1e-6)
    _, _, identity_off = neighbour_pairs(sequences, neighbours, realign="none")
    assert identity_off[0] < 0.72
    assert identity_graph_cluster(sequences, neighbours, 0.03).tolist() == [0, 0]
    assert identity_graph_cluster(sequences, neighbours, 0.03, realign="none").tolist() == [0, 1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10_000), first=st.integers(60, 280), second=st.integers(320, 540),
       gap1=st.integers(1, 6), gap2=st.integers(1, 6), decoy_every=st.integers(12, 30))
def test_two_indels_rank_as_the_aligner_ranks(barcodes, which, first, second, gap1, gap2, decoy_every):
    """A barcode with two deletions against a gap-free decoy: the default ranking and scores follow those of
    fallback="align" (PairwiseAligner on every approximate pair)."""
    parent = barcodes[which % len(barcodes)][:600]
    child = parent[:first] + parent[first + gap1:second] + parent[second + gap2:]
    candidates = [mutated(parent, decoy_every, 2), child]
    default_idx, default_score = rerank([parent], candidates, [[0, 1]])
    aligned_idx, aligned_score = rerank([parent], candidates, [[0, 1]], fallback="align")
    assert default_score[0, 0] == pytest.approx(aligned_score[0, 0], abs=0.005)
    if abs(aligned_score[0, 0] - aligned_score[0, 1]) > 0.01:
        assert default_idx[0, 0] == aligned_idx[0, 0]


def test_kmer_index_stores_postings_only_up_to_its_cap(barcodes):
    """Postings of k-mers held by more than max_stored_df references are not stored (their counts are): a search
    that caps at or below it gives what the complete index gives, and one above it is refused."""
    references = barcodes[:20] + [substitute(barcodes[3], 5 + i) for i in range(6)]
    complete, capped = KmerIndex(references, max_stored_df=None), KmerIndex(references, max_stored_df=4)
    assert np.array_equal(complete.df, capped.df) and len(capped.refs) < len(complete.refs)
    queries = [substitute(barcodes[3], 40), barcodes[17][20:], substitute(barcodes[8], 30)]
    for max_df in (1, 2, 4):
        assert np.array_equal(complete.search(queries, 5, max_df=max_df)[1],
                              capped.search(queries, 5, max_df=max_df)[1])
    with pytest.raises(UsageError, match="stores postings"):
        capped.search(queries, 5, max_df=5)
    # an index none of whose k-mers passes its cap is complete: any cap may be searched
    assert np.array_equal(KmerIndex(references[:3], max_stored_df=4).search(queries, 2, max_df=100)[1],
                          KmerIndex(references[:3], max_stored_df=None).search(queries, 2, max_df=100)[1])


def _all_fields_equal(a, b) -> None:
    for name in a.FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_anchor_table_and_sorted_search_agree(barcodes, monkeypatch):
    """The direct k-mer table (k <= DENSE_ANCHOR_K) and the binary search of sorted keys find the same anchors:
    pairs in no order, a row paired many times, rows with repeated k-mers (tandem copies), N codes, and the 7-mer
    re-anchoring of realigned pairs."""
    import barcodetool.search.anchors as anchors

    rng = np.random.default_rng(5)
    queries = barcodes[:12] + [barcodes[0][:200] * 3, barcodes[1][:300] + "N" * 40 + barcodes[1][300:]]
    refs = barcodes[12:] + [substitute(b, 100) for b in barcodes[:6]]
    a_idx = rng.integers(0, len(queries), 400)
    b_idx = rng.integers(0, len(refs), 400)
    dense = pair_identity(queries, a_idx, refs, b_idx, fallback="align")
    monkeypatch.setattr(anchors, "DENSE_ANCHOR_K", 0)
    _all_fields_equal(dense, pair_identity(queries, a_idx, refs, b_idx, fallback="align"))
    monkeypatch.undo()
    table = anchors._DENSE.tables[anchors.ANCHOR_K]
    assert (table == -1).all()   # left empty for the next call


def test_anchor_tables_are_per_thread(barcodes):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    jobs = [(rng.integers(0, 10, 300), rng.integers(10, len(barcodes), 300)) for _ in range(6)]
    alone = [pair_identity(barcodes, a, barcodes, b) for a, b in jobs]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda job: pair_identity(barcodes, job[0], barcodes, job[1]), jobs))
    for one, other in zip(alone, together):
        _all_fields_equal(one, other)
