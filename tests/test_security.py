"""Security: nothing is unpickled, names read from input never become paths, no output overwrites an input.

* Weights (safetensors + JSON), reference indexes and embeddings (HDF5) load without running code from the file:
  `torch.load`, `pickle` and `numpy.load(allow_pickle=True)` are made to fail while the commands that load
  them run.
* Record ids, taxonomy labels, BINs, file names and the model name recorded in an index never choose where a
  file is written or which model is loaded: the reference cache is keyed by a content hash.
* An output path naming an input (or a symlink to one, or the base model of `finetune`) is refused with exit
  status 1 (2 where Click itself refuses a file given as a folder), and the input is left as it was.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import barcodetool.model.weights
from barcodetool.cli import main
from barcodetool.embedding import read_embeddings
from barcodetool.io.readers import read_barcodes
from barcodetool.reference import ReferenceIndex, build_reference
from barcodetool.model.weights import load_model
from helpers_models import DATA, SAMPLE, SINTAX_REFERENCE, make_tiny_model, save_sintax_index
from helpers_models import restore_torch_threads  # noqa: F401 (autouse fixture)

CPU = ["--device", "cpu", "--threads", "1"]
EXAMPLE = DATA / "example.fasta"
HOSTILE_IDS = ["../../escaped", "/tmp/barcodetool-absolute-id", "..", "~", "$(touch${IFS}pwned)", "a/b/c",
               "..\\..\\windows", "%2e%2e%2fencoded", "/dev/null"]


def invoke(arguments: list[str]):
    return CliRunner().invoke(main, arguments)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sec", seed=0)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, model_dir) -> Path:
    return save_sintax_index(model_dir, tmp_path_factory.mktemp("index"))


pytestmark = pytest.mark.usefixtures("private_folders")   # conftest.py: a private cache and data folder


# ============================================================================================ no pickle
@pytest.fixture
def no_unpickling(monkeypatch):
    """Every way of running code from a file fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling (torch.load / pickle) must never happen while loading files")

    class ForbiddenUnpickler:
        def __init__(self, *args, **kwargs):
            forbidden()

    numpy_load = np.load

    def guarded_numpy_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            forbidden()
        return numpy_load(*args, allow_pickle=False, **kwargs)

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", ForbiddenUnpickler)
    monkeypatch.setattr(np, "load", guarded_numpy_load)


def test_models_indexes_and_embeddings_load_without_unpickling(no_unpickling, model_dir, index_path, tmp_path):
    loaded = load_model(model_dir)
    index = ReferenceIndex.load(index_path)
    index.check_model(loaded)
    assert len(index) == 100 and index.thresholds is not None

    out = tmp_path / "out"
    out.mkdir()
    steps = [
        ["embed", str(EXAMPLE), "-o", str(out / "e.h5")],
        ["reference", "build", str(SINTAX_REFERENCE), "-o", str(out / "ref.h5")],
        ["reference", "info", str(index_path)],
        ["classify", str(EXAMPLE), "-r", str(index_path), "-o", str(out / "a.tsv")],
        ["classify", str(EXAMPLE), "-r", str(SINTAX_REFERENCE), "-o", str(out / "b.tsv")],  # builds the cache
        ["classify", str(EXAMPLE), "-r", str(SINTAX_REFERENCE), "-o", str(out / "c.tsv")],  # loads the cache
        ["cluster", str(EXAMPLE), "-r", str(index_path), "-o", str(out / "clusters.tsv")],
    ]
    for arguments in steps:
        if arguments[:2] != ["reference", "info"]:
            arguments += ["-m", str(model_dir), *CPU]
        result = invoke(["-q", *arguments])
        assert result.exit_code == 0, (arguments, result.output, result.exception)
    assert len(read_embeddings(out / "e.h5").ids) == 100
    assert (out / "b.tsv").read_text() == (out / "c.tsv").read_text()


def test_training_checkpoints_resume_without_unpickling(no_unpickling, tmp_path):
    output = tmp_path / "run"
    options = [str(SAMPLE), "--preset", "tiny", "--max-steps", "2", "--batch-size", "8", "--checkpoint-every", "1",
               "-o", str(output), *CPU]
    assert invoke(["-q", "train", *options]).exit_code == 0
    resumed = invoke(["-q", "train", *options, "--resume"])  # restores the model and optimizer checkpoint
    assert resumed.exit_code == 0, resumed.output
    assert load_model(output).card["training"]["steps"] == 2


