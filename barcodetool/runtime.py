"""Device and thread selection shared by every job."""

from __future__ import annotations

import os

import torch

from .errors import UsageError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU. Under torchrun, CUDA uses this process's LOCAL_RANK."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA GPU (use --device cpu)")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    elif name != "cpu":
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads; 0 or None means all cores. Returns the count in use."""
    if threads is None or threads <= 0:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (float32)."""
    enabled = device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
