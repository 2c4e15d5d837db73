"""The scripts beside the package: the performance checks in benchmarks/, the recipes of the bundled weights in
weights/recipes/ and the experiments in docs/research/.

Each one starts as its users start it (`python path/to/script.py --help`, in its own process, so that an import
error shows), imports only names that exist (in the package, in a sibling script, or installed; the imports inside
its functions too), and the cheap ones run for real on tests/data/ with a tiny model, in this process (as Python
runs a script: its folder first on sys.path, as __main__) to keep the suite short. Not run for real here: the GPU
job device_weights.py (its CPU rehearsal, --dry-run, trains for half a minute by design; its loading of the
benchmarks/ scripts is checked), and cpu_classify.py and stream_scale.py, which time the CLI in subprocesses.
"""

from __future__ import annotations

import ast
import gzip
import importlib
import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_models import SAMPLE, restore_torch_threads  # noqa: F401

from barcodetool.io import read_barcodes
from barcodetool.reference import build_reference

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
BENCHMARKS, RECIPES, RESEARCH = ROOT / "benchmarks", ROOT / "weights" / "recipes", ROOT / "docs" / "research"
SCRIPTS = sorted(path for folder in (BENCHMARKS, RECIPES, RESEARCH) for path in folder.glob("*.py"))
SIBLING_MODULES = {"corpora.py", "identity_rerank_data.py"}   # imported by the scripts beside them; no options


def script_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_module(path: Path, name: str):
    """A script or sibling module loaded from its file under a private name (not left in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_main(monkeypatch, capsys):
    """Run a script in this process as `python script.py ARGS` would and return its standard output; the modules it
    imported from its own folder are forgotten afterwards."""

    def run(path: Path, *args) -> str:
        before = set(sys.modules)
        monkeypatch.syspath_prepend(str(path.parent))
        monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
        monkeypatch.setenv("OMP_NUM_THREADS", "1")   # identity_rerank.py sets it when unset
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            for name in set(sys.modules) - before:
                origin = getattr(sys.modules[name], "__file__", None)
                if origin and Path(origin).parent == path.parent:
                    del sys.modules[name]
        return capsys.readouterr().out

    return run


# ============================================================================================ every script
@pytest.mark.parametrize("path", SCRIPTS, ids=script_id)
def test_script_starts(path, tmp_path, subprocess_env):
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    if path.name not in SIBLING_MODULES:
        assert done.stdout.startswith("usage:"), done.stdout[:500]


def imported_names(path: Path):
    """(line, module, names) of every import statement of a script, at any depth (None: `import module`)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module != "__future__":
            yield node.lineno, node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None


@pytest.mark.parametrize("path", SCRIPTS, ids=script_id)
def test_script_imports_exist(path):
    missing = []
    for line, module, names in imported_names(path):
        sibling = path.parent / f"{module}.py"
        if module.split(".")[0] == "barcodetool":
            found = importlib.import_module(module)
            missing += [f"{line}: {module}.{name}" for name in names or ()
                        if not hasattr(found, name) and importlib.util.find_spec(f"{module}.{name}") is None]
        elif sibling.is_file():
            found = load_module(sibling, f"_sibling_{path.stem}_{module}")
            missing += [f"{line}: {sibling.name} has no {name}" for name in names or () if not hasattr(found, name)]
        elif importlib.util.find_spec(module.split(".")[0]) is None:
            missing.append(f"{line}: {module} is neither installed nor beside the script")
    assert not missing, f"{script_id(path)}: {missing}"


# ============================================================================================ benchmarks/
def test_split_fasta(run_main, tmp_path):
    out = tmp_path / "test.fasta"
    printed = run_main(BENCHMARKS / "split_fasta.py", SAMPLE, "test", "test_unseen", "-o", out)
    written = list(read_barcodes(out))
    unique = {(r.split, r.sequence) for r in read_barcodes(SAMPLE) if r.split in ("test", "test_unseen")}
    assert len(written) == len({r.sequence for r in written}) == len({sequence for _, sequence in unique})
    assert printed.strip() == f"{len(written)} unique barcodes of test, test_unseen -> {out}"


