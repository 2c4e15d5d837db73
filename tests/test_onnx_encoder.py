"""The exported encoder (onnx_encoder): parity with PyTorch, refusal of a graph of other weights, and `classify`
against a built index without importing PyTorch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from barcodetool.model import onnx as onnx_encoder
from barcodetool.cli import main
from barcodetool.embedding import embed_sequences
from barcodetool.errors import Interrupted, ModelError
from barcodetool.io.readers import read_barcodes
from barcodetool.model.mae import BarcodeMAE, preset
from barcodetool.model.onnx import ONNX_FILE, export_onnx, load_onnx_model
from barcodetool.model.tokenizer import TokenizerConfig
from barcodetool.model.weights import load_model_folder, save_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "bioscan_sample.csv"


@pytest.fixture
def exported(tiny_model_dir, tmp_path) -> Path:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "tiny-onnx")
    export_onnx(load_model_folder(folder))
    return folder


def sample_sequences(n: int = 60) -> list[str]:
    return [r.sequence for r in read_barcodes(SAMPLE)][:n]


def test_exported_encoder_embeds_as_pytorch_does(exported):
    sequences = sample_sequences() + ["ACGTAC", "ACGTACGTACGT" * 80]   # one token; longer than 660 nt
    pretrained = load_model_folder(exported)
    pretrained.compute = "float32"
    onnx_model = load_onnx_model(exported, threads=1)
    assert onnx_model.embedding_dim == pretrained.embedding_dim and onnx_model.sha256 == pretrained.sha256
    expected = embed_sequences(pretrained, sequences)
    found = embed_sequences(onnx_model, sequences, batch_size=7)   # other batches: the result must not care
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5)
    alone = embed_sequences(onnx_model, sequences[:1])
    np.testing.assert_allclose(alone[0], found[0], rtol=0, atol=1e-6)
    import barcodetool

    np.testing.assert_allclose(barcodetool.embed(sequences, model=onnx_model), found, rtol=0, atol=1e-6)
    # one call of more rows than a run takes (ONNX_RUN_ROWS): runs of their own width, results in order
    batch = embed_sequences(onnx_model, sequences, batch_size=len(sequences))
    assert len(sequences) > onnx_encoder.ONNX_RUN_ROWS
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-5)


def test_a_model_with_an_embedding_map_exports_too(tmp_path):
    torch.manual_seed(4)
    folder = save_model(BarcodeMAE(preset("tiny", embedding_width=48), include_decoder=False), TokenizerConfig(),
                        tmp_path / "mapped")
    pretrained = load_model_folder(folder)
    pretrained.compute = "float32"
    export_onnx(pretrained)
    sequences = sample_sequences(20)
    found = embed_sequences(load_onnx_model(folder), sequences)
    assert found.shape == (20, 48)
    np.testing.assert_allclose(found, embed_sequences(pretrained, sequences), rtol=0, atol=1e-5)


def test_a_graph_of_other_weights_is_refused(exported, tmp_path):
    other = tmp_path / "other"
    torch.manual_seed(9)
    save_model(BarcodeMAE(preset("tiny")), TokenizerConfig(), other, name="other")
    shutil.copy(exported / ONNX_FILE, other / ONNX_FILE)
    with pytest.raises(ModelError, match="exported from other weights"):
        load_onnx_model(other)
    (other / ONNX_FILE).write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="cannot read the ONNX graph"):
        load_onnx_model(other)



def test_a_signal_while_the_graph_loads_is_an_interrupt_not_a_broken_graph(exported, monkeypatch):
    """SIGTERM's handler raises Interrupted wherever the program is; inside the graph's load it was caught as
    onnxruntime's own error and reported as a graph to delete (exit 1, not 143)."""
    import onnxruntime

    def interrupted(*args, **kwargs):
        raise Interrupted(15)

    monkeypatch.setattr(onnxruntime, "InferenceSession", interrupted)
    with pytest.raises(Interrupted):
        load_onnx_model(exported)

def test_no_graph_or_no_runtime_means_pytorch(exported, tiny_model_dir, monkeypatch):
    assert load_onnx_model(tiny_model_dir) is None   # no encoder.onnx
    monkeypatch.setattr(onnx_encoder, "onnx_runtime_available", lambda: False)
    assert load_onnx_model(exported) is None


def index_and_queries(runner: CliRunner, exported: Path, tmp_path: Path, *build_options: str) -> tuple[Path, Path]:
    """The sample indexed with the exported model (`reference build` with `build_options`) and 40 sample queries."""
    index = tmp_path / "ref.h5"
    built = runner.invoke(main, ["-q", "reference", "build", str(SAMPLE), "-o", str(index), "--model",
                                 str(exported), "--device", "cpu", *build_options])
    assert built.exit_code == 0, built.output
    queries = tmp_path / "queries.fasta"
    queries.write_text("".join(f">q{i}\n{s}\n" for i, s in enumerate(sample_sequences(40))))
    return index, queries


