"""Classification: one row per query in order, open world, hierarchy, SINTAX output, probe, CLI."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from barcodetool.classify import (TSV_COLUMNS, Assignment, ClassifyOptions, classify, classify_records, sintax_row,
                                  write_classification)
from barcodetool.cli import main
from barcodetool.errors import IndexMismatchError, UsageError
from barcodetool.io.readers import BarcodeRecord, parse_sintax_taxonomy, read_barcodes
from barcodetool.reference import ReferenceIndex, build_reference, calibrate_thresholds
from barcodetool.taxonomy import OPTIONAL_RANKS, RANKS
from helpers_models import SAMPLE, SINTAX_REFERENCE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401
from helpers_sequences import lineage, synthetic_records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-a", seed=0)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def records():
    return list(read_barcodes(SAMPLE, skip_empty=True))


@pytest.fixture(scope="module")
def index(tiny, records):
    """The reference: the sample's train and val records (test and test_unseen are the queries)."""
    return build_reference([r for r in records if r.split in ("train", "val")], tiny[1])


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, index):
    return index.save(tmp_path_factory.mktemp("index") / "ref.h5")


def assert_hierarchical(assignment: Assignment):
    """Assigned ranks form a prefix of the lineage (optional ranks may be skipped)."""
    gap = False
    for rank in RANKS:
        if rank in assignment.labels:
            assert not gap, f"{assignment.id}: {rank} assigned below an unassigned rank"
        elif rank in assignment.candidates and rank not in OPTIONAL_RANKS:
            gap = True


# ============================================================================================ library
def test_one_row_per_query_in_input_order_with_duplicates(index, tiny, records):
    queries = [r for r in records if r.split == "test"][:12]
    # repeat sequences under new ids, and a duplicate id
    queries = queries + [BarcodeRecord(f"dup{i}", q.sequence, {}) for i, q in enumerate(queries[:4])]
    queries.append(BarcodeRecord(queries[0].id, queries[0].sequence, {}))
    result = classify(queries, index, tiny[1], chunk_size=5)
    assert [a.id for a in result] == [q.id for q in queries]
    for i in range(4):
        original, copy = result[i], result[12 + i]
        assert (copy.labels, copy.nearest_id, copy.similarity) == (original.labels, original.nearest_id,
                                                                     original.similarity)
    # chunking does not change answers
    whole = classify(queries, index, tiny[1], chunk_size=1000)
    assert [(a.labels, a.nearest_id) for a in whole] == [(a.labels, a.nearest_id) for a in result]


def test_assignments_are_hierarchical_and_consistent(index, tiny, records):
    queries = [r for r in records if r.split in ("test", "test_unseen")]
    result = classify(queries, index, tiny[1])
    lineage = {}
    for r in records:
        lineage[r.taxonomy.get("species")] = r.taxonomy
    for a in result:
        assert_hierarchical(a)
        assert a.rank == ([r for r in RANKS if r in a.labels] or [""])[-1]
        if "species" in a.labels:  # the genus shown is the assigned species' genus
            assert lineage[a.labels["species"]]["genus"] == a.labels["genus"]
        assert 0 <= a.similarity <= 1.0001 and a.nearest_id in index.ids
        for share in a.confidence.values():
            assert share >= 0.5 - 1e-6 and share <= 1 + 1e-6


def test_open_world_species_absent_genus_kept(index, tiny, records):
    """k-NN vote: test_unseen species are absent from the reference but their genera are present: species must
    stay empty and the genus is the deepest rank assigned where anything is."""
    unseen = [r for r in records if r.split == "test_unseen"]
    reference_species = {index.label_names["species"][c] for c in index.codes["species"] if c >= 0}
    assert unseen and not {r.taxonomy["species"] for r in unseen} & reference_species
    result = classify(unseen, index, tiny[1], method="knn")
    assert all(a.label("species") == "" for a in result)
    assigned = [(a, r) for a, r in zip(result, unseen) if a.label("genus")]
    assert assigned, "some unseen-species queries should keep their genus"
    right = sum(a.label("genus") == r.taxonomy["genus"] for a, r in assigned)
    assert right / len(assigned) >= 0.8
    for a, _ in assigned:
        assert a.rank == "genus"


