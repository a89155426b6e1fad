"""A training batch's forward and backward, in one piece or in chunks (batches beyond memory: a gradient cache).

Without ``grad_cache_chunk`` a batch runs as it always has: one forward of this process's share, the objective on
the gathered global batch, one backward. With ``grad_cache_chunk`` = c (GradCache: Gao et al. 2021, "Scaling deep
contrastive learning batch size under memory limited setup") the share is encoded in chunks of at most c pairs and
the activations of only one chunk are held at a time:

1. every chunk runs forward without an autograd graph; the random state before each chunk (CPU and the GPU's:
   dropout, PaSST's patchout and random fmin/fmax) is kept, and the model's buffers (BatchNorm running
   statistics) are put back as they were afterwards;
2. the objective runs once on the whole share's outputs (gathered across processes once: every negative of the
   global batch, distillation and cluster terms included), and its gradient with respect to those outputs and to
   the temperature is kept (the "cache");
3. every chunk runs forward again from its kept random state, so the two forwards are the same, and its outputs
   are back-propagated with their rows of the cached gradient. Under DDP every chunk's backward but the optimizer
   step's last runs in ``no_sync``; the last also carries the temperature's gradient and reduces them all once.

The gradients are the one-piece batch's (to float rounding) when the forward does not depend on the rows it is
given together: BatchNorm normalises over a chunk (as over a process's share under torchrun) and updates its
running statistics once per chunk; dropout draws its masks chunk by chunk. Every process runs as many chunks as the
process with the longest share (one small all_reduce per batch): a shorter share encodes its first row again as a
stand-in chunk whose outputs get zero gradients, so DDP's collectives stay matched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.distributed import World, accumulating
from dcase_t6.training.objective import Losses, Objective


@dataclass(frozen=True)
class StepParts:
    """What a batch's forward and backward run on.

    network: the model or its DDP wrapper (the forward whose backward DDP reduces); model: the model itself (its
    temperature, and the gradient-free first forward of a chunked batch); objective: the loss terms (and the
    processes); scaler: the gradient scaler (fp16); autocast_dtype: the forward's autocast dtype, None for fp32.
    """

    network: torch.nn.Module
    model: torch.nn.Module
    objective: Objective
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None


@dataclass(frozen=True)
class BatchPlan:
    """How a batch is back-propagated.

    chunk: pairs per chunk on this process (config ``grad_cache_chunk``), None for the batch in one piece;
    accumulation: batches per optimizer step (config ``grad_accumulation``); last: whether the batch is the last
    of its optimizer step (its backward reduces the gradients under DDP).
    """

    chunk: int | None
    accumulation: int = 1
    last: bool = True


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of this process's share, encoded by one forward. A ``stand_in`` chunk has no rows of its
    own (its share is shorter than the others' chunk count): it encodes row 0 and back-propagates zeros."""

    start: int
    stop: int
    stand_in: bool = False


@dataclass(frozen=True)
class _Inputs:
    """The share's model inputs on the device."""

    waveforms: torch.Tensor
    lengths: torch.Tensor
    captions: list[str]


@dataclass(frozen=True)
class _RandomState:
    """The CPU generator's state and the GPU's (None on a CPU) before a chunk's first forward."""

    cpu: torch.Tensor
    device: torch.Tensor | None


@dataclass(frozen=True)
class _Cache:
    """The loss's gradient with respect to each output (None: the loss does not use it) and to the temperature
    (None: not trained)."""

    outputs: list[torch.Tensor | None]
    temperature: torch.Tensor | None


def backward_batch(parts: StepParts, batch: TrainingBatch, plan: BatchPlan) -> Losses:
    """Forward and backward of this process's share of a batch; the gradients are added to the parameters'.

    Args:
        parts: the network, model, objective, scaler and autocast dtype.
        batch: this process's share of the batch.
        plan: chunk size (None: one piece), accumulation and whether the batch ends its optimizer step.

    Returns:
        The batch's loss terms and total (on the global batch).
    """
    world = parts.objective.world
    device = world.device
    inputs = _Inputs(batch.waveforms.to(device, non_blocking=True), batch.lengths.to(device, non_blocking=True),
                     batch.captions)
    chunks = [Chunk(0, len(batch.captions))] if plan.chunk is None else plan_chunks(len(batch.captions),
                                                                                    plan.chunk, world)
    if len(chunks) == 1:
        with accumulating(parts.network, world, last=plan.last):
            outputs = _forward(parts.network, inputs, chunks[0], parts.autocast_dtype)
            with _autocast(device, parts.autocast_dtype):
                losses = parts.objective(outputs, batch, parts.model.temperature)
            parts.scaler.scale(parts.objective.backward_total(losses, plan.accumulation)).backward()
        return losses
    replays, outputs = _first_pass(parts, inputs, chunks)
    losses, cache = _cached_gradients(parts, batch, outputs, plan.accumulation)
    _second_pass(parts, inputs, replays, cache, plan.last)
    return losses


