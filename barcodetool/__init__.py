"""barcodetool: the BarcodeMAE DNA-barcode foundation model for sequencing labs.

Library use (no Click needed):

    import barcodetool
    model = barcodetool.load_model()                        # bundled default (barcodemae-nano on CPU)
    vectors = barcodetool.embed(["ACGT..."], model=model)   # numpy [n, dim]
"""

import importlib

from ._version import __version__
from .errors import (BarcodeToolError, IndexMismatchError, InputError, ModelError, OutputError, TokenizerError,
                     UsageError)
from .model.tokenizer import KmerTokenizer, TokenizerConfig

# Names from modules that import PyTorch, imported on first use: `barcodetool --help`, `--version` and
# `classify --kmer-only` never pay PyTorch's 1.5-2 s import.
_LAZY = {"PRESETS": "model.config", "BarcodeMAE": "model.mae", "BarcodeMAEConfig": "model.config",
         "PretrainedModel": "model.weights", "available_models": "model.weights", "load_model": "model.weights"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def embed(sequences, model=None, *, batch_size: int = 256, device: str = "auto"):
    """Embed cleaned sequences (strings) with a model (name, folder, PretrainedModel, or an exported encoder from
    onnx_encoder.load_onnx_model): numpy [n, dim]."""
    from .embedding import embed_sequences
    from .model.onnx import OnnxModel
    from .model.weights import PretrainedModel, load_model

    if not isinstance(model, (PretrainedModel, OnnxModel)):
        from .model.runtime import resolve_device

        model = load_model(model, device=resolve_device(device))
    return embed_sequences(model, list(sequences), batch_size=batch_size)


__all__ = [
    "__version__", "BarcodeToolError", "IndexMismatchError", "InputError", "ModelError", "OutputError",
    "TokenizerError", "UsageError", "PRESETS", "BarcodeMAE", "BarcodeMAEConfig", "KmerTokenizer",
    "TokenizerConfig", "PretrainedModel", "available_models", "load_model", "embed",
]