def test_one_neighbour_is_the_nearest_neighbour(index, tiny, records):
    queries = [r for r in records if r.split == "test"][:10]
    result = classify(queries, index, tiny[1], neighbours=1, method="knn")
    for a in result:
        j = index.ids.index(a.nearest_id)
        for rank, label in a.labels.items():
            assert label == index.label(rank, index.codes[rank][j])
            assert a.confidence[rank] == pytest.approx(1.0)


def test_min_confidence_one_and_strict_precision_assign_less(index, tiny, records):
    queries = [r for r in records if r.split == "test"]
    default = classify(queries, index, tiny[1])
    strict = classify(queries, index, tiny[1], min_confidence=1.0, precision=0.999)
    assert sum(len(a.labels) for a in strict) <= sum(len(a.labels) for a in default)
    knn = classify(queries, index, tiny[1], method="knn")
    knn_strict = classify(queries, index, tiny[1], method="knn", min_confidence=1.0, precision=0.999)
    assert sum(len(a.labels) for a in knn_strict) <= sum(len(a.labels) for a in knn)
    calibrate_thresholds(index, "knn")  # back to the stored defaults for the other tests
    calibrate_thresholds(index, "identity")


def test_probe_method(index, tiny, records):
    queries = [r for r in records if r.split in ("test", "test_unseen")][:20]
    result = classify(queries, index, tiny[1], method="probe")
    assert len(result) == 20
    for a in result:
        assert_hierarchical(a)
    with pytest.raises(UsageError):
        classify(queries, index, tiny[1], method="blast")


def test_options_are_checked_once_and_keywords_override_them(index, tiny, records):
    for bad in ({"method": "blast"}, {"neighbours": 0}, {"min_confidence": 1.5}, {"candidates_kmer": -1},
                {"embed_below": float("nan")}, {"candidates_embedding": 0, "candidates_kmer": 0},
                {"chunk_size": 0}, {"search_workers": 0}):
        with pytest.raises(UsageError):
            ClassifyOptions(**bad)
    with pytest.raises(UsageError, match="unknown classify option k"):
        ClassifyOptions().replace(k=1)
    queries = [r for r in records if r.split == "test"][:8]
    given = classify(queries, index, tiny[1], ClassifyOptions(method="knn", neighbours=5), neighbours=1)
    keywords = classify(queries, index, tiny[1], method="knn", neighbours=1)
    assert [(a.labels, a.nearest_id) for a in given] == [(a.labels, a.nearest_id) for a in keywords]


def test_reads_of_the_other_strand_are_classified_as_their_reverse_complements(index, tiny, records, caplog):
    """A query read from the other strand matched nothing (anchors of chance 12-mers, similarity ~0): it is searched
    reverse-complemented too and read so where that matches, with its own row and id; a forward query never is."""
    from barcodetool.search import reverse_complement

    queries = [r for r in records if r.split in ("test", "test_unseen")][:12]
    flipped = [BarcodeRecord(f"{r.id}_rc", reverse_complement(r.sequence), r.taxonomy) for r in queries[::3]]
    for kmer_only in (False, True):
        options = ClassifyOptions(candidates_embedding=0) if kmer_only else None
        with caplog.at_level("WARNING", logger="barcodetool"):
            caplog.clear()
            result = list(classify_records(queries + flipped, index, None if kmer_only else tiny[1], options))
        assert [a.id for a in result] == [r.id for r in queries + flipped]
        forward = {a.id: a for a in result[:len(queries)]}
        for a in result[len(queries):]:
            same = forward[a.id.removesuffix("_rc")]
            assert (a.labels, a.nearest_id, a.similarity) == (same.labels, same.nearest_id, same.similarity), a
        assert f"{len(flipped)} distinct queries match the reference only as reverse complements" in caplog.text
        assert all(q.id in caplog.text for q in flipped) and "_rc" not in caplog.text.replace(
            ", ".join(q.id for q in flipped), "")
    # a reference record that is itself reversed (BOLD holds a few) matched reversed queries of other genera at
    # 79-90%: the share of 12-mers the reference holds tells their strand all the same
    reference = [r for r in records if r.split in ("train", "val")]
    odd = next(r for r in reference if r.taxonomy.get("genus") == "Eilema")
    reversed_index = build_reference(reference + [replace(odd, id="REVERSED-1", sequence=reverse_complement(
        odd.sequence))], tiny[1])
    query = next(r for r in records if r.split == "test" and r.taxonomy.get("order") == "Coleoptera")
    result = list(classify_records([query, replace(query, id="q_rc", sequence=reverse_complement(query.sequence))],
                                   reversed_index, None, ClassifyOptions(candidates_embedding=0)))
    assert (result[1].labels, result[1].nearest_id) == (result[0].labels, result[0].nearest_id)