def test_reference_scale(run_main):
    script = BENCHMARKS / "reference_scale.py"
    search = json.loads(run_main(script, "search", "--n-ref", 3000, "--n-query", 20, "--dim", 16, "--threads", 1))
    assert search["case"] == "search" and search["n_ref"] == 3000 and search["queries_per_s"] > 0
    clusters = json.loads(run_main(script, "cluster", "--n", 300, "--dim", 16, "--threads", 1))
    assert clusters["case"] == "cluster" and clusters["n"] == 300 and clusters["clusters"] > 1


@pytest.mark.skipif(shutil.which("vsearch") is None or not os.access("/usr/bin/time", os.X_OK),
                    reason="needs vsearch and /usr/bin/time")
def test_large_reference(run_main, tmp_path):
    """The large-reference benchmark end to end on the sample (its test_unseen records as queries)."""
    out = tmp_path / "large.json"
    printed = run_main(BENCHMARKS / "large_reference.py", SAMPLE, "--threads", 1, "--repeats", 1,
                       "--workdir", tmp_path / "work", "--json", out)
    result = json.loads(out.read_text())
    queries = {r.sequence for r in read_barcodes(SAMPLE) if r.split == "test_unseen"}
    assert result["queries"] == len(queries) and result["build"]["peak_mib"] > 0
    assert result["barcodetool"]["median_s"] > 0 and result["vsearch"]["median_s"] > 0
    assert 0 <= result["accuracy"]["genus_precision"] <= 1 and "| `reference build` |" in printed


def table_rows(printed: str) -> dict[str, list[str]]:
    """A markdown table's rows by first cell (the header and rule left out)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in printed.splitlines()
            if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows[1:]}


def percent(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_cosine_clusters(run_main, tiny_model_dir):
    """Each set's BIN AMI by the identity method and by each model's cosine clusters at its card's cut."""
    rows = table_rows(run_main(BENCHMARKS / "cosine_clusters.py", SAMPLE, "--extra", SAMPLE, "--models",
                               tiny_model_dir, "--min-size", 10, "--threads", 1))
    assert set(rows) == {"val", "Arthropoda"}
    for cells in rows.values():
        assert len(cells) == 3 and all(-100 <= percent(cell) <= 100 for cell in cells[1:])
    assert percent(rows["Arthropoda"][1]) > 90     # identity clusters of real barcodes recover their BINs


@pytest.mark.skipif(shutil.which("vsearch") is None, reason="needs vsearch")
def test_embedding_loo(run_main, tmp_path, tiny_model_dir):
    """Leave-one-out genus 1-NN of VSEARCH --self, a 5-mer profile and a model, on the sample's one phylum."""
    rows = table_rows(run_main(BENCHMARKS / "embedding_loo.py", SAMPLE, "--models", tiny_model_dir, "--work",
                               tmp_path, "--threads", 1))
    assert list(rows) == ["Arthropoda"]
    cells = rows["Arthropoda"]
    assert len(cells) == 4 and all(0 <= percent(cell) <= 100 for cell in cells[1:])
    assert percent(cells[1]) > 80 and percent(cells[2]) > 80   # VSEARCH and the profile find congeners


def test_gpu_scripts_on_the_cpu(run_main):
    trained = json.loads(run_main(BENCHMARKS / "gpu_train.py", "--device", "cpu", "--preset", "tiny",
                                  "--batch-size", 8, "--steps", 2, "--warmup", 1).splitlines()[0])
    assert trained["device"] == "cpu" and trained["steps"] == 2 and trained["barcodes_per_s"] > 0
    embedded = json.loads(run_main(BENCHMARKS / "gpu_embed.py", "--device", "cpu", "--preset", "tiny",
                                   "--batch-size", 8, "--data", DATA / "example.fasta"))
    assert embedded["model_only"]["barcodes_per_s"] > 0
    assert embedded["end_to_end"]["records"] == len(list(read_barcodes(DATA / "example.fasta")))


# ============================================================================================ weights/recipes/
def test_quick_eval(run_main, tiny_model_dir):
    result = json.loads(run_main(RECIPES / "quick_eval.py", SAMPLE, "--model", tiny_model_dir, "--device", "cpu"))
    for key in ("species_1nn", "species_knn10", "genus_unseen_1nn", "genus_unseen_knn10"):
        assert 0 <= result[key] <= 1, key
    assert -1 <= result["ami_true_k"] <= 1 and result["ami_by_threshold"] and result["embed_seconds"] > 0


