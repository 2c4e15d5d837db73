"""Clustering: metrics against hand-computed values, full vs k-NN-graph paths, calibration, reference BINs, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from math import factorial, log

import numpy as np
import pytest
from click.testing import CliRunner

from barcodetool.cli import main
from barcodetool.cluster import (BRIDGED_CUT, DEFAULT_IDENTITY_DISTANCE_THRESHOLD, BridgedCut, ClusterOptions,
                                 _condensed_pairs, _identity_cluster_grid, bridged_labels,
                                 calibrate_cluster_threshold, calibrate_identity_cluster_threshold, cluster,
                                 cluster_bridged, cluster_identity, cluster_metrics, cluster_records,
                                 identity_neighbours, match_reference_bins, renumber, write_clusters)
from barcodetool.errors import UsageError
from barcodetool.io.readers import read_barcodes
from barcodetool.reference import build_reference
from barcodetool.search import normalize
from helpers_models import SAMPLE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401
from helpers_sequences import synthetic_records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-a", seed=0)
    return folder, load_tiny(folder)


def blobs(n_blobs=6, per_blob=20, dim=16, spread=0.02, seed=0):
    rng = np.random.default_rng(seed)
    centres = normalize(rng.normal(size=(n_blobs, dim)))
    points = np.repeat(centres, per_blob, axis=0) + spread * rng.normal(size=(n_blobs * per_blob, dim))
    labels = np.repeat(np.arange(n_blobs), per_blob)
    order = rng.permutation(len(points))
    return normalize(points[order]), labels[order]


# ============================================================================================ metrics
def ami_by_hand(true, pred):
    """Adjusted mutual information (arithmetic normalisation), straight from the definitions."""
    n = len(true)
    a_labels, b_labels = sorted(set(true)), sorted(set(pred))
    table = [[sum(1 for t, p in zip(true, pred) if t == a and p == b) for b in b_labels] for a in a_labels]
    a = [sum(row) for row in table]
    b = [sum(table[i][j] for i in range(len(a))) for j in range(len(b_labels))]
    mi = sum(nij / n * log(n * nij / (a[i] * b[j])) for i, row in enumerate(table) for j, nij in enumerate(row)
             if nij)
    h = lambda sizes: -sum(s / n * log(s / n) for s in sizes)
    emi = 0.0
    for ai in a:
        for bj in b:
            for nij in range(max(1, ai + bj - n), min(ai, bj) + 1):
                p = (factorial(ai) * factorial(bj) * factorial(n - ai) * factorial(n - bj)
                     / (factorial(n) * factorial(nij) * factorial(ai - nij) * factorial(bj - nij)
                        * factorial(n - ai - bj + nij)))
                emi += nij / n * log(n * nij / (ai * bj)) * p
    return (mi - emi) / ((h(a) + h(b)) / 2 - emi)


def test_metrics_of_a_tiny_labelling_match_hand_computation():
    true = ["A", "A", "B", "B", "C", "C", ""]   # the unlabelled last item is ignored
    pred = [1, 1, 2, 3, 4, 4, 9]
    m = cluster_metrics(true, pred)
    # ARI by hand: pairs together in both = C(2,2) + C(2,2) = 2; in true: 3; in pred: 2; all pairs C(6,2) = 15
    expected_index = 3 * 2 / 15
    ari = (2 - expected_index) / ((3 + 2) / 2 - expected_index)
    assert ari == pytest.approx(16 / 21)  # (2 - 0.4) / (2.5 - 0.4)
    assert m["ari"] == pytest.approx(ari, abs=1e-12)
    # AMI from the definitions (a literal too, to catch a change in either)
    by_hand = ami_by_hand(true[:6], pred[:6])
    assert by_hand == pytest.approx(0.7619048, abs=1e-6)
    assert m["ami"] == pytest.approx(by_hand, abs=1e-9)
    # match ratio: A and C are recovered exactly as one cluster each; B is split
    assert m["match_ratio"] == pytest.approx(2 / 3)
    assert (m["n"], m["true_groups"], m["clusters"]) == (6, 3, 4)


def test_metrics_perfect_and_merged():
    perfect = cluster_metrics(["x", "x", "y", "z"], [5, 5, 0, 2])
    assert perfect["ami"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    assert perfect["match_ratio"] == 1.0
    merged = cluster_metrics(["x", "x", "y", "y"], [0, 0, 0, 0])
    assert merged["match_ratio"] == 0.0 and merged["ari"] == pytest.approx(0.0)
    assert math.isnan(cluster_metrics(["", ""], [0, 1])["ami"])


# ============================================================================================ clustering
def test_threshold_and_n_clusters_recover_blobs():
    x, labels = blobs()
    by_threshold = cluster(x, threshold=0.2)
    assert cluster_metrics(labels, by_threshold)["ari"] == pytest.approx(1.0)
    by_k = cluster(x, n_clusters=6)
    assert len(set(by_k)) == 6 and cluster_metrics(labels, by_k)["ami"] == pytest.approx(1.0)
    assert len(set(cluster(x, threshold=0.0))) == len(x)
    assert len(set(cluster(x, threshold=2.0))) == 1
    # labels are numbered by first appearance
    assert by_threshold[0] == 0 and list(renumber(np.array([7, 7, 3, 9, 3]))) == [0, 0, 1, 2, 1]


def test_graph_method_equals_full_linkage():
    x, labels = blobs(n_blobs=12, per_blob=40, spread=0.08, seed=3)
    for threshold in (0.05, 0.2, 0.4):
        full = cluster(x, threshold=threshold)
        graph = cluster(x, threshold=threshold, full_limit=100, neighbours=30)
        assert cluster_metrics(full, graph)["ari"] == pytest.approx(1.0), threshold


def test_graph_method_with_oversized_component_runs():
    x, labels = blobs(n_blobs=4, per_blob=30, spread=0.03, seed=5)
    result = cluster(x, threshold=0.2, full_limit=10, neighbours=8)
    assert cluster_metrics(labels, result)["ami"] > 0.9


def test_n_clusters_limit_and_argument_errors():
    x, _ = blobs(n_blobs=3, per_blob=10)
    with pytest.raises(UsageError, match="n-clusters"):
        cluster(x, n_clusters=3, full_limit=20)
    with pytest.raises(UsageError):
        cluster(x)
    with pytest.raises(UsageError):
        cluster(x, threshold=0.1, n_clusters=3)


def test_calibrated_threshold_maximises_ami():
    x, labels = blobs(n_blobs=10, per_blob=8, spread=0.03, seed=7)
    threshold, details = calibrate_cluster_threshold(x, labels.astype(np.int32), np.arange(len(x), dtype=np.int32))
    assert details["ami"] == pytest.approx(1.0)
    assert cluster_metrics(labels, cluster(x, threshold=threshold))["ami"] == pytest.approx(1.0)


def test_match_reference_bins_majority_or_new():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    nearest = ["B1", "B1", "", "B2", "", "B3", "B3", "B4", "B4"]
    assert match_reference_bins(clusters, nearest) == {0: "B1", 1: "new", 2: "new"}


def test_cluster_records_with_reference(tiny):
    records = list(read_barcodes(SAMPLE, skip_empty=True))
    reference = build_reference([r for r in records if r.split in ("train", "val")], tiny[1])
    queries = [r for r in records if r.split in ("test", "test_unseen")]
    for method, calibrated in (("identity", reference.identity_thresholds.cluster_distance),
                               ("cosine", reference.thresholds.cluster_distance)):
        result = cluster_records(queries, tiny[1], reference=reference, method=method)
        assert len(result.clusters) == len(queries) and result.threshold == calibrated
        assert set(result.reference_bin) <= set(reference.label_names["bin"]) | {"new"}
        assert "bin" in result.metrics and "species" in result.metrics
        # members of one cluster share its reference BIN
        for c in set(result.clusters.tolist()):
            assert len({b for b, cc in zip(result.reference_bin, result.clusters) if cc == c}) == 1
    # identity on real barcodes recovers the BINs far better than a random-weight model's cosine distances
    assert result.metrics["bin"]["ami"] < cluster_records(queries, tiny[1], reference=reference).metrics["bin"]["ami"]


def test_a_reference_without_bins_leaves_reference_bin_empty(tiny, caplog):
    """Every cluster read "new" against a reference holding no BINs, as if each were a new BIN."""
    records = list(read_barcodes(SAMPLE, skip_empty=True))
    reference = build_reference([replace(r, bin=None) for r in records if r.split in ("train", "val")], tiny[1])
    assert reference.bin_codes is None
    queries = [r for r in records if r.split in ("test", "test_unseen")]
    with caplog.at_level("WARNING", logger="barcodetool"):
        result = cluster_records(queries, tiny[1], reference=reference)
    assert result.reference_bin == [""] * len(queries) and (result.similarity > 0.9).mean() > 0.5
    assert "the reference holds no BINs: reference_bin is left empty" in caplog.text


# ============================================================================================ identity
@pytest.fixture(scope="module")
def synthetic():
    """108 synthetic barcodes: 18 species (BINs) of 6 genera, 6 haplotypes each (plus their embeddings)."""
    records, *_ = synthetic_records(seed=2)
    return records


def test_identity_clustering_recovers_known_bins(synthetic, tiny):
    records = synthetic
    bins = [r.bin for r in records]
    result = cluster_records(records, tiny[1])
    assert result.method == "identity" and result.threshold is None and result.cut == BRIDGED_CUT
    m = result.metrics["bin"]
    assert m["ami"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0) and m["clusters"] == 18
    # without embeddings (k-mer neighbours only) the same; at distance 0 only barcodes identical over their
    # overlap (differently trimmed copies of a haplotype) share a cluster
    sequences = [r.sequence for r in records]
    assert cluster_metrics(bins, cluster_identity(sequences, None, 0.035))["ami"] == pytest.approx(1.0)
    assert cluster_metrics(bins, cluster_identity(sequences, None))["ami"] == pytest.approx(1.0)
    assert 18 < len(set(cluster_identity(sequences, None, 0.0).tolist())) <= len(set(sequences))
    with pytest.raises(UsageError, match="n-clusters"):
        cluster_records(records, tiny[1], n_clusters=18)
    with pytest.raises(UsageError):
        cluster_identity(sequences, None, 1.5)


# ============================================================================================ bridged cut
# Two real BINs of one brachiopod species complex (coi_extra, BOLD public records ABBAI1599-16, ABBAI1728-16 in
# BOLD:ADF1516; ABBAI1844-16, GBAAX63452-24 in BOLD:ADF1517), 2.4-3.0 % apart with no close pair between them:
# the old fixed cut (0.035) merged them, the bridged cut keeps them apart.
ADF1516 = [
    "GGCTAAGTCATGCTATACGTATTGAGCTAAGTCACCCGGGTCAGTGATTAATGGATTCTCACATATACCATAGTATTATAACTTTACATGCTTTCACTAT"
    "AATTTTTTTTTTTGTTATACCTACTAGAATTGGGGGGCTGGGTAACTGGTTTTTGCCTCTAATACTTAAGGTACAAGATTTAGCTATACCTCGTGTTAAT"
    "AATTCTAGGATTTGAATAATCATTGGTTCCTTGATTTTAATGTGTCTTAGATTCTTGATAGAAGGGGGGGTAGCTACCGGCTGGACAATATATCCACCTC"
    "TGTCTGGGAGGGGGTTTATATCAGGTTTAAATGTCGACCTAGCTATCTTTGCTCTTCATTTGGCGGGGGCCTCATCTATTGCAGGGAGAATTAATTACAT"
    "CGTCACTATTTTTAACATACGTGTGGGGGCTATCTATTTTATGAGGTTAAATCCTATGCTGGTGTGATCTATGTTTGCCACATCTATTTTATTAGTCACA"
    "TCAGTACCTGTACTGGCTGCAGGGTTAACTTTGTTAATTCTTGATCGTCATTTTAGAACTAGGTTCTACTATCCTGAAGGGGGTGGTGACCCTATTCTTT"
    "GGCAGCACCTTTTT",
    "GGGATTGGGGCTAAGTCATGCTATACGTATTGAGCTAAGTCACCCGGGTCAGTGATTAATGGATTCTCACATATACCATAGTATTATAACTTTACATGCT"
    "TTCACTATAATTTTTTTTTTTGTTATACCTACTAGAATTGGGGGGCTGGGTAACTGGTTTTTGCCTCTAATACTTAAGGTACAAGATTTAGCTATACCTC"
    "GTGTTAATAATTCTAGGATTTGAATAATCATTGGTTCCTTGATTTTAATGTGTCTTAGATTCTTGATAGAAGGGGGGGTAGCTACCGGCTGGACAATATA"
    "TCCACCTCTGTCTGGGAGGGGGTTTATATCAGGTTTAAATGTCGACCTAGCTATCTTTGCTCTTCATTTGGCGGGGGCCTCATCTATTGCAGGGAGAATT"
    "AATTACATCGTCACTATTTTTAACATACGTGTGGGGGCTATCTATTTTATGAGGTTAAATCCTATGCTGGTGTGATCTATGTTTGCCACATCTATTTTAT"
    "TAGTCACATCAGTACCTGTACTGGCTGCAGGGTTAACTTTGTTAATTCTTGATCGTCATTTTAGAACTAGGTTCTACTATCCTGAAGGGGG",
]
ADF1517 = [
    "TTGGGAGGTTATATATTTTTATAGGGCTATGATCTGGAGTAGTGGGATTAGGGCTAAGTCATGCTATACGTATTGAGCTAAGTCACCCGGGTCAGTGATT"
    "AATGGATTCTCACATATATCACAGTATTATAACTTTACATGCTTTCACTATAATTTTCTTTTTTGTTATACCTACTAGAATTGGGGGGCTAGGTAATTGG"
    "TTTTTGCCTCTAATACTTAAGGTGCAAGATTTAGCTATACCCCGTGTTAATAATTCTAGGATTTGAATAATTATTGGTTCCTTGATTTTAATGTGTCTTA"
    "GATTCTTAATAGAAGGGGGGGTAGCTACTGGCTGGACAATGTATCCACCTCTGTCTGGGAGGGGGTTTGCATCAGGTTTAAATGTCGACCTAGCTATCTT"
    "TGCTCTTCATTTGGCGGGGGCCTCATCTATTGCAGGGAGAATTAATTACATGGTCACTATTTTTAACATACGTGTGGGGGCTATCTATTTTATGAGGTTA"
    "AATCCTATGCTGGTGTGATCTATGTTTGCCACATCTATTTTATTAGTCACATCAGTACCTGTACTGGCTGCAGGGTTAACTTTGTTAATTCTTGATCGCC"
    "ATTTTAGAACTAGGTTCTACTATCCTGAAGGGGGTGGTGACCCTATTCTTTGGCAGCACCTTTTTTGATT",
    "GAGGTTATATATTTTTATAGGGCTATGATCTGGAGTAGTGGGATTAGGGCTAAGTCATGCTATACGTATTGAGCTAAGTCACCCGGGTCAGTGATTAATG"
    "GATTCTCACATATATCACAGTATTATAACTTTACATGCTTTCACTATAATTTTCTTTTTTGTTATACCTACTAGAATTGGGGGGCTAGGTAATTGGTTTT"
    "TGCCTCTAATACTTAAGGTGCAAGATTTAGCTATACCCCGTGTTAATAATTCTAGGATTTGAATAATTATTGGTTCCTTGATTTTAATGTGTCTTAGATT"
    "CTTAATAGAAGGGGGGGTAGCTACTGGCTGGACAATGTATCCACCTCTGTCTGGGAGGGGGTTTGCATCAGGTTTAAATGTCGACCTAGCTATCTTTGCT"
    "CTTCATTTGGCGGGGGCCTCATCTATTGCAGGGAGAATTAATTACATGGTCACTATTTTTAACATACGTGTGGGGGCTATCTATTTTATGAGGTTAAATC"
    "CTATGCTGGTGTGATCTATGTTTGCCACATCTATTTTATTAGTCACATCAGTACCTGTACTGGCTGCAGGGTTAACTTTGTTAATTCTTGATCGCCATTT"
    "TAGAACTAGGTTCTACTATCCTGAAGGGGGTGGTGACCCTATTCTTTGGCAGCACCTTTTTT",
]


def test_bridged_cut_splits_two_real_bins_the_fixed_cut_merged():
    from barcodetool.search import SequenceStore, neighbour_pairs, pair_identity

    sequences = [ADF1516[0], ADF1517[0], ADF1516[1], ADF1517[1]]
    store = SequenceStore.from_sequences(sequences)
    cross = 1 - pair_identity(store, np.array([0, 0, 2, 2]), store, np.array([1, 3, 1, 3])).identity
    assert cross.min() > 0.02 and cross.max() < DEFAULT_IDENTITY_DISTANCE_THRESHOLD    # the zone the cut decides
    assert cluster_identity(sequences, None, DEFAULT_IDENTITY_DISTANCE_THRESHOLD).tolist() == [0, 0, 0, 0]
    assert cluster_identity(sequences, None).tolist() == [0, 1, 0, 1]
    # the same from edges computed before; and a laxer bridge (0.03, one pair) joins them again
    graph = identity_neighbours(store, None, 3)
    pairs = neighbour_pairs(store, graph)
    assert cluster_bridged(store, graph, pairs=pairs).tolist() == [0, 1, 0, 1]
    lax = BridgedCut(base=0.03, bridge=0.03, pairs=1)
    assert cluster_bridged(store, graph, lax, pairs=pairs).tolist() == [0, 0, 0, 0]
    with pytest.raises(UsageError, match="max_component"):
        cluster_bridged(store, graph, pairs=pairs, max_component=3)


# Two lone barcodes of one BIN (coi_extra, BOLD public records GBSP0027-06 and GBSP0028-06, *Magellania joubini* and
# *M. fragilis*, both in BOLD:AAX3383), 2.2 % apart: alone in a sample, no third barcode can bridge them; the lone
# rule joins them.
AAX3383 = [
    "TGGTCGGGGCTAGTTGGTCTAGCCTTAAGACTTTTAATTCGAGTGGAATTGGGGCAACCGGGTAGATTATTGGGAGACGACCAGTTGTATAACGTTATTG"
    "TAACATCCCACGCTTTAGTTATAATTTTTTTTTTGGTTATGCCCATTATGATTGGGGGTTTTGGGAATTGGCTTATCCCCATTATAATGGGGGCTCCGGA"
    "CATGTCTTATCCCCGCATGAATAATATAAGGTTTTGGTTGTTGCCGCCTTCCCTAATTCTACTGCTAACTTCGGCGGCGGTTGAGAGAGGGGCTGGGACT"
    "GGGTGGACTCTTTACCCCCCCCTATCGGCCTCTTTAGCCCATTCCGGCGGTTCAGTCGATTTGGCAATTTTTTCTTTGCATCTTGCTGGTGCTTCTTCGA"
    "TTTTGGGGGCTATTAACTTTATTTCCTCGGTATTTAATCTTAAGGTAAAGGGGGCTAAGTTTGAGCAGATCCCACTGTTTGTGTGGGCTGTAATTATTAC"
    "TGTAGTCTTATTATTATTATCCTTACCAGTTTTAGCCGGGGCTATTACTATACTGTTGACAGACCGTAACTTTAATACGTCTTTTTTTGATCCTGCTGGA"
    "GGCGGGGATCCCGTATTATTTCAGCACTTGTTTTGGTTCTTCGGCCACCCCGAGGTTGATCTTCTGATCCTCCCTGGGTTTGGCATTATTTCTCATATTG"
    "TCATGTCCCATGGCCGTAAGGAGGAGGCTTTTGGGCATTTAGGGATGATTTATGCAATATTATCCATTGGCCTATTGGGCTTTGTAGTTTGGGCCCACCA"
    "CATGTTCACTGTTGGTATGGATGTTGATACCCGGG",
    "TGGTCGGGGCTAGTTGGTCTAGCCTTAAGACTTTTAATTCGAGTGGAATTGGGGCAACCGGGTAGATTATTAGGAGAGGACCAGTTGTATAACGTTATTG"
    "TAACATCCCACGCTTTAGTTATAATTTTTTTTTTGGTGATGCCCATTATAATTGGGGGTTTGGGGAATTGGCTTATCCCCATTATAATGGGGGCTCCGGA"
    "CATGTCTTATCCCCGCATGAATAATATAAGGTTTTGGTTGTTGCCGCCTTCCCTAATTCTACTGCTAACTTCGGCGGCGGTTGAGAGAGGGGCTGGGACT"
    "GGGTGGACTCTTTACCCCCCCCTATCGGCCTCTTTAGCCCATTCCGGCGGTTCAGTCGATTTGGCAATTTTTTCTTTACATCTTGCTGGTGCTTCTTCGA"
    "TTTTGGGGGCTATTAACTTTATTTCCTCGGTATTTAATCTTAAGGTAAAGGGGGCTAAGTTTGAGCAGATCCCACTGTTTGTGTGGGCTGTAATTATTAC"
    "TGTAGTCTTATTATTATTATCCTTACCAGTTTTAGCCGGGGCTATTACTATACTGTTGACTGACCGTAACTTTAATACGTCTTTTTTTGATCCTGCTGGA"
    "GGCGGGGATCCTGTATTATTTCAGCACTTGTTTTGGTTTTTTGGCCACCCCGAGGTTTATATTCTGATCCTCCCTGGGTTTGGTATTATCTCTCATATTG"
    "TCATGTCTCATGGCCGTAAGGAGGAGGCTTTTGGGCATTTAGGGATGATTTATGCGATATTATCCATTGGCCTATTGGGCTTTGTAGTTTGGGCCCATCA"
    "CATGTTTACTGTTGGTATGGATGTTGATACCCGGG",
]


def test_bridged_cut_joins_two_lone_barcodes_of_one_bin():
    from barcodetool.search import pair_identity

    distance = 1 - float(pair_identity(AAX3383, [0], AAX3383, [1]).identity[0])
    assert BRIDGED_CUT.base < distance < BRIDGED_CUT.lone
    assert cluster_identity(AAX3383, None).tolist() == [0, 0]
    assert cluster_identity(AAX3383, None, cut=BridgedCut(lone=0.02)).tolist() == [0, 1]
    # with a second BIN's pair beside them, the 2 x 2 rule is unchanged: the real BINs above stay apart
    sequences = [ADF1516[0], ADF1517[0], ADF1516[1], ADF1517[1]] + AAX3383
    assert cluster_identity(sequences, None).tolist() == [0, 1, 0, 1, 2, 2]


def condensed(matrix) -> np.ndarray:
    from scipy.spatial.distance import squareform

    return squareform(np.asarray(matrix, dtype=np.float64), checks=False)


def two_groups(cross) -> np.ndarray:
    """Condensed distances of groups {0, 1} and {2, 3} (0.005 within) with cross distances `cross` [2][2]."""
    d = np.full((4, 4), 0.005)
    np.fill_diagonal(d, 0.0)
    d[:2, 2:] = cross
    d[2:, :2] = np.transpose(cross)
    return condensed(d)


def test_bridged_labels_join_only_what_close_pairs_bridge():
    # average 0.025 (above the base cut, within the top): joined when 2 cross pairs are within 0.015 ...
    assert bridged_labels(two_groups([[0.012, 0.038], [0.038, 0.012]])).tolist() == [0, 0, 0, 0]
    # ... kept apart with one such pair, or none (what a fixed cut at 0.035 would merge)
    assert bridged_labels(two_groups([[0.012, 0.0293], [0.0293, 0.0293]])).tolist() == [0, 0, 1, 1]
    assert bridged_labels(two_groups([[0.025, 0.025], [0.025, 0.025]])).tolist() == [0, 0, 1, 1]
    # within the base cut: joined; beyond the top: apart, bridges or not
    assert bridged_labels(two_groups([[0.018, 0.018], [0.018, 0.018]])).tolist() == [0, 0, 0, 0]
    assert bridged_labels(two_groups([[0.01, 0.07], [0.07, 0.01]])).tolist() == [0, 0, 1, 1]
    # a merge refused below blocks the merges above it: {0,1} | {2,3} refused, so {4} cannot join all four
    d = np.full((5, 5), 0.03)
    d[:2, :2] = d[2:4, 2:4] = 0.005
    d[4, :4] = d[:4, 4] = 0.031
    d[4, 0] = d[0, 4] = d[4, 2] = d[2, 4] = 0.01
    np.fill_diagonal(d, 0.0)
    labels = bridged_labels(condensed(d))
    assert len(set(labels.tolist())) >= 2 and labels[0] == labels[1] and labels[2] == labels[3]
    assert labels[0] != labels[2]
    # two lone barcodes (one cross pair, no chain can show): joined up to `lone`, apart beyond it; a lone barcode
    # beside a pair still needs the bridges
    assert bridged_labels(condensed([[0, 0.0215], [0.0215, 0]])).tolist() == [0, 0]
    assert bridged_labels(condensed([[0, 0.024], [0.024, 0]])).tolist() == [0, 1]
    assert bridged_labels(condensed([[0, 0.027], [0.027, 0]]), BridgedCut(lone=0.03)).tolist() == [0, 0]
    assert bridged_labels(condensed([[0, 0.0215], [0.0215, 0]]), BridgedCut(lone=0.02)).tolist() == [0, 1]
    trio = condensed([[0, 0.005, 0.0215], [0.005, 0, 0.0215], [0.0215, 0.0215, 0]])
    assert bridged_labels(trio).tolist() == [0, 0, 1]
    # sizes 1 and 0
    assert bridged_labels(np.zeros(0)).tolist() == [0] and bridged_labels(condensed([[0, 0.5], [0.5, 0]])).tolist() \
        == [0, 1]
    for m in (2, 3, 50, 301):
        i, j = np.triu_indices(m, k=1)
        u, v = _condensed_pairs(np.arange(len(i)), m)
        assert (u == i).all() and (v == j).all()
    for bad in ({"bridge": 0.03}, {"base": 0.04}, {"pairs": 0}, {"top": 1.5}, {"lone": 0.04}, {"lone": -0.01}):
        with pytest.raises(UsageError):
            BridgedCut(**bad)


def test_cluster_options_and_the_tsv_writer(synthetic, tiny):
    for bad, words in (({"method": "cosine", "threshold": 0.1, "n_clusters": 3}, "not both"),
                       ({"n_clusters": 3}, "needs --method cosine"),
                       ({"threshold": 1.5}, "at most 1"),
                       ({"method": "ward"}, "unknown clustering method")):
        with pytest.raises(UsageError, match=words):
            ClusterOptions(**bad)
    records = synthetic[:12]
    result = cluster_records(records, tiny[1], ClusterOptions(threshold=0.02), threshold=0.035)
    assert result.threshold == 0.035 and result.distinct_sequences == len({r.sequence for r in records})
    handle = io.StringIO()
    assert write_clusters(result, handle) == len(records)
    rows = [line.split("\t") for line in handle.getvalue().splitlines()]
    assert rows[0] == ["id", "cluster", "reference_bin", "similarity"]
    assert [row[0] for row in rows[1:]] == result.ids
    assert [int(row[1]) for row in rows[1:]] == (result.clusters + 1).tolist()   # numbered from 1
    assert all(row[2:] == ["", ""] for row in rows[1:])                           # no reference


def test_identity_cluster_grid_equals_one_threshold_at_a_time(synthetic):
    from barcodetool.search import SequenceStore, identity_graph_cluster, neighbour_pairs

    store = SequenceStore.from_sequences([r.sequence for r in synthetic])
    graph = identity_neighbours(store, None, 8)
    pairs = neighbour_pairs(store, graph)
    grid = _identity_cluster_grid(store, pairs, [0.005, 0.03, 0.1, 0.2])
    for threshold, labels in grid.items():
        single = identity_graph_cluster(store, graph, threshold, pairs=pairs)
        assert cluster_metrics(single, labels)["ari"] == pytest.approx(1.0), threshold


def test_identity_cluster_threshold_calibration(synthetic):
    from barcodetool.search import SequenceStore
    from barcodetool.taxonomy import encode_labels

    store = SequenceStore.from_sequences([r.sequence for r in synthetic])
    codes, _ = encode_labels([r.bin for r in synthetic])
    threshold, details = calibrate_identity_cluster_threshold(store, None, codes)
    assert details["ami"] == pytest.approx(1.0) and details["sequences"] == len(synthetic)
    assert threshold in details["grid"] and details["grid"][threshold] == max(details["grid"].values())
    labels = cluster_identity(store, None, threshold)
    assert cluster_metrics(codes, labels)["ami"] == pytest.approx(1.0)


# ============================================================================================ CLI
def test_cli_cluster(tmp_path, tiny):
    out = tmp_path / "clusters.tsv"
    metrics = tmp_path / "metrics.json"
    runner = CliRunner()
    result = runner.invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--metrics", str(metrics),
                                  "--model", str(tiny[0]), "--threshold", "0.05"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    ids = [r.id for r in read_barcodes(SAMPLE, skip_empty=True)]
    assert [row["id"] for row in rows] == ids
    assert list(rows[0]) == ["id", "cluster", "reference_bin", "similarity"]
    assert rows[0]["cluster"] == "1" and rows[0]["reference_bin"] == ""
    data = json.loads(metrics.read_text())
    assert data["threshold"] == 0.05 and 0 <= data["metrics"]["bin"]["ami"] <= 1 and data["method"] == "identity"
    assert data["bridged_cut"] is None
    # without a threshold: the bridged cut
    result = runner.invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--metrics", str(metrics),
                                  "--model", str(tiny[0])])
    assert result.exit_code == 0, result.output
    data = json.loads(metrics.read_text())
    assert data["threshold"] is None and data["bridged_cut"] == {"base": 0.02, "top": 0.035, "bridge": 0.015,
                                                                 "pairs": 2, "lone": 0.022}
    assert data["metrics"]["bin"]["ami"] > 0.95
    assert set(data["metrics"]["bin"]) >= {"ami", "ari", "match_ratio"}
    # the papers' protocol: the true number of clusters
    result = runner.invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--model", str(tiny[0]),
                                  "--n-clusters", "7", "--method", "cosine"])
    assert result.exit_code == 0, result.output
    assert len({row["cluster"] for row in csv.DictReader(open(out), delimiter="\t")}) == 7
    both = runner.invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--model", str(tiny[0]),
                                "--n-clusters", "7", "--threshold", "0.1", "--method", "cosine"])
    assert both.exit_code == 2
    identity_k = runner.invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--model", str(tiny[0]),
                                      "--n-clusters", "7"])
    assert identity_k.exit_code == 2 and "--method cosine" in identity_k.output



@pytest.mark.parametrize("cut", [["--threshold", "0.1"], ["--n-clusters", "3"]])
def test_cli_cosine_clusters_of_one_distinct_barcode(tmp_path, tiny, cut):
    """One distinct sequence (twice, as a lab's replicate reads are) is one cluster; scipy's linkage refuses the
    empty distance matrix, which reached the user as a traceback."""
    fasta, out = tmp_path / "same.fasta", tmp_path / "c.tsv"
    barcode = "AACATTATATTTTATTTTTGGAATTTGAGCAGGAATACTCGGAACATCTTTAAGATTACTAATTCGTGCTGAATTGGGAAATCC"
    fasta.write_text(f">a\n{barcode}\n>b\n{barcode}\n")
    result = CliRunner().invoke(main, ["cluster", str(fasta), "-o", str(out), "--method", "cosine",
                                       "--model", str(tiny[0]), *cut])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert [row["id"] for row in rows] == ["a", "b"] and rows[0]["cluster"] == rows[1]["cluster"] != ""
    assert cluster(np.ones((1, 4)), threshold=0.1).tolist() == [0]
    assert cluster(np.ones((1, 4)), n_clusters=2).tolist() == [0]

def test_cli_cosine_clusters_without_a_reference_use_the_embedding_model(tmp_path):
    """--method cosine with --model auto and no reference clusters in the space of `embed`'s model
    (barcodemae-nano-identity on a CPU) at its card's calibrated cut; the identity method keeps nano; a model
    named is kept."""
    out, metrics = tmp_path / "c.tsv", tmp_path / "m.json"
    runs = {}
    for method, extra in (("cosine", []), ("identity", []), ("cosine", ["-m", "barcodemae-nano"])):
        result = CliRunner().invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--metrics", str(metrics),
                                           "--method", method, "--threads", "1", *extra])
        assert result.exit_code == 0, result.output
        data = json.loads(metrics.read_text())
        runs[(method, bool(extra))] = (data["model"]["model_name"], data["threshold"], data["metrics"]["bin"]["ami"])
    assert runs[("cosine", False)][:2] == ("barcodemae-nano-identity", 0.128)
    assert runs[("identity", False)][0] == "barcodemae-nano"
    assert runs[("cosine", True)][:2] == ("barcodemae-nano", 0.124)
    # on these real barcodes the identity-taught space recovers the BINs far better than nano's
    assert runs[("cosine", False)][2] > runs[("cosine", True)][2] + 0.05   # measured 0.92 against 0.76


def test_cli_cluster_with_reference(tmp_path, tiny):
    index = tmp_path / "ref.h5"
    runner = CliRunner()
    built = runner.invoke(main, ["reference", "build", str(SAMPLE), "-o", str(index), "--model", str(tiny[0])])
    assert built.exit_code == 0, built.output
    out = tmp_path / "clusters.tsv"
    result = runner.invoke(main, ["cluster", str(SAMPLE), "-o", str(out), "--reference", str(index),
                                  "--model", str(tiny[0])])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert all(row["reference_bin"] for row in rows)
    assert any(row["reference_bin"].startswith("BOLD:") for row in rows)
    assert all(0 <= float(row["similarity"]) <= 1.0001 for row in rows)


@pytest.mark.parametrize("threshold", [None, 0.03])
def test_fragments_neither_join_nor_bridge_clusters(threshold):
    """A 30-base window is 100% identical to barcodes of several BINs: read as identical it joined them (40 such
    windows among 800 `val` barcodes moved 13 clusters). A sequence under 100 bases stays in a cluster of its own,
    linking nothing, so the whole barcodes cluster as they do alone."""
    records = [r for r in read_barcodes(SAMPLE, skip_empty=True) if len(r.sequence) >= 500]
    whole = list(dict.fromkeys(r.sequence for r in records))
    windows = [sequence[300:330] for sequence in whole[::12]]
    alone = cluster_identity(whole, None, threshold)
    mixed = cluster_identity(whole + windows, None, threshold)
    assert renumber(mixed[:len(whole)]).tolist() == alone.tolist()
    by_window = mixed[len(whole):].tolist()
    assert len(set(by_window)) == len(windows) and not set(by_window) & set(mixed[:len(whole)].tolist())
