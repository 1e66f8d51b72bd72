"""One rank's place among the training processes: the process group, its device, and collectives for bookkeeping."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from superfilter.runtime import resolve_device

# Long enough for rank 0 alone to load a 13B model or write model/ while the others wait at a barrier.
GROUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """rank/size over every node; a world of one runs in this process without a process group."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def join_world(device_name: str, expected: int) -> World:
    """This process's World: joins the process group that torchrun / accelerate launch set up in the environment.

    Refuses a world other than `expected`: a rank started without a launcher would otherwise train alone.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size != expected:
        raise RuntimeError(f"expected {expected} training processes, the environment has WORLD_SIZE={size}; start "
                           "several ranks through train_stage (torchrun on CPU, accelerate launch on GPUs)")
    device = resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if size == 1:
        return World(0, 1, 0, device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    if dist.get_world_size() != expected:
        raise RuntimeError(f"expected {expected} training processes, the process group has {dist.get_world_size()}")
    return World(dist.get_rank(), size, local_rank, device)


def leave_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        # gloo's teardown can block for ever once its peer has torn down first (seen at exit on a loaded CPU host);
        # the rank's process ends right after, which frees gloo's sockets anyway. NCCL is torn down as PyTorch asks.
        if dist.get_backend() != "gloo":
            dist.destroy_process_group()