# ============================================================================================ names are not paths
def hostile_inputs(folder: Path) -> tuple[Path, Path]:
    """A SINTAX reference and a query FASTA whose ids, labels and BINs look like paths; the reference's file name
    holds shell and path characters."""
    folder.mkdir(parents=True)
    reference = folder / "ref ..;$(touch pwned) %2f.fasta"
    lines = []
    for i, record in enumerate(read_barcodes(SINTAX_REFERENCE)):
        record_id = HOSTILE_IDS[i % len(HOSTILE_IDS)] + f"-{i}"
        genus = record.taxonomy.get("genus", "g")
        lines.append(f">{record_id};tax=p:../../{record.taxonomy['phylum']},o:/etc/{record.taxonomy['order']},"
                     f"g:{genus},s:../../../{genus}_x{i % 3};bin=../../BOLD:{i % 7};\n{record.sequence}\n")
    reference.write_text("".join(lines))
    queries = folder / "queries.fasta"
    queries.write_text("".join(f">{HOSTILE_IDS[i % len(HOSTILE_IDS)]}#{i}\n{r.sequence}\n"
                               for i, r in enumerate(read_barcodes(EXAMPLE)) if i < 30))
    return reference, queries


def test_ids_labels_and_file_names_never_become_paths(model_dir, tmp_path, monkeypatch):
    reference, queries = hostile_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "cwd" / "deep" / "er"  # relative names like ../../escaped would land inside tmp_path
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    model = ["-m", str(model_dir), *CPU]
    steps = [
        ["embed", str(queries), "-o", str(out / "queries.h5"), *model],
        ["reference", "build", str(reference), "-o", str(out / "ref.h5"), *model],
        ["classify", str(queries), "-r", str(reference), "-o", str(out / "a.tsv"), *model],
        ["classify", str(queries), "-r", str(reference), "-o", str(out / "b.tsv"), "--output-format", "sintax",
         *model],
        ["classify", str(queries), "-r", str(out / "ref.h5"), "-o", str(out / "c.tsv"), *model],
        ["cluster", str(queries), "-r", str(reference), "-o", str(out / "clusters.tsv"), "--metrics",
         str(out / "metrics.json"), *model],
        ["embed", str(reference), "-o", str(out / "ref-embeddings.h5"), *model],
    ]
    if _has_matplotlib():
        steps.append(["plot", "embeddings", str(out / "ref-embeddings.h5"), "--color-by", "species", "-o",
                      str(out / "map.png")])
    for arguments in steps:
        result = invoke(["-q", *arguments])
        assert result.exit_code == 0, (arguments, result.output, result.exception)

    created = tree(tmp_path) - before
    outputs = {f"out/{name}" for name in ("queries.h5", "ref.h5", "a.tsv", "b.tsv", "c.tsv", "clusters.tsv",
                                          "metrics.json", "ref-embeddings.h5")}
    if _has_matplotlib():
        outputs.add("out/map.png")
    cached = {name for name in created - outputs if not name.startswith("cache/matplotlib/")}  # its font list
    assert outputs <= created
    # the only other file: the cached index of the reference, named by a hash
    assert len(cached) == 1, sorted(cached)
    (cache_file,) = cached
    assert re.fullmatch(r"cache/barcodetool/references/[0-9a-f]{32}\.h5", cache_file), cache_file
    assert not [p for p in tmp_path.rglob("*") if p.name == "pwned"]
    assert not Path("/tmp/barcodetool-absolute-id-1").exists()
    # the ids went into the outputs verbatim
    ids = read_embeddings(out / "queries.h5").ids
    assert ids[:2] == ["../../escaped#0", "/tmp/barcodetool-absolute-id#1"]
    assert (out / "a.tsv").read_text().splitlines()[1].startswith("../../escaped#0\t")


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_model_named_in_an_index_is_not_loaded_from_that_path(model_dir, tmp_path, monkeypatch):
    """An index records its model's name; with `--model auto` only an installed model of that name is used,
    never a folder the name points to (a planted model with the right weights)."""
    planted = tmp_path / "planted-model"
    shutil.copytree(model_dir, planted)
    index = build_reference(read_barcodes(SINTAX_REFERENCE), load_model(planted))
    index.model_name = str(planted)  # as if the index named a path
    index_path = index.save(tmp_path / "ref.h5")
    other = make_tiny_model(tmp_path / "other", seed=1)
    monkeypatch.setattr(barcodetool.model.weights, "default_model_name",
                        lambda device="cpu", task="classify": str(other))
    output = tmp_path / "out.tsv"
    result = invoke(["-q", "classify", str(EXAMPLE), "-r", str(index_path), "-o", str(output), *CPU])
    assert result.exit_code == 1, result.output
    assert "was built with model" in result.stderr and str(index_path) in result.stderr
    assert not output.exists()


