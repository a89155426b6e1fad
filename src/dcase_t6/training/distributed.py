"""Data-parallel training under torchrun: process setup and gathering embeddings across processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` training processes (size 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This process's contiguous share of a global batch."""
        per_process = -(-len(items) // self.size)
        return items[self.rank * per_process:(self.rank + 1) * per_process]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world() -> World:
    """Join the process group that torchrun describes in the environment, or run alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if size == 1:
        return World(device=device)
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


def gather(local: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every process's tensor along dim 0 (rank order); gradients flow to the local part.

    Shards may differ in length by one or more rows: sizes are exchanged first and padding removed.
    Each process then computes the loss of the whole global batch; scaling that loss by the world
    size before backward makes DDP's gradient average equal the single-process gradient.
    """
    if world.size == 1:
        return local
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    longest = int(max(size.item() for size in sizes))
    padded = torch.nn.functional.pad(local.detach(), (0, 0) * (local.dim() - 1) + (0, longest - local.shape[0]))
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded.contiguous())
    parts = [part[: int(size.item())] for part, size in zip(parts, sizes)]
    parts[world.rank] = local
    return torch.cat(parts, dim=0)


def share_from_main(value, world: World):
    """The main process's ``value`` (any picklable object), on every process."""
    if world.size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
