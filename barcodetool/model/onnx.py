"""The encoder exported as an ONNX graph (`encoder.onnx` beside a model's weights), run by ONNX Runtime.

`classify` on a CPU uses it where it is present: the process then never imports PyTorch, which costs 1.3 s of a
2-core machine (a third of classifying the 2,774 new-species barcodes of the shared benchmark; most of a 96-query
run). ONNX Runtime computes in float32 (it has no bf16 kernels for CPUs); its embeddings are within 1e-5 of
PyTorch's float32 ones. The graph records the sha256 of the weights it was exported from, and is bound to the
weights themselves at load: a probe batch embedded by the graph must match the same batch embedded in numpy with
model.safetensors; a graph of other weights is refused, as corrupt weights are.

Exporting needs PyTorch and the `onnx` package (`pip install onnx`); running needs only `onnxruntime`.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import Interrupted, ModelError
from ..io.atomic import atomic_path
from .config import BarcodeMAEConfig
from .tokenizer import NUM_SPECIAL, PAD_ID, KmerTokenizer
from .weights import (CARD_FILE, ONNX_FILE, TENSORS_FILE, InferenceModel, card_settings, dequantize, locate_model,
                      read_card, sha256_file)

ONNX_FORMAT = "barcodetool-onnx-encoder"
ONNX_FORMAT_VERSION = 1
OPSET = 17


def export_onnx(pretrained, directory: str | os.PathLike | None = None) -> Path:
    """Write the encoder of a loaded model (`weights.load_model`) as `encoder.onnx` into its folder (or
    `directory`), inputs `ids` int64 [batch, tokens] and `lengths` int64 [batch], output `embedding` float32
    [batch, embedding_dim]: the masked mean that `model.embed` computes."""
    import torch

    try:
        import onnx
    except ImportError:
        raise ModelError("exporting to ONNX needs the onnx package: pip install onnx") from None
    directory = Path(directory if directory is not None else pretrained.path)

    class Embedder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids, lengths):
            return self.model.embed(ids, lengths)

    embedder = Embedder(copy.deepcopy(pretrained.model)).to("cpu").float().eval()   # the caller's model untouched
    # two lengths, so that the traced graph applies the padding mask (a batch of equal lengths would skip it)
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    lengths = torch.tensor([8, 5], dtype=torch.int64)
    with atomic_path(directory / ONNX_FILE) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the exporter's notes on tracing a Python branch and its deprecation
        with torch.no_grad():
            torch.onnx.export(embedder, (ids, lengths), str(temporary), input_names=["ids", "lengths"],
                              output_names=["embedding"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "lengths": {0: "batch"},
                                            "embedding": {0: "batch"}})
        graph = onnx.load(str(temporary))
        metadata = {"format": ONNX_FORMAT, "format_version": str(ONNX_FORMAT_VERSION),
                    "barcodetool_version": __version__, "tensors_sha256": pretrained.sha256,
                    "embedding_dim": str(pretrained.embedding_dim)}
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(temporary))
    return directory / ONNX_FILE


# Rows a session.run embeds at once: ONNX Runtime on a CPU is about a quarter faster in small batches than in the
# callers' batches of 256 (the working set of a batch's attention stays in cache). barcodemae-nano, 2,048 test_unseen
# barcodes, batches of 256 -> runs of 32 rows: 1.33 -> 0.99 s on one thread, 0.84 -> 0.62 s on two (8-64 rows are
# within 10% of 32); the embeddings agree to 1e-7.
ONNX_RUN_ROWS = 32


@dataclass
class OnnxModel(InferenceModel):
    """A model's exported encoder in ONNX Runtime: what inference needs of a `weights.PretrainedModel`."""

    session: Any
    tokenizer: KmerTokenizer
    config: BarcodeMAEConfig
    name: str
    sha256: str
    card: dict = field(default_factory=dict)
    path: Path | None = None
    compute: str = "float32, ONNX Runtime"

    def embed_batch(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """float32 [batch, embedding_dim] of token ids [batch, tokens] and lengths [batch], run ONNX_RUN_ROWS
        rows at a time (each part padded to its own longest row)."""
        ids = ids.astype(np.int64, copy=False)
        lengths = lengths.astype(np.int64, copy=False)
        parts = []
        for start in range(0, len(ids), ONNX_RUN_ROWS):
            part = lengths[start:start + ONNX_RUN_ROWS]
            width = max(1, int(part.max()))
            rows = np.ascontiguousarray(ids[start:start + ONNX_RUN_ROWS, :width])
            parts.append(self.session.run(None, {"ids": rows, "lengths": part})[0])
        if not parts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def onnx_runtime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_onnx_model(name_or_path: str | os.PathLike | None, *, name: str | None = None,
                    threads: int | None = None) -> OnnxModel | None:
    """The exported encoder of a model (a registry name such as `barcodemae-nano`, or a model folder, resolved as
    `weights.load_model` resolves them) ready to run on `threads` CPU threads (0 or None: all cores).

    Returns None only where the model's folder has no `encoder.onnx` or onnxruntime is not installed (use
    `load_model` and PyTorch then). An unknown name, a graph that does not compute with the folder's own weights
    (checked by embedding a probe with the graph and with model.safetensors), or an unreadable one raise
    ModelError."""
    directory, registry_name = locate_model(name_or_path)
    graph_path = directory / ONNX_FILE
    if not graph_path.is_file() or not onnx_runtime_available():
        return None
    import onnxruntime

    card = read_card(directory)
    config, tokenizer_config = card_settings(card, directory)
    digest = sha256_file(directory / TENSORS_FILE)
    if digest != card.get("tensors_sha256"):
        raise ModelError(f"{directory / TENSORS_FILE}: sha256 does not match the model card; the weight file is "
                         "corrupt or truncated (re-copy or retrain it)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(0, threads or 0)   # 0: ONNX Runtime's default, one a core
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")   # idle threads leave the cores
    try:
        session = onnxruntime.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
    except Interrupted:   # a signal's handler raised it here: an interrupt, not a broken graph
        raise
    except Exception as error:   # onnxruntime raises its own exception types for unreadable graphs
        raise ModelError(f"{graph_path}: cannot read the ONNX graph ({str(error).splitlines()[0]}); delete it "
                         "to use PyTorch, or export it again") from None
    metadata = session.get_modelmeta().custom_metadata_map
    other_weights = (f"{graph_path}: exported from other weights than {TENSORS_FILE} beside it; export it again "
                     "(barcodetool.model.onnx.export_onnx) or delete it to use PyTorch")
    if metadata.get("format") != ONNX_FORMAT or metadata.get("tensors_sha256") != digest:
        raise ModelError(other_weights)
    version = metadata.get("format_version", "0")
    if not version.isdigit() or int(version) > ONNX_FORMAT_VERSION:
        raise ModelError(f"{graph_path}: ONNX encoder format version {version[:20]!r} is not one this barcodetool "
                         f"reads ({ONNX_FORMAT_VERSION}); upgrade barcodetool, or export it again")
    model = OnnxModel(session=session, tokenizer=KmerTokenizer(tokenizer_config), config=config,
                      name=name or registry_name or card.get("name") or directory.name, sha256=digest, card=card,
                      path=directory)
    if not _computes_with(model, directory / TENSORS_FILE):
        raise ModelError(other_weights + " (its embeddings differ from those of the weights)")
    return model


# ---------------------------------------------------------------------------------------------- the graph's weights
# The metadata's sha256 is only a string a graph carries: a graph is bound to the weights themselves by embedding a
# probe batch with the graph and, in numpy, with model.safetensors (the PyTorch encoder's arithmetic, in float64),
# and comparing. A graph of other weights differs by orders of magnitude more than the tolerance.
PROBE_TOLERANCE = 1e-3   # relative to the largest embedding value; float32 graphs agree to ~1e-6


def _probe(config: BarcodeMAEConfig) -> tuple[np.ndarray, np.ndarray]:
    """Two rows of k-mer token ids (one padded, so that the padding mask is exercised) and their lengths."""
    width = min(12, config.max_tokens)
    ids = np.random.default_rng(16).integers(NUM_SPECIAL, config.vocab_size, size=(2, width), dtype=np.int64)
    lengths = np.array([width, max(1, width // 2)], dtype=np.int64)
    ids[1, lengths[1]:] = PAD_ID
    return ids, lengths


def _weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of model.safetensors as float64 numpy arrays (int8 rows scaled back)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read weights ({error}); the file is corrupt") from None
    return dequantize(tensors, lambda tensor: tensor.astype(np.float64), where=f"{path}: ")


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + 1e-5) * weight + bias


_ERF = np.frompyfunc(math.erf, 1, 1)


def _reference_embedding(w: dict[str, np.ndarray], config: BarcodeMAEConfig, ids: np.ndarray,
                         lengths: np.ndarray) -> np.ndarray:
    """BarcodeMAE.embed in numpy (float64): token + position embeddings, pre-norm blocks with masked attention,
    final norm, masked mean, optional linear map."""
    batch, width = ids.shape
    heads = config.encoder_heads
    real = np.arange(width)[None, :] < lengths[:, None]                              # [B, L]
    x = w["token_embedding.weight"][ids] + w["encoder_position"][:, :width]          # [B, L, D]
    for layer in range(config.encoder_layers):
        p = f"encoder_blocks.{layer}."
        h = _layer_norm(x, w[p + "norm1.weight"], w[p + "norm1.bias"])
        qkv = h @ w[p + "qkv.weight"].T + w[p + "qkv.bias"]                          # [B, L, 3D]
        qkv = qkv.reshape(batch, width, 3, heads, -1).transpose(2, 0, 3, 1, 4)       # [3, B, H, L, D/H]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])                # [B, H, L, L]
        scores = np.where(real[:, None, None, :], scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        y = (scores / scores.sum(-1, keepdims=True)) @ v                             # [B, H, L, D/H]
        x = x + y.transpose(0, 2, 1, 3).reshape(batch, width, -1) @ w[p + "proj.weight"].T + w[p + "proj.bias"]
        h = _layer_norm(x, w[p + "norm2.weight"], w[p + "norm2.bias"])
        h = h @ w[p + "fc1.weight"].T + w[p + "fc1.bias"]
        h = 0.5 * h * (1.0 + _ERF(h / math.sqrt(2.0)).astype(np.float64))
        x = x + h @ w[p + "fc2.weight"].T + w[p + "fc2.bias"]
    x = _layer_norm(x, w["encoder_norm.weight"], w["encoder_norm.bias"])
    pooled = (x * real[:, :, None]).sum(1) / np.maximum(real.sum(1, keepdims=True), 1)
    if config.embedding_width:
        pooled = pooled @ w["embedding_projection.weight"].T + w["embedding_projection.bias"]
    return pooled


def _computes_with(model: OnnxModel, tensors_path: Path) -> bool:
    """True when the graph embeds the probe as the weights in `tensors_path` do."""
    ids, lengths = _probe(model.config)
    try:
        expected = _reference_embedding(_weights(tensors_path), model.config, ids, lengths)
    except (KeyError, ValueError, IndexError):   # tensors missing or of the wrong shape for the settings
        raise ModelError(f"{tensors_path}: tensors do not match the model settings in {CARD_FILE}; re-copy or "
                         "retrain the model") from None
    try:
        found = model.embed_batch(ids, lengths)
    except Interrupted:
        raise
    except Exception as error:   # onnxruntime's own exception types: a graph of another shape
        raise ModelError(f"{model.path / ONNX_FILE}: the graph does not run on this model's tokens "
                         f"({str(error).splitlines()[0][:200]}); export it again or delete it to use "
                         "PyTorch") from None
    if found.shape != expected.shape or not np.isfinite(found).all():
        return False
    return float(np.abs(found - expected).max()) <= PROBE_TOLERANCE * max(1.0, float(np.abs(expected).max()))
