"""Embedding barcodes: input order, the HDF5 file (round trip, dtype, labels, attributes), atomic output."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from barcodetool._version import __version__
from barcodetool.embedding import (EMBEDDINGS_FORMAT, EMBEDDINGS_FORMAT_VERSION, embed_file, embed_sequences,
                                   read_embeddings)
from barcodetool.errors import InputError, OutputError, UsageError
from barcodetool.io.hdf5 import open_hdf5
from barcodetool.io.readers import read_barcodes

embed_module = importlib.import_module("barcodetool.embedding")  # `barcodetool.embed` the attribute is a function

DATA = Path(__file__).resolve().parent / "data"
BIOSCAN = DATA / "bioscan_sample.csv"
EXAMPLE_FASTA = DATA / "example.fasta"


@pytest.fixture(scope="module")
def bioscan_records():
    return list(read_barcodes(BIOSCAN))


def test_embed_sequences_keeps_input_order(tiny_pretrained, bioscan_records):
    rng = np.random.default_rng(0)
    sequences = [r.sequence for r in bioscan_records[:40]]
    sequences = [sequences[i] for i in rng.permutation(len(sequences))]
    sequences[3] = sequences[3][:100]  # varied lengths so that sorting by length really reorders
    together = embed_sequences(tiny_pretrained, sequences, batch_size=7)
    assert together.shape == (40, 32) and together.dtype == np.float32
    alone = np.stack([embed_sequences(tiny_pretrained, [s])[0] for s in sequences])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    shuffled = rng.permutation(len(sequences))
    again = embed_sequences(tiny_pretrained, [sequences[i] for i in shuffled], batch_size=16)
    np.testing.assert_allclose(again, together[shuffled], rtol=0, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in together}) > 30  # distinct sequences, distinct vectors


def test_embed_sequences_edge_cases(tiny_pretrained):
    assert embed_sequences(tiny_pretrained, []).shape == (0, 32)
    with pytest.raises(UsageError):
        embed_sequences(tiny_pretrained, ["ACGTACGT"], batch_size=0)


def test_sequence_shorter_than_k_is_an_input_error(tiny_pretrained, tmp_path):
    with pytest.raises(InputError, match="fewer than k"):
        embed_sequences(tiny_pretrained, ["ACGTACGTAC", "ACGT"])
    fasta = tmp_path / "short.fasta"
    fasta.write_text(">ok\nACGTACGTACGTACGT\n>tiny\nACG\n")
    output = tmp_path / "out.h5"
    with pytest.raises(InputError):
        embed_file(fasta, output, tiny_pretrained)
    assert not output.exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hdf5_round_trip(tiny_pretrained, bioscan_records, tmp_path, dtype):
    output = tmp_path / f"emb-{dtype}.h5"
    summary = embed_file(BIOSCAN, output, tiny_pretrained, batch_size=64, dtype=dtype)
    n = len(bioscan_records)
    assert summary.count == n and summary.dim == 32 and summary.model_name == "tiny-test"
    assert summary.truncated == sum(len(r.sequence) > 660 for r in bioscan_records) > 0
    result = read_embeddings(output)
    assert result.ids == [r.id for r in bioscan_records]
    assert result.embeddings.shape == (n, 32) and result.embeddings.dtype == np.float32
    assert result.lengths.tolist() == [len(r.sequence) for r in bioscan_records]
    expected = embed_sequences(tiny_pretrained, [r.sequence for r in bioscan_records])
    if dtype == "float32":
        np.testing.assert_allclose(result.embeddings, expected, rtol=0, atol=1e-5)
    else:
        np.testing.assert_allclose(result.embeddings, expected, rtol=2e-3, atol=2e-3)
    with h5py.File(output, "r") as handle:
        assert handle["embeddings"].dtype == np.dtype(dtype)
        attrs = dict(handle.attrs)
    # labels from the BIOSCAN table travel with the vectors
    for rank in ("phylum", "class", "order", "family", "subfamily", "genus", "species"):
        assert rank in result.taxonomy
        assert result.taxonomy[rank] == [r.taxonomy.get(rank, "") for r in bioscan_records]
    assert result.taxonomy["species"][0] == "Crambus agitatellus"
    assert result.bins == [r.bin or "" for r in bioscan_records]
    assert result.bins[0] == "BOLD:AAA4505"
    assert attrs["format"] == EMBEDDINGS_FORMAT and attrs["format_version"] == EMBEDDINGS_FORMAT_VERSION
    assert attrs["barcodetool_version"] == __version__
    assert attrs["model_name"] == "tiny-test"
    assert attrs["model_sha256"] == tiny_pretrained.sha256 and len(attrs["model_sha256"]) == 64
    assert attrs["pooling"] == "mean"
    assert attrs["dtype"] == dtype and attrs["count"] == n and attrs["embedding_dim"] == 32
    assert attrs["compute"] == "float32"                  # a CPU model loaded without --compute
    assert str(attrs["created"]).startswith("20")
    assert attrs["source"] == "bioscan_sample.csv"


def test_fasta_without_labels(tiny_pretrained, tmp_path):
    output = tmp_path / "example.h5"
    embed_file(EXAMPLE_FASTA, output, tiny_pretrained)
    result = read_embeddings(output)
    records = list(read_barcodes(EXAMPLE_FASTA))
    assert result.ids == [r.id for r in records]
    assert result.taxonomy == {} and result.bins is None


def test_labels_appearing_late_are_backfilled(tiny_pretrained, tmp_path):
    """A rank first seen in a later chunk gets "" for the rows written before it."""
    fasta = tmp_path / "mixed.fasta"
    fasta.write_text(">a\n" + "ACGT" * 30 + "\n>b\n" + "TTGA" * 30 + "\n"
                     ">c;tax=g:Aedes,s:Aedes_aegypti\n" + "GGCA" * 30 + "\n")
    output = tmp_path / "mixed.h5"
    embed_file(fasta, output, tiny_pretrained)
    embed_module.embed_records_to_h5(read_barcodes(fasta), tmp_path / "mixed1.h5", tiny_pretrained,
                                     chunk_records=1)
    for path in (output, tmp_path / "mixed1.h5"):
        result = read_embeddings(path)
        assert result.ids == ["a", "b", "c"]
        assert result.taxonomy["genus"] == ["", "", "Aedes"]


def test_output_is_atomic_on_failure(tiny_pretrained, tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "emb.h5"
    calls = []
    real = embed_module.embed_sequences

    def failing(pretrained, sequences, **kwargs):
        calls.append(len(sequences))
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second chunk")
        return real(pretrained, sequences, **kwargs)

    monkeypatch.setattr(embed_module, "embed_sequences", failing)
    records = list(read_barcodes(BIOSCAN))
    with pytest.raises(RuntimeError, match="second chunk"):
        embed_module.embed_records_to_h5(records, output, tiny_pretrained, chunk_records=50)
    assert calls == [50, 50]
    assert os.listdir(folder) == []  # neither the output nor a temporary file

    # an existing output survives a failed rewrite untouched
    output.write_bytes(b"previous content")
    calls.clear()
    with pytest.raises(RuntimeError):
        embed_module.embed_records_to_h5(records, output, tiny_pretrained, chunk_records=50)
    assert os.listdir(folder) == ["emb.h5"] and output.read_bytes() == b"previous content"


def test_output_equal_to_input_refused(tiny_pretrained, tmp_path):
    source = tmp_path / "input.fasta"
    original = EXAMPLE_FASTA.read_bytes()
    source.write_bytes(original)
    with pytest.raises(OutputError):
        embed_file(source, source, tiny_pretrained)
    with pytest.raises(OutputError):
        embed_file(source, tmp_path / "." / "input.fasta", tiny_pretrained)
    assert source.read_bytes() == original


def test_bad_dtype_and_missing_folder(tiny_pretrained, tmp_path):
    with pytest.raises(UsageError):
        embed_file(EXAMPLE_FASTA, tmp_path / "x.h5", tiny_pretrained, dtype="int8")
    with pytest.raises(OutputError, match="does not exist"):
        embed_file(EXAMPLE_FASTA, tmp_path / "no" / "x.h5", tiny_pretrained)


def test_read_embeddings_rejects_other_files(tmp_path):
    with pytest.raises(InputError):
        read_embeddings(EXAMPLE_FASTA)
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "something-else"
    with pytest.raises(InputError, match="not a barcodetool embeddings file"):
        read_embeddings(path)
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = EMBEDDINGS_FORMAT
        handle.attrs["format_version"] = EMBEDDINGS_FORMAT_VERSION + 1
    with pytest.raises(InputError, match="upgrade"):
        read_embeddings(path)
    with pytest.raises(InputError, match="file not found"):
        read_embeddings(tmp_path / "missing.h5")


@pytest.mark.parametrize("version, rebuild, word", [(0, None, None), (1, None, None), (2, None, "newer"),
                                                    (0, "rebuild it", "older"), (2, "rebuild it", "newer")])
def test_open_hdf5_checks_the_format_version(tmp_path, version, rebuild, word):
    """Older versions are read unless a `rebuild` fix says that only the current one is; newer ones never are."""
    path = tmp_path / "file.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "barcodetool-test"
        if version:
            handle.attrs["format_version"] = version
    kind = dict(format_name="barcodetool-test", version=1, what="test file", fix="make one", rebuild=rebuild)
    if word is None:
        with open_hdf5(path, **kind) as handle:
            assert handle.attrs["format"] == "barcodetool-test"
        return
    with pytest.raises(InputError) as error:
        open_hdf5(path, **kind)
    message = str(error.value)
    assert str(path) in message and f"test file format version {version} is {word}" in message
    assert ("rebuild it" in message) == (rebuild is not None)
    assert ("upgrade barcodetool" in message) == (word == "newer")
    with h5py.File(path, "r+"):  # the refused file was closed
        pass


def test_bfloat16_embeddings_match_float32_and_barely_depend_on_batches(tiny_model_dir, bioscan_records, tmp_path):
    """--compute bfloat16 (what `auto` picks on CPUs with native bf16): the same embeddings as float32 to bf16
    rounding, and batch composition moves them by rounding only (dynamic int8 was rejected for failing this);
    the file says which arithmetic made it."""
    from barcodetool.model.weights import load_model

    sequences = [r.sequence for r in bioscan_records[:40]]
    full = embed_sequences(load_model(str(tiny_model_dir), compute="float32"), sequences, batch_size=7)
    half_model = load_model(str(tiny_model_dir), compute="bfloat16")
    half = embed_sequences(half_model, sequences, batch_size=7)
    alone = np.stack([embed_sequences(half_model, [s])[0] for s in sequences])

    def cosine(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    assert cosine(full, half).min() > 0.999
    assert cosine(alone, half).min() > 0.9999
    assert not np.array_equal(full, half)  # bf16 really ran
    embed_file(BIOSCAN, tmp_path / "half.h5", half_model)
    assert read_embeddings(tmp_path / "half.h5").attrs["compute"] == "bfloat16"


def test_embed_file_of_a_model_that_reads_in_phase(tmp_path):
    from dataclasses import replace

    from barcodetool.model.tokenizer import KmerTokenizer
    from barcodetool.model.weights import load_model_folder
    from helpers_models import make_tiny_model

    model = load_model_folder(make_tiny_model(tmp_path / "tiny"))
    barcode = next(iter(read_barcodes(BIOSCAN))).sequence
    fasta = tmp_path / "shifted.fasta"
    fasta.write_text("".join(f">s{i}\n{'ACGTA'[:i] + barcode}\n" for i in range(6)))
    plain = embed_file(fasta, tmp_path / "plain.h5", model)
    assert plain.count == 6
    vectors = read_embeddings(tmp_path / "plain.h5").embeddings
    assert not np.allclose(vectors[0], vectors[1], atol=1e-4)       # read from the first base: unrelated tokens
    model.tokenizer = KmerTokenizer(replace(model.tokenizer.config, phase="coi5p"))
    embed_file(fasta, tmp_path / "phased.h5", model)
    result = read_embeddings(tmp_path / "phased.h5")
    np.testing.assert_allclose(result.embeddings, np.broadcast_to(result.embeddings[0], (6, 32)), atol=1e-5)
    assert '"phase": "coi5p"' in result.attrs["tokenizer"]
    assert "phase" not in read_embeddings(tmp_path / "plain.h5").attrs["tokenizer"]


def test_embed_command_defaults_to_the_embedding_model(tmp_path):
    """`barcodetool embed` with --model auto on a CPU embeds with barcodemae-nano-identity (the better vectors),
    read in the COI-5P phase, while the same sequences embedded by nano differ; the HDF5 file says which."""
    from click.testing import CliRunner

    from barcodetool.cli import main
    from barcodetool.model.weights import DEFAULT_CPU_EMBED_MODEL

    output = tmp_path / "example.h5"
    result = CliRunner().invoke(main, ["embed", str(EXAMPLE_FASTA), "-o", str(output), "--threads", "1"])
    assert result.exit_code == 0, result.output
    written = read_embeddings(output)
    assert written.attrs["model_name"] == DEFAULT_CPU_EMBED_MODEL == "barcodemae-nano-identity"
    assert '"phase": "coi5p"' in written.attrs["tokenizer"] and written.embeddings.shape == (100, 128)
    assert "barcodemae-nano-identity" in result.output
    nano = tmp_path / "nano.h5"
    assert CliRunner().invoke(main, ["embed", str(EXAMPLE_FASTA), "-o", str(nano), "-m", "barcodemae-nano",
                                     "--threads", "1"]).exit_code == 0
    assert read_embeddings(nano).attrs["model_name"] == "barcodemae-nano"
    assert not np.allclose(read_embeddings(nano).embeddings, written.embeddings, atol=1e-2)
