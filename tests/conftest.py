"""Shared fixtures: a small CPU budget, a subprocess environment and a tiny random-initialised model.

Everything here is deterministic (fixed seeds) and CPU-only, so the suite runs the same on a laptop and in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from barcodetool.model.mae import BarcodeMAE, preset
from barcodetool.model.runtime import available_cores
from barcodetool.model.tokenizer import TokenizerConfig
from barcodetool.model.weights import load_model_folder, save_model

# The test machine has few cores shared with other jobs: one intra-op thread keeps timings stable and makes
# CPU results reproducible bit for bit between runs (and between this process and the subprocesses below).
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for `-n auto` (pyproject's addopts): one a core this process may run on (not the host's count,
    which a container can exceed), at most 4: each holds PyTorch and its own session fixtures."""
    return max(1, min(4, available_cores()))


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for `python -m barcodetool` subprocesses: one thread each, no GPU, quiet warnings."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONWARNINGS": "ignore"})
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-initialised `tiny` BarcodeMAE (encoder + decoder, seed 0) saved with save_model (float32)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-test"
    torch.manual_seed(0)
    model = BarcodeMAE(preset("tiny"))
    save_model(model, TokenizerConfig(), folder, name="tiny-test")
    return folder


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_model_dir):
    """The tiny model loaded back (eval mode, CPU). Shared: tests must not modify its weights."""
    return load_model_folder(tiny_model_dir)


@pytest.fixture
def private_folders(tmp_path, monkeypatch):
    """A private cache (references given as tables/FASTA are indexed there) and user data folder; test modules
    that run commands use it for every test (`pytestmark = pytest.mark.usefixtures("private_folders")`)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
