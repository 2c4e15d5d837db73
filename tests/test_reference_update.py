"""Growing a reference index without rebuilding it: `add_records`, `merge_indexes`, `KmerIndex.extended` and the
`reference add` / `reference merge` commands. An added index must equal the rebuilt one, array for array, and
classify the same."""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import DATA, SAMPLE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401

import barcodetool.reference.update as update
from barcodetool.classify import classify, write_classification
from barcodetool.cli import main
from barcodetool.errors import IndexMismatchError, InputError
from barcodetool.io.readers import BarcodeRecord, read_barcodes
from barcodetool.reference import RECALIBRATE_SHARE, ReferenceIndex, add_records, build_reference, merge_indexes
from barcodetool.reference.isolation import compute_isolation
from barcodetool.search import KmerIndex

BASE_SPLITS = ("train", "pretrain")


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-a", seed=0)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def records():
    """(base, extra): the sample's train and pretrain records, and the others (new species and labels) followed by
    records whose sequences the base holds (one relabelled twice, which changes its group's representative) and a
    record of a new genus whose name sorts before every other."""
    every = list(read_barcodes(SAMPLE, skip_empty=True))
    base = [r for r in every if r.split in BASE_SPLITS]
    extra = [r for r in every if r.split not in BASE_SPLITS]
    extra += [BarcodeRecord(f"copy-{r.id}", r.sequence, dict(r.taxonomy), r.bin) for r in base[:4]]
    relabelled = dict(base[5].taxonomy, genus="Aaaa", species="Aaaa novus")
    extra += [BarcodeRecord(f"relabelled-{i}-{base[5].id}", base[5].sequence, relabelled, "BOLD:ZZZ0001")
              for i in range(2)]
    extra.append(BarcodeRecord("new-genus", extra[0].sequence[::-1], {"phylum": "Arthropoda", "genus": "Aaab"}))
    return base, extra


@pytest.fixture(scope="module")
def base_index(tiny, records):
    """The base records' calibrated index (both rules)."""
    return build_reference(records[0], tiny[1], source="base")


def decoded(index: ReferenceIndex, name: str) -> list[str]:
    names = index.label_names[name]
    return [names[c] if c >= 0 else "" for c in index.codes[name].tolist()]


