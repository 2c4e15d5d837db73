"""The benchmark on the tiny split file: tasks, sampling, JSON, external tools (skipped where not installed)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from click.testing import CliRunner
from helpers_models import SAMPLE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401

import barcodetool.evaluation.external as external
from barcodetool.cli import main
from barcodetool.evaluation import format_table, run_benchmark
from barcodetool.evaluation.external import run_tool
from barcodetool.evaluation.protocol import draw, unique_by_split
from barcodetool.evaluation.scoring import accuracy, assigned_and_precision, harmonic_mean, named_scores, named_share
from barcodetool.evaluation.sintax import (SintaxPrediction, label_lookup, parse_sintax_line, read_sintax_output,
                                           sintax_command, sintax_scores, sintax_title, write_sintax_reference)
from barcodetool.io import BarcodeRecord, ReadOptions, read_barcodes
from barcodetool.io.fasta import parse_fasta_header

HAS_VSEARCH = shutil.which("vsearch") is not None
HAS_BLAST = shutil.which("blastn") is not None and shutil.which("makeblastdb") is not None
SINTAX_FIXTURE = SAMPLE.parent / "sintax_reference.fasta"
# a line of `vsearch --sintax --tabbedout` (v2.22) as written with --sintax_cutoff 0.8
SINTAX_LINE = ("Q7\td:Animalia(1.00),p:Arthropoda(1.00),c:Insecta(1.00),o:Diptera(1.00),f:Culicidae(0.97),"
               "g:Aedes(0.81),s:Aedes_aegypti(0.62)\t+\td:Animalia,p:Arthropoda,c:Insecta,o:Diptera,f:Culicidae,"
               "g:Aedes\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-a", seed=0)
    return folder, load_tiny(folder)


def test_helpers():
    assert accuracy(["a", "b", "", "c"], ["a", "x", "y", ""]) == pytest.approx(1 / 3)
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.0, 1.0]) == 0.0 and math.isnan(harmonic_mean([math.nan, 1.0]))
    assert assigned_and_precision(["a", "b", "", "c"], ["a", "x", "y", ""]) == (pytest.approx(2 / 3), 0.5)
    assert all(math.isnan(v) for v in assigned_and_precision(["", ""], ["a", ""]))
    assert draw(list(range(10)), 3, 0) == draw(list(range(10)), 3, 0) and len(draw(list(range(10)), 3, 0)) == 3
    assert draw([1, 2], 5, 0) == [1, 2]
    records = [BarcodeRecord("a", "ACGT", {}, split="train"), BarcodeRecord("b", "ACGT", {}, split="train"),
               BarcodeRecord("c", "ACGT", {}, split="test"), BarcodeRecord("d", "ACGA", {}, split="train")]
    split = unique_by_split(records, ("train", "test"))
    assert [r.id for r in split["train"]] == ["a", "d"] and [r.id for r in split["test"]] == ["c"]
    assert named_scores(["a", "b", "", "c"], ["a", "x", "y", ""]) == {
        "named_right": pytest.approx(1 / 3), "named": pytest.approx(2 / 3), "precision": 0.5}
    assert named_share(["a", "", "b", ""]) == 0.5 and math.isnan(named_share([]))


# ============================================================================================ SINTAX
def test_parse_sintax_line():
    name, prediction = parse_sintax_line(SINTAX_LINE)
    assert name == "Q7"
    assert prediction.labels == {"phylum": "Arthropoda", "class": "Insecta", "order": "Diptera",
                                 "family": "Culicidae", "genus": "Aedes", "species": "Aedes aegypti"}  # no domain
    assert prediction.support["species"] == 0.62 and prediction.support["genus"] == 0.81
    # the 4th column is what --sintax_cutoff 0.8 names; the 2nd column gives every cutoff from one run
    fourth = parse_sintax_line("Q7\t" + SINTAX_LINE.rstrip("\n").split("\t")[3].replace(",", "(1.00),") + "(1.00)")
    assert prediction.at_cutoff(0.8) == fourth[1].labels
    assert prediction.named("species", 0.8) == "" and prediction.named("species", 0.5) == "Aedes aegypti"
    assert prediction.named("genus", 0.81) == "Aedes" and prediction.named("subfamily", 0.0) == ""
    # labels read back through the reference's own (an underscore that was an underscore stays one)
    lookup = label_lookup([{"genus": "Aedes", "species": "Aedes aegypti"}, {"species": "Culex sp_2 (CR)"}])
    assert lookup["species"] == {"Aedes_aegypti": "Aedes aegypti", "Culex_sp_2_(CR)": "Culex sp_2 (CR)"}
    _, odd = parse_sintax_line("Q1\tg:Culex(0.90),s:Culex_sp_2_(CR)(0.55)\t+\tg:Culex", lookup)
    assert odd.labels == {"genus": "Culex", "species": "Culex sp_2 (CR)"} and odd.support["species"] == 0.55
    # a query SINTAX could not classify
    for line in ("Q3\t\t\t\n", "Q3\n", "Q3\t\t+\t"):
        name, empty = parse_sintax_line(line)
        assert name == "Q3" and empty.labels == {} and empty.named("genus", 0.0) == ""


def test_sintax_reference_writer(tmp_path):
    taxonomy = {"phylum": "Arthropoda", "class": "Insecta", "order": "Diptera", "family": "Culicidae",
                "subfamily": "Culicinae", "genus": "Aedes", "species": "Aedes aegypti, s.l."}
    assert sintax_title("R0", taxonomy) == ("R0;tax=p:Arthropoda,c:Insecta,o:Diptera,f:Culicidae,g:Aedes,"
                                            "s:Aedes_aegypti__s.l.;")   # no `t:` (vsearch reads d k p c o f g s)
    assert sintax_title("R1", {}) == "R1;"
    path = tmp_path / "ref.fasta"
    assert write_sintax_reference(path, [("R0", "ACGTACGT", taxonomy), ("R1", "GGGTTT", {"genus": "Culex"})]) == 2
    lines = path.read_text().splitlines()
    assert lines[1:] == ["ACGTACGT", ">R1;tax=g:Culex;", "GGGTTT"]
    record_id, read_back, _ = parse_fasta_header(lines[0][1:])   # barcodetool reads its own SINTAX titles back
    assert record_id == "R0" and read_back == {**{k: v for k, v in taxonomy.items() if k != "subfamily"},
                                               "species": "Aedes aegypti  s.l."}


def test_sintax_scores_at_cutoffs():
    truth = ["Aedes", "Aedes", "Culex", "Culex", ""]
    predictions = [SintaxPrediction({"genus": "Aedes", "species": "Aedes vexans"}, {"genus": 0.9, "species": 0.6}),
                   SintaxPrediction({"genus": "Aedes"}, {"genus": 0.6}),
                   SintaxPrediction({"genus": "Aedes", "species": "Aedes aegypti"}, {"genus": 0.85, "species": 0.4}),
                   SintaxPrediction(),
                   SintaxPrediction({"genus": "Culex"}, {"genus": 1.0})]   # no true genus: left out
    scores = sintax_scores(truth, predictions, "genus", (0.8, 0.5), species_named=True)
    assert list(scores) == ["0.8", "0.5"]
    assert scores["0.8"] == {"named_right": 0.25, "named": 0.5, "precision": 0.5, "species_named": 0.0}
    assert scores["0.5"] == {"named_right": 0.5, "named": 0.75, "precision": pytest.approx(2 / 3),
                             "species_named": 0.2}
    assert "species_named" not in sintax_scores(truth, predictions, "genus", (0.8,))["0.8"]


@pytest.mark.skipif(not HAS_VSEARCH, reason="vsearch is not installed")
def test_vsearch_sintax_run(tmp_path):
    records = list(read_barcodes(SINTAX_FIXTURE, ReadOptions()))
    reference, queries = records[1::2], records[::2][:12]
    ref_fasta, query_fasta = tmp_path / "ref.fasta", tmp_path / "queries.fasta"
    write_sintax_reference(ref_fasta, ((f"R{i}", r.sequence, r.taxonomy) for i, r in enumerate(reference)))
    external.write_plain_fasta(query_fasta, [(f"Q{i}", r.sequence) for i, r in enumerate(queries)])
    runs = []
    for number in range(2):
        out = tmp_path / f"out{number}.tsv"
        assert run_tool(sintax_command(query_fasta, ref_fasta, out, cutoff=0.8, randseed=1), "sintax") >= 0
        runs.append(out.read_text())
    assert runs[0] == runs[1]   # --randseed, one thread: reproducible
    predictions = read_sintax_output(tmp_path / "out0.tsv", label_lookup(r.taxonomy for r in reference))
    assert sorted(predictions) == sorted(f"Q{i}" for i in range(len(queries)))
    for line in runs[0].splitlines():   # the 2nd column at the cutoff is vsearch's 4th column
        name, prediction = parse_sintax_line(line)
        fields = line.split("\t")
        named = [f"{letter}:{label}" for letter, label in (item.split(":", 1) for item in fields[3].split(",") if item)
                 if letter in "pcofgs"]
        assert len(named) == len(prediction.at_cutoff(0.8)), line
    species = [predictions[f"Q{i}"].named("species", 0.5) for i in range(len(queries))]
    assert named_scores([r.taxonomy["species"] for r in queries], species)["named_right"] >= 0.5


def test_run_benchmark_on_sample(tiny):
    result = run_benchmark(SAMPLE, tiny[1], sample=10, threads=1)
    species, genus, bins = (result["tasks"][name] for name in ("species", "genus", "bins"))
    assert species["queries"] == 10 and genus["queries"] == 10 and bins["barcodes"] == 10
    for task in (species, genus):
        bt = task["barcodetool"]
        assert bt["default_method"] == "identity" and bt["candidates"] == [20, 10]
        for key in ("one_nn_accuracy", "default_accuracy", "top_hit_accuracy", "knn_accuracy",
                    "kmer_only_accuracy", "kmer_only_top_hit_accuracy"):
            assert 0 <= bt[key] <= 1, key
        assert bt["default_accuracy"] <= bt["top_hit_accuracy"]   # the thresholds only leave ranks empty
        assert bt["kmer_only_accuracy"] <= bt["kmer_only_top_hit_accuracy"]
        assert bt["kmer_only_queries_per_s"] > 0
        for key in ("queries_per_s", "one_nn_queries_per_s", "knn_queries_per_s"):
            assert bt[key] > 0
        # the embedding methods' times include the shared embedding; the identity default embeds the queries in
        # doubt itself
        assert min(bt["one_nn_seconds"], bt["knn_seconds"]) >= bt["embed_seconds"]
        assert bt["embed_below"] == 0.95 and 0 <= bt["embedded_fraction"] <= 1
    assert 0 <= genus["barcodetool"]["species_left_empty"] <= 1
    assert genus["barcodetool"]["knn_species_left_empty"] == 1.0  # unseen species are never named by the vote
    assert -1 <= bins["barcodetool_true_k"]["ami"] <= 1 and bins["barcodetool_true_k"]["clusters"] == bins["true_bins"]
    assert "barcodetool_threshold" in bins
    identity = bins["barcodetool_identity"]
    assert identity["threshold"] == result["thresholds"]["identity"]["cluster_distance"] and identity["ami"] > 0.5
    for task, rank in ((species, "species"), (genus, "genus")):   # what `classify` writes, scored
        output = task["classify_output"]
        assert 0 <= output["named_right"] <= output["named"] <= 1 and output["queries_per_s"] > 0
        assert 0 <= output["agrees_with_default"] <= 1
        assert ("species_named" in output) == (rank == "genus")
    assert genus["classify_output"]["species_named"] <= 1
    harmonic = result["harmonic_mean"]
    assert 0 <= harmonic["barcodetool"] <= 1 and 0 <= harmonic["barcodetool_identity"] <= 1
    assert result["unique_barcodes"]["train"] > 50 and result["tools"] == {}
    for task in (species, genus):   # the k-mer profile baselines beside the embedding (issue 15)
        assert set(task["barcodetool"]["profiles"]) == {"4", "5"}
        assert all(0 <= entry["one_nn_accuracy"] <= 1 for entry in task["barcodetool"]["profiles"].values())
    assert bins["profile_4_true_k"]["clusters"] == bins["true_bins"] and 0 <= harmonic["profile_5"] <= 1
    table = format_table(result)
    assert "species, closed world" in table and "genus, open world" in table and "harmonic mean" in table
    for row in ("baseline: 4-mer count profile 1-NN", "baseline: 5-mer count profile cosine, true k",
                "baseline: 4-mer count profile (the same three)",
                "identity, default", "identity, top hit", "embedding 1-NN", "embedding k-NN vote",
                "barcodetool identity, distance", "barcodetool cosine, true k",
                "barcodetool classify output, named at species", "barcodetool classify output, named at genus"):
        assert row in table, row
    # the same seed draws the same queries
    again = run_benchmark(SAMPLE, tiny[1], sample=10, threads=1)
    assert again["tasks"]["species"]["barcodetool"]["one_nn_accuracy"] == species["barcodetool"]["one_nn_accuracy"]


def test_missing_tools_are_reported_not_errors(tiny, monkeypatch):
    monkeypatch.setattr(external.shutil, "which", lambda name: None)
    result = run_benchmark(SAMPLE, tiny[1], sample=5, compare=True, threads=1)
    assert result["tools"] == {"vsearch": "not installed", "blast": "not installed"}
    assert result["tasks"]["species"]["vsearch"] == {"note": "not installed"}
    assert result["tasks"]["genus"]["blast"] == {"note": "not installed"}
    assert result["tasks"]["bins"]["vsearch"] == {"note": "not installed"}
    assert result["tasks"]["species"]["sintax"] == {"note": "not installed"}
    assert "not installed" in format_table(result)


def test_cli_benchmark_json(tmp_path, tiny):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["benchmark", str(SAMPLE), "--model", str(tiny[0]), "--sample", "8",
                                       "--json", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "harmonic mean" in result.output
    data = json.loads(out.read_text())
    assert data["sample"] == 8 and data["model"]["model_name"] == "tiny-a"
    assert data["tasks"]["species"]["queries"] == 8


def test_cli_benchmark_with_the_default_model_says_which_model_embed_uses(monkeypatch, tiny):
    """--model auto benchmarks the model of reference indexes (nano on a CPU); since `embed` uses another model
    there, the log says so, and says how to get that model's embedding rows; a model given by name says nothing."""
    from barcodetool.cli import benchmark as benchmark_command

    ran = []
    monkeypatch.setattr(benchmark_command, "run_benchmark", lambda split, model, **_: ran.append(model.name) or {})
    monkeypatch.setattr(benchmark_command, "format_table", lambda result: "table")
    result = CliRunner().invoke(main, ["benchmark", str(SAMPLE), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert ran == ["barcodemae-nano"]
    assert "`embed` uses barcodemae-nano-identity on a CPU (--model barcodemae-nano-identity" in result.output
    result = CliRunner().invoke(main, ["benchmark", str(SAMPLE), "--model", str(tiny[0]), "--threads", "1"])
    assert result.exit_code == 0 and "`embed` uses" not in result.output


def test_cli_benchmark_needs_splits(tmp_path, tiny):
    fasta = tmp_path / "plain.fasta"
    fasta.write_text(">a\nACGTACGTACGTACGT\n")
    result = CliRunner().invoke(main, ["benchmark", str(fasta), "--model", str(tiny[0])])
    assert result.exit_code == 1 and "train" in result.output


@pytest.mark.skipif(not HAS_VSEARCH, reason="vsearch is not installed")
def test_cli_benchmark_compare(tmp_path, tiny):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["benchmark", str(SAMPLE), "--model", str(tiny[0]), "--sample", "12",
                                       "--compare", "--json", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    vsearch = data["tasks"]["species"]["vsearch"]
    assert 0.5 <= vsearch["top_hit_accuracy"] <= 1 and vsearch["queries_per_s"] > 0
    assert 0 <= data["tasks"]["genus"]["vsearch"]["top_hit_accuracy"] <= 1
    assert 0 <= data["tasks"]["bins"]["vsearch_0.97"]["ami"] <= 1
    assert "VSEARCH top hit" in result.output and "VSEARCH cluster_fast 0.97" in result.output
    for name, rank in (("species", "species"), ("genus", "genus")):
        sintax = data["tasks"][name]["sintax"]
        assert sintax["randseed"] == 1 and sintax["threads"] == 1 and sintax["queries_per_s"] > 0
        assert list(sintax["cutoffs"]) == ["0.8", "0.5"]
        strict, loose = sintax["cutoffs"]["0.8"], sintax["cutoffs"]["0.5"]
        assert 0 <= strict["named"] <= loose["named"] <= 1   # a lower cutoff names more
        assert ("species_named" in strict) == (name == "genus")
        assert f"VSEARCH SINTAX cutoff 0.8, named at {rank}" in result.output
    assert data["tasks"]["species"]["sintax"]["cutoffs"]["0.5"]["named_right"] >= 0.5
    if HAS_BLAST:
        assert 0.5 <= data["tasks"]["species"]["blast"]["top_hit_accuracy"] <= 1
        assert "BLAST top hit" in result.output


def test_kmer_profiles_count_overlapping_kmers_of_bases_only():
    from barcodetool.evaluation.profiles import kmer_profiles

    profiles = kmer_profiles(["ACGTA", "ACNGT", "NNNN", "AAAA"], 2)
    assert profiles.shape == (4, 16) and profiles.dtype == np.float32
    # ACGTA: AC CG GT TA once each (columns in lexicographic order: AA=0, AC=1, ... TT=15)
    np.testing.assert_allclose(profiles[0], np.eye(16)[[1, 6, 11, 12]].sum(axis=0) / 2, atol=1e-7)
    np.testing.assert_allclose(profiles[1], np.eye(16)[[1, 11]].sum(axis=0) / np.sqrt(2), atol=1e-7)  # N skipped
    assert not profiles[2].any()                                  # no k-mer of bases: a row of zeros
    np.testing.assert_allclose(profiles[3], np.eye(16)[0], atol=1e-7)   # AA three times, unit length


@given(st.lists(st.text(alphabet="ACGTN", min_size=0, max_size=40), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=4))
@settings(max_examples=60, deadline=None)
def test_kmer_profiles_match_a_plain_count(sequences, k):
    from itertools import product

    from barcodetool.evaluation.profiles import kmer_profiles

    columns = {"".join(p): i for i, p in enumerate(product("ACGT", repeat=k))}
    expected = np.zeros((len(sequences), 4 ** k))
    for row, sequence in enumerate(sequences):
        for start in range(len(sequence) - k + 1):
            if sequence[start:start + k] in columns:
                expected[row, columns[sequence[start:start + k]]] += 1
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    expected = expected / np.where(norms == 0, 1, norms)
    np.testing.assert_allclose(kmer_profiles(sequences, k), expected, atol=1e-6)


def test_profile_nearest_finds_the_reference_itself():
    from barcodetool.evaluation.profiles import kmer_profiles, profile_nearest

    reference = list(dict.fromkeys(r.sequence for r in read_barcodes(SAMPLE)))[:40]   # distinct barcodes
    assert profile_nearest(reference[:10], kmer_profiles(reference, 4), 4).tolist() == list(range(10))


def test_profiles_too_large_for_memory_are_left_out_and_said(tiny, monkeypatch):
    import barcodetool.evaluation.protocol as protocol

    # room for the 4-mer profiles of the sample's train barcodes (256 floats each) twice over, not for the 5-mers
    train = len(unique_by_split(read_barcodes(SAMPLE), ["train"])["train"])
    monkeypatch.setattr(protocol, "PROFILE_MAX_BYTES", 2 * train * 256 * 4)
    result = run_benchmark(SAMPLE, tiny[1], sample=5, threads=1)
    assert set(result["tasks"]["species"]["barcodetool"]["profiles"]) == {"4"}
    assert "profile_5_true_k" not in result["tasks"]["bins"] and "profile_4_true_k" in result["tasks"]["bins"]
    assert "k = 5" in result["profiles_left_out"]
    assert "baselines left out: k-mer profiles of k = 5" in format_table(result)
