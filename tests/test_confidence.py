"""The identity rule's per-query confidence: the evidence, the tree model (exported from scikit-learn, evaluated with
numpy, stored as checked JSON), the chain down the ranks, and its fit on a reference with mislabelled records."""

from __future__ import annotations

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import SAMPLE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from barcodetool.cli import main
from barcodetool.errors import InputError
from barcodetool.io.readers import read_barcodes
from barcodetool.reference import ReferenceIndex, build_reference
from barcodetool.reference.confidence import (FEATURES, FEATURES_VERSION, MAX_BINS, MAX_DISTANCE, RANK_FEATURES,
                                              ConfidenceModel, RankModel, boosted_trees, chain, fit_rank,
                                              partner_rows, quantile_bins, query_evidence, rank_evidence)
from barcodetool.search.sequences import SequenceStore


# ============================================================================================ the trees
def _fitted(seed=0, n=600):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    x = rng.random((n, len(FEATURES)))
    y = (x[:, 0] < 0.3) & (x[:, 1] > 0.2) | (rng.random(n) < 0.05)
    return x, y, HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=7, random_state=0).fit(x, y)


def test_exported_trees_predict_as_scikit_learn():
    x, y, fitted = _fitted()
    model = RankModel.from_boosting(fitted, len(y), reach=1.0)   # every probe within reach
    probe = np.random.default_rng(1).random((300, len(FEATURES)))
    np.testing.assert_allclose(model.probability(probe), fitted.predict_proba(probe)[:, 1], atol=1e-6)


@pytest.mark.parametrize("group", [1, 7, 1000])
def test_trees_walked_in_groups_give_the_same_bits(group, monkeypatch):
    import barcodetool.reference.confidence as confidence

    x, y, fitted = _fitted(seed=2)
    model = RankModel.from_boosting(fitted, len(y), reach=1.0)
    probe = np.random.default_rng(3).random((257, len(FEATURES)))
    expected = model.probability(probe)
    monkeypatch.setattr(confidence, "TREE_GROUP", group)
    np.testing.assert_array_equal(model.probability(probe), expected)
    assert model.probability(probe[:0]).shape == (0,)


def test_model_json_round_trip_and_refusals():
    x, y, fitted = _fitted()
    model = ConfidenceModel({"genus": RankModel.from_boosting(fitted, len(y), reach=1.0),
                             "order": RankModel.constant(0.99, 50, reach=1.0)})
    again = ConfidenceModel.from_json(model.to_json())
    np.testing.assert_array_equal(again.ranks["genus"].probability(x), model.ranks["genus"].probability(x))
    assert again.ranks["order"].probability(x[:3]) == pytest.approx([0.99] * 3, abs=1e-6)

    def broken(change):
        value = model.to_json()
        change(value)
        with pytest.raises(ValueError):
            ConfidenceModel.from_json(value)

    broken(lambda v: v.update(version=FEATURES_VERSION + 1))
    broken(lambda v: v.update(features=["distance"]))
    assert ConfidenceModel.readable(model.to_json()) and not ConfidenceModel.readable({"version": 0})
    broken(lambda v: v["ranks"].update(kingdom=v["ranks"]["order"]))
    broken(lambda v: v["ranks"]["genus"]["left"][0].__setitem__(0, 0))            # a cycle: a node its own child
    broken(lambda v: v["ranks"]["genus"]["right"][0].__setitem__(0, 10 ** 6))    # a child out of range
    broken(lambda v: v["ranks"]["genus"]["feature"][0].__setitem__(0, len(FEATURES)))
    broken(lambda v: v["ranks"]["genus"]["value"][0].__setitem__(1, float("nan")))
    broken(lambda v: v["ranks"]["genus"].pop("threshold"))


