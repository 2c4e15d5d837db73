"""Running under torchrun: the process's place in the job (rank, world size, local rank) and the process group
(NCCL on CUDA, gloo on CPU). One process is a world of size 1 and needs nothing of torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..model.runtime import resolve_device


@dataclass
class Distributed:
    """This process's place in a torchrun job (from RANK, WORLD_SIZE, LOCAL_RANK); rank 0 is the one that writes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """How many processes torchrun started for this job (WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    dist = Distributed(rank=int(os.environ.get("RANK", "0")), world_size=launched_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if dist.enabled and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist, device


def all_reduce_sum(values: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """Sum `values` over the processes, in place (itself when the run has one process)."""
    if dist.enabled:
        torch.distributed.all_reduce(values)
    return values
