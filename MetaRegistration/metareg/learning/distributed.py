"""Training processes: a single one, or the ranks ``torchrun`` starts (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from metareg.core.device import resolve_device


@dataclass
class Processes:
    """This process's place among the training processes (``torchrun`` sets RANK and WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, slots: int) -> list[int]:
        """The slots of a step this process computes (round robin)."""
        return list(range(self.rank, slots, self.world_size))


def start_processes(device: str = "auto") -> Processes:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on CUDA); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch_device = resolve_device(device)
    if world_size > 1:
        if torch_device.type == "cuda":
            torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(torch_device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=torch_device)
