"""Isolation tables: each reference sequence's nearest references of another species and genus, as stored, as the
leave-out calibration sees them, and in an index of an older version."""

from __future__ import annotations

import logging
from dataclasses import replace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import SAMPLE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401

from barcodetool.cli import main
from barcodetool.io.readers import read_barcodes
from barcodetool.reference import ReferenceIndex, build_reference
from barcodetool.reference.confidence import MAX_DISTANCE, isolation_distances
from barcodetool.reference.isolation import (ISOLATION_NEIGHBOURS, ISOLATION_SEARCH, _nearest_other,
                                             compute_isolation, isolation_tables, left_out_isolation, searched_rows)
from barcodetool.search import score_candidates


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-iso", seed=0)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def records():
    return [r for r in read_barcodes(SAMPLE, skip_empty=True) if r.split in ("train", "val")]


@pytest.fixture(scope="module")
def index(tiny, records):
    return build_reference(records, tiny[1], source="sample", calibrate=False)


def _brute_force_best(layer, rank: str) -> np.ndarray:
    """Each distinct sequence's best identity score against every sequence of another label (-inf: none); a
    sequence without a label at the rank is nobody's other label."""
    codes = layer.codes[rank]
    n = len(layer)
    candidates = np.tile(np.arange(n), (n, 1))
    candidates = np.where((codes[candidates] != codes[:, None]) & (codes[candidates] >= 0), candidates, -1)
    score = score_candidates(layer.store, layer.store, candidates)[0]
    return np.where(candidates >= 0, score, -np.inf).max(axis=1)


def test_tables_hold_the_nearest_references_of_another_label(index):
    layer = index.identity
    tables = compute_isolation(index)
    assert set(tables) == {"species", "genus"}
    for rank, (rows, scores) in tables.items():
        codes = layer.codes[rank]
        assert rows.shape == scores.shape == (len(layer), ISOLATION_NEIGHBOURS)
        found = rows >= 0
        assert found[:, 0].all()
        # never a reference of the sequence's own label; best first
        assert (codes[rows[found]] != np.broadcast_to(codes[:, None], rows.shape)[found]).all()
        assert (np.diff(np.where(found, scores, -np.inf), axis=1) <= 0).all()
        # against every pair scored: never nearer than the true nearest of another label, and where that one is
        # near (within 10%, where a barcode gap is read) nearly always it; far ones are found approximately, as
        # the k-mer count hardly follows identity there
        truth = _brute_force_best(layer, rank)
        assert (scores[:, 0] <= truth + 1e-6).all()
        near = truth >= 0.9
        assert np.mean(np.isclose(scores[near, 0], truth[near], atol=1e-6)) >= 0.9
        assert np.mean(truth - scores[:, 0]) <= 0.02
    distances = isolation_distances(tables, np.array([0, -1]))
    assert distances[0].tolist() == pytest.approx([1 - tables["species"][1][0, 0], 1 - tables["genus"][1][0, 0]])
    assert distances[1].tolist() == [MAX_DISTANCE, MAX_DISTANCE]


def test_a_reference_without_a_label_is_not_another_label(tiny, records):
    """The species most often the nearest other species, its name removed (as an odd record's, or a source's
    empty rank): its sequences are no longer anybody's nearest other species, and the sequences whose k-mer
    candidates were all of it search deeper and find the nearest labelled one."""
    full = build_reference(records, tiny[1], calibrate=False)
    species = full.identity.codes["species"]
    nearest = species[compute_isolation(full)["species"][0][:, 0]]
    name = full.label_names["species"][int(np.bincount(nearest[nearest >= 0]).argmax())]
    unnamed = [replace(r, taxonomy={k: v for k, v in r.taxonomy.items() if k != "species"})
               if r.taxonomy.get("species") == name else r for r in records]
    index = build_reference(unnamed, tiny[1], calibrate=False)
    layer = index.identity
    codes = layer.codes["species"]
    assert (codes < 0).sum() >= 3
    rows, scores = compute_isolation(index)["species"]
    found = rows >= 0
    assert (codes[rows[found]] >= 0).all()
    assert found[:, 0].all()
    truth = _brute_force_best(layer, "species")
    assert (scores[:, 0] <= truth + 1e-6).all()
    near = truth >= 0.9
    assert np.mean(np.isclose(scores[near, 0], truth[near], atol=1e-6)) >= 0.9
    # the deeper search: sequences whose ISOLATION_SEARCH nearest of another label are all unnamed ones
    first = _nearest_other(layer.kmer, layer.store, codes, codes, ISOLATION_SEARCH)
    deeper = np.flatnonzero((codes >= 0) & ((first < 0) | (codes[np.maximum(first, 0)] < 0)).all(axis=1))
    assert len(deeper) and found[deeper, 0].all()
    np.testing.assert_allclose(scores[deeper, 0], truth[deeper], atol=1e-6)


