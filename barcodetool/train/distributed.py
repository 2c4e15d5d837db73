"""Running under torchrun: the process's place in the job (rank, world size, local rank) and the process group
(NCCL on CUDA, gloo on CPU). One process is a world of size 1 and needs nothing of torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import InputError
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


def check_same_data(count: int, sha256: str, dist: Distributed, device: torch.device) -> None:
    """Raise InputError on every process unless all of them read the same training data (the same number of
    barcodes, the same Corpus.fingerprint). Each process reads DATA itself: a copy that differs on one machine
    would train that process on other barcodes, and a different count gives it another number of steps, so the
    job would hang at its last collective instead of ending."""
    if not dist.enabled:
        return
    mine = torch.tensor([count] + [int(sha256[i:i + 8], 16) for i in range(0, 32, 8)], dtype=torch.int64,
                        device=device)                                   # the count and 128 bits of the digest
    gathered = [torch.empty_like(mine) for _ in range(dist.world_size)]
    torch.distributed.all_gather(gathered, mine)
    rows = [g.tolist() for g in gathered]
    other = next((r for r, row in enumerate(rows) if row != rows[0]), None)
    if other is not None:
        describe = lambda row: f"{row[0]:,} barcodes, sha256 {''.join(f'{v:08x}' for v in row[1:])[:12]}..."
        raise InputError(f"the processes of this torchrun job read different training data: rank 0 "
                         f"{describe(rows[0])}, rank {other} {describe(rows[other])}",
                         fix="every process must read the same DATA: one file on a shared disk, or identical copies "
                         "on every machine")
