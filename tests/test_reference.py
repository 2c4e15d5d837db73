"""Reference index: blocked exact k-NN, threshold calibration, HDF5 round trip, model mismatch, cache, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import SAMPLE, SINTAX_REFERENCE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401
from helpers_sequences import synthetic_records

from barcodetool.cli import main
from barcodetool.errors import IndexMismatchError, InputError, UsageError
from barcodetool.io.readers import ReadOptions, read_barcodes
from barcodetool.reference import (IDENTITY_CANDIDATES_WIDE, LEVELS, IdentityCalibration, IdentityThresholds,
                                   KnnCalibration, KnnThresholds, ReferenceIndex, build_reference, calibrate_ranks,
                                   calibrate_thresholds, identity_decide, open_reference, precision_threshold,
                                   representative_records, resolve_model_for_reference, search_candidates,
                                   thresholds_for, vote, widen_setting)
from barcodetool.reference.confidence import ConfidenceModel, RankModel
from barcodetool.reference.isolation import isolation_tables
from barcodetool.search import as_store, knn_search, normalize


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-a", seed=0)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-b", seed=1)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def train_records():
    return [r for r in read_barcodes(SAMPLE, skip_empty=True) if r.split in ("train", "val")]


@pytest.fixture(scope="module")
def sample_index(tiny, train_records):
    return build_reference(train_records, tiny[1], source="bioscan_sample.csv")


def synthetic_index(seed: int = 0, dim: int = 24, genera: int = 4, species: int = 3, per_species: int = 12,
                    genus_spread: float = 0.35, species_spread: float = 0.06):
    """Unit vectors with known structure: genus centroids, species offsets, small per-barcode noise."""
    rng = np.random.default_rng(seed)
    vectors, genus_labels, species_labels = [], [], []
    for g in range(genera):
        centre = rng.normal(size=dim)
        centre /= np.linalg.norm(centre)
        for s in range(species):
            offset = rng.normal(size=dim)
            species_centre = centre + genus_spread * offset / np.linalg.norm(offset)
            for _ in range(per_species):
                vectors.append(species_centre + species_spread * rng.normal(size=dim) / math.sqrt(dim))
                genus_labels.append(f"G{g}")
                species_labels.append(f"G{g} s{s}")
    embeddings = normalize(np.array(vectors))
    n = len(embeddings)
    from barcodetool.taxonomy import encode_labels

    codes, names = {}, {}
    for rank, values in (("phylum", ["Arthropoda"] * n), ("genus", genus_labels), ("species", species_labels)):
        codes[rank], names[rank] = encode_labels(values)
    index = ReferenceIndex(ids=[f"r{i}" for i in range(n)], embeddings=embeddings, codes=codes, label_names=names,
                           groups=np.arange(n, dtype=np.int32), model_name="synthetic", model_sha256="0" * 64)
    return index, rng


# ============================================================================================ search
def brute_force(queries, reference, k, exclude=None):
    sims = normalize(queries) @ normalize(reference).T
    if exclude is not None:
        sims[exclude] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(sims.shape[1]), sims.shape), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("device", [None, "cpu"])   # numpy (no PyTorch) and PyTorch on the CPU
def test_blocked_knn_equals_brute_force(device):
    rng = np.random.default_rng(1)
    reference = normalize(rng.normal(size=(503, 16)))
    queries = normalize(rng.normal(size=(37, 16)))
    sims, idx = knn_search(queries, reference, 7, query_block=8, reference_block=50, device=device)
    expected_sims, expected_idx = brute_force(queries, reference, 7)
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_allclose(sims, expected_sims, rtol=0, atol=1e-5)
    # one block each way gives the same answer
    sims1, idx1 = knn_search(queries, reference, 7, query_block=1000, reference_block=10_000, device=device)
    np.testing.assert_array_equal(idx1, expected_idx)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_blocked_knn_excludes_groups(device):
    rng = np.random.default_rng(2)
    reference = normalize(rng.normal(size=(120, 8)))
    groups = rng.integers(0, 40, size=120).astype(np.int32)
    queries = np.arange(0, 120, 7)
    other = rng.integers(0, 10, size=120).astype(np.int32)
    sims, idx = knn_search(reference[queries], reference, 5, exclude=[(groups[queries], groups),
                                                                      (other[queries], other)],
                           query_block=4, reference_block=32, device=device)
    exclude = (groups[queries][:, None] == groups[None, :]) | (other[queries][:, None] == other[None, :])
    expected_sims, expected_idx = brute_force(reference[queries], reference, 5, exclude)
    np.testing.assert_array_equal(idx, expected_idx)
    assert all(q not in row for q, row in zip(queries, idx))


@pytest.mark.parametrize("device", [None, "cpu"])
def test_knn_pads_when_reference_is_small_and_reads_float16(device):
    rng = np.random.default_rng(3)
    reference = normalize(rng.normal(size=(3, 8)))
    sims, idx = knn_search(reference, reference.astype(np.float16), 5, device=device)
    assert (idx[:, 3:] == -1).all() and np.isinf(sims[:, 3:]).all()
    assert (idx[:, 0] == np.arange(3)).all()
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=2e-3)


# ============================================================================================ calibration
def test_precision_threshold_is_lowest_meeting_target():
    rng = np.random.default_rng(4)
    scores = rng.uniform(0, 1, 2000)
    correct = rng.uniform(0, 1, 2000) < scores  # P(right) = score
    for target in (0.8, 0.9, 0.95):
        t = precision_threshold(scores, correct, target)
        called = scores >= t
        assert correct[called].mean() >= target
        # the next lower score would miss the target (minimality)
        lower = scores[scores < t]
        if len(lower):
            assert correct[scores >= lower.max()].mean() < target or lower.max() < t
    assert precision_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.95) == math.inf
    assert math.isnan(precision_threshold(np.array([]), np.array([], dtype=bool), 0.95))
    # everything right: the lowest observed score
    assert precision_threshold(np.array([0.9, 0.5, 0.7]), np.array([True, True, True]), 0.95) == 0.5


@pytest.mark.parametrize("precision", [0.8, 0.95])
def test_calibrated_thresholds_reach_precision_on_calibration_set(precision):
    index, _ = synthetic_index(species_spread=0.25, genus_spread=0.3)
    thresholds = calibrate_thresholds(index, "knn", precision=precision, k=5, cluster=False)
    codes = index.rank_codes()
    levels = {level: KnnCalibration(index).leave_out(level, {"k": 5}) for level in ("sequence", "species", "genus")}
    for rank, level in (("genus", "species"), ("species", "sequence")):
        queries, sims, idx = levels[level]
        votes = vote(sims[:, :5], idx[:, :5], codes, thresholds=thresholds.ranks, min_confidence=0.5)
        called = votes.assigned[rank]
        truth = codes[rank][queries]
        assert called.any()
        assert (votes.label[rank][called] == truth[called]).mean() >= precision
        assert thresholds.details[rank]["precision"] >= precision
        # queries whose own taxon is absent get a label at most 1 - precision of the time
        novel_queries, novel_sims, novel_idx = levels[rank]
        novel = vote(novel_sims[:, :5], novel_idx[:, :5], codes, thresholds=thresholds.ranks, min_confidence=0.5)
        assert novel.assigned[rank].mean() <= 1 - precision + 1e-9
    # the function used by calibrate gives the same thresholds
    again, _ = calibrate_ranks(levels, codes, precision=precision, k=5, min_confidence=0.5)
    assert again == thresholds.ranks


def test_open_world_synthetic_species_empty_genus_assigned():
    index, rng = synthetic_index(species_spread=0.05, genus_spread=0.3)
    thresholds = calibrate_thresholds(index, "knn", precision=0.95, k=5, cluster=False)
    # a query of a new species of genus G1: near the genus, far from its known species
    members = [i for i, g in enumerate(index.codes["genus"]) if index.label_names["genus"][g] == "G1"]
    centre = index.embeddings[members].mean(axis=0)
    known = [index.embeddings[[i for i in members if index.codes["species"][i] == s]].mean(axis=0)
             for s in np.unique(index.codes["species"][members])]
    new = centre - 0.3 * (sum(known) / len(known) - centre) + 0.15 * normalize(rng.normal(size=(1, 24)))[0]
    sims, idx = knn_search(normalize(new[None, :]), index.embeddings, 5)
    votes = vote(sims, idx, index.rank_codes(), thresholds=thresholds.ranks, min_confidence=0.5)
    assert votes.assigned["genus"][0]
    assert index.label_names["genus"][votes.label["genus"][0]] == "G1"
    assert not votes.assigned["species"][0]
    assert sims[0, 0] < thresholds.ranks["species"]


def test_vote_hierarchy_blocks_lower_ranks_and_subfamily_is_optional():
    # 3 neighbours: genus vote fails its threshold -> species empty even with a high species threshold met
    codes = {"family": np.array([0, 0, 0]), "subfamily": np.array([0, 1, -1]), "genus": np.array([0, 0, 1]),
             "species": np.array([0, 0, 1])}
    sims = np.array([[0.99, 0.98, 0.97]], dtype=np.float32)
    idx = np.array([[0, 1, 2]])
    thresholds = {"family": 0.5, "subfamily": 0.999, "genus": 0.5, "species": 0.5}
    v = vote(sims, idx, codes, thresholds=thresholds, min_confidence=0.5)
    assert v.assigned["family"][0] and not v.assigned["subfamily"][0]
    assert v.assigned["genus"][0] and v.assigned["species"][0]  # subfamily blocks nothing
    thresholds["genus"] = 0.995
    v = vote(sims, idx, codes, thresholds=thresholds, min_confidence=0.5)
    assert not v.assigned["genus"][0] and not v.assigned["species"][0]
    assert v.label["species"][0] == 0  # the candidate is still reported


# ============================================================================================ index
def test_build_save_load_round_trip(tmp_path, sample_index, train_records):
    path = sample_index.save(tmp_path / "ref.h5")
    loaded = ReferenceIndex.load(path)
    assert loaded.ids == sample_index.ids
    np.testing.assert_array_equal(loaded.embeddings, sample_index.embeddings)
    np.testing.assert_allclose(np.linalg.norm(loaded.embeddings, axis=1), 1.0, atol=1e-5)
    assert loaded.ranks == sample_index.ranks
    for name in sample_index.codes:
        np.testing.assert_array_equal(loaded.codes[name], sample_index.codes[name])
    assert loaded.thresholds.ranks.keys() == sample_index.thresholds.ranks.keys()
    for rank, value in sample_index.thresholds.ranks.items():
        assert loaded.thresholds.ranks[rank] == pytest.approx(value, nan_ok=True)
    assert loaded.thresholds.cluster_distance == pytest.approx(sample_index.thresholds.cluster_distance)
    assert loaded.sequences == [r.sequence for r in train_records]
    assert loaded.attrs["format"] == "barcodetool-reference" and loaded.attrs["model_sha256"]
    assert loaded.attrs["format_version"] == 2
    assert loaded.label_names["bin"][loaded.codes["bin"][0]] == train_records[0].bin
    # the identity layer: k-mer index read back (not rebuilt), thresholds and calibration candidates
    built, read = sample_index.identity, loaded.identity
    for name in ("kmers", "df", "refs", "stored_df"):
        np.testing.assert_array_equal(getattr(read.kmer, name), getattr(built.kmer, name))
    assert read.kmer.max_stored_df == built.kmer.max_stored_df
    np.testing.assert_array_equal(read.group_record, built.group_record)
    assert [read.store.sequence(i) for i in range(len(read))] == [built.store.sequence(i) for i in range(len(built))]
    a, b = loaded.identity_thresholds, sample_index.identity_thresholds
    assert isinstance(a, IdentityThresholds) and a.candidates == b.candidates == (20, 10)
    for rank, value in b.ranks.items():
        assert a.ranks[rank] == pytest.approx(value, nan_ok=True)
    assert a.bin == pytest.approx(b.bin, nan_ok=True) and a.cluster_distance == pytest.approx(b.cluster_distance)
    for level, stored in sample_index.identity_calibration.items():
        for name, values in stored.items():
            np.testing.assert_array_equal(loaded.identity_calibration[level][name], values)


def test_read_identity_layer_does_not_rebuild_the_kmer_index(tmp_path, sample_index, monkeypatch):
    path = sample_index.save(tmp_path / "ref.h5")
    import barcodetool.search.kmer_index as identity_module

    def fail(*args, **kwargs):
        raise AssertionError("the stored k-mer index should have been read")

    monkeypatch.setattr(identity_module.KmerIndex, "__init__", fail)
    assert len(ReferenceIndex.load(path).identity.kmer.refs) == len(sample_index.identity.kmer.refs)


@pytest.mark.parametrize("version, word", [(1, "older"), (3, "newer")])
def test_other_format_versions_are_refused(tmp_path, sample_index, version, word):
    import h5py

    path = sample_index.save(tmp_path / "ref.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = version
    with pytest.raises(InputError) as error:
        ReferenceIndex.load(path)
    message = str(error.value)
    assert f"version {version}" in message and word in message and "rebuild" in message


def test_representative_record_carries_the_most_common_labels():
    groups = np.array([0, 0, 0, 1, 2, 2])
    codes = {"genus": np.array([0, 1, 1, 2, 3, 3]), "species": np.array([0, 1, 1, 2, -1, 4])}
    first, representative = representative_records(groups, codes)
    assert first.tolist() == [0, 3, 4]
    assert representative.tolist() == [1, 3, 5]   # most common label set; then the more complete one


def test_float16_index(tmp_path, tiny, train_records):
    index = build_reference(train_records[:40], tiny[1], dtype="float16", calibrate=False)
    assert index.embeddings.dtype == np.float16
    loaded = ReferenceIndex.load(index.save(tmp_path / "half.h5"))
    assert loaded.embeddings.dtype == np.float16
    sims, idx = loaded.search(np.asarray(loaded.embeddings[:5], dtype=np.float32), 1)
    assert (idx[:, 0] >= 0).all() and (sims[:, 0] > 0.99).all()


def test_sintax_fasta_reference(tiny):
    index = build_reference(read_barcodes(SINTAX_REFERENCE), tiny[1])
    assert "species" in index.ranks and "subfamily" in index.ranks and index.bin_codes is not None
    assert all(" " in name for name in index.label_names["species"])


def test_reference_without_labels_is_refused(tiny):
    from barcodetool.io.readers import BarcodeRecord

    with pytest.raises(InputError, match="no taxonomy"):
        build_reference([BarcodeRecord("a", "ACGTACGTACGT", {})], tiny[1])


def test_index_model_mismatch(tmp_path, sample_index, other_tiny):
    path = sample_index.save(tmp_path / "ref.h5")
    with pytest.raises(IndexMismatchError) as error:
        open_reference(path, other_tiny[1])
    message = str(error.value)
    assert "tiny-a" in message and "tiny-b" in message and "rebuild" in message and "--model" in message


def test_table_reference_is_cached(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = open_reference(SAMPLE, tiny[1])
    cached = list((tmp_path / "cache").rglob("*.h5"))
    assert len(cached) == 1
    import barcodetool.reference.build as reference_module

    def fail(*args, **kwargs):
        raise AssertionError("the cached index should have been reused")

    monkeypatch.setattr(reference_module, "build_reference", fail)
    second = open_reference(SAMPLE, tiny[1])
    assert second.path == cached[0]
    assert second.ids == first.ids
    np.testing.assert_array_equal(second.embeddings, first.embeddings)


def test_cache_is_rebuilt_for_another_format_version(tmp_path, monkeypatch, tiny):
    import h5py

    import barcodetool.reference.build as reference_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    open_reference(SAMPLE, tiny[1])
    (old,) = list((tmp_path / "cache").rglob("*.h5"))
    # the format version is part of the cache key: a new version never finds the old file ...
    key = reference_module.cache_key(SAMPLE, tiny[1], ReadOptions(min_length=tiny[1].tokenizer.config.k))
    monkeypatch.setattr(reference_module, "REFERENCE_FORMAT_VERSION", 3)
    assert reference_module.cache_key(SAMPLE, tiny[1], ReadOptions(min_length=tiny[1].tokenizer.config.k)) != key
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # ... and a cached file of another version under the current key is refused and rebuilt in place
    with h5py.File(old, "r+") as handle:
        handle.attrs["format_version"] = 1
    index = open_reference(SAMPLE, tiny[1])
    assert index.path == old
    with h5py.File(old, "r") as handle:
        assert handle.attrs["format_version"] == 2
    assert len(index.identity) > 0


def test_auto_model_follows_a_named_index(tmp_path, monkeypatch, sample_index):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    models = tmp_path / "data" / "barcodetool" / "models"
    make_tiny_model(models / "tiny-named", seed=0)
    index = ReferenceIndex(ids=sample_index.ids, embeddings=sample_index.embeddings, codes=sample_index.codes,
                           label_names=sample_index.label_names, groups=sample_index.groups,
                           model_name="tiny-named", model_sha256=sample_index.model_sha256,
                           thresholds=sample_index.thresholds)
    path = index.save(tmp_path / "named.h5")
    assert resolve_model_for_reference("auto", str(path)) == "tiny-named"
    assert resolve_model_for_reference("other", str(path)) == "other"
    assert resolve_model_for_reference("auto", str(SAMPLE)) == "auto"


def test_thresholds_for_recalibrates_only_when_settings_change(sample_index):
    stored = sample_index.thresholds
    assert thresholds_for(sample_index, "knn") is stored
    stricter = thresholds_for(sample_index, "knn", precision=0.99)
    assert isinstance(stricter, KnnThresholds) and stricter.precision == 0.99
    for rank in sample_index.ranks:
        a, b = stricter.ranks[rank], stored.ranks[rank]
        assert math.isnan(a) or a >= b or math.isnan(b)
    calibrate_thresholds(sample_index, "knn")  # restore the defaults for the other tests


# ============================================================================================ identity calibration
@pytest.fixture(scope="module")
def synthetic(tiny):
    """A reference of synthetic barcodes (18 species of 6 genera in 2 families, 6 haplotypes each, BIN = species),
    with some species close to each other so that the thresholds have something to do."""
    records, taxa, barcode, new_species = synthetic_records(seed=3, species_rate=0.012, haplotype_rate=0.004)
    return build_reference(records, tiny[1]), records, taxa, barcode, new_species


@pytest.mark.parametrize("precision", [0.8, 0.95])
def test_identity_thresholds_reach_precision_on_calibration_set(synthetic, precision):
    """The cutoff is the confidence asked for; on the leave-out queries the model was fitted on, the labels named at
    that confidence are right about that often, and new species are seldom named."""
    index = synthetic[0]
    thresholds = calibrate_thresholds(index, "identity", min_confidence=precision)
    model = thresholds.confidence
    assert model is not None and thresholds.ranks["species"] == thresholds.ranks["genus"] == precision
    layer = index.identity
    codes = {r: layer.codes[r] for r in index.ranks}
    calibration = IdentityCalibration(index)
    levels = {level: calibration.leave_out(level, {"candidates": thresholds.candidates,
                                                   "embed_below": thresholds.embed_below}) for level in LEVELS}
    for rank in ("genus", "species"):
        right = named = 0
        for level, (queries, scores, idx) in levels.items():
            votes, _ = identity_decide(idx, scores, codes, thresholds=thresholds.ranks, model=model,
                                       overlap=calibration.overlaps[level],
                                       query_length=layer.store.lengths[queries], reference=layer.store,
                                       isolation=isolation_tables(index))
            called = votes.assigned[rank] & (codes[rank][queries] >= 0)
            right += int((votes.label[rank][called] == codes[rank][queries][called]).sum())
            named += int(called.sum())
            details = thresholds.details[rank][level]   # by the models that did not see the query
            assert abs(details["named"] - called.sum() / max(1, (codes[rank][queries] >= 0).sum())) <= 0.25
        assert named and right / named >= precision - 0.05
        novel = thresholds.details[rank]["species" if rank == "species" else "genus"]["named"]
        assert novel <= 1 - precision + 0.1           # queries whose own taxon is absent
    again = thresholds_for(index, "identity", min_confidence=precision)
    assert again is thresholds
    other = thresholds_for(index, "identity", min_confidence=0.6)   # a new cutoff keeps the fitted model
    assert other.confidence is model and other.ranks["genus"] == 0.6
    calibrate_thresholds(index, "identity")  # back to the defaults


def test_identity_decide_tie_vote_lineage_and_confidence():
    codes = {"genus": np.array([0, 0, 1, 1]), "species": np.array([0, 1, 2, 2])}
    # candidates ranked 0 (species 0), 2 and 3 (species 2) tied at 1.0, then 1 below
    idx = np.array([[0, 2, 3, 1], [1, -1, -1, -1]])
    score = np.array([[1.0, 1.0, 1.0, 0.9], [0.9, -np.inf, -np.inf, -np.inf]], dtype=np.float32)
    thresholds = {"genus": 0.95, "species": 0.95}
    votes, chosen = identity_decide(idx, score, codes, thresholds=thresholds, min_confidence=0.5)
    assert chosen.tolist() == [1, 0]                    # the first tied candidate of the most common species
    assert votes.label["species"][0] == 2 and votes.label["genus"][0] == 1   # one lineage: the chosen hit's
    assert votes.confidence["species"][0] == pytest.approx(2 / 3)
    assert votes.confidence["genus"][0] == pytest.approx(2 / 3)
    assert votes.assigned["species"][0] and votes.assigned["genus"][0]
    assert not votes.assigned["genus"][1] and not votes.assigned["species"][1]   # below the thresholds
    assert votes.label["species"][1] == 1                                         # still the candidate
    # a failed genus blocks species even above the species threshold
    votes, _ = identity_decide(idx, score, codes, thresholds={"genus": 1.01, "species": 0.5})
    assert not votes.assigned["species"].any()
    # an unreached vote share leaves the rank empty
    votes, _ = identity_decide(idx, score, codes, thresholds=thresholds, min_confidence=0.7)
    assert not votes.assigned["species"][0] and not votes.assigned["genus"][0]
    # a confidence model without the evidence it reads is refused, not silently replaced by the vote share
    model = ConfidenceModel({"species": RankModel.constant(0.9, 100)})
    with pytest.raises(UsageError, match="overlap, the query lengths, the reference and its isolation"):
        identity_decide(idx, score, codes, thresholds=thresholds, model=model,
                        overlap=np.full(idx.shape, 600), query_length=np.array([600, 600]))


def test_identity_decide_an_unlabelled_tie_never_hides_a_lineage():
    # no tied candidate has a species; the first tied one (row 0) has no labels at all, the second a genus
    codes = {"family": np.array([-1, 3, 3]), "genus": np.array([-1, 5, 6]), "species": np.array([-1, -1, -1])}
    idx = np.array([[0, 1, 2]])
    score = np.array([[0.99, 0.99, 0.9]], dtype=np.float32)
    votes, chosen = identity_decide(idx, score, codes)
    assert chosen.tolist() == [1] and votes.label["genus"][0] == 5 and votes.label["family"][0] == 3


# ============================================================================================ CLI
def test_cli_reference_build_and_info(tmp_path, tiny):
    runner = CliRunner()
    out = tmp_path / "ref.h5"
    result = runner.invoke(main, ["reference", "build", str(SAMPLE), "-o", str(out), "--model", str(tiny[0]),
                                  "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert ReferenceIndex.load(out).model_name == "tiny-a"
    info = runner.invoke(main, ["reference", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "threshold\tspecies" in info.output and "cluster_distance" in info.output
    assert "calibration\tidentity" in info.output and "knn_threshold\tspecies" in info.output
    assert "embedding below 0.95" in info.output
    assert "widened to 60 k-mer below 0.95 (5 scored, by shared 8-mers)" in info.output   # the default
    assert "v2" in info.output
    for extra, shown in ((["--candidates-wide", "0"], None),
                         (["--candidates-wide-scored", "0"], "60 k-mer below 0.95\t"),
                         (["--candidates-wide", "30"], "30 k-mer below 0.95 (5 scored")):
        built = tmp_path / "other.h5"
        result = runner.invoke(main, ["reference", "build", str(SAMPLE), "-o", str(built), "--model", str(tiny[0]),
                                      "--threads", "1", *extra])
        assert result.exit_code == 0, result.output
        info = runner.invoke(main, ["reference", "info", str(built)]).output
        assert ("widened" not in info) if shown is None else (f"widened to {shown}" in info), info
    wide = built
    # classify with the index's widening, or another one (recalibrated in memory first), or none
    for extra, logged in (([], False), (["--candidates-wide", "0"], True), (["--candidates-wide", "30"], False)):
        done = runner.invoke(main, ["classify", str(SAMPLE), "-r", str(wide), "-o", str(tmp_path / "c.tsv"),
                                    "--model", str(tiny[0]), "--threads", "1", *extra])
        assert done.exit_code == 0, done.output
        assert ("calibrating the identity rule" in done.output) == logged, done.output
    bad = runner.invoke(main, ["reference", "info", str(SAMPLE)])
    assert bad.exit_code == 1 and "cannot open as HDF5" in bad.output


def test_kmer_only_candidates_search_again_when_the_query_kmers_are_common(synthetic, monkeypatch):
    """A species sampled so densely that all its k-mers are over the cap (here: a cap of 3 references, below the
    6 haplotypes a species has) is still found by k-mer-only candidates: such queries are searched again with
    the fallback cap. With embedding candidates there is no second search."""
    import importlib

    index, records, taxa, barcode, _ = synthetic
    identity = importlib.import_module(search_candidates.__module__)   # where the caps are read
    queries = [barcode(key) for key in list(taxa)[:6]]
    species = [lineage_species(key) for key in list(taxa)[:6]]
    layer = index.identity
    names = index.label_names["species"]

    def found(emb, km):
        hits = km[:, 0]
        return [names[layer.codes["species"][j]] if j >= 0 else "" for j in hits]

    monkeypatch.setattr(identity, "KMER_MAX_DF", 3)
    monkeypatch.setattr(identity, "KMER_FALLBACK_DF", 1000)
    monkeypatch.setattr(identity, "KMER_FALLBACK_BELOW", 0.0)     # no second search
    emb, km = search_candidates(index, queries, None, 0, 5)
    assert sum(a == b for a, b in zip(found(emb, km), species)) < len(queries)
    monkeypatch.setattr(identity, "KMER_FALLBACK_BELOW", 0.1)
    emb, km = search_candidates(index, queries, None, 0, 5)
    assert found(emb, km) == species


def lineage_species(key) -> str:
    f, g, s = key
    return f"Genus{f}x{g} species{s}"


# ============================================================================================ embedding only in doubt
def test_merge_ranked_unions_only_the_rows_that_were_embedded():
    from barcodetool.reference import ScoredCandidates, merge_ranked

    f = np.float32
    kmer = ScoredCandidates(idx=np.array([[5, 3], [7, -1], [2, 4]]),
                            score=np.array([[0.90, 0.99], [0.97, -np.inf], [0.80, 0.85]], dtype=f),
                            identity=np.array([[0.91, 0.99], [0.97, -np.inf], [0.80, 0.86]], dtype=f),
                            overlap=np.array([[600, 650], [640, 0], [500, 640]], dtype=np.int32))
    embedded = np.array([True, False, True])
    # embedding candidates of rows 0 and 2 only; candidate 3 of row 0 was found by both searches
    embedding = ScoredCandidates(idx=np.array([[3, 8], [9, 2]]), score=np.array([[0.99, 0.995], [0.95, 0.80]], f),
                                 identity=np.array([[0.99, 0.995], [0.95, 0.80]], f),
                                 overlap=np.array([[650, 658], [658, 500]], dtype=np.int32))
    idx, score, identity, overlap = merge_ranked(kmer, embedding, embedded)
    assert idx.shape == (3, 4)
    assert idx.tolist() == [[8, 3, 5, -1], [7, -1, -1, -1], [9, 4, 2, -1]]
    assert score[0, :3].tolist() == pytest.approx([0.995, 0.99, 0.90]) and np.isneginf(score[0, 3])
    assert overlap.tolist() == [[658, 650, 600, 0], [640, 0, 0, 0], [658, 640, 500, 0]]
    assert identity[2, :3].tolist() == pytest.approx([0.95, 0.86, 0.80]) and np.isneginf(identity[1, 1:]).all()
    # embedding rows given for every query: the same result
    every = ScoredCandidates(*(np.insert(getattr(embedding, name), 1, getattr(embedding, name)[0], axis=0)
                               for name in ("idx", "score", "identity", "overlap")))
    again = merge_ranked(kmer, every, embedded)
    assert all((a == b).all() for a, b in zip(again, (idx, score, identity, overlap)))


def test_identity_hits_embed_only_below_the_kmer_score_and_inf_is_the_union_of_both(synthetic, tiny):
    """With embed_below = inf every query's candidates are the union of both searches, ranked exactly as re-ranking
    that union does; with a finite embed_below the queries whose best k-mer candidate reaches it keep the k-mer
    candidates alone and no embedding is asked for them."""
    from barcodetool.embedding import embed_sequences
    from barcodetool.reference import identity_hits, kmer_hits
    from barcodetool.search import candidate_union, rerank

    index, records, taxa, barcode, new_species = synthetic
    queries = [barcode(key) for key in list(taxa)[:6]] + [new_species(f, g) for f in range(2) for g in range(3)]
    vectors = embed_sequences(tiny[1], queries)
    everything = thresholds_for(index, "identity", embed_below=math.inf, widen=(0, math.inf))
    hits = identity_hits(queries, vectors, index, everything)
    emb, km = search_candidates(index, queries, vectors, *everything.candidates)
    idx, score, identity, overlap = rerank(queries, index.identity.store, candidate_union(emb, km), detail=True)
    assert hits.embedded.all()
    for row in range(len(queries)):   # the same candidates, ranked and scored alike where they can decide
        assert set(hits.idx[row].tolist()) == set(idx[row].tolist())
        # approximate pairs are realigned only where they could be the best (search.identity.realign_deciding):
        # each source scored on its own may leave a hopeless one in the tail at another value than the union does
        head = score[row] >= score[row, 0] - 0.1
        assert (hits.idx[row, head] == idx[row, head]).all() and np.allclose(hits.score[row, head], score[row, head])
        assert (hits.overlap[row, head] == overlap[row, head]).all()

    best = kmer_hits(queries, index, 10).best()
    embed_below = float(np.sort(best)[len(best) // 2])    # half of the queries reach it
    assert 0 < (best >= embed_below).sum() < len(queries)
    asked = []

    def embed(sequences):
        asked.extend(sequences)
        return embed_sequences(tiny[1], sequences)

    doubt = thresholds_for(index, "identity", embed_below=embed_below, widen=(0, math.inf))
    assert doubt.embed_below == embed_below
    mixed = identity_hits(queries, None, index, doubt, embed=embed)
    below = best < embed_below
    assert asked == [q for q, b in zip(queries, below) if b] and mixed.embedded.tolist() == below.tolist()
    kmer_only = identity_hits(queries, None, index,
                              thresholds_for(index, "identity", candidates=(0, 10), widen=(0, math.inf)),
                              candidates=(0, 10))
    for row in range(len(queries)):
        source = hits if below[row] else kmer_only
        assert mixed.idx[row][mixed.idx[row] >= 0].tolist() == source.idx[row][source.idx[row] >= 0].tolist()
        assert mixed.hit[row] == source.hit[row]
    with pytest.raises(UsageError, match="embeddings"):
        identity_hits(queries, None, index, doubt)
    calibrate_thresholds(index, "identity")


def test_distant_queries_get_the_best_of_a_wider_kmer_search(synthetic):
    """Queries whose best first-stage k-mer candidate scores below the widening score keep the best of a wider
    k-mer search (as many candidates as before); the others keep their first-stage candidates. The calibration's
    stored searches are merged the same way."""
    from barcodetool.reference import identity_hits, kmer_hits
    from barcodetool.reference.calibrate import merge_identity_candidates
    from barcodetool.search import rerank

    index, records, taxa, barcode, new_species = synthetic
    queries = [barcode(key) for key in list(taxa)[:6]] + [new_species(f, g) for f in range(2) for g in range(3)]
    first = kmer_hits(queries, index, 1).best()
    below = float(np.sort(first)[len(first) // 2])     # half of the queries are widened
    widened_rows = first < below
    assert 0 < widened_rows.sum() < len(queries)
    plain = identity_hits(queries, None, index,
                          thresholds_for(index, "identity", candidates=(0, 1), widen=(0, math.inf)), candidates=(0, 1))
    wide = identity_hits(queries, None, index,
                         thresholds_for(index, "identity", candidates=(0, 1), widen=(40, below)), candidates=(0, 1))
    _, km = search_candidates(index, queries, None, 0, 40)
    score = rerank(queries, index.identity.store, km)[1]
    assert wide.idx.shape == plain.idx.shape == (len(queries), 1)
    for row in range(len(queries)):
        if widened_rows[row]:   # the best of the forty (pairs are realigned only where they could be the best, so
            # the tail may differ from a search of the forty at once: see the test above)
            assert wide.score[row, 0] == pytest.approx(score[row, 0])
            assert wide.score[row, 0] >= plain.score[row, 0]
        else:
            assert wide.idx[row].tolist() == plain.idx[row].tolist()
    assert (wide.score[:, 0] > plain.score[:, 0]).any()   # some distant query found a nearer reference
    stored = index.identity_calibration["species"]
    # the wide search's candidates beyond the first stage (every one: a setting of two scores them all)
    assert stored["kmer_wide"].shape == (len(stored["queries"]), 39)
    assert stored["kmer_wide_setting"].tolist() == [1, 40, 0]
    merged_idx, merged_score, _ = merge_identity_candidates(stored, 0, 1, math.inf, (40, below))
    base_score = merge_identity_candidates(stored, 0, 1, math.inf)[1]
    grow = base_score[:, 0] < below
    assert merged_idx.shape == (len(stored["queries"]), 1)
    forty = np.concatenate([stored["kmer"][:, :1], stored["kmer_wide"]], axis=1)
    forty_score = np.concatenate([stored["kmer_score"][:, :1], stored["kmer_wide_score"]], axis=1)
    top = np.sort(np.where(forty >= 0, forty_score, -np.inf), axis=1)[:, ::-1]
    np.testing.assert_allclose(merged_score[grow], top[grow, :1])
    np.testing.assert_array_equal(merged_score[~grow], base_score[~grow])
    with pytest.raises(UsageError, match="not chosen for this widening"):
        merge_identity_candidates(stored, 0, 1, math.inf, (40, below, 3))
    calibrate_thresholds(index, "identity")   # the module's index back to its defaults for the tests after this one
    assert index.identity_thresholds.widen == widen_setting(IDENTITY_CANDIDATES_WIDE)


def test_widened_candidates_scored_are_those_sharing_most_8mers(synthetic):
    """With `scored` set, of the wide search's candidates beyond the first stage only those sharing the most 8-mers
    with the query are scored: the widened query keeps the best of the first stage and those. The calibration
    stores the same choice for its leave-out queries."""
    from barcodetool.reference import identity_hits, kmer_hits
    from barcodetool.reference.candidates import WIDEN_SHARED_STRIDE, beyond_first
    from barcodetool.search import rerank, shared_kmer_counts

    index, records, taxa, barcode, new_species = synthetic
    queries = [new_species(f, g) for f in range(2) for g in range(3)] + [barcode(key) for key in list(taxa)[:2]]
    store, layer = as_store(queries), index.identity
    first = kmer_hits(queries, index, 2)
    below = float(first.best().max()) + 1e-3                   # every query widened
    _, km = search_candidates(index, queries, None, 0, 30)
    chosen = beyond_first(store, layer.store, km, 2, 3)
    shared = shared_kmer_counts(store, layer.store, km[:, 2:], stride=WIDEN_SHARED_STRIDE)
    for row in range(len(queries)):
        real = km[row, 2:] >= 0
        picked = [int(c) for c in chosen[row] if c >= 0]
        assert len(picked) == min(3, int(real.sum()))
        counts = dict(zip(km[row, 2:].tolist(), shared[row].tolist()))
        assert min(counts[c] for c in picked) >= max((v for c, v in counts.items() if c >= 0 and c not in picked),
                                                      default=-1)
    assert beyond_first(store, layer.store, km, 2, 0).tolist() == km[:, 2:].tolist()   # 0: all of them
    wide = identity_hits(queries, None, index, thresholds_for(index, "identity", candidates=(0, 2),
                                                               widen=(30, below, 3)), candidates=(0, 2))
    best = rerank(queries, layer.store, np.concatenate([km[:, :2], chosen], axis=1))[1][:, 0]
    np.testing.assert_allclose(wide.score[:, 0], best)
    # classify's first stage searches the 30 at once; without its candidates beyond the first stage the widened
    # queries are searched again: the same hits
    for first in (kmer_hits(queries, index, 2, wide=30), kmer_hits(queries, index, 2)):
        again = identity_hits(queries, None, index, thresholds_for(index, "identity", candidates=(0, 2),
                                                                    widen=(30, below, 3)), candidates=(0, 2),
                              kmer=first)
        np.testing.assert_array_equal(again.idx, wide.idx)
    stored = index.identity_calibration["genus"]
    assert stored["kmer_wide_setting"].tolist() == [2, 30, 3] and stored["kmer_wide"].shape[1] == 3
    calibrate_thresholds(index, "identity")   # back to the defaults


def test_embed_below_is_stored_with_the_calibration(synthetic, tmp_path):
    import h5py

    from barcodetool.reference import IDENTITY_EMBED_BELOW

    index = synthetic[0]
    assert index.identity_thresholds.embed_below == IDENTITY_EMBED_BELOW
    path = index.save(tmp_path / "ref.h5")
    assert ReferenceIndex.load(path).identity_thresholds.embed_below == IDENTITY_EMBED_BELOW
    assert index.identity_thresholds.widen == widen_setting(IDENTITY_CANDIDATES_WIDE)     # on by default
    assert ReferenceIndex.load(path).identity_thresholds.widen == (IDENTITY_CANDIDATES_WIDE, 0.95, 5)
    for widen, read in (((40, 0.9), (40, 0.9, 0)), ((40, 0.9, 5), (40, 0.9, 5)), ((0, math.inf), (0, math.inf))):
        calibrate_thresholds(index, "identity", widen=widen)
        path = index.save(tmp_path / "ref.h5")
        assert ReferenceIndex.load(path).identity_thresholds.widen == read
    calibrate_thresholds(index, "identity", widen=(40, 0.9, 5))
    path = index.save(tmp_path / "ref.h5")
    with h5py.File(path, "a") as handle:       # written before the 8-mer choice: every wide candidate was scored
        del handle.attrs["identity_calibration_widen_scored"]
    assert ReferenceIndex.load(path).identity_thresholds.widen == (40, 0.9, 0)
    calibrate_thresholds(index, "identity")
    path = index.save(tmp_path / "ref.h5")
    with h5py.File(path, "a") as handle:       # an index written before the attribute: every query was embedded
        del handle.attrs["identity_calibration_embed_below"]
        # ... and before widening: calibrated without it, so classified without it
        for name in ("candidates", "below", "scored"):
            del handle.attrs[f"identity_calibration_widen_{name}"]
    older = ReferenceIndex.load(path)
    assert older.identity_thresholds.embed_below == math.inf and older.identity_thresholds.widen == (0, math.inf)
    assert thresholds_for(older, "identity", embed_below=IDENTITY_EMBED_BELOW).embed_below == IDENTITY_EMBED_BELOW


def test_large_embeddings_are_read_from_the_file_and_classify_alike(tmp_path, sample_index, train_records, tiny,
                                                                     monkeypatch):
    """Above EMBEDDINGS_HELD_BYTES an index keeps its embeddings in the file (DatasetRows): the same neighbours,
    candidates and assignments, by either method, and a save of such an index writes the same embeddings."""
    import barcodetool.reference.index as index_module
    from barcodetool.classify import classify, tsv_row
    from barcodetool.io.hdf5 import DatasetRows

    path = sample_index.save(tmp_path / "ref.h5")
    held = ReferenceIndex.load(path)
    monkeypatch.setattr(index_module, "EMBEDDINGS_HELD_BYTES", 0)
    lazy = ReferenceIndex.load(path)
    assert isinstance(lazy.embeddings, DatasetRows) and isinstance(held.embeddings, np.ndarray)
    assert len(held.identity) < len(held)   # duplicate sequences: group embeddings are a view of some rows
    assert isinstance(lazy.group_embeddings, DatasetRows)
    np.testing.assert_array_equal(np.asarray(lazy.group_embeddings), held.group_embeddings)
    queries = train_records[::7]
    for method in ("identity", "knn"):
        expected = [tsv_row(a) for a in classify(queries, held, tiny[1], method=method, chunk_size=16)]
        assert [tsv_row(a) for a in classify(queries, lazy, tiny[1], method=method, chunk_size=16)] == expected
    copy = ReferenceIndex.load(lazy.save(tmp_path / "copy.h5"))
    np.testing.assert_array_equal(np.asarray(copy.embeddings), held.embeddings)
