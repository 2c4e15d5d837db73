"""barcodetool: the BarcodeMAE DNA-barcode foundation model for sequencing labs.

Library use (no Click needed):

    import barcodetool
    model = barcodetool.load_model()                        # bundled default (barcodemae-nano on CPU)
    vectors = barcodetool.embed(["ACGT..."], model=model)   # numpy [n, dim]

The package reads barcodes (io), runs the model (model), embeds (embedding), searches (search), decides against a
reference (reference, classify), clusters (cluster) and evaluates (evaluation); docs/architecture.md draws the
layout. Importing it does not import PyTorch: that happens when a model is loaded into PyTorch.
"""

import importlib

from ._version import __version__
from .embedding import embed_sequences
from .errors import (BarcodeToolError, IndexMismatchError, InputError, ModelError, OutputError, TokenizerError,
                     UsageError)
from .model.config import PRESETS, BarcodeMAEConfig
from .model.onnx import OnnxModel
from .model.runtime import resolve_device
from .model.tokenizer import KmerTokenizer, TokenizerConfig
from .model.weights import PretrainedModel, available_models, load_model


def __getattr__(name: str):
    # The network itself imports PyTorch (1.5-2 s): `barcodetool.BarcodeMAE` loads it on first use only.
    if name == "BarcodeMAE":
        value = importlib.import_module(".model.mae", __name__).BarcodeMAE
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def embed(sequences, model=None, *, batch_size: int = 256, device: str = "auto"):
    """Embed cleaned sequences (strings) with a model (name, folder, PretrainedModel, or an exported encoder from
    barcodetool.model.onnx.load_onnx_model): numpy [n, dim]."""
    if not isinstance(model, (PretrainedModel, OnnxModel)):
        model = load_model(model, device=resolve_device(device))
    return embed_sequences(model, list(sequences), batch_size=batch_size)


__all__ = [
    "__version__", "BarcodeToolError", "IndexMismatchError", "InputError", "ModelError", "OutputError",
    "TokenizerError", "UsageError", "PRESETS", "BarcodeMAE", "BarcodeMAEConfig", "KmerTokenizer",
    "TokenizerConfig", "PretrainedModel", "available_models", "load_model", "embed",
]
