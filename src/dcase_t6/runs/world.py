"""The processes of one command under torchrun: which one this is, its share of a list, and the few collectives
every multi-process command needs (stop flags, barriers, a value from the main process).

Training (``training.distributed``) and ``embed`` (``embedding.sharded``) both build on it; alone (no torchrun)
every collective is a no-op.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

from dcase_t6.common.errors import UserError
from dcase_t6.runs.config import DEFAULT_TIMEOUT_MINUTES, RANGES

T = TypeVar("T")


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
    """This process's place among ``size`` processes (size 1 without torchrun): its ``rank``, the ``device``
    it computes on, its ``local_rank`` among the processes of its node (torchrun's ``LOCAL_RANK``),
    ``timeout_minutes`` (how long a collective waits, config key ``dist_timeout_minutes``) and ``waits``, the
    gloo group of ``wait`` (None: the default group; NCCL's watchdog ends a process whose collective times out,
    gloo raises)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    local_rank: int = 0
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES
    waits: object = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Whether this is the first process of its node (every node has one)."""
        return self.local_rank == 0

    def shard(self, items):
        """This process's contiguous share of ``items`` (a list or a range): shares differ in length by at most
        one (longer ones first), so a share is empty only when there are fewer items than processes."""
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

    def wait(self, step: str, advice: str = "") -> None:
        """A barrier after a long step that rank 0 (or some process) takes alone; a timeout fails with one line.

        Args:
            step: what the processes wait for, completing "for another process to ...": "build the audio cache".
            advice: another way out than a longer timeout, completing "raise dist_timeout_minutes or ...".

        Raises:
            UserError: the wait took longer than ``timeout_minutes``.
        """
        if self.size == 1:
            return
        try:
            dist.barrier(group=self.waits)
        except RuntimeError as err:  # torch.distributed.DistBackendError is one
            if not timed_out(err):
                raise
            remedy = f"raise dist_timeout_minutes (config key){f' or {advice}' if advice else ''}"
            raise UserError(f"training: the other processes waited more than {self.timeout_minutes:g} minutes for "
                            f"another process to {step}; {remedy}") from err


def timed_out(err: BaseException) -> bool:
    """Whether ``err`` is a collective's timeout (gloo's "Timed out waiting ...", NCCL's "... Timeout ...")."""
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def launched_as_main() -> bool:
    """Whether this process is rank 0 of its torchrun job (or runs alone), known before the group is joined:
    the one process that prints the command's result."""
    return os.environ.get("RANK", "0") == "0"


def check_timeout(value, where: str) -> float:
    """``value`` when it is a number of minutes that ``dist_timeout_minutes`` accepts; a UserError naming
    ``where`` otherwise (``embed --dist-timeout-minutes``)."""
    accepts, expected = RANGES["dist_timeout_minutes"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not accepts(value):
        raise UserError(f"{where} {value!r}: the timeout must be {expected}")
    return float(value)


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
        return World(device=device, local_rank=local_rank)
    if use_cuda:
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    waits = dist.new_group(backend="gloo", timeout=timeout) if use_cuda else None
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device, local_rank=local_rank,
                 timeout_minutes=timeout_minutes, waits=waits)


def share_from_main(value, world: World):
    """The main process's ``value`` (any picklable object), on every process."""
    if world.size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def main_decides(world: World, decide: Callable[[], T]) -> T:
    """What ``decide()`` returns on the main process, on every process (only the main process calls it); when it
    fails there, every process fails: with the same UserError, or a RuntimeError naming the main process's error.

    Args:
        world: the processes (a collective: every process must call it).
        decide: what the main process does (resolve a run reference, register a run...); its result is pickled.

    Returns:
        The main process's result.
    """
    if world.size == 1:
        return decide()
    outcome = None
    if world.is_main:
        try:
            outcome = (decide(), None, False)
        except Exception as err:
            share_from_main((None, str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}",
                             isinstance(err, UserError)), world)
            raise
    value, problem, user_error = share_from_main(outcome, world)
    if problem is None:
        return value
    if user_error:
        raise UserError(problem)
    raise RuntimeError(f"the main process failed ({problem}); see its output")
