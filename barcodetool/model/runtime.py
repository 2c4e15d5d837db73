"""Device and thread selection shared by every job."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:   # imported by each function that needs it: `classify` with an ONNX encoder never does
    import torch


def is_device_name(name: str) -> bool:
    """Whether `name` is a device barcodetool knows: auto, cpu, cuda or cuda:N (not whether it is present)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU. Under torchrun, CUDA uses this process's LOCAL_RANK."""
    import torch

    name = "auto" if device is None else str(device)
    if not is_device_name(name):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA GPU (use --device cpu)")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads; 0 or None means all cores. Returns the count in use."""
    import torch

    if threads is None or threads <= 0:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def autocast(device: torch.device, compute: str | None = None):
    """Mixed-precision context for a forward pass.

    compute None: bf16 on CUDA, float32 on CPU (what training uses). "bfloat16" / "float32" force one.
    """
    import torch

    if compute is None:
        compute = "bfloat16" if device.type == "cuda" else "float32"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=compute == "bfloat16")


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 matrix products natively on this CPU (AVX-512 BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


COMPUTE_CHOICES = ("auto", "float32", "bfloat16")


def resolve_compute(device: torch.device, compute: str = "auto") -> str:
    """Inference arithmetic: `auto` = bf16 on CUDA and on CPUs with native bf16, float32 elsewhere.

    bf16 keeps embeddings within cosine similarity 0.9999 of float32 (docs/benchmarks.md) and, unlike dynamic
    int8 quantization, leaves each barcode's embedding independent of the rest of its batch.
    """
    if compute not in COMPUTE_CHOICES:
        raise UsageError(f"unknown compute type {compute!r}; use auto, float32 or bfloat16")
    if compute == "auto":
        return "bfloat16" if device.type == "cuda" or cpu_has_bf16() else "float32"
    return compute


def cuda_impossible(device: str | None = "auto") -> bool:
    """True where `device` can only mean the CPU, known without importing PyTorch: "cpu", or "auto" on a Linux
    machine with no NVIDIA driver loaded or with CUDA_VISIBLE_DEVICES hiding every GPU."""
    name = "auto" if device is None else str(device)
    if name == "cpu":
        return True
    if name != "auto":
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version")