@pytest.mark.parametrize("distinct", [1, 9, 255, 256, 4000])
def test_quantile_bins_keep_the_order_of_every_value(distinct):
    rng = np.random.default_rng(distinct)
    values = np.sort(rng.random(distinct))[rng.integers(0, distinct, 6000)]
    weights = rng.random(6000) + 0.1
    codes, cuts = quantile_bins(values, weights)
    bins, present = int(codes.max()) + 1, len(np.unique(values))
    assert bins == present if present <= MAX_BINS else 0.8 * MAX_BINS < bins <= MAX_BINS
    assert len(cuts) == bins - 1 and (np.diff(cuts) > 0).all()
    assert (codes == np.round(codes)).all()
    for j, cut in enumerate(cuts):   # x <= cut exactly for the codes up to j
        np.testing.assert_array_equal(values <= cut, codes <= j)
    if distinct > MAX_BINS:          # about equal shares of the weight
        share = np.bincount(codes.astype(int), weights=weights) / weights.sum()
        assert share.max() < 3 / MAX_BINS


def test_fit_rank_predicts_as_the_trees_fitted_on_the_binned_features():
    """fit_rank bins the features itself (scikit-learn's weighted binning takes a sort a percentile); its trees,
    read on the raw features, give what the trees fitted on the bins give."""
    rng = np.random.default_rng(4)
    n = 3000
    features = np.round(rng.random((n, len(FEATURES))), 4)
    correct = (features[:, 0] < 0.3) & (features[:, 1] > 0.2) | (rng.random(n) < 0.05)
    weights = rng.random(n) + 0.5
    model = fit_rank(features, correct, weights)
    codes = np.stack([quantile_bins(column, weights * n / weights.sum())[0] for column in features.T], axis=1)
    direct = boosted_trees(n).fit(codes, correct, sample_weight=weights * n / weights.sum())
    within = features[:, 0] <= model.reach       # beyond the farthest right call: 0 (as tested below)
    assert within.mean() > 0.99
    np.testing.assert_allclose(model.probability(features)[within], direct.predict_proba(codes)[within, 1],
                               atol=1e-6)
    assert len(np.unique(model.threshold[~model.leaf])) > 20 and (model.threshold[~model.leaf] < 1).all()


def test_fit_rank_constant_where_every_call_is_right():
    features = np.zeros((100, len(FEATURES)))
    model = fit_rank(features, np.ones(100, dtype=bool), np.ones(100))
    assert 0.99 < float(model.probability(features[:1])[0]) < 1.0
    assert fit_rank(features[:5], np.ones(5, dtype=bool), np.ones(5)) is None   # too few to say anything


def test_no_confidence_beyond_the_farthest_right_call():
    # right calls only up to 10% away: a hit 30% away (a non-COI record, say) gets no confidence, however the rest
    # of its evidence looks
    rng = np.random.default_rng(0)
    features = rng.random((400, len(FEATURES)))
    features[:, 0] *= 0.2
    correct = features[:, 0] < 0.1
    model = fit_rank(features, correct, np.ones(400))
    assert model.reach == pytest.approx(features[correct, 0].max())
    far = features[:5].copy()
    far[:, 0] = 0.3
    assert (model.probability(far) == 0).all()
    again = ConfidenceModel.from_json(ConfidenceModel({"species": model}).to_json()).ranks["species"]
    assert again.reach == model.reach


