"""One code path for a single device and for DistributedDataParallel under ``torchrun``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..utils import resolve_device


@dataclass
class Distributed:
    """Process group facts; ``world_size == 1`` means a single device and no process group."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def wrapper(self):
        if self.world_size == 1:
            return lambda module: module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return lambda module: DistributedDataParallel(module, device_ids=ids)


def setup_distributed(device_name: str = "auto") -> Distributed:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): nccl on CUDA
    (one GPU per process, ``LOCAL_RANK``), gloo on CPU. Otherwise a single device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Distributed(1, 0, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(world_size, rank, device)


def shutdown_distributed(dist: Distributed) -> None:
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