def test_mismatched_model_is_refused(index, tmp_path, records):
    other = load_tiny(make_tiny_model(tmp_path / "tiny-b", seed=1))
    with pytest.raises(IndexMismatchError, match="tiny-a.*tiny-b"):
        classify(records[:2], index, other)


# ============================================================================================ identity method
@pytest.fixture(scope="module")
def synthetic_index(tiny):
    """Reference: 18 synthetic species (6 genera, 2 families), 6 haplotypes each; BIN = species."""
    records, _, _, _ = synthetic_records(seed=1)
    return build_reference(records, tiny[1])


@pytest.fixture
def synthetic(synthetic_index):
    """The reference with draws of new barcodes that start where the reference's stopped, in every test: what a
    test draws does not depend on which tests ran before it in the same process."""
    _, taxa, barcode, new_species = synthetic_records(seed=1)
    return synthetic_index, taxa, barcode, new_species


def test_identity_known_species_named_new_species_left_empty(synthetic, tiny):
    index, taxa, barcode, new_species = synthetic
    known = [BarcodeRecord(f"k{i}", barcode(key), lineage(key)) for i, key in enumerate(taxa)]
    novel = [BarcodeRecord(f"n{f}{g}", new_species(f, g), {"genus": f"Genus{f}x{g}"}) for f in range(2)
             for g in range(3)]
    result = classify(known + novel, index, tiny[1])
    assert [a.id for a in result] == [r.id for r in known + novel]
    named = 0
    for a, r, (f, g, s) in zip(result[:len(known)], known, taxa):
        assert a.label("genus") == r.taxonomy["genus"] and a.candidates["species"][0] == r.taxonomy["species"]
        assert a.similarity > 0.98 and a.bin in ("", f"BOLD:A{f}{g}{s}") and 0 < a.overlap <= 658
        if a.label("species"):      # new haplotypes a little farther than any seen in calibration stay unnamed
            named += 1
            assert a.label("species") == r.taxonomy["species"] and a.rank == "species"
            cutoff = index.identity_thresholds.min_confidence
            assert cutoff <= a.confidence["species"] <= 1.0 and a.confidence["genus"] >= a.confidence["species"]
    assert named >= 0.8 * len(known) and sum(bool(a.bin) for a in result[:len(known)]) >= 0.8 * len(known)
    for a, r in zip(result[len(known):], novel):   # open world: genus present, species absent
        assert a.label("species") == "" and a.rank == "genus", a
        assert a.label("genus") == r.taxonomy["genus"]
        assert a.candidates["species"][1] < index.identity_thresholds.ranks["species"]   # its confidence
        assert_hierarchical(a)
    assert all(a.bin == "" for a in result[len(known):])   # a new species is no known BIN