# ============================================================================================ the evidence
def test_rank_evidence_reads_the_hit_list():
    # query 0: best 0.99 (label 1), then 0.985 (label 1), then another label at 0.95; query 1: one label only
    idx = np.array([[0, 1, 2], [3, 4, -1]])
    score = np.array([[0.99, 0.985, 0.95], [0.90, 0.88, -np.inf]])
    overlap = np.array([[600, 600, 600], [300, 300, 0]])
    codes = np.array([1, 1, 2, 5, 5])
    label, x = rank_evidence(idx, score, overlap, np.array([600, 600]), np.array([0, 0]), codes)
    f = {name: x[:, i] for i, name in enumerate(RANK_FEATURES)}
    assert label.tolist() == [1, 5]
    np.testing.assert_allclose(f["distance"], [0.01, 0.10], atol=1e-6)
    np.testing.assert_allclose(f["gap"], [0.04, 0.02], atol=1e-6)     # query 1: the lowest candidate bounds it
    assert f["no_other_label"].tolist() == [0.0, 1.0]
    assert f["share_near"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(f["coverage"], [1.0, 0.5])
    # the label's second-best candidate: 0.005 below the best in query 0, 0.02 in query 1
    np.testing.assert_allclose(f["second_gap"], [0.005, 0.02], atol=1e-6)


def test_second_gap_without_a_second_candidate_of_the_label():
    idx = np.array([[0, 2, 1]])
    score = np.array([[0.97, 0.95, 0.90]])
    label, x = rank_evidence(idx, score, np.full((1, 3), 600), np.array([600]), np.array([0]), np.array([1, 1, 2]))
    f = {name: x[:, i] for i, name in enumerate(RANK_FEATURES)}
    np.testing.assert_allclose(f["second_gap"], [0.07], atol=1e-6)   # the other member of label 1, last
    label, x = rank_evidence(idx, score, np.full((1, 3), 600), np.array([600]), np.array([0]), np.array([1, 3, 2]))
    assert x[0, RANK_FEATURES.index("second_gap")] == MAX_DISTANCE   # the label's only candidate


def _mutated(sequence: str, positions: list[int]) -> str:
    swap = {"A": "C", "C": "G", "G": "T", "T": "A"}
    return "".join(swap[b] if i in positions else b for i, b in enumerate(sequence))


def test_query_evidence_gives_every_rank_the_context_of_species_genus_and_family():
    # one query: best hit species a (genus A), then species b of genus A at 0.97, then genus B at 0.90; the three
    # references are real sequences: 6 and 30 differences from the hit
    base = "".join(np.random.default_rng(5).choice(list("ACGT"), 600))
    store = SequenceStore.from_sequences([base, _mutated(base, list(range(0, 600, 100))),
                                          _mutated(base, list(range(0, 600, 20)))])
    idx = np.array([[0, 1, 2]])
    score = np.array([[0.99, 0.97, 0.90]])
    overlap = np.full((1, 3), 600)
    codes = {"family": np.array([0, 0, 0]), "genus": np.array([0, 0, 1]), "species": np.array([0, 1, 2])}
    evidence = query_evidence(idx, score, overlap, np.array([600]), np.array([0]), codes,
                              ["family", "genus", "species"], store, np.array([[0.03, 0.12]]))
    assert set(evidence) == {"family", "genus", "species"}
    for rank, (label, x) in evidence.items():
        assert label.tolist() == [0] and x.shape == (1, len(FEATURES))     # the hit's label at every rank: 0
        f = dict(zip(FEATURES, x[0]))
        assert f["species_gap"] == pytest.approx(0.02) and f["species_no_other_label"] == 0.0
        assert f["genus_gap"] == pytest.approx(0.09) and f["genus_no_other_label"] == 0.0
        assert f["family_no_other_label"] == 1.0      # one family among the candidates: its gap is a lower bound
        # the hit against its partners: species a has no second candidate; b (6 differences) is the nearest other
        # species and genus A's second candidate; genus B's reference is 30 differences away
        assert f["species_hit_to_second"] == MAX_DISTANCE
        assert f["species_hit_to_other"] == pytest.approx(0.01, abs=1e-4)
        assert f["genus_hit_to_second"] == pytest.approx(0.01, abs=1e-4)
        assert f["genus_hit_to_other"] == pytest.approx(0.05, abs=1e-4)
        assert (f["species_isolation"], f["genus_isolation"]) == (0.03, 0.12)   # as given, for every rank
        own = rank_evidence(idx, score, overlap, np.array([600]), np.array([0]), codes[rank])[1][0]
        np.testing.assert_array_equal(x[0, :len(RANK_FEATURES)], own)
    assert partner_rows(idx, score, np.array([0]), codes).tolist() == [[-1, 1, 1, 2]]
    # a reference without species: its context columns read as no gap and no other label, no partners, for every
    # rank
    evidence = query_evidence(idx, score, overlap, np.array([600]), np.array([0]),
                              {k: v for k, v in codes.items() if k != "species"}, ["genus"], store,
                              np.array([[MAX_DISTANCE, 0.12]]))
    f = dict(zip(FEATURES, evidence["genus"][1][0]))
    assert f["species_gap"] == 0.0 and f["species_no_other_label"] == 1.0
    assert f["species_hit_to_second"] == f["species_hit_to_other"] == MAX_DISTANCE


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=4, max_size=4),
                min_size=1, max_size=6))
