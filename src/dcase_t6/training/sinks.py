"""Where a finished epoch's record goes: the registry, ``metrics.jsonl``, TensorBoard (when installed), the console.

Every sink takes the same record (``train_loss``, ``train_<term>`` for every loss term, ``lr``, ``step``,
``seconds``, ``data_wait_fraction`` and the validation metrics); only the main process has sinks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.console import stderr_console
from dcase_t6.registry import Registry


class EpochSink(Protocol):
    """Receives each finished epoch's record."""

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        """Take the record of ``epoch`` (0-based); ``improved`` when it is the best so far."""


class RegistrySink:
    """Logs the epoch with the run in the registry (``runs show``, ``metrics.jsonl``)."""

    def __init__(self, registry: Registry, run_id: str):
        self.registry, self.run_id = registry, run_id

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        self.registry.log_epoch(self.run_id, epoch, record)


class MetricsFileSink:
    """Rewrites ``metrics.jsonl`` (one JSON line per epoch) from the epochs the registry holds for the run;
    it follows a ``RegistrySink``."""

    def __init__(self, registry: Registry, run_id: str, path: Path):
        self.registry, self.run_id, self.path = registry, run_id, path

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        epochs = self.registry.run(self.run_id).epochs
        with atomic_open(self.path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(epoch) + "\n" for epoch in epochs)


class TensorBoardSink:
    """Writes the record's numbers as TensorBoard scalars in ``folder``, one step per epoch."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self._writer = folder, SummaryWriter

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        with self._writer(str(self.folder)) as writer:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(key, value, epoch)


class ConsoleSink:
    """One line per epoch on stderr: loss, validation metrics, time, data-loader wait."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        metrics = " ".join(f"{key} {record[key]:.4f}" for key in ("R@1", "R@10", "mAP@10") if key in record)
        stderr_console.print(f"epoch {epoch + 1}/{self.epochs}  loss {record['train_loss']:.4f}  {metrics}  "
                             f"{record['seconds']:.1f} s  data wait {100 * record['data_wait_fraction']:.1f}%"
                             f"{'  [green]best[/]' if improved else ''}", highlight=False)


def tensorboard_sink(folder: Path) -> TensorBoardSink | None:
    """A TensorBoard sink, or None when the tensorboard package is not installed.

    Args:
        folder: the event files' folder.

    Returns:
        The sink, or None.
    """
    try:
        return TensorBoardSink(folder)
    except ImportError:
        return None


def run_sinks(registry: Registry, run_id: str, directory: Path, epochs: int, is_main: bool) -> list[EpochSink]:
    """A run's sinks, in the order they are written: console, registry, ``metrics.jsonl``, TensorBoard.

    Args:
        registry: the run's registry.
        run_id: the run.
        directory: the run's folder (``metrics.jsonl`` and ``tensorboard/`` go there).
        epochs: the configured number of epochs (for the console line).
        is_main: whether this is the main process; the others get no sinks.

    Returns:
        The sinks.
    """
    if not is_main:
        return []
    sinks: list[EpochSink] = [ConsoleSink(epochs), RegistrySink(registry, run_id),
                              MetricsFileSink(registry, run_id, directory / "metrics.jsonl")]
    tensorboard = tensorboard_sink(directory / "tensorboard")
    return sinks + ([tensorboard] if tensorboard is not None else [])