def test_identity_kmer_only_needs_no_model(synthetic, tiny):
    index, taxa, barcode, _ = synthetic
    queries = [BarcodeRecord(f"q{i}", barcode(key), lineage(key)) for i, key in enumerate(list(taxa) * 2)]
    queries.append(BarcodeRecord("dup", queries[0].sequence, {}))
    fast = classify(queries, index, None, candidates_embedding=0, chunk_size=7)
    assert [a.id for a in fast] == [q.id for q in queries]
    assert all(a.candidates["species"][0] == q.taxonomy["species"] for a, q in zip(fast[:-1], queries))
    named = [a.label("species") for a in fast[:-1]]
    assert all(n in ("", q.taxonomy["species"]) for n, q in zip(named, queries))
    assert sum(bool(n) for n in named) >= 0.8 * len(queries)   # a haplotype farther than calibration saw: unnamed
    assert fast[-1].labels == fast[0].labels and fast[-1].nearest_id == fast[0].nearest_id
    with pytest.raises(UsageError, match="model"):
        classify(queries, index, None)
    with pytest.raises(UsageError):
        classify(queries, index, tiny[1], candidates_embedding=0, candidates_kmer=0)
    calibrate_thresholds(index, "identity")


# ============================================================================================ output formats
def test_tsv_columns(index, tiny, records):
    result = classify([r for r in records if r.split == "test"][:5], index, tiny[1])
    buffer = io.StringIO()
    assert write_classification(result, buffer, "tsv") == 5
    rows = list(csv.reader(io.StringIO(buffer.getvalue()), delimiter="\t"))
    assert rows[0] == TSV_COLUMNS
    assert rows[0][:3] == ["id", "phylum", "phylum_confidence"]
    assert rows[0][-5:] == ["rank", "nearest_id", "similarity", "bin", "identity_overlap"]
    for row, a in zip(rows[1:], result):
        assert len(row) == len(TSV_COLUMNS) and row[0] == a.id
        assert int(row[-1]) == a.overlap > 0 and float(row[TSV_COLUMNS.index("similarity")]) == \
            pytest.approx(a.similarity, abs=6e-5)
        for rank in RANKS:
            label = row[TSV_COLUMNS.index(rank)]
            conf = row[TSV_COLUMNS.index(f"{rank}_confidence")]
            assert label == a.label(rank)
            assert (conf == "") == (label == "")


def test_sintax_format():
    a = Assignment(id="q1", labels={"phylum": "Arthropoda", "genus": "Aedes"},
                   confidence={"phylum": 1.0, "genus": 0.8},
                   candidates={"phylum": ("Arthropoda", 1.0), "genus": ("Aedes", 0.8),
                               "species": ("Aedes aegypti", 0.4)}, rank="genus")
    line = sintax_row(a)
    assert line == ("q1\tp:Arthropoda(1.00),g:Aedes(0.80),s:Aedes_aegypti(0.40)\t+\tp:Arthropoda,g:Aedes\n")
    fields = line.rstrip("\n").split("\t")
    assert len(fields) == 4 and fields[2] == "+"
    # every prediction entry is letter:label(confidence); the cut column parses back with the SINTAX reader
    assert all(re.fullmatch(r"[pcoftgs]:[^,()]+\(\d\.\d\d\)", item) for item in fields[1].split(","))
    assert parse_sintax_taxonomy(fields[3]) == {"phylum": "Arthropoda", "genus": "Aedes"}
    empty = sintax_row(Assignment(id="q2"))
    assert empty == "q2\t\t+\t\n"


def test_sintax_lines_from_classification(index, tiny, records):
    result = classify([r for r in records if r.split == "test_unseen"][:6], index, tiny[1])
    buffer = io.StringIO()
    write_classification(result, buffer, "sintax")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 6
    for line, a in zip(lines, result):
        query, full, strand, cut = line.split("\t")
        assert query == a.id and strand == "+"
        stripped = ",".join(re.sub(r"\(\d\.\d\d\)$", "", item) for item in full.split(",") if item)
        assert stripped.startswith(cut) or not cut
        assert "s:" not in cut  # unseen species: the species is never in the cut prediction