def test_chain_never_grows_down_the_ranks(rows):
    ranks = ["order", "family", "subfamily", "genus"]
    values = np.array(rows, dtype=np.float32)
    out = chain({r: values[:, i] for i, r in enumerate(ranks)}, ranks)
    for i in range(len(rows)):
        seen = math.inf
        for rank in ("order", "family", "genus"):    # subfamily is optional: it caps nothing below
            v = float(out[rank][i])
            if not math.isnan(v):
                assert v <= seen + 1e-7
                seen = v
        sub = float(out["subfamily"][i])
        if not math.isnan(sub):
            assert sub <= min(float(values[i, 0]) if not math.isnan(values[i, 0]) else 1,
                              float(values[i, 1]) if not math.isnan(values[i, 1]) else 1) + 1e-7


# ============================================================================================ on a reference
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-c", seed=0)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def noisy_index(tiny, tmp_path_factory):
    """The sample's train records with three of them given another order (as mislabels in real exports)."""
    records = [r for r in read_barcodes(SAMPLE, skip_empty=True) if r.split in ("train", "val")]
    orders = sorted({r.taxonomy["order"] for r in records})
    flipped = []
    for record in records[::40][:3]:
        other = next(o for o in orders if o != record.taxonomy["order"])
        record.taxonomy = dict(record.taxonomy, order=other)
        flipped.append(record.id)
    index = build_reference(records, tiny[1], source="noisy")
    path = tmp_path_factory.mktemp("noisy") / "noisy.h5"
    index.save(path)
    return index, path, flipped


def test_mislabelled_records_switch_no_rank_off_and_are_named(noisy_index):
    index, path, flipped = noisy_index
    t = index.identity_thresholds
    assert t.confidence is not None
    for rank in ("order", "family", "genus", "species"):
        assert t.ranks[rank] == pytest.approx(t.min_confidence)      # a cutoff, never "never"
        assert t.details[rank]["sequence"]["named"] > 0.5
    conflicts = t.details["conflicts"]
    named = {c["id"] for c in conflicts["records"]} | {c["other_id"] for c in conflicts["records"]}
    assert conflicts["pairs"] >= 1 and named & set(flipped)
    info = CliRunner().invoke(main, ["reference", "info", str(path)])
    assert info.exit_code == 0, info.output
    assert any(line.startswith("conflict\t") for line in info.output.splitlines())
    assert "confidence\tgenus\t>= 0.5000" in info.output


def test_the_odd_record_of_a_conflict_is_read_as_unlabelled(noisy_index, tiny):
    """A record given another order sits beside its species' records, far from any of its new order: it is the odd
    one of its conflict, and calibration and classification read it as unlabelled at that order and below (its
    record keeps the label it was given); the partner keeps its labels; the stored index reads the same."""
    from barcodetool.classify import ClassifyOptions, classify_records

    index, path, flipped = noisy_index
    odd = index.identity_thresholds.details["conflicts"]["odd"]
    assert odd and {entry["id"] for entry in odd} <= set(flipped)
    layer = index.identity
    row_of = {record_id: row for row, record_id in enumerate(index.ids)}
    for entry in odd:
        assert entry["rank"] == "order" and entry["own_nearest"] < entry["partner_own_nearest"] - 0.02
        record = row_of[entry["id"]]
        group = int(index.groups[record])
        assert all(layer.codes[rank][group] == -1 for rank in ("order", "family", "genus", "species"))
        assert layer.codes["class"][group] >= 0 and index.codes["order"][record] >= 0
    partners = {c["other_id"] for c in index.identity_thresholds.details["conflicts"]["records"]} - set(flipped)
    assert all(layer.codes["order"][int(index.groups[row_of[p]])] >= 0 for p in partners)
    loaded = ReferenceIndex.load(path)
    for rank in layer.codes:
        np.testing.assert_array_equal(loaded.identity.codes[rank], layer.codes[rank])
    info = CliRunner().invoke(main, ["reference", "info", str(path)]).output
    assert {line.split("\t")[1] for line in info.splitlines() if line.startswith("unlabelled\t")} == {
        entry["id"] for entry in odd}
    # a barcode identical to an odd record is never given the order that record was wrongly given
    records = [r for r in read_barcodes(SAMPLE, skip_empty=True) if r.id in {e["id"] for e in odd}]
    for record, assignment in zip(records, classify_records(records, loaded, tiny[1], ClassifyOptions())):
        wrong = index.label("order", int(index.codes["order"][row_of[record.id]]))
        assert assignment.label("order") != wrong


