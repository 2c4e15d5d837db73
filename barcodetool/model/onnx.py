"""The encoder exported as an ONNX graph (`encoder.onnx` beside a model's weights), run by ONNX Runtime.

`classify` on a CPU uses it where it is present: the process then never imports PyTorch, which costs 1.3 s of a
2-core machine (a third of classifying the 2,774 new-species barcodes of the shared benchmark; most of a 96-query
run). ONNX Runtime computes in float32 (it has no bf16 kernels for CPUs); its embeddings are within 1e-5 of
PyTorch's float32 ones. The graph records the sha256 of the weights it was exported from, and a graph of other
weights is refused, as corrupt weights are.

Exporting needs PyTorch and the `onnx` package (`pip install onnx`); running needs only `onnxruntime`.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..io.atomic import atomic_path
from ..errors import ModelError, TokenizerError
from .config import BarcodeMAEConfig
from .tokenizer import KmerTokenizer, TokenizerConfig
from .weights import TENSORS_FILE, InferenceModel, read_card, sha256_file

ONNX_FILE = "encoder.onnx"
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
        """float32 [batch, embedding_dim] of token ids [batch, tokens] and lengths [batch]."""
        return self.session.run(None, {"ids": ids.astype(np.int64, copy=False),
                                       "lengths": lengths.astype(np.int64, copy=False)})[0]


def onnx_runtime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_onnx_model(directory: str | os.PathLike, *, name: str | None = None,
                    threads: int | None = None) -> OnnxModel | None:
    """The folder's exported encoder ready to run on `threads` CPU threads (0 or None: all cores), or None where
    the folder has no `encoder.onnx` or onnxruntime is not installed. A graph exported from other weights than
    the folder's, or an unreadable one, is refused (ModelError)."""
    directory = Path(directory)
    graph_path = directory / ONNX_FILE
    if not graph_path.is_file() or not onnx_runtime_available():
        return None
    import onnxruntime

    card = read_card(directory)
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
    except Exception as error:   # onnxruntime raises its own exception types for unreadable graphs
        raise ModelError(f"{graph_path}: cannot read the ONNX graph ({str(error).splitlines()[0]}); delete it "
                         "to use PyTorch, or export it again") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("format") != ONNX_FORMAT or metadata.get("tensors_sha256") != digest:
        raise ModelError(f"{graph_path}: exported from other weights than {TENSORS_FILE} beside it; export it "
                         "again (barcodetool.onnx_encoder.export_onnx) or delete it to use PyTorch")
    if int(metadata.get("format_version", "0")) > ONNX_FORMAT_VERSION:
        raise ModelError(f"{graph_path}: ONNX encoder format version {metadata['format_version']} is newer than "
                         f"this barcodetool reads ({ONNX_FORMAT_VERSION}); upgrade barcodetool")
    try:
        config = BarcodeMAEConfig.from_dict(card["model_config"])
        tokenizer_config = TokenizerConfig.from_dict(card["tokenizer_config"])
    except (KeyError, TypeError, TokenizerError) as error:
        raise ModelError(f"{directory}: invalid model card ({error})") from None
    return OnnxModel(session=session, tokenizer=KmerTokenizer(tokenizer_config), config=config,
                     name=name or card.get("name") or directory.name, sha256=digest, card=card, path=directory)