# ============================================================================================ CLI
def write_queries(path, records):
    with open(path, "w") as handle:
        for r in records:
            handle.write(f">{r.id}\n{r.sequence}\n")


def test_cli_classify_tsv_and_sintax(tmp_path, tiny, index_path, records):
    queries = [r for r in records if r.split in ("test", "test_unseen")]
    fasta = tmp_path / "queries.fasta"
    write_queries(fasta, queries)
    out = tmp_path / "out.tsv"
    runner = CliRunner()
    result = runner.invoke(main, ["classify", str(fasta), "--reference", str(index_path), "-o", str(out),
                                  "--model", str(tiny[0])])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert [row["id"] for row in rows] == [q.id for q in queries]
    assert list(rows[0]) == TSV_COLUMNS
    stdout = runner.invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "-o", "-", "--model",
                                  str(tiny[0]), "--output-format", "sintax", "--neighbours", "1"])
    assert stdout.exit_code == 0, stdout.output
    lines = stdout.stdout.splitlines()
    assert len(lines) == len(queries) and lines[0].startswith(queries[0].id + "\t")


def test_cli_k_is_a_deprecated_name_of_neighbours(tmp_path, tiny, index_path, records):
    fasta = tmp_path / "queries.fasta"
    write_queries(fasta, [r for r in records if r.split == "test"][:10])
    runner = CliRunner()
    common = ["-q", "classify", str(fasta), "-r", str(index_path), "-o", "-", "--model", str(tiny[0]),
              "--method", "knn"]
    new = runner.invoke(main, common + ["--neighbours", "1"])
    old = runner.invoke(main, common + ["--k", "1"])
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    assert old.stdout == new.stdout
    assert old.stderr.splitlines() == ["barcodetool: --k is deprecated; use --neighbours"]
    assert "deprecated" not in new.stderr
    both = runner.invoke(main, common + ["--neighbours", "1", "--k", "1"])
    assert both.exit_code == 2 and "--neighbours or --k" in both.output


def test_cli_classify_with_table_reference_builds_and_caches(tmp_path, monkeypatch, tiny, records):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fasta = tmp_path / "queries.fasta"
    write_queries(fasta, records[:5])
    runner = CliRunner()
    args = ["classify", str(fasta), "-r", str(SAMPLE), "-o", str(tmp_path / "a.tsv"), "--model", str(tiny[0])]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert len(list((tmp_path / "cache").rglob("*.h5"))) == 1
    second = runner.invoke(main, args[:-4] + ["-o", str(tmp_path / "b.tsv"), "--model", str(tiny[0])])
    assert second.exit_code == 0, second.output
    assert "using the cached reference index" in second.stderr      # the command's own log, not pytest's capture
    assert (tmp_path / "a.tsv").read_text() == (tmp_path / "b.tsv").read_text()


def test_cli_classify_mismatch_is_one_line_error(tmp_path, index_path, records):
    other = make_tiny_model(tmp_path / "tiny-b", seed=1)
    fasta = tmp_path / "queries.fasta"
    write_queries(fasta, records[:3])
    out = tmp_path / "out.tsv"
    result = CliRunner().invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                       "--model", str(other)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("barcodetool: error:")
    assert "tiny-a" in lines[0] and "tiny-b" in lines[0] and "rebuild" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.tsv.*"))