def test_classify_with_the_graph_never_imports_pytorch(exported, tmp_path, subprocess_env):
    runner = CliRunner()
    index, queries = index_and_queries(runner, exported, tmp_path, "--compute", "float32")
    code = ("import sys; from barcodetool.cli import main\n"
            "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
            "assert 'torch' not in sys.modules, 'PyTorch was imported'\n")
    command = [sys.executable, "-c", code, "classify", str(queries), "-r", str(index), "--model", str(exported),
               "--device", "cpu", "--threads", "1", "-o", str(tmp_path / "onnx.tsv")]
    done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "float32, ONNX Runtime" in done.stderr
    # the same assignments as PyTorch in float32 (the graph removed)
    (exported / ONNX_FILE).unlink()
    result = runner.invoke(main, ["-q", "classify", str(queries), "-r", str(index), "--model", str(exported),
                                  "--device", "cpu", "--threads", "1", "--compute", "float32",
                                  "-o", str(tmp_path / "torch.tsv")])
    assert result.exit_code == 0, result.output
    onnx_rows = (tmp_path / "onnx.tsv").read_text().splitlines()
    torch_rows = (tmp_path / "torch.tsv").read_text().splitlines()
    assert len(onnx_rows) == 41 and onnx_rows == torch_rows


def test_bundled_cpu_models_carry_their_graph():
    from barcodetool.model.weights import bundled_root

    for name in ("barcodemae-nano", "barcodemae-mini"):
        onnx_model = load_onnx_model(bundled_root() / name, threads=1)
        assert onnx_model is not None and onnx_model.name == name


def test_device_choice_without_pytorch(monkeypatch):
    from barcodetool.model import runtime

    assert runtime.cuda_impossible("cpu") and not runtime.cuda_impossible("cuda")
    assert not runtime.cuda_impossible("cuda:1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runtime.cuda_impossible("auto")   # every GPU hidden
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    driver = "/proc/driver/nvidia/version"
    monkeypatch.setattr(runtime.os.path, "exists", lambda path: path == driver)
    assert not runtime.cuda_impossible("auto")   # a driver: PyTorch decides
    monkeypatch.setattr(runtime.os.path, "exists", lambda path: False)
    assert runtime.cuda_impossible("auto") == runtime.sys.platform.startswith("linux")


def test_a_model_that_reads_in_phase_exports_and_embeds_shifted_barcodes_alike(tmp_path):
    torch.manual_seed(5)
    folder = save_model(BarcodeMAE(preset("tiny"), include_decoder=False), TokenizerConfig(phase="coi5p"),
                        tmp_path / "phased")
    pretrained = load_model_folder(folder)
    pretrained.compute = "float32"
    export_onnx(pretrained)
    graph = load_onnx_model(folder, threads=1)
    assert graph.tokenizer.config.phase == "coi5p"
    barcode = sample_sequences(1)[0]
    shifted = [barcode, "A" + barcode, "GT" + barcode, "ACG" + barcode, "ACGT" + barcode, "ACGTA" + barcode]
    found = embed_sequences(graph, shifted)
    np.testing.assert_allclose(found, embed_sequences(pretrained, shifted), rtol=0, atol=1e-5)
    np.testing.assert_allclose(found, np.broadcast_to(found[0], found.shape), rtol=0, atol=1e-5)


def test_a_table_reference_classifies_as_its_built_index(exported, tmp_path, monkeypatch):
    """A table given as the reference (indexed once, cached) embedded the queries with PyTorch (bf16 where the CPU
    has it), the built index with ONNX Runtime in float32: one reference, two sets of answers (an order confidence
    of 0.999 against 0.998). Both now embed the queries as against the built index."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    runner = CliRunner()
    index, queries = index_and_queries(runner, exported, tmp_path, "--threads", "1")
    rows = {}
    for name, reference in (("table", SAMPLE), ("index", index)):
        result = runner.invoke(main, ["classify", str(queries), "-r", str(reference), "--model", str(exported),
                                      "--device", "cpu", "--threads", "1", "-o", str(tmp_path / f"{name}.tsv")])
        assert result.exit_code == 0, result.output
        assert "float32, ONNX Runtime" in result.stderr, result.stderr
        rows[name] = (tmp_path / f"{name}.tsv").read_text()
    assert rows["table"] == rows["index"]
