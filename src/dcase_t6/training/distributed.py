"""Data-parallel training under torchrun: gathering embeddings across processes, gradient scaling and
accumulation. The processes themselves (``World``, ``init_world``, ``share_from_main``) live in ``runs.world``,
which ``embed`` shares; they are importable from here as before."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from dcase_t6.runs.world import Share, World, init_world, launched_as_main, share_from_main

__all__ = ["Share", "World", "accumulating", "gather", "init_world", "launched_as_main", "replicated",
           "share_from_main"]


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