def test_cli_classify_index_read_beside_the_model_reports_its_error(tmp_path, tiny, index_path, records):
    """A built index is read on a thread while the model loads: its errors still end the run with one line."""
    import shutil

    import h5py

    newer = tmp_path / "newer.h5"
    shutil.copy(index_path, newer)
    with h5py.File(newer, "r+") as handle:
        handle.attrs["format_version"] = 99
    fasta = tmp_path / "queries.fasta"
    write_queries(fasta, records[:3])
    out = tmp_path / "out.tsv"
    result = CliRunner().invoke(main, ["-q", "classify", str(fasta), "-r", str(newer), "-o", str(out),
                                       "--model", str(tiny[0])])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(newer) in lines[0] and "version 99" in lines[0]
    assert not out.exists()
    # the same index, readable: the thread's index gives what the library gives
    good = CliRunner().invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                     "--model", str(tiny[0])])
    assert good.exit_code == 0, good.output
    index = ReferenceIndex.load(index_path)
    expected = classify(list(read_barcodes(str(fasta))), index, tiny[1])
    rows = list(csv.DictReader(io.StringIO(out.read_text()), delimiter="\t"))
    assert [r["id"] for r in rows] == [a.id for a in expected]
    assert [r["species"] for r in rows] == [a.labels.get("species", "") for a in expected]
    assert [r["nearest_id"] for r in rows] == [a.nearest_id for a in expected]


def test_cli_classify_refuses_to_overwrite_input(tmp_path, tiny, index_path):
    result = CliRunner().invoke(main, ["classify", str(SAMPLE), "-r", str(index_path), "-o", str(SAMPLE),
                                       "--model", str(tiny[0])])
    assert result.exit_code == 1 and "overwrite" in result.output


def test_classify_records_streams(index, tiny, records):
    """classify_records is lazy: it yields before the whole input is consumed (after reading at most seven chunks:
    two k-mer searched and three decided by the two workers, one read ahead and one being read)."""
    consumed = []

    def source():
        for r in records:
            consumed.append(r.id)
            yield r

    stream = classify_records(source(), index, tiny[1], ClassifyOptions(chunk_size=10))
    first = next(stream)
    assert first.id == records[0].id and 50 <= len(consumed) <= 70 < len(records)
    assert isinstance(index, ReferenceIndex) and np.isfinite(first.similarity)


def test_cli_classify_short_sequences(tmp_path, tiny, index_path):
    fasta = tmp_path / "short.fasta"
    fasta.write_text(">ok\nACGTACGTACGTACGTACGTAAAT\n>short\nACG\n")
    out = tmp_path / "out.tsv"
    runner = CliRunner()
    refused = runner.invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                   "--model", str(tiny[0])])
    assert refused.exit_code == 1 and "short" in refused.output and "--skip-empty" in refused.output
    kept = runner.invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                "--model", str(tiny[0]), "--skip-empty"])
    assert kept.exit_code == 0, kept.output
    assert [row["id"] for row in csv.DictReader(open(out), delimiter="\t")] == ["ok"]


def test_cli_classify_methods_and_kmer_only(tmp_path, tiny, index_path, records):
    queries = [r for r in records if r.split in ("test", "test_unseen")][:20]
    fasta = tmp_path / "queries.fasta"
    write_queries(fasta, queries)
    runner = CliRunner()
    outputs = {}
    for name, extra in (("identity", []), ("knn", ["--method", "knn"]),
                        ("kmer", ["--kmer-only", "--model", str(tmp_path / "no-such-model")]),
                        ("custom", ["--candidates-embedding", "3", "--candidates-kmer", "0"])):
        out = tmp_path / f"{name}.tsv"
        result = runner.invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                      *(["--model", str(tiny[0])] if name != "kmer" else []), *extra])
        assert result.exit_code == 0, (name, result.output)
        rows = list(csv.DictReader(open(out), delimiter="\t"))
        assert [row["id"] for row in rows] == [q.id for q in queries]
        outputs[name] = rows
    assert all(row["identity_overlap"] for row in outputs["identity"])      # identity methods report it
    assert not any(row["identity_overlap"] for row in outputs["knn"])
    # the k-mer candidates find the same nearest reference as the default here (real sequences, a tiny random
    # model), and where both name a genus it is the same (whether they name it is each one's confidence model,
    # fitted on this small reference's leave-out searches with its own candidates)
    pairs = list(zip(outputs["identity"], outputs["kmer"]))
    assert sum(a["nearest_id"] == b["nearest_id"] for a, b in pairs) >= 0.9 * len(queries)
    both = [(a["genus"], b["genus"]) for a, b in pairs if a["genus"] and b["genus"]]
    assert len(both) >= len(queries) // 2 and all(x == y for x, y in both)
    bad = runner.invoke(main, ["classify", str(fasta), "-r", str(index_path), "-o", str(tmp_path / "x.tsv"),
                               "--model", str(tiny[0]), "--kmer-only", "--method", "knn"])
    assert bad.exit_code == 2 and "--kmer-only" in bad.output


