"""`barcodetool plot`: embeddings maps and benchmark charts (matplotlib is optional: those tests skip without it)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import SAMPLE, load_tiny, make_tiny_model

from barcodetool.cli import main
from barcodetool.embedding import embed_file, embed_records_to_h5
from barcodetool.errors import InputError, OutputError, UsageError
from barcodetool.io.readers import BarcodeRecord, ReadOptions, read_barcodes
from barcodetool.plot import benchmark_groups, categorize, plot_benchmark, plot_embeddings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-plot", seed=0)
    return load_tiny(folder)


@pytest.fixture(scope="module")
def sample_h5(tiny, tmp_path_factory):
    """The 249-record BIOSCAN sample embedded with the tiny model (carries every rank and BINs)."""
    path = tmp_path_factory.mktemp("h5") / "sample.h5"
    embed_file(SAMPLE, path, tiny, read_options=ReadOptions(min_length=6))
    return path


@pytest.fixture(scope="module")
def unlabelled_h5(tiny, tmp_path_factory):
    """Ten barcodes without taxonomy or BINs (as embedded from a plain FASTA)."""
    records = [BarcodeRecord(id=r.id, sequence=r.sequence, taxonomy={}) for r in
               list(read_barcodes(SAMPLE, skip_empty=True))[:10]]
    path = tmp_path_factory.mktemp("h5") / "plain.h5"
    embed_records_to_h5(records, path, tiny, source="plain.fasta")
    return path


@pytest.fixture(scope="module")
def benchmark_json(tiny, tmp_path_factory):
    """A real `barcodetool benchmark` result on the sample, plus VSEARCH/BLAST entries shaped as --compare writes
    them (neither tool is installed here)."""
    from barcodetool.evaluation.protocol import run_benchmark

    result = run_benchmark(SAMPLE, tiny, threads=1)
    result["tools"] = {"vsearch": "vsearch v2.28.1", "blast": "not installed"}
    for name, accuracy in (("species", 0.91), ("genus", 0.55)):
        result["tasks"][name]["vsearch"] = {"top_hit_accuracy": accuracy, "seconds": 0.2, "queries_per_s": 220.0,
                                            "no_hit": 0}
        result["tasks"][name]["blast"] = {"note": "not installed"}
    result["tasks"]["bins"]["vsearch_0.97"] = {"n": 63, "true_groups": 25, "clusters": 30, "ami": 0.7,
                                               "ari": 0.5, "match_ratio": 0.4, "seconds": 0.05}
    path = tmp_path_factory.mktemp("bench") / "benchmark.json"
    path.write_text(json.dumps(result, default=float), encoding="utf-8")
    return path


def check_png(path, min_size=(300, 200)):
    """A non-blank PNG of plausible size; returns (height, width)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = pytest.importorskip("matplotlib.image").imread(str(path))
    height, width = image.shape[:2]
    assert width >= min_size[0] and height >= min_size[1]
    assert width <= 6000 and height <= 6000
    rgb = image[..., :3]
    assert float(rgb.std()) > 0.02, "the image is blank"
    colours = np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 20
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".part")]
    assert not leftovers
    return height, width


