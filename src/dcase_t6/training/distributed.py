"""Data-parallel training under torchrun: process setup and gathering embeddings across processes."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dcase_t6.runs.config import DEFAULT_TIMEOUT_MINUTES


@dataclass(frozen=True)
class Share:
    """The rows of a global batch one process encodes: ``rows`` (indices into the batch), of which the first
    ``kept`` are its share. A process whose share is empty (a batch of fewer rows than processes) encodes one
    stand-in row (``kept`` 0) whose outputs are left out of the gather: DDP needs every process to run forward
    and backward, and the stand-in contributes zero gradients. The main process always has a share (shares
    are longest first), so the batch-norm statistics it checkpoints and broadcasts never see a stand-in."""

    rows: list[int]
    kept: int


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
        """This process's contiguous share of a global batch: shares differ in length by at most one (longer
        ones first), so a share is empty only when the batch has fewer items than there are processes."""
        share, longer = divmod(len(items), self.size)
        start = self.rank * share + min(self.rank, longer)
        return items[start:start + share + (self.rank < longer)]

    def share(self, size: int) -> Share:
        """The rows of a global batch of ``size`` rows that this process encodes (see ``Share``).

        Args:
            size: rows in the global batch (at least 1).

        Returns:
            This process's share, or one stand-in row when its share is empty.
        """
        rows = self.shard(list(range(size)))
        return Share(rows, len(rows)) if rows else Share([self.rank % size], 0)

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a collective: every process must call it)."""
        if self.size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()




def launched_as_main() -> bool:
    """Whether this process is rank 0 of its torchrun job (or runs alone), known before the group is joined:
    the one process that prints the command's result."""
    return os.environ.get("RANK", "0") == "0"


def init_world(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> World:
    """Join the process group that torchrun describes in the environment, or run alone.

    Args:
        timeout_minutes: how long a collective waits for the other processes before failing (NCCL's
            default of 10 minutes is shorter than the main process alone may take to build the audio cache,
            embed teachers, cluster captions or validate; config key ``dist_timeout_minutes``).

    Returns:
        This process's place among the processes.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if size == 1:
        return World(device=device)
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
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


class _ScaledGradient(torch.autograd.Function):
    """The identity, with the gradient multiplied by ``factor`` on the way back."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return value.view_as(value)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return gradient * ctx.factor, None


def replicated(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` for a loss that every process computes on the whole global batch, for a tensor each process
    uses whole (not through ``gather``): the model's temperature. Its gradient is complete on every process,
    so it is divided by the world size here; the loss scaling by the world size before backward and DDP's
    average then leave it equal to the single-process gradient, as for the gathered embeddings.

    Args:
        value: the tensor (the same on every process).
        world: the processes.

    Returns:
        ``value`` itself alone or without gradient, else the same values with the gradient divided by the world size.
    """
    if world.size == 1 or not value.requires_grad:
        return value
    return _ScaledGradient.apply(value, 1.0 / world.size)


def accumulating(network: torch.nn.Module, world: World, last: bool) -> contextlib.AbstractContextManager:
    """Where a batch's forward and backward run under gradient accumulation: DDP's ``no_sync`` for every batch
    of an optimizer step but the ``last`` (whose backward then reduces the gradients accumulated by all of
    them, once instead of once per batch); no context alone or for the last batch.

    Args:
        network: the model or its DDP wrapper.
        world: the processes.
        last: whether the batch is the last of its optimizer step.

    Returns:
        The context to run the batch's forward and backward in.
    """
    if world.size == 1 or last or not isinstance(network, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return network.no_sync()


def share_from_main(value, world: World):
    """The main process's ``value`` (any picklable object), on every process."""
    if world.size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