def test_parallel_search_workers_keep_order_and_results(index, tiny, records):
    queries = [r for r in records if r.split in ("test", "test_unseen")]
    one = classify(queries, index, None, candidates_embedding=0, chunk_size=7, search_workers=1)
    three = classify(queries, index, None, candidates_embedding=0, chunk_size=7, search_workers=3)
    assert [a.id for a in three] == [r.id for r in queries]
    assert [(a.labels, a.nearest_id, a.similarity) for a in three] == [(a.labels, a.nearest_id, a.similarity)
                                                                        for a in one]
    with pytest.raises(UsageError):
        classify(queries, index, None, candidates_embedding=0, search_workers=0)


def test_classify_records_embeds_only_the_queries_in_doubt(synthetic, tiny, monkeypatch):
    """The default identity path embeds only the distinct queries whose best k-mer candidate scores below
    embed_below (here: the new species), and every query still gets its row, in order."""
    import importlib

    from barcodetool.reference import kmer_hits

    embed_module = importlib.import_module("barcodetool.embedding")   # the package's `embed` is the function

    index, taxa, barcode, new_species = synthetic
    known = [BarcodeRecord(f"k{i}", barcode(key), lineage(key)) for i, key in enumerate(taxa)]
    novel = [BarcodeRecord(f"n{f}{g}", new_species(f, g), {}) for f in range(2) for g in range(3)]
    queries = [q for pair in zip(known, novel + known[len(novel):]) for q in pair] + [known[0]]
    best = kmer_hits([q.sequence for q in queries], index, 10).best()
    embed_below = float(np.max(best[[q.id.startswith("n") for q in queries]])) + 1e-4
    assert (best >= embed_below).sum() > 0
    asked = []
    real = embed_module.embed_sequences

    def spy(pretrained, sequences, **options):
        asked.extend(sequences)
        return real(pretrained, sequences, **options)

    monkeypatch.setattr(embed_module, "embed_sequences", spy)
    result = classify(queries, index, tiny[1], embed_below=embed_below, chunk_size=5)
    assert [a.id for a in result] == [q.id for q in queries]
    doubtful = list({q.sequence for q, b in zip(queries, best) if b < embed_below})   # none repeated
    assert sorted(asked) == sorted(doubtful) and {q.sequence for q in novel} <= set(doubtful)
    asked.clear()
    every = classify(queries, index, tiny[1], embed_below=float("inf"), chunk_size=5)
    # every query, identical ones once a chunk (pairs of one known barcode; the last query repeats the first)
    assert sorted(asked) == sorted(s for c in range(0, len(queries), 5) for s in {q.sequence for q in queries[c:c + 5]})
    for a, b in zip(result, every):
        if a.id.startswith("n"):     # embedded either way: the same candidates, the same hit
            assert (a.nearest_id, a.similarity) == (b.nearest_id, b.similarity)
    with pytest.raises(UsageError, match="embed-below"):
        classify(queries, index, tiny[1], embed_below=-1.0)
    calibrate_thresholds(index, "identity")