# ============================================================================================ embeddings
def test_embeddings_map_by_order(sample_h5, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_embeddings(sample_h5, tmp_path / "map.png", color_by="order")
    assert out == tmp_path / "map.png"
    check_png(out)


def test_embeddings_map_default_colour_and_subset(sample_h5, unlabelled_h5, tmp_path):
    pytest.importorskip("matplotlib")
    check_png(plot_embeddings(sample_h5, tmp_path / "auto.png", max_points=50, top=3, dpi=80))
    check_png(plot_embeddings(unlabelled_h5, tmp_path / "plain.png", dpi=80))   # no labels: one colour, no legend
    svg = plot_embeddings(sample_h5, tmp_path / "map.svg", color_by="bin", dpi=80)
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_embeddings_map_by_clusters_cli(sample_h5, tmp_path):
    pytest.importorskip("matplotlib")
    ids = [r.id for r in read_barcodes(SAMPLE, skip_empty=True)]
    clusters = tmp_path / "clusters.tsv"
    clusters.write_text("id\tcluster\treference_bin\tsimilarity\n" + "".join(
        f"{record_id}\t{i % 13 + 1}\t{'new' if i % 13 else 'BOLD:AAA0001'}\t0.9\n"
        for i, record_id in enumerate(ids[:-5])), encoding="utf-8")
    out = tmp_path / "clusters.png"
    result = CliRunner().invoke(main, ["plot", "embeddings", str(sample_h5), "-o", str(out), "--clusters",
                                       str(clusters), "--top", "12"])
    assert result.exit_code == 0, result.output
    check_png(out)
    assert "5 of 249 embedded barcodes are not in" in result.output  # the warning, on stderr


def test_embeddings_map_errors(sample_h5, unlabelled_h5, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(UsageError, match="holds no order labels"):
        plot_embeddings(unlabelled_h5, tmp_path / "x.png", color_by="order")
    with pytest.raises(UsageError, match="needs --clusters"):
        plot_embeddings(sample_h5, tmp_path / "x.png", color_by="cluster")
    with pytest.raises(UsageError, match="cannot write a .jpg"):
        plot_embeddings(sample_h5, tmp_path / "x.jpg")
    with pytest.raises(OutputError):
        plot_embeddings(sample_h5, sample_h5)
    unrelated = tmp_path / "unrelated.tsv"
    unrelated.write_text("id\tcluster\nnope\t1\n", encoding="utf-8")
    with pytest.raises(InputError, match="none of its ids"):
        plot_embeddings(sample_h5, tmp_path / "x.png", clusters_tsv=unrelated)
    not_clusters = tmp_path / "not_clusters.tsv"
    not_clusters.write_text("processid\tgenus\nA\tB\n", encoding="utf-8")
    with pytest.raises(InputError, match="needs an `id` and a `cluster` column"):
        plot_embeddings(sample_h5, tmp_path / "x.png", clusters_tsv=not_clusters)
    with pytest.raises(InputError, match="not a barcodetool embeddings file|cannot open as HDF5"):
        plot_embeddings(not_clusters, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    result = CliRunner().invoke(main, ["plot", "embeddings", str(unlabelled_h5), "-o", str(tmp_path / "x.png"),
                                       "--color-by", "genus"])
    assert result.exit_code == 2 and "holds no genus labels" in result.output


def test_umap_without_umap_learn(sample_h5, tmp_path):
    pytest.importorskip("matplotlib")
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="umap-learn"):
            plot_embeddings(sample_h5, tmp_path / "u.png", method="umap")
    else:
        check_png(plot_embeddings(sample_h5, tmp_path / "u.png", method="umap", dpi=80))


def test_missing_matplotlib_is_a_usage_error(sample_h5, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    with pytest.raises(UsageError, match=r"pip install matplotlib"):
        plot_embeddings(sample_h5, tmp_path / "m.png")
    result = CliRunner().invoke(main, ["plot", "benchmark", str(tmp_path / "b.json"), "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 2 and "pip install matplotlib" in result.output
    assert not (tmp_path / "m.png").exists()


def test_read_embedding_rows_reads_a_subset_blockwise(sample_h5):
    from barcodetool.embedding import _read_rows, read_embedding_rows, read_embeddings

    full = read_embeddings(sample_h5)
    subset, total = read_embedding_rows(sample_h5, max_points=40, seed=3)
    assert total == 249 and len(subset.ids) == 40
    rows = [full.ids.index(i) for i in subset.ids]
    assert rows == sorted(rows)
    assert np.array_equal(subset.embeddings, full.embeddings[rows])
    assert subset.taxonomy["genus"] == [full.taxonomy["genus"][i] for i in rows]
    assert subset.bins == [full.bins[i] for i in rows]
    everything, total = read_embedding_rows(sample_h5)
    assert everything.ids == full.ids and np.array_equal(everything.embeddings, full.embeddings)
    import h5py

    with h5py.File(sample_h5, "r") as h5:   # blocks smaller than the file: the same rows
        picked = np.array(rows)
        assert np.array_equal(_read_rows(h5["embeddings"], picked, block=7), full.embeddings[rows])
        assert _read_rows(h5["ids"], picked, strings=True, block=5).tolist() == subset.ids


def test_categorize_top_other_unknown():
    cats = categorize(["b", "a", "b", "", "c", "a", "b", "d"], top=2)
    assert cats.names == ["b", "a"] and cats.counts == [3, 2]
    assert cats.code.tolist() == [0, 1, 0, -2, -1, 1, 0, -1]
    assert (cats.other_labels, cats.other_count, cats.unknown_count) == (2, 2, 1)


# ============================================================================================ benchmark
def test_benchmark_groups_follow_the_benchmark_json(benchmark_json):
    data = json.loads(benchmark_json.read_text(encoding="utf-8"))
    groups = benchmark_groups(data)
    assert len(groups) == 3
    species, genus, bins = groups
    bins_true_k = data["tasks"]["bins"]["true_bins"]
    assert [(b.tool, b.variant) for b in species.bars] == [
        ("barcodetool", "identity top hit"), ("barcodetool", "identity"), ("barcodetool", "1-NN"),
        ("barcodetool", "k-NN, k=10"), ("vsearch", "top hit")]
    bt = data["tasks"]["species"]["barcodetool"]
    assert species.bars[0].value == pytest.approx(bt["top_hit_accuracy"])
    assert species.bars[2].value == pytest.approx(bt["one_nn_accuracy"])
    assert species.bars[0].rate.endswith("q/s") and species.bars[4].rate == "220 q/s"
    assert [b.tool for b in genus.bars] == ["barcodetool"] * 4 + ["vsearch"]
    assert [b.variant for b in bins.bars][:2] == ["identity, calibrated threshold", f"cosine, true k={bins_true_k}"]
    assert ("vsearch", "--id 0.97") in [(b.tool, b.variant) for b in bins.bars]
    assert all(0.0 <= b.value <= 1.0 for g in groups for b in g.bars)


def test_benchmark_chart(benchmark_json, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    result = CliRunner().invoke(main, ["plot", "benchmark", str(benchmark_json), "-o", str(out)])
    assert result.exit_code == 0, result.output
    height, width = check_png(out)
    assert width > height


def test_benchmark_chart_per_tool_summary(tmp_path):
    """A summary shaped {"tools": {tool: {metric: value}}} is drawn too (one group per metric)."""
    pytest.importorskip("matplotlib")
    summary = {"tasks": {}, "tools": {
        "barcodetool": {"species_1nn": 0.99, "genus_unseen_1nn": 0.8, "ami": 0.9, "queries_per_s": 300},
        "vsearch": {"species_1nn": 0.97, "genus_unseen_1nn": 0.6, "ami": 0.85, "queries_per_s": 1200},
        "blast": {"species_1nn": 0.96, "genus_unseen_1nn": float("nan"), "queries_per_s": 40}}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary), encoding="utf-8")
    groups = benchmark_groups(json.loads(path.read_text()))
    assert [len(g.bars) for g in groups] == [3, 2, 2]
    assert groups[2].bars[0].rate == ""          # no classification speed on AMI bars
    check_png(plot_benchmark(path, tmp_path / "summary.png", dpi=80))


def test_benchmark_chart_errors(tmp_path):
    pytest.importorskip("matplotlib")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        plot_benchmark(bad, tmp_path / "x.png")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"tasks": {"species": {"queries": 0, "note": "no test records"}}, "tools": {}}))
    with pytest.raises(InputError, match="no accuracy or AMI figures"):
        plot_benchmark(empty, tmp_path / "x.png")
    with pytest.raises(InputError, match="file not found"):
        plot_benchmark(tmp_path / "missing.json", tmp_path / "x.png")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="list.json.*holds a list, not an object"):    # the file is named
        plot_benchmark(listed, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
