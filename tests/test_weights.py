"""Model folders: dtype round trips, integrity checks, format versioning, no pickle, the name registry."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from barcodetool.model import weights
from barcodetool.embedding import embed_sequences
from barcodetool.errors import ModelError, UsageError
from barcodetool.io.readers import read_barcodes
from barcodetool.model.mae import BarcodeMAE, preset
from barcodetool.model.tokenizer import KmerTokenizer, TokenizerConfig
from barcodetool.model.weights import (CARD_FILE, MODEL_FORMAT_VERSION, TENSORS_FILE, available_models, load_model,
                                 load_model_folder, read_card, save_model)

SEQUENCES = [
    "AACATTATATTTTATTTTTGGAATTTGAGCAGGAATACTCGGAACATCTTTAAGATTACTAATTCGTGCTGAATTGGGAAATCCTGG",
    "ACTTTATATTTTATTTTTGGAGCTTGATCAGGAATAGTAGGAACTTCTTTAAGAATTTTAATTCGAGCAGAATTAGGACAACCAGGATCATTTATT" * 2,
    "TTTTTTTTTTTTGGGGGGGGGGGGCCCCCCCCCCCCAAAAAAAAAANNNNNNACGTACGTACGT",
]


@pytest.fixture(scope="module")
def model() -> BarcodeMAE:
    torch.manual_seed(0)
    return BarcodeMAE(preset("tiny")).eval()


def copy_model(source, destination):
    shutil.copytree(source, destination)
    return destination


def embeddings(pretrained) -> np.ndarray:
    return embed_sequences(pretrained, SEQUENCES)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ============================================================================================ round trips
def test_float32_round_trip_is_exact(model, tmp_path):
    folder = save_model(model, TokenizerConfig(), tmp_path / "m32", name="m32")
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, TENSORS_FILE]  # no temp files left
    loaded = load_model_folder(folder)
    assert loaded.name == "m32" and loaded.model.include_decoder
    assert loaded.tokenizer.config == TokenizerConfig()
    assert loaded.config == model.config
    original = model.state_dict()
    for key, tensor in loaded.model.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, original[key]), key
    card = read_card(folder)
    assert card["dtype"] == "float32" and card["parts"] == ["encoder", "decoder"]
    assert card["tensors_sha256"] == loaded.sha256 == weights.sha256_file(folder / TENSORS_FILE)


def test_float16_round_trip_is_close(model, tmp_path):
    folder = save_model(model, TokenizerConfig(), tmp_path / "m16", dtype="float16")
    loaded = load_model_folder(folder)
    original = model.state_dict()
    for key, tensor in loaded.model.state_dict().items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, original[key], rtol=1e-3, atol=1e-4)
    size32 = (save_model(model, TokenizerConfig(), tmp_path / "m32") / TENSORS_FILE).stat().st_size
    assert (folder / TENSORS_FILE).stat().st_size < 0.6 * size32


def test_int8_round_trip_keeps_embeddings(model, tmp_path):
    full = load_model_folder(save_model(model, TokenizerConfig(), tmp_path / "m32"))
    folder = save_model(model, TokenizerConfig(), tmp_path / "m8", dtype="int8")
    from safetensors.torch import load_file

    stored = load_file(str(folder / TENSORS_FILE))
    assert stored["token_embedding.weight.int8"].dtype == torch.int8  # really quantized
    quantized = load_model_folder(folder)
    assert read_card(folder)["dtype"] == "int8"
    a, b = embeddings(full), embeddings(quantized)
    assert (cosine(a, b) > 0.99).all()
    torch.testing.assert_close(quantized.model.token_embedding.weight, model.token_embedding.weight,
                               rtol=0, atol=0.01)


def test_unknown_dtype_rejected(model, tmp_path):
    with pytest.raises(ModelError, match="dtype"):
        save_model(model, TokenizerConfig(), tmp_path / "x", dtype="bfloat17")


# ============================================================================================ integrity
def test_flipped_byte_fails_sha256(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    path = folder / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model_folder(folder)


def test_truncated_weights_fail(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    path = folder / TENSORS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="sha256"):
        load_model_folder(folder)
    # even without the checksum, a truncated file is refused with a ModelError (not a library exception)
    with pytest.raises(ModelError):
        load_model_folder(folder, verify=False)


def test_missing_weights_or_card(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / TENSORS_FILE).unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model_folder(folder)
    with pytest.raises(ModelError, match="not a barcodetool model folder"):
        load_model_folder(tmp_path)


def edit_card(folder, change):
    path = folder / CARD_FILE
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))


def test_card_with_unknown_keys_rejected(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    edit_card(folder, lambda card: card.update(surprise=1))
    with pytest.raises(ModelError, match="surprise"):
        load_model_folder(folder)


def test_newer_format_version_asks_for_upgrade(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    edit_card(folder, lambda card: card.update(format_version=MODEL_FORMAT_VERSION + 1))
    with pytest.raises(ModelError, match="upgrade"):
        load_model_folder(folder)


def test_unknown_model_setting_in_card_rejected(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    edit_card(folder, lambda card: card["model_config"].update(encoder_layers_x=3))
    with pytest.raises(ModelError):
        load_model_folder(folder)


def test_corrupt_card_json(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model_folder(folder)


def test_shape_mismatch_rejected(model, tmp_path):
    folder = save_model(model, TokenizerConfig(), tmp_path / "m")
    edit_card(folder, lambda card: card["model_config"].update(encoder_width=64))
    with pytest.raises(ModelError, match="shape"):
        load_model_folder(folder)


def test_loading_never_unpickles(tiny_model_dir, monkeypatch):
    path = tiny_model_dir / TENSORS_FILE
    raw = path.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_length])
    assert "token_embedding.weight" in header and header["__metadata__"]["format"] == "barcodetool-model"
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")  # neither a pickle nor a torch zip

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must never be called while loading a model")

    import pickle

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded = load_model(tiny_model_dir)
    assert loaded.embedding_dim == 32


# ============================================================================================ registry
@pytest.fixture
def registry(tmp_path, monkeypatch):
    user = tmp_path / "user-models"
    bundled = tmp_path / "bundled"
    user.mkdir()
    bundled.mkdir()
    monkeypatch.setattr(weights, "user_models_dir", lambda: user)
    monkeypatch.setattr(weights, "bundled_root", lambda: bundled)
    return user, bundled


def test_registry_finds_user_and_bundled_models(tiny_model_dir, registry):
    user, bundled = registry
    assert available_models() == {}
    copy_model(tiny_model_dir, user / "my-model")
    copy_model(tiny_model_dir, bundled / "barcodemae-test")
    (user / "not-a-model").mkdir()
    found = available_models()
    assert found == {"my-model": user / "my-model", "barcodemae-test": bundled / "barcodemae-test"}
    loaded = load_model("my-model")
    assert loaded.name == "my-model" and loaded.path == user / "my-model"
    assert load_model("barcodemae-test").name == "barcodemae-test"
    # a bundled name cannot be shadowed by a user model of the same name
    copy_model(tiny_model_dir, user / "barcodemae-test")
    assert available_models()["barcodemae-test"] == bundled / "barcodemae-test"


def test_unknown_model_name_lists_available(tiny_model_dir, registry):
    user, _ = registry
    copy_model(tiny_model_dir, user / "alpha-model")
    copy_model(tiny_model_dir, user / "beta-model")
    with pytest.raises(ModelError) as caught:
        load_model("gamma-model")
    message = str(caught.value)
    assert "gamma-model" in message and "alpha-model" in message and "beta-model" in message
    with pytest.raises(ModelError, match="no such model folder"):
        load_model(str(user / "missing" / "folder"))
    with pytest.raises(ModelError, match=r"unknown model 'alpha-model\.v2'; available: .*alpha-model"):
        load_model("alpha-model.v2")  # a dotted name is still a name, not a path


def test_auto_picks_the_default_of_the_task(tiny_model_dir, registry, monkeypatch):
    _, bundled = registry
    for name in (weights.DEFAULT_CPU_MODEL, weights.DEFAULT_CPU_EMBED_MODEL, weights.DEFAULT_GPU_MODEL):
        copy_model(tiny_model_dir, bundled / name)
    assert load_model().name == load_model("auto").name == "barcodemae-nano"   # reference indexes' model
    assert load_model(task="embed").name == load_model("auto", task="embed").name == "barcodemae-nano-identity"
    assert load_model("barcodemae-nano", task="embed").name == "barcodemae-nano"   # a name given is kept
    assert weights.default_model_name("cuda", "embed") == weights.default_model_name("cuda") == "barcodemae-base"
    with pytest.raises(UsageError, match="task must be one of classify, embed"):
        weights.default_model_name("cpu", "cluster")
    # barcodetool.embed with no model embeds with the embed default
    import barcodetool

    chosen = []
    monkeypatch.setattr(barcodetool, "load_model", lambda *a, **k: chosen.append(k["task"]) or load_model(*a, **k))
    assert barcodetool.embed(SEQUENCES).shape[0] == len(SEQUENCES) and chosen == ["embed"]
    # without the embedding model installed, embed falls back to the CPU default
    shutil.rmtree(bundled / weights.DEFAULT_CPU_EMBED_MODEL)
    assert weights.default_model_name("cpu", "embed") == "barcodemae-nano"


def test_encoder_only_save(model, tmp_path):
    folder = save_model(model, TokenizerConfig(), tmp_path / "enc", include_decoder=False)
    card = read_card(folder)
    assert card["parts"] == ["encoder"]
    loaded = load_model_folder(folder)
    assert loaded.model.include_decoder is False
    assert not any(k.startswith("decoder_") or k == "mask_token" for k in loaded.model.state_dict())
    full = load_model_folder(save_model(model, TokenizerConfig(), tmp_path / "full"))
    np.testing.assert_array_equal(embeddings(loaded), embeddings(full))
    ids, lengths = KmerTokenizer().encode_batch(SEQUENCES)
    with pytest.raises(ModelError):
        loaded.model(torch.from_numpy(ids), torch.from_numpy(lengths))
    with pytest.raises(ModelError, match="decoder"):
        save_model(loaded.model, TokenizerConfig(), tmp_path / "again", include_decoder=True)


def test_every_bundled_model_loads_strictly_and_embeds():
    bundled = weights._models_in(weights.bundled_root())
    assert {"barcodemae-base", "barcodemae-fast", "barcodemae-mini", "barcodemae-nano"} <= set(bundled)
    for name, folder in bundled.items():
        pretrained = load_model_folder(folder)   # sha256 of the tensors, exact names and shapes
        vectors = embeddings(pretrained)
        assert vectors.shape == (len(SEQUENCES), pretrained.embedding_dim) and np.isfinite(vectors).all(), name
        assert pretrained.card["name"] == name and (folder / "MODEL_CARD.md").is_file(), name
    # the distilled students live in their teacher's embedding space (nano through its 64 -> 128 map): on real
    # barcodes their mean cosine to the teacher is 0.99 (mini) and 0.95 (nano)
    barcodes = [r.sequence for r in read_barcodes(Path(__file__).parent / "data" / "bioscan_sample.csv")][:100]
    teacher = embed_sequences(load_model_folder(bundled["barcodemae-fast"]), barcodes)
    for student in ("barcodemae-mini", "barcodemae-nano"):
        vectors = embed_sequences(load_model_folder(bundled[student]), barcodes)
        assert cosine(vectors, teacher).mean() > 0.9, student


def test_load_model_refuses_a_device_it_cannot_use_with_a_usage_error(tiny_model_dir):
    """python-api.md shows `load_model(device="cuda")`: without a GPU (or with a device torch does not know) that
    is the library's typed UsageError, as on the command line, not torch's AssertionError or RuntimeError."""
    for device in ["tpu", "cuda:x", "mps"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"]):
        with pytest.raises(UsageError, match="device"):
            load_model(tiny_model_dir, device=device)
    assert load_model(tiny_model_dir, device="auto").name == load_model(tiny_model_dir, device="cpu").name



def test_the_default_model_is_never_a_folder_of_its_name_in_the_working_folder(tiny_model_dir, registry, monkeypatch,
                                                                              tmp_path):
    """`--model auto` stands for a registry name; a run trained into ./barcodemae-nano took its place (and the index
    mismatch that followed named the same model twice). A name given explicitly still finds such a folder first."""
    _, bundled = registry
    copy_model(tiny_model_dir, bundled / weights.DEFAULT_CPU_MODEL)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    copy_model(tiny_model_dir, work / weights.DEFAULT_CPU_MODEL)
    assert weights.resolve_model(None) == weights.resolve_model("auto") == bundled / weights.DEFAULT_CPU_MODEL
    assert weights.resolve_model(weights.DEFAULT_CPU_MODEL) == Path(weights.DEFAULT_CPU_MODEL)