def test_cli_classify_embed_below(tmp_path, tiny, index_path):
    runner = CliRunner()
    outputs = {}
    for value in ("0.95", "inf", "0"):
        out = tmp_path / f"{value}.tsv"
        result = runner.invoke(main, ["classify", str(SAMPLE), "-r", str(index_path), "-o", str(out),
                                      "--model", str(tiny[0]), "--embed-below", value, "--skip-empty"])
        assert result.exit_code == 0, result.output
        assert "embedding candidates for" in result.output
        outputs[value] = list(csv.DictReader(out.open(), delimiter="\t"))
    assert [r["id"] for r in outputs["0.95"]] == [r["id"] for r in outputs["inf"]] == [r["id"] for r in outputs["0"]]
    bad = runner.invoke(main, ["classify", str(SAMPLE), "-r", str(index_path), "-o", str(tmp_path / "x.tsv"),
                               "--model", str(tiny[0]), "--embed-below", "-0.5"])
    assert bad.exit_code == 2 and not (tmp_path / "x.tsv").exists()


def test_blas_threads_held_while_workers_search_and_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from barcodetool.classify import _blas_threads

    def blas_threads():
        return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("numpy without a BLAS that threadpoolctl can see")
    with _blas_threads(1):
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
    with _blas_threads(None):
        assert blas_threads() == before


def test_cli_classify_names_nothing_from_a_fragment_too_short_to_place(tmp_path, tiny, index_path, records):
    """A 30-base fragment matches references of other orders at 96-100% by chance: it keeps its row and its nearest
    reference, but no rank and no BIN is named, and the log says how many; a 150-base one is still named."""
    queries = [r for r in records if r.split == "test" and len(r.sequence) >= 600][:6]
    fasta = tmp_path / "fragments.fasta"
    with open(fasta, "w") as handle:
        for r in queries:
            handle.write(f">{r.id}_full\n{r.sequence}\n>{r.id}_30\n{r.sequence[300:330]}\n"
                         f">{r.id}_150\n{r.sequence[200:350]}\n")
    out = tmp_path / "out.tsv"
    result = CliRunner().invoke(main, ["classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                       "--model", str(tiny[0])])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert [row["id"] for row in rows] == [f"{r.id}_{part}" for r in queries for part in ("full", "30", "150")]
    short = [row for row in rows if row["id"].endswith("_30")]
    assert all(row["nearest_id"] and int(row["identity_overlap"]) < 100 for row in short)
    assert all(row["rank"] == "" and row["bin"] == "" and not any(row[rank] for rank in RANKS) for row in short)
    assert f"{len(short)} queries align with their nearest reference over fewer than 100 bases" in result.output
    named = [row for row in rows if not row["id"].endswith("_30")]
    assert sum(bool(row["order"]) for row in named) >= len(named) - 1
    # the embedding vote names nothing from a fragment either
    knn = CliRunner().invoke(main, ["classify", str(fasta), "-r", str(index_path), "-o", str(out),
                                    "--model", str(tiny[0]), "--method", "knn"])
    assert knn.exit_code == 0, knn.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert all(row["rank"] == "" and row["nearest_id"] for row in rows if row["id"].endswith("_30"))
    assert any(row["rank"] for row in rows if not row["id"].endswith("_30"))
    assert f"{len(short)} queries are fewer than 100 bases" in knn.output


def test_cli_classify_says_why_a_reference_too_small_names_nothing(tmp_path, tiny):
    """Ten records (two species): too few leave-out queries to fit a confidence at any rank, so nothing is named,
    not even the references themselves; the log says why and what to do instead (once, not per chunk)."""
    small = tmp_path / "small.fasta"
    small.write_text("".join(SINTAX_REFERENCE.read_text().splitlines(keepends=True)[:20]))
    out = tmp_path / "out.tsv"
    result = CliRunner().invoke(main, ["classify", str(small), "-r", str(small), "-o", str(out),
                                       "--model", str(tiny[0]), "--chunk-size", "3"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert len(rows) == 10 and all(row["rank"] == "" and float(row["similarity"]) == 1.0 for row in rows)
    assert result.output.count("the reference names no rank: too few labelled leave-out queries") == 1
    assert "--method knn" in result.output
