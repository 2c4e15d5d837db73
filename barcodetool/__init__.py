"""barcodetool: the BarcodeMAE DNA-barcode foundation model for sequencing labs.

Library use (no Click needed):

    import barcodetool
    model = barcodetool.load_model()                        # bundled default (barcodemae-fast on CPU)
    vectors = barcodetool.embed(["ACGT..."], model=model)   # numpy [n, dim]
"""

from ._version import __version__
from .errors import (BarcodeToolError, IndexMismatchError, InputError, ModelError, OutputError, TokenizerError,
                     UsageError)
from .model import PRESETS, BarcodeMAE, BarcodeMAEConfig
from .tokenizer import KmerTokenizer, TokenizerConfig
from .weights import PretrainedModel, available_models, load_model

# Import the submodule `barcodetool.embed` now: importing a submodule binds its name on the package, so this must
# happen before the function below takes the name `barcodetool.embed`.
from . import embed as _embed_module  # noqa: E402,F401


def embed(sequences, model=None, *, batch_size: int = 256, device: str = "auto"):
    """Embed cleaned sequences (strings) with a model (name, folder or PretrainedModel): numpy [n, dim]."""
    from .embed import embed_sequences
    from .runtime import resolve_device

    if not isinstance(model, PretrainedModel):
        model = load_model(model, device=resolve_device(device))
    return embed_sequences(model, list(sequences), batch_size=batch_size)


__all__ = [
    "__version__", "BarcodeToolError", "IndexMismatchError", "InputError", "ModelError", "OutputError",
    "TokenizerError", "UsageError", "PRESETS", "BarcodeMAE", "BarcodeMAEConfig", "KmerTokenizer",
    "TokenizerConfig", "PretrainedModel", "available_models", "load_model", "embed",
]
