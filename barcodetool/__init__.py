"""barcodetool: the BarcodeMAE DNA-barcode foundation model for sequencing labs.

Library use (no Click needed):

    import barcodetool
    model = barcodetool.load_model()                        # bundled default (barcodemae-nano on CPU)
    vectors = barcodetool.embed(["ACGT..."], model=model)   # numpy [n, dim]

The package reads barcodes (io), runs the model (model), embeds (embedding), searches (search), decides against a
reference (reference, classify), clusters (cluster) and evaluates (evaluation); docs/architecture.md draws the
layout. Importing it does not import PyTorch: that happens when a model is loaded into PyTorch.
"""

# First, standard library only: the `barcodetool` program ends an early SIGINT/SIGTERM in one line (a library
# user's own signal handling is left alone)
from . import _startup  # noqa: F401  isort: skip

import importlib
import logging
import re

from ._version import __version__
from .embedding import embed_sequences
from .errors import (BarcodeToolError, IndexMismatchError, InputError, ModelError, OutputError, TokenizerError,
                     UsageError)
from .model.config import PRESETS, BarcodeMAEConfig
from .model.onnx import OnnxModel
from .model.runtime import resolve_device
from .model.tokenizer import KmerTokenizer, TokenizerConfig
from .model.weights import PretrainedModel, available_models, load_model

# The library's progress and warnings go to the "barcodetool" logger: silent in a program that configures no
# logging (Python's last-resort handler printed its warnings to stderr), shown by logging.basicConfig(...) or the
# program's own handlers; the command line attaches its own.
logging.getLogger("barcodetool").addHandler(logging.NullHandler())


def __getattr__(name: str):
    # The network itself imports PyTorch (1.5-2 s): `barcodetool.BarcodeMAE` loads it on first use only.
    if name == "BarcodeMAE":
        value = importlib.import_module(".model.mae", __name__).BarcodeMAE
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# A cleaned sequence: upper-case nucleotides and IUPAC ambiguity codes, nothing else (barcodetool.io.clean_sequence)
_CLEANED = re.compile("[ACGTRYSWKMBDHVN]*").fullmatch
_NOT_CLEANED = re.compile("[^ACGTRYSWKMBDHVN]").search


def _check_cleaned(sequences: list) -> None:
    """InputError naming the first sequence (0-based index) that is not a cleaned sequence, and its character."""
    for number, sequence in enumerate(sequences):
        if not isinstance(sequence, str):
            raise InputError(f"sequence {number} is a {type(sequence).__name__}, not a string",
                             fix="give the sequences as strings")
        if _CLEANED(sequence) is None:
            found = _NOT_CLEANED(sequence)
            raise InputError(f"sequence {number}: {found.group()!r} at position {found.start() + 1} is not an "
                             "upper-case nucleotide or IUPAC code",
                             fix="clean the sequences with barcodetool.io.clean_sequence, which removes gaps and "
                                 "white space and upper-cases")


def embed(sequences, model=None, *, batch_size: int = 256, device: str = "auto"):
    """Embed cleaned sequences (strings of upper-case nucleotides and IUPAC codes: barcodetool.io.clean_sequence)
    with a model (name, folder, PretrainedModel, or an exported encoder from
    barcodetool.model.onnx.load_onnx_model): numpy [n, dim]. A gap, a lower-case letter or any other character
    raises InputError naming the sequence's index and the character."""
    sequences = list(sequences)
    _check_cleaned(sequences)
    if not isinstance(model, (PretrainedModel, OnnxModel)):
        model = load_model(model, device=resolve_device(device), task="embed")
    return embed_sequences(model, sequences, batch_size=batch_size)


__all__ = [
    "__version__", "BarcodeToolError", "IndexMismatchError", "InputError", "ModelError", "OutputError",
    "TokenizerError", "UsageError", "PRESETS", "BarcodeMAE", "BarcodeMAEConfig", "KmerTokenizer",
    "TokenizerConfig", "PretrainedModel", "available_models", "load_model", "embed",
]
