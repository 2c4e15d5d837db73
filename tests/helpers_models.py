"""Tiny random-initialised models for the reference/classify/cluster/benchmark tests (no bundled weights needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from barcodetool.io import read_barcodes
from barcodetool.model.mae import BarcodeMAE, preset
from barcodetool.model.tokenizer import TokenizerConfig
from barcodetool.model.weights import load_model, save_model
from barcodetool.reference import build_reference

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "bioscan_sample.csv"
SINTAX_REFERENCE = DATA / "sintax_reference.fasta"


def make_tiny_model(folder: Path, *, seed: int = 0, name: str | None = None) -> Path:
    """Save a random-initialised `tiny` BarcodeMAE encoder (deterministic for a seed) into `folder`."""
    torch.manual_seed(seed)
    model = BarcodeMAE(preset("tiny"), include_decoder=False)
    save_model(model, TokenizerConfig(), folder, name=name or folder.name)
    return folder


def load_tiny(folder: Path):
    return load_model(folder, device="cpu")


def save_sintax_index(model_dir: Path, folder: Path) -> Path:
    """A small calibrated index, saved in `folder`: the 100 SINTAX reference records embedded with model_dir's
    model."""
    return build_reference(read_barcodes(SINTAX_REFERENCE), load_tiny(model_dir)).save(folder / "ref.h5")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """CLI commands set PyTorch's thread count (--threads 0 = all cores); put back the suite's setting after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