def test_model_name_is_a_plain_name(tmp_path):
    """`--name` becomes a folder of the user models folder when -o is not given: no path in it."""
    for name in ("../../escaped", "a/b", ".hidden", "..", "x\\y"):
        result = invoke(["train", str(SAMPLE), "--preset", "tiny", "--max-steps", "1", "--name", name, *CPU])
        assert result.exit_code == 2, (name, result.output)
        assert "not a plain name" in result.output
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "data").exists()


# ============================================================================================ outputs vs inputs
@pytest.fixture
def inputs(tmp_path, model_dir, index_path) -> dict[str, Path]:
    """Copies of every kind of input in one folder (each test may try to overwrite them)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = {
        "IN": shutil.copy(EXAMPLE, folder / "queries.fasta"),
        "REF": shutil.copy(SINTAX_REFERENCE, folder / "ref.fasta"),
        "INDEX": shutil.copy(index_path, folder / "ref.h5"),
        "SPLIT": shutil.copy(SAMPLE, folder / "split.csv"),
        "H5": (folder / "embeddings.h5"),
        "TSV": (folder / "clusters.tsv"),
        "JSON": (folder / "benchmark.json"),
    }
    files["H5"].write_bytes(b"\x89HDF\r\n\x1a\n not really")
    files["TSV"].write_text("id\tcluster\nq1\t1\n")
    files["JSON"].write_text("{}\n")
    (folder / "link.h5").symlink_to(folder / "queries.fasta")
    files["LINK"] = folder / "link.h5"
    files["MODEL"] = Path(shutil.copytree(model_dir, tmp_path / "base-model"))
    return {k: Path(v) for k, v in files.items()}


OVERWRITES = [
    ("embed", ["embed", "IN", "-o", "IN"], 1),
    ("embed via a symlink", ["embed", "IN", "-o", "LINK"], 1),
    ("classify over the queries", ["classify", "IN", "-r", "INDEX", "-o", "IN"], 1),
    ("classify over the index", ["classify", "IN", "-r", "INDEX", "-o", "INDEX"], 1),
    ("classify over a reference FASTA", ["classify", "IN", "-r", "REF", "-o", "REF"], 1),
    ("cluster", ["cluster", "IN", "-o", "IN"], 1),
    ("cluster --metrics", ["cluster", "IN", "-o", "OUT", "--metrics", "IN"], 1),
    ("cluster over the reference", ["cluster", "IN", "-r", "INDEX", "-o", "INDEX"], 1),
    ("reference build", ["reference", "build", "REF", "-o", "REF"], 1),
    ("plot embeddings", ["plot", "embeddings", "H5", "-o", "H5"], 1),
    ("plot embeddings --clusters", ["plot", "embeddings", "H5", "--clusters", "TSV", "-o", "TSV"], 1),
    ("plot benchmark", ["plot", "benchmark", "JSON", "-o", "JSON"], 1),
    ("benchmark --json", ["benchmark", "SPLIT", "--json", "SPLIT"], 1),
    ("train -o a file", ["train", "SPLIT", "-o", "SPLIT"], 2),  # -o is a folder: Click refuses a file
    ("finetune -o a file", ["finetune", "SPLIT", "-o", "SPLIT"], 2),
    ("finetune over its base model", ["finetune", "SPLIT", "-m", "MODEL", "-o", "MODEL", "--max-steps", "1"], 1),
]


@pytest.mark.parametrize("arguments, status", [c[1:] for c in OVERWRITES], ids=[c[0] for c in OVERWRITES])
def test_an_output_never_overwrites_an_input(arguments, status, inputs, model_dir, tmp_path):
    arguments = [str(inputs[a]) if a in inputs else (str(tmp_path / "out.tsv") if a == "OUT" else a)
                 for a in arguments]
    if arguments[0] not in ("plot",) and "-m" not in arguments:
        arguments += ["-m", str(model_dir)]
    if arguments[0] != "plot":
        arguments += CPU
    before = {p: digest(p) for p in inputs["MODEL"].parent.rglob("*") if p.is_file() and not p.is_symlink()}
    listing = tree(tmp_path)
    result = invoke(["-q", *arguments])
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    if status == 1:
        (line,) = result.stderr.splitlines()
        assert line.startswith("barcodetool: error: ") and "overwrite" in line, line
    after = {p: digest(p) for p in inputs["MODEL"].parent.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before  # every input byte for byte
    assert tree(tmp_path) == listing  # and nothing written