def plan_chunks(rows: int, chunk: int, world: World) -> list[Chunk]:
    """This process's ``rows`` cut into as many chunks as the longest share of any process needs (at most ``chunk``
    rows each, of near-equal sizes, longer first); chunks beyond this share's rows are stand-ins.

    Args:
        rows: rows of this process's share (a stand-in row counts).
        chunk: the most rows per chunk.
        world: the processes (the longest share is agreed on with one all_reduce).

    Returns:
        The chunks, in row order.
    """
    return split_rows(rows, math.ceil(longest_share(rows, world) / chunk))


def split_rows(rows: int, count: int) -> list[Chunk]:
    """``rows`` rows in ``count`` chunks of near-equal sizes (longer first); chunks beyond the rows are stand-ins."""
    size, longer = divmod(rows, count)
    chunks, start = [], 0
    for index in range(count):
        stop = start + size + (index < longer)
        chunks.append(Chunk(start, stop) if stop > start else Chunk(0, 1, stand_in=True))
        start = stop
    return chunks


def longest_share(rows: int, world: World) -> int:
    """The most rows any process encodes in this batch (a collective under torchrun: every process calls it)."""
    if world.size == 1:
        return rows
    value = torch.tensor([rows], device=world.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _forward(network: torch.nn.Module, inputs: _Inputs, chunk: Chunk, dtype: torch.dtype | None) -> tuple:
    rows = slice(chunk.start, chunk.stop)
    with _autocast(inputs.waveforms.device, dtype):
        return network(inputs.waveforms[rows], inputs.lengths[rows], inputs.captions[rows])


def _random_state(device: torch.device) -> _RandomState:
    return _RandomState(torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _restore(state: _RandomState, device: torch.device) -> None:
    torch.set_rng_state(state.cpu)
    if state.device is not None:
        torch.cuda.set_rng_state(state.device, device)


def _first_pass(parts: StepParts, inputs: _Inputs,
                chunks: list[Chunk]) -> tuple[list[tuple[Chunk, _RandomState]], list[tuple]]:
    """Every chunk with the random state before it, and the outputs of those with rows (a stand-in's are not
    needed), computed without a graph; the model's buffers are left as they were."""
    device = inputs.waveforms.device
    buffers = [buffer.detach().clone() for buffer in parts.model.buffers()]
    replays, outputs = [], []
    with torch.no_grad():
        for chunk in chunks:
            replays.append((chunk, _random_state(device)))
            if not chunk.stand_in:
                outputs.append(_forward(parts.model, inputs, chunk, parts.autocast_dtype))
        for buffer, saved in zip(parts.model.buffers(), buffers):
            buffer.copy_(saved)
    return replays, outputs


def _cached_gradients(parts: StepParts, batch: TrainingBatch, outputs: list[tuple],
                      accumulation: int) -> tuple[Losses, _Cache]:
    """The objective on the whole share's outputs (detached) and its gradient with respect to them and to the
    temperature, scaled as the one-piece backward scales it (``backward_total``, the gradient scaler)."""
    joined = [torch.cat(column).detach().requires_grad_(True) for column in zip(*outputs)]
    temperature = parts.model.temperature
    cached_temperature = temperature.detach().requires_grad_(temperature.requires_grad)
    with _autocast(parts.objective.world.device, parts.autocast_dtype):
        losses = parts.objective(tuple(joined), batch, cached_temperature)
    leaves = [*joined, *([cached_temperature] if cached_temperature.requires_grad else [])]
    total = parts.scaler.scale(parts.objective.backward_total(losses, accumulation))
    gradients = list(torch.autograd.grad(total, leaves, allow_unused=True))
    return losses, _Cache(gradients[:len(joined)], gradients[len(joined)] if len(gradients) > len(joined) else None)


def _second_pass(parts: StepParts, inputs: _Inputs, replays: list[tuple[Chunk, _RandomState]], cache: _Cache,
                 last_batch: bool) -> None:
    """Every chunk forward again from its random state, back-propagating its rows of the cached gradients; DDP
    reduces in the backward of the optimizer step's last chunk, which also carries the temperature's gradient."""
    world = parts.objective.world
    for index, (chunk, state) in enumerate(replays):
        last = index == len(replays) - 1
        _restore(state, world.device)
        with accumulating(parts.network, world, last=last_batch and last):
            outputs = _forward(parts.network, inputs, chunk, parts.autocast_dtype)
            tensors, gradients = [], []
            for output, gradient in zip(outputs, cache.outputs):
                if gradient is not None and output.requires_grad:
                    tensors.append(output)
                    gradients.append(torch.zeros_like(output) if chunk.stand_in else gradient[chunk.start:chunk.stop])
            if last and cache.temperature is not None:
                tensors.append(parts.model.temperature)
                gradients.append(cache.temperature)
            torch.autograd.backward(tensors, gradients)
