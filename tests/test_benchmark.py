"""The benchmark on the tiny split file: tasks, sampling, JSON, external tools (skipped where not installed)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from click.testing import CliRunner
from helpers_models import SAMPLE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401

import barcodetool.evaluation.external as external
from barcodetool.cli import main
from barcodetool.evaluation import format_table, run_benchmark
from barcodetool.evaluation.protocol import draw, unique_by_split
from barcodetool.evaluation.scoring import accuracy, assigned_and_precision, harmonic_mean
from barcodetool.io import BarcodeRecord

HAS_VSEARCH = shutil.which("vsearch") is not None
HAS_BLAST = shutil.which("blastn") is not None and shutil.which("makeblastdb") is not None


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
    harmonic = result["harmonic_mean"]
    assert 0 <= harmonic["barcodetool"] <= 1 and 0 <= harmonic["barcodetool_identity"] <= 1
    assert result["unique_barcodes"]["train"] > 50 and result["tools"] == {}
    table = format_table(result)
    assert "species, closed world" in table and "genus, open world" in table and "harmonic mean" in table
    for row in ("identity, default", "identity, top hit", "embedding 1-NN", "embedding k-NN vote",
                "barcodetool identity, distance", "barcodetool cosine, true k"):
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
    if HAS_BLAST:
        assert 0.5 <= data["tasks"]["species"]["blast"]["top_hit_accuracy"] <= 1
        assert "BLAST top hit" in result.output