def test_left_out_isolation_is_that_of_the_reference_without_the_left_out_species(index, tiny, records):
    layer = index.identity
    tables = compute_isolation(index)
    rows, _ = tables["species"]
    species = layer.codes["species"]
    # the species most often the nearest other species of another sequence: leaving it out matters most there
    nearest = species[rows[:, 0]]
    left = int(np.bincount(nearest[nearest >= 0]).argmax())
    name = index.label_names["species"][left]
    hits = np.nonzero((nearest == left) & (species != left))[0]
    assert len(hits) >= 3
    query = np.full(len(hits), int(np.nonzero(species == left)[0][0]))
    left_out = left_out_isolation(index, tables, hits, query, "species")

    without = build_reference([r for r in records if r.taxonomy.get("species") != name], tiny[1], calibrate=False)
    row_of = {without.identity.store.sequence(i): i for i in range(len(without.identity))}
    moved = np.array([row_of[layer.store.sequence(int(h))] for h in hits])
    truth = isolation_distances(compute_isolation(without), moved)
    # the species column: searched again where every stored neighbour was of the left-out species, so exactly
    # the reduced reference's; elsewhere from fewer candidates, so never nearer than it
    assert (left_out[:, 0] >= truth[:, 0] - 1e-6).all()
    searched_again = (species[rows[hits]] == left).all(axis=1)
    assert searched_again.any()
    np.testing.assert_allclose(left_out[searched_again, 0], truth[searched_again, 0], atol=1e-6)
    # the sequence level skips only the left-out sequence itself
    same = left_out_isolation(index, tables, hits, hits, "sequence")
    np.testing.assert_allclose(same, isolation_distances(tables, hits))


def test_tables_round_trip_and_an_older_index_computes_them(tiny, records, tmp_path, caplog):
    built = build_reference(records[:120], tiny[1], source="sample")
    assert built.identity_isolation is not None       # the identity calibration computes them
    path = built.save(tmp_path / "ref.h5")
    loaded = ReferenceIndex.load(path)
    for rank, (rows, scores) in built.identity_isolation.items():
        np.testing.assert_array_equal(loaded.identity_isolation[rank][0], rows)
        np.testing.assert_array_equal(loaded.identity_isolation[rank][1], scores)
    with h5py.File(path, "r+") as handle:
        del handle["identity/isolation"]
    older = ReferenceIndex.load(path)
    assert older.identity_isolation is None
    with caplog.at_level(logging.WARNING):
        tables = isolation_tables(older)
    assert "holds no isolation tables" in caplog.text
    for rank in tables:
        np.testing.assert_array_equal(tables[rank][0], built.identity_isolation[rank][0])
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records[120:140]))
    out = tmp_path / "out.tsv"
    result = CliRunner().invoke(main, ["classify", str(fasta), "-r", str(path), "-o", str(out),
                                       "--model", str(tiny[0])])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 21



def test_an_index_without_species_or_genus_labels_is_no_older_version(tiny, records, tmp_path, caplog):
    """Its tables are empty (no label to be isolated from), so none is stored; read back, it computes the same
    nothing without calling itself an index of an older version on every use."""
    unlabelled = [replace(r, taxonomy={rank: name for rank, name in r.taxonomy.items()
                                       if rank not in ("genus", "species")}) for r in records[:60]]
    path = build_reference(unlabelled, tiny[1], source="sample").save(tmp_path / "ref.h5")
    loaded = ReferenceIndex.load(path)
    with caplog.at_level(logging.WARNING):
        assert isolation_tables(loaded) == {}
    assert "holds no isolation tables" not in caplog.text

def test_a_large_reference_searches_a_sample_and_rows_take_a_siblings_entries(index):
    layer = index.identity
    full = compute_isolation(index)
    species, genus = layer.codes["species"], layer.codes["genus"]
    groups = len(np.unique(np.where(species >= 0, species, -2 - np.arange(len(layer)))))
    for limit in (groups + 10, groups // 2):   # room for every species, and not
        searched, source = searched_rows(layer.codes, len(layer), limit)
        assert len(searched) == limit and len(np.unique(searched)) == limit
        covered = source >= 0
        assert np.isin(source[covered], searched).all() and (source[searched] == searched).all()
        assert (species[source[covered]] == species[covered]).all()
        assert (genus[source[covered]] == genus[covered]).all()
        # as evenly as the limit allows: every group has a searched row, or none has two
        per_group = np.bincount(np.unique(species[searched], return_inverse=True)[1])
        assert covered.all() if limit > groups else per_group.max() == 1
        sampled = compute_isolation(index, limit=limit)
        for rank in sampled:
            np.testing.assert_array_equal(sampled[rank][0][covered], full[rank][0][source[covered]])
            np.testing.assert_array_equal(sampled[rank][1][covered], full[rank][1][source[covered]])
            assert (sampled[rank][0][~covered] == -1).all()
            assert (isolation_distances(sampled, np.nonzero(~covered)[0]) == MAX_DISTANCE).all()
    assert searched_rows(layer.codes, len(layer), len(layer))[1].tolist() == list(range(len(layer)))