def test_an_index_grown_in_memory_reads_the_odd_records_as_unlabelled(noisy_index, tiny):
    """`reference add` of a few records keeps the calibration, and with it the odd records read as unlabelled."""
    from barcodetool.reference.update import add_records

    index, _, _ = noisy_index
    odd = index.identity_thresholds.details["conflicts"]["odd"]
    extra = [r for r in read_barcodes(SAMPLE, skip_empty=True) if r.split == "test"][:5]
    grown = add_records(index, extra, tiny[1], recalibrate=False)
    row_of = {record_id: row for row, record_id in enumerate(grown.ids)}
    for entry in odd:
        group = int(grown.groups[row_of[entry["id"]]])
        assert grown.identity.codes[entry["rank"]][group] == -1 and grown.identity.codes["species"][group] == -1


def test_stored_model_loads_identically_and_a_damaged_one_is_refused(noisy_index, tmp_path):
    index, path, _ = noisy_index
    loaded = ReferenceIndex.load(path)
    probe = np.random.default_rng(0).random((50, len(FEATURES)))
    for rank, model in index.identity_thresholds.confidence.ranks.items():
        np.testing.assert_array_equal(loaded.identity_thresholds.confidence.ranks[rank].probability(probe),
                                      model.probability(probe))
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(path.read_bytes())
    with h5py.File(damaged, "r+") as handle:
        del handle["identity/confidence_model"]
        bad = json.dumps({"version": FEATURES_VERSION, "features": list(FEATURES), "ranks": 5}).encode()
        handle["identity/confidence_model"] = np.frombuffer(bad, dtype=np.uint8)
    with pytest.raises(InputError, match="confidence model"):
        ReferenceIndex.load(damaged)
    with h5py.File(damaged, "r+") as handle:   # a model of another version is refitted, not refused
        del handle["identity/confidence_model"]
        handle["identity/confidence_model"] = np.frombuffer(b'{"version": 0, "ranks": {}}', dtype=np.uint8)
    assert ReferenceIndex.load(damaged).identity_thresholds.confidence is None


def test_confidences_are_what_both_outputs_show(noisy_index, tiny, tmp_path):
    _, path, _ = noisy_index
    queries = [r for r in read_barcodes(SAMPLE, skip_empty=True) if r.split == "test"][:30]
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in queries))
    runner = CliRunner()
    common = ["classify", str(fasta), "-r", str(path), "-m", str(tiny[0]), "--threads", "1"]
    assert runner.invoke(main, [*common, "-o", str(tmp_path / "out.tsv")]).exit_code == 0
    assert runner.invoke(main, [*common, "-o", str(tmp_path / "out.sintax"), "--output-format", "sintax"]
                         ).exit_code == 0
    rows = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    sintax = {line.split("\t")[0]: line.split("\t")[1] for line in (tmp_path / "out.sintax").read_text().splitlines()}
    for row in rows:
        cells = dict(zip(header, row))
        for rank, letter in (("order", "o"), ("genus", "g")):
            if cells[rank]:   # named: the TSV's confidence is the SINTAX column 2 value of that rank
                shown = next(part for part in sintax[cells["id"]].split(",") if part.startswith(f"{letter}:"))
                assert float(shown.rsplit("(", 1)[1].rstrip(")")) == pytest.approx(
                    float(cells[f"{rank}_confidence"]), abs=0.006)
                assert float(cells[f"{rank}_confidence"]) >= 0.5


def test_an_index_without_a_model_is_recalibrated_in_memory(noisy_index):
    index, path, _ = noisy_index
    old = ReferenceIndex.load(path)
    old.identity_thresholds = dataclasses.replace(old.identity_thresholds, confidence=None)
    from barcodetool.reference import thresholds_for

    again = thresholds_for(old, "identity")
    assert again.confidence is not None and set(again.confidence.ranks) == set(
        index.identity_thresholds.confidence.ranks)