def test_distill_mini(run_main, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("bold_insects.csv.gz", "coi_extra.csv.gz"):   # the shared data's file names
        with open(SAMPLE, "rb") as source, gzip.open(data / name, "wb") as target:
            shutil.copyfileobj(source, target)
    printed = run_main(RECIPES / "distill_mini.py", data, "--teacher", tiny_model_dir, "--preset", "tiny",
                       "--output", tmp_path / "run", "--package", tmp_path / "packaged", "--limit", 60,
                       "--epochs", 1, "--batch-size", 32, "--threads", 1)
    assert "unique barcodes" in printed and " steps in " in printed
    card = json.loads((tmp_path / "packaged" / "barcodetool.json").read_text(encoding="utf-8"))
    assert card["description"].endswith("(weights/recipes/distill_mini.py)")


def test_device_weights_loads_the_benchmark_scripts(tiny_pretrained):
    """The GPU job measures embedding and training speed with benchmarks/gpu_embed.py and gpu_train.py, which are
    not on its sys.path: it loads them by path, and gpu_embed's own `from gpu_train import ...` must then work."""
    recipe = load_module(RECIPES / "device_weights.py", "_device_weights")
    try:
        recipe.benchmark_script("gpu_train")
        gpu_embed = recipe.benchmark_script("gpu_embed")
        measured = gpu_embed.measure_model(tiny_pretrained, batch_size=4, batches=1)
        assert measured["batch_size"] == 4 and measured["barcodes_per_s"] > 0
        assert callable(recipe.benchmark_script("gpu_train").measure_training)
    finally:
        for name in ("gpu_train", "gpu_embed"):
            sys.modules.pop(name, None)


# ============================================================================================ docs/research/
@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")   # few pairs
def test_identity_rerank(run_main, tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.json"
    run_main(RESEARCH / "identity_rerank.py", SAMPLE, "--cache", tmp_path / "cache", "--model", tiny_model_dir,
             "--n", "5,10", "--genus-n", 10, "--pairs", 20, "--recall-sample", 5, "--holdout-species", 5,
             "--holdout-per-species", 2, "--cluster-k", 5, "--cluster-calibration", 40, "--speed-sample", 10,
             "--threads", 1, "--json", rows)
    sections = {row["section"] for row in json.loads(rows.read_text(encoding="utf-8"))}
    assert sections == {"pairs", "rerank", "species", "recall", "genus", "thresholds", "cluster", "speed"}
    assert {path.name for path in (tmp_path / "cache").glob("*.npy")} >= {"train.npy", "test.npy"}


def test_genus_gap(run_main, tmp_path, tiny_pretrained):
    records = [r for r in read_barcodes(SAMPLE) if r.split in ("train", "val")]
    index = build_reference(records, tiny_pretrained).save(tmp_path / "ref.h5")
    printed = run_main(RESEARCH / "genus_gap.py", index)
    lines = printed.splitlines()
    assert lines[0].startswith("| rule | new species, genus present") and "(calibrated)" in lines[2]


def test_confidence_evidence(run_main, tmp_path, subprocess_env):
    """The evidence comparison end to end on the sample: an index of its train records (the default model), every
    feature set judged by the halves, a second draw and val."""
    from barcodetool.io import write_fasta
    from barcodetool.reference.confidence import FEATURES

    fasta, index, out = tmp_path / "train.fasta", tmp_path / "train.h5", tmp_path / "evidence.json"
    write_fasta([r for r in read_barcodes(SAMPLE) if r.split == "train"], fasta, sintax=True)
    subprocess.run([sys.executable, "-m", "barcodetool", "-q", "reference", "build", str(fasta), "-o", str(index),
                    "--threads", "1"], check=True, env=subprocess_env)
    printed = run_main(BENCHMARKS / "confidence_evidence.py", SAMPLE, "--reference", index, "--json", out)
    module = load_module(BENCHMARKS / "confidence_evidence.py", "confidence_evidence_script")
    assert module.FEATURE_SETS["+ both + neighbours + isolation (this version)"] == list(FEATURES)
    results = json.loads(out.read_text())["results"]
    assert list(results) == list(module.FEATURE_SETS) and len(printed.splitlines()) == 2 + len(results)
    for result in results.values():
        assert 0 <= result["halves"]["species_right_new_haplotypes"] <= 1
        assert 0 <= result["val_species_right"] <= 1
    # the sample's val barcodes are known species next to their own: most are named right whatever the features
    assert min(result["val_species_right"] for result in results.values()) > 0.8