def assert_same_index(grown: ReferenceIndex, rebuilt: ReferenceIndex) -> None:
    """Array for array: ids, groups, embeddings, labels (codes as names: a grown index appends new names), the
    identity layer and its k-mer index."""
    assert grown.ids == rebuilt.ids
    np.testing.assert_array_equal(grown.groups, rebuilt.groups)
    assert grown.embeddings.dtype == rebuilt.embeddings.dtype
    np.testing.assert_allclose(grown.embeddings, rebuilt.embeddings, rtol=0, atol=1e-6)
    assert grown.sequences == rebuilt.sequences
    assert set(grown.codes) == set(rebuilt.codes)
    for name in rebuilt.codes:
        assert decoded(grown, name) == decoded(rebuilt, name), name
    a, b = grown.identity, rebuilt.identity
    for name in ("group_first", "group_record"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in rebuilt.codes:
        assert [grown.label(name, c) for c in a.codes[name].tolist()] == \
            [rebuilt.label(name, c) for c in b.codes[name].tolist()]
    assert a.kmer.size == b.kmer.size and a.kmer.max_stored_df == b.kmer.max_stored_df
    for name in ("kmers", "df", "refs"):
        np.testing.assert_array_equal(getattr(a.kmer, name), getattr(b.kmer, name), err_msg=name)
    np.testing.assert_array_equal(a.store.packed, b.store.packed)
    np.testing.assert_array_equal(a.store.lengths, b.store.lengths)


def classified(index: ReferenceIndex, queries, model, **options) -> str:
    out = io.StringIO()
    write_classification(classify(queries, index, model, **options), out)
    return out.getvalue()


# ============================================================================================ add == rebuild
def test_add_equals_rebuild_and_classifies_the_same(tiny, records, base_index):
    base, extra = records
    model = tiny[1]
    grown = add_records(base_index, extra, model, recalibrate=False)
    rebuilt = build_reference(base + extra, model, calibrate=False)
    assert_same_index(grown, rebuilt)
    # the isolation tables of the grown index are those of the whole reference, the added sequences among them
    for rank, (rows, scores) in compute_isolation(rebuilt).items():
        np.testing.assert_array_equal(grown.identity_isolation[rank][0], rows)
        np.testing.assert_array_equal(grown.identity_isolation[rank][1], scores)
    # old codes unchanged; new names appended (a build sorts "Aaaa" first)
    old = base_index.label_names["genus"]
    assert grown.label_names["genus"][:len(old)] == old and grown.label_names["genus"][len(old):][:2] == ["Aaaa",
                                                                                                     "Aaab"]
    np.testing.assert_array_equal(grown.codes["genus"][:len(base)], base_index.codes["genus"])
    # the relabelled copies outvote the base record: the group's representative is theirs, as in the rebuild
    group = grown.groups[len(base) + len(extra) - 2]
    assert grown.ids[grown.identity.group_record[group]].startswith("relabelled-")
    assert base_index.identity.kmer.size == len(np.unique(base_index.groups))   # the base index is left as it was

    # with the same calibration (thresholds, confidence model and the stored leave-out searches, from which other
    # settings, here embed_below = inf, are recalibrated) the two classify alike
    rebuilt.thresholds, rebuilt.identity_thresholds = grown.thresholds, grown.identity_thresholds
    rebuilt.calibration, rebuilt.identity_calibration = copy.deepcopy((grown.calibration, grown.identity_calibration))
    queries = list(read_barcodes(DATA / "example.fasta"))[:40] + extra
    for options in ({}, {"embed_below": float("inf")}, {"method": "knn"}):
        assert classified(grown, queries, model, **options) == classified(rebuilt, queries, model, **options)


def test_saved_grown_index_reads_back(tmp_path, tiny, records, base_index):
    grown = add_records(base_index.__class__.load(base_index.save(tmp_path / "base.h5")), records[1][:6], tiny[1])
    loaded = ReferenceIndex.load(grown.save(tmp_path / "grown.h5"))
    assert loaded.ids == grown.ids and loaded.sequences == grown.sequences
    for name in ("kmers", "df", "refs"):
        np.testing.assert_array_equal(getattr(loaded.identity.kmer, name), getattr(grown.identity.kmer, name))
    for level, stored in base_index.identity_calibration.items():   # kept: 6 records are under the share
        for name, values in stored.items():
            np.testing.assert_array_equal(loaded.identity_calibration[level][name], values)
    assert loaded.attrs["source"] == "base"


# ============================================================================================ the k-mer index
def real_sequences(n: int | None = None) -> list[str]:
    return list(dict.fromkeys(r.sequence for r in read_barcodes(SAMPLE, skip_empty=True)))[:n]


@pytest.mark.parametrize("cap", [None, 1, 2, 3, 6, 40])
@pytest.mark.parametrize("split", [0, 1, 90, 194])
def test_kmer_index_extended_equals_a_build(cap, split):
    """k = 8 keeps the 4^k tables small; with small caps many k-mers cross max_stored_df with the new rows (and
    lose their stored postings), some were over it already, some stay under."""
    sequences = real_sequences() + ["ACGTNACGTACGT", "ACG", "NNNNNNNNNNNN"]
    built = KmerIndex(sequences, k=8, max_stored_df=cap)
    extended = KmerIndex(sequences[:split], k=8, max_stored_df=cap, cells=5000).extended(sequences[split:],
                                                                                  cells=3000)
    twice = KmerIndex(sequences[:split], k=8, max_stored_df=cap).extended(sequences[split:split + 3]) \
        .extended(sequences[split + 3:])
    for index in (extended, twice):
        assert index.size == built.size and index.max_stored_df == built.max_stored_df
        for name in ("kmers", "df", "refs"):
            np.testing.assert_array_equal(getattr(index, name), getattr(built, name), err_msg=name)
    if cap is not None and 0 < split < len(sequences):
        before = KmerIndex(sequences[:split], k=8, max_stored_df=cap)
        crossed = np.isin(built.kmers, before.kmers[before.df <= cap]) & (built.df > cap)
        assert crossed.any() or cap == 40


def test_kmer_index_extended_moves_postings_in_blocks(monkeypatch):
    import barcodetool.search.kmer_index as kmer_index

    monkeypatch.setattr(kmer_index, "KMER_MOVE_POSTINGS", 50)
    sequences = real_sequences()
    built = KmerIndex(sequences, k=8, max_stored_df=4)
    extended = KmerIndex(sequences[:120], k=8, max_stored_df=4).extended(sequences[120:])
    for name in ("kmers", "df", "refs"):
        np.testing.assert_array_equal(getattr(extended, name), getattr(built, name))


def test_add_crosses_a_small_max_stored_df(tiny, records, base_index):
    """Through add_records at the real k (12): an index that stores postings only up to 3 references."""
    base, extra = records
    small = copy.copy(base_index)
    small._identity = replace(base_index.identity, kmer=KmerIndex(base_index.identity.store, max_stored_df=3))
    grown = add_records(small, extra, tiny[1], recalibrate=False)
    expected = KmerIndex(list(dict.fromkeys(r.sequence for r in base + extra)), max_stored_df=3)
    before = small.identity.kmer
    assert grown.identity.kmer.max_stored_df == 3
    assert ((grown.identity.kmer.df > 3) & np.isin(grown.identity.kmer.kmers, before.kmers[before.df <= 3])).any()
    for name in ("kmers", "df", "refs"):
        np.testing.assert_array_equal(getattr(grown.identity.kmer, name), getattr(expected, name))


# ============================================================================================ calibration
def new_records(records, n: int) -> list:
    """n records of sequences the base does not hold."""
    held = {r.sequence for r in records[0]}
    fresh = [r for r in records[1] if r.sequence not in held]
    return list({r.sequence: r for r in fresh}.values())[:n]


def test_calibration_kept_below_the_share_and_redone_above(tiny, records, base_index, caplog):
    distinct = len(np.unique(base_index.groups))
    below = int(RECALIBRATE_SHARE * distinct)
    caplog.set_level(logging.INFO, logger="barcodetool")
    kept = add_records(base_index, new_records(records, below), tiny[1])
    assert "the stored calibration is kept" in caplog.text
    assert kept.identity_thresholds.confidence is base_index.identity_thresholds.confidence
    assert kept.identity_thresholds.ranks == base_index.identity_thresholds.ranks
    assert kept.thresholds.ranks == base_index.thresholds.ranks
    assert kept.calibration["sequence"]["neighbours"] is base_index.calibration["sequence"]["neighbours"]
    assert kept.identity_calibration is not base_index.identity_calibration    # a copy: the base stays as it is

    caplog.clear()
    redone = add_records(base_index, new_records(records, below + 1), tiny[1])
    assert "calibrated again" in caplog.text
    assert redone.identity_thresholds.confidence is not base_index.identity_thresholds.confidence
    # the leave-out searches were made again on the grown reference: every distinct sequence is a query
    assert len(redone.identity_calibration["sequence"]["queries"]) == len(redone.identity) == distinct + below + 1
    assert len(redone.calibration["sequence"]["queries"]) == len(redone.identity)
    assert redone.identity_thresholds.precision == base_index.identity_thresholds.precision


def test_recalibrate_asked_uses_the_index_settings(tiny, records, base_index, monkeypatch):
    index = copy.copy(base_index)
    index.thresholds = replace(base_index.thresholds, precision=0.9, k=7, min_confidence=0.6)
    index.identity_thresholds = replace(base_index.identity_thresholds, precision=0.9, min_confidence=0.7,
                                        candidates=(15, 8), embed_below=0.9, widen=(40, 0.9, 3))
    calls = []

    def calibrate(merged, method, **settings):
        # build_reference's state: nothing of the old calibration left
        assert merged.calibration is None and merged.identity_calibration is None
        assert merged.thresholds is None and merged.identity_thresholds is None
        calls.append((method, settings))

    monkeypatch.setattr(update, "calibrate_thresholds", calibrate)
    add_records(index, new_records(records, 1), tiny[1], recalibrate=True)
    assert calls == [("knn", {"precision": 0.9, "k": 7, "min_confidence": 0.6}),
                     ("identity", {"precision": 0.9, "min_confidence": 0.7, "candidates": (15, 8),
                                   "embed_below": 0.9, "widen": (40, 0.9, 3)})]
    calls.clear()
    add_records(index, new_records(records, 30), tiny[1], recalibrate=False)   # never, whatever the share
    assert calls == []
    uncalibrated = build_reference(records[0], tiny[1], calibrate=False)
    assert add_records(uncalibrated, new_records(records, 30), tiny[1]).identity_thresholds is None
    assert calls == []


# ============================================================================================ merge, errors
def test_merge_equals_add(tiny, records, base_index):
    extra = records[1]
    second = build_reference(extra, tiny[1], calibrate=False, source="extra")
    merged = merge_indexes(base_index, second, recalibrate=False)
    assert_same_index(merged, add_records(base_index, extra, tiny[1], recalibrate=False))
    assert merged.thresholds.ranks == base_index.thresholds.ranks
    assert merged.attrs["source"] == "base + extra"
    half = build_reference(extra, tiny[1], calibrate=False, dtype="float16")    # float16 rows made unit again
    merged16 = merge_indexes(base_index, half, recalibrate=False)
    assert merged16.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(merged16.embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(merged16.embeddings, merged.embeddings, atol=2e-3)


def test_other_model_and_repeated_ids_are_refused(tmp_path, tiny, records, base_index):
    other = load_tiny(make_tiny_model(tmp_path / "tiny-b", seed=1))
    second = build_reference(records[1], other, calibrate=False)
    with pytest.raises(IndexMismatchError, match="tiny-b.*tiny-a"):
        merge_indexes(base_index, second)
    with pytest.raises(IndexMismatchError, match="tiny-a"):
        add_records(base_index, records[1], other)
    with pytest.raises(InputError, match="already in the index"):
        add_records(base_index, records[0][:2], tiny[1])
    with pytest.raises(InputError, match="given twice"):
        add_records(base_index, [records[1][0], records[1][0]], tiny[1])
    with pytest.raises(InputError, match="no records"):
        add_records(base_index, [], tiny[1])
    again = add_records(base_index, records[0][:2], tiny[1], allow_duplicates=True)
    assert len(again) == len(base_index) + 2 and len(again.identity) == len(base_index.identity)


# ============================================================================================ CLI
def test_cli_add_and_merge(tmp_path, tiny, records, base_index):
    runner = CliRunner()
    base = base_index.save(tmp_path / "base.h5")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    fresh = {r.id for r in new_records(records, 5)}
    added = tmp_path / "new.csv"
    added.write_text("\n".join([lines[0]] + [line for line in lines[1:] if line.split(",")[0] in fresh]) + "\n",
                     encoding="utf-8")
    out = tmp_path / "grown.h5"
    result = runner.invoke(main, ["reference", "add", str(base), str(added), "-o", str(out), "--model", str(tiny[0]),
                                  "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "the stored calibration is kept" in result.output and "(5 added)" in result.output
    info = runner.invoke(main, ["reference", "info", str(out)])
    assert info.exit_code == 0 and f"barcodes\t{len(base_index) + 5}\t" in info.output, info.output
    assert "calibration\tidentity" in info.output
    grown = ReferenceIndex.load(out)
    assert grown.ids[len(base_index):] == [i for i in (line.split(",")[0] for line in lines[1:]) if i in fresh]

    second = build_reference(read_barcodes(added), tiny[1], calibrate=False).save(tmp_path / "second.h5")
    merged = tmp_path / "merged.h5"
    result = runner.invoke(main, ["reference", "merge", str(base), str(second), "-o", str(merged)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["reference", "info", str(merged)]).exit_code == 0
    assert ReferenceIndex.load(merged).ids == grown.ids

    def refused(arguments: list[str], message: str) -> None:
        result = runner.invoke(main, arguments)
        errors = [line for line in result.output.splitlines() if line.startswith("barcodetool: error:")]
        assert result.exit_code == 1 and len(errors) == 1 and message in errors[0], result.output
        assert "Traceback" not in result.output

    refused(["reference", "add", str(SAMPLE), str(added), "-o", str(tmp_path / "x.h5"), "--model", str(tiny[0])],
            "cannot open as HDF5")
    refused(["reference", "add", str(base), str(SAMPLE), "-o", str(tmp_path / "x.h5"), "--model", str(tiny[0])],
            "already in the index")
    refused(["reference", "merge", str(base), str(base), "-o", str(tmp_path / "x.h5")], "already in the index")
    other = make_tiny_model(tmp_path / "tiny-b", seed=1)
    other_index = build_reference(records[1][:5], load_tiny(other), calibrate=False).save(tmp_path / "other.h5")
    refused(["reference", "merge", str(base), str(other_index), "-o", str(tmp_path / "x.h5")], "tiny-b")
    assert not (tmp_path / "x.h5").exists()
