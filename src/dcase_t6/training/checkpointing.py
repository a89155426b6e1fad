"""Where training stands (``Position``) and the run's ``last`` and ``best`` checkpoints.

A checkpoint holds the model's weights, the config the model was built from (the run's config with the
model's cluster class count, so ``embed`` rebuilds exactly this model) and the position; ``last`` also
holds the optimizer and gradient-scaler state, so a run resumed from it continues bit for bit (on the
device and precision it ran with; a scaler state moves between a CPU and a GPU, see ``load_scaler_state``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcase_t6.common.atomic import atomic_path
from dcase_t6.models import DualEncoder
from dcase_t6.models.checkpoint import WeightSource, load_weights
from dcase_t6.runs.config import TrainConfig
from dcase_t6.runs.registry import Registry


@dataclass
class Position:
    """Where training stands: epoch, batches done in it, optimizer steps done, best monitored value, and the
    running sums of the epoch in progress (train loss and terms, batches, seconds, data wait; empty at an
    epoch's start), so the record of an epoch resumed mid-way covers all of it."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -math.inf
    epoch_sums: dict = field(default_factory=dict)


class Checkpointer:
    """Writes and registers a run's checkpoints (main process only: the others have no ``registry``, None) and
    restores from ``last``."""

    def __init__(self, registry: Registry | None, run_id: str, directory: Path, config: TrainConfig, is_main: bool):
        self.registry, self.run_id, self.directory = registry, run_id, directory
        self.config, self.is_main = config, is_main

    def save_last(self, model: DualEncoder, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  position: Position) -> None:
        """Write and register ``last.pt`` (weights, optimizer, scaler, position); nothing on other processes.

        Args:
            model: the unwrapped model.
            optimizer: its optimizer.
            scaler: the gradient scaler.
            position: where training stands.
        """
        if not self.is_main:
            return
        state = {**self._state(model, position), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}
        self._save(state, "last", {"epoch": position.epoch, "step": position.step})

    def save_best(self, model: DualEncoder, position: Position, record: dict) -> None:
        """Write and register ``best.pt`` (weights, position) with the epoch's record; nothing on other processes.

        Args:
            model: the unwrapped model.
            position: where training stands (``best`` is the monitored value of this epoch).
            record: the epoch's record.
        """
        if not self.is_main:
            return
        info = {"epoch": position.epoch, "step": position.step, "parameters": model.parameter_count(),
                "selection": self.config.selection}
        if self.config.validation_split is not None:
            info[self.config.monitor] = position.best
        self._save(self._state(model, position), "best", info | {"metrics": record})

    def restore(self, path: Path, model: DualEncoder, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device) -> Position:
        """Load a ``last`` checkpoint into the model, optimizer and scaler.

        Args:
            path: the checkpoint.
            model: the unwrapped model (built from the same config).
            optimizer: its optimizer.
            scaler: the gradient scaler.
            device: where the tensors go.

        Returns:
            The position the checkpoint was written at.
        """
        state = torch.load(path, map_location=device, weights_only=True)
        load_weights(model, state["model"], WeightSource(
            f"run {self.run_id} checkpoint last", path,
            fix="it was written by another dcase-t6 version: resume with that version or start a new run"))
        optimizer.load_state_dict(state["optimizer"])
        load_scaler_state(scaler, state["scaler"])
        return Position(**state["position"])

    def _state(self, model: DualEncoder, position: Position) -> dict:
        return {"model": model.state_dict(), "config": self.config.to_dict(), "position": vars(position).copy()}

    def _save(self, state: dict, tag: str, info: dict) -> None:
        path = self.directory / f"{tag}.pt"
        with atomic_path(path) as tmp:
            save_state(state, tmp)
        if self.registry is None:
            raise RuntimeError("internal error: a checkpoint saved by a process other than the main one")
        self.registry.add_file(self.run_id, "checkpoint", tag, path, info)


class _Writer:
    """A binary file for ``torch.save`` that keeps the OSError of a failed write (torch replaces it by an
    "unexpected pos" RuntimeError without the cause)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_state(state: dict, path: Path) -> None:
    """``torch.save(state, path)``; a write the file system refuses (a full disk, a file-size limit) raises its
    OSError.

    Args:
        state: what to save.
        path: the file (a temporary one of ``atomic_path``).
    """
    with open(path, "wb") as handle:
        writer = _Writer(handle)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Load a checkpoint's gradient-scaler state into ``scaler``, across devices and precisions.

    A disabled scaler (fp32, bf16, or fp16 on a CPU) saves ``{}`` and ignores what it is given; an enabled
    one (fp16 on a GPU) refuses ``{}``. So a run started on a CPU and resumed on a GPU keeps the enabled
    scaler's initial state (it starts scaling as a new fp16 run does), and the reverse drops the saved state.

    Args:
        scaler: the resumed run's scaler.
        state: the checkpoint's ``scaler`` entry.
    """
    if state:
        scaler.load_state_dict(state)
