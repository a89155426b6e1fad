"""Where training's numbers go: the registry, ``metrics.jsonl``, the console, and an experiment logger
(TensorBoard or Weights & Biases, config key ``log``).

Every sink takes each finished epoch's record (``train_loss``, ``train_<term>`` for every loss term, ``lr``,
``step``, ``seconds``, ``data_wait_fraction`` and the validation metrics). The experiment loggers also take a
step record every ``log_every`` optimizer steps (``train_loss`` and ``train_<term>`` averaged over the batches
since the last one, ``lr``, ``data_wait_fraction`` of that stretch, ``epoch`` as a fraction), and at the start
the run's config, its id and where its registry record is. Only the main process has sinks.

``log: wandb`` honours the usual ``WANDB_*`` variables: ``WANDB_MODE=offline`` writes the run under
``runs/<run>/wandb/`` without a server (``wandb sync`` uploads it later), ``WANDB_PROJECT`` (default
``dcase-t6``) and ``WANDB_ENTITY`` choose where it goes. A logger whose package is missing is one error line
naming the install command, before the run is registered (``check_logger``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Protocol

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.runs.registry import Registry

# logger -> (the module it imports, the pip command that installs it)
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
                   "wandb": ("wandb", "pip install wandb")}
WANDB_PROJECT = "dcase-t6"


class EpochSink(Protocol):
    """Receives each finished epoch's record."""

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        """Take the record of ``epoch`` (0-based); ``improved`` when it is the best so far."""


class StepSink(Protocol):
    """An epoch sink that also takes the per-step records and is closed when training ends."""

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        """Take the record of ``epoch`` (0-based)."""

    def write_step(self, step: int, record: dict) -> None:
        """Take the record of the ``log_every`` steps that end with optimizer step ``step``."""

    def close(self, status: str) -> None:
        """Flush and close; ``status`` is ``finished``, ``stopped`` or ``failed``."""


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


class RunInfo:
    """What a logger records about the run at its start: id, registry link, config."""

    def __init__(self, registry: Registry, run_id: str, config: dict):
        self.run_id, self.config = run_id, config
        self.registry = str(registry.path.resolve())
        self.record = str(registry.layout.record(run_id).resolve())
        self.show = f"dcase-t6 --workdir {registry.workdir.resolve()} runs show {run_id}"

    def as_dict(self) -> dict:
        return {"run": self.run_id, "registry": self.registry, "record": self.record, "show": self.show}


class TensorBoardSink:
    """TensorBoard event files in ``folder``: the epoch records as scalars (one point per epoch, the record's
    own names), the step records as ``step/<name>`` scalars over optimizer steps, and the run's id, registry
    link and config as text."""

    def __init__(self, folder: Path, info: RunInfo | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self._writer = SummaryWriter(str(folder))
        if info is not None:
            links = "\n".join(f"* {key}: `{value}`" for key, value in info.as_dict().items())
            self._writer.add_text("run", links, 0)
            self._writer.add_text("config", "```\n" + json.dumps(info.config, indent=2) + "\n```", 0)
            self._writer.flush()

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        for key, value in _numbers(record).items():
            self._writer.add_scalar(key, value, epoch)
        self._writer.flush()

    def write_step(self, step: int, record: dict) -> None:
        for key, value in _numbers(record).items():
            self._writer.add_scalar(f"step/{key}", value, step)

    def close(self, status: str) -> None:
        self._writer.close()


class WandbSink:
    """A Weights & Biases run with the registry's run id as its id and name (a resumed run continues it): the
    config and the registry link as its config, step records as ``step/<name>`` over optimizer steps, epoch
    records as ``epoch/<name>`` (with ``epoch`` 1-based), the best epoch's numbers in its summary as
    ``best/<name>``."""

    def __init__(self, folder: Path, info: RunInfo):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), id=info.run_id,
                               name=info.run_id, dir=str(folder), resume="allow",
                               config={**info.config, "registry": info.as_dict()})
        self._step = 0

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        numbers = _numbers(record)
        self._step = max(self._step, int(record.get("step", self._step)))
        self._run.log({"epoch": epoch + 1, **{f"epoch/{key}": value for key, value in numbers.items()}},
                      step=self._step)
        if improved:
            self._run.summary.update({"best/epoch": epoch + 1, **{f"best/{key}": value
                                                                  for key, value in numbers.items()}})

    def write_step(self, step: int, record: dict) -> None:
        self._step = max(self._step, step)
        self._run.log({f"step/{key}": value for key, value in _numbers(record).items()}, step=self._step)

    def close(self, status: str) -> None:
        self._run.finish(exit_code=0 if status in ("finished", "stopped") else 1)


class ConsoleSink:
    """One line per epoch for the user: loss, validation metrics, time, data-loader wait."""

    def __init__(self, epochs: int, reporter: Reporter):
        self.epochs, self.reporter = epochs, reporter

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        metrics = " ".join(f"{key} {record[key]:.4f}" for key in ("R@1", "R@10", "mAP@10") if key in record)
        self.reporter.info(f"epoch {epoch + 1}/{self.epochs}  loss {record['train_loss']:.4f}  {metrics}  "
                           f"{record['seconds']:.1f} s  data wait {100 * record['data_wait_fraction']:.1f}%"
                           f"{'  best' if improved else ''}")


def _numbers(record: dict) -> dict[str, float]:
    return {key: value for key, value in record.items() if isinstance(value, (int, float))
            and not isinstance(value, bool)}


def check_logger(log: str) -> None:
    """Fail now, with the install command, when the package of logger ``log`` is not installed.

    Args:
        log: ``tensorboard``, ``wandb`` or ``none``.

    Raises:
        UserError: the package is missing.
    """
    if log not in LOGGER_PACKAGES:
        return
    module, install = LOGGER_PACKAGES[log]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"config key 'log' = {log!r} needs the {module} package, which is not installed; "
                        f"install it with `{install}`, or train with --log none")


def experiment_logger(log: str, registry: Registry, run_id: str, directory: Path, config: dict) -> StepSink | None:
    """The experiment logger of a run (None for ``none``).

    Args:
        log: ``tensorboard`` (event files in ``directory/tensorboard``), ``wandb`` (under ``directory/wandb``)
            or ``none``.
        registry: the run's registry (for the link to its record).
        run_id: the run.
        directory: the run's folder.
        config: the run's config, as registered.

    Returns:
        The sink, or None.

    Raises:
        UserError: its package is not installed.
    """
    if log == "none":
        return None
    check_logger(log)
    info = RunInfo(registry, run_id, config)
    if log == "wandb":
        return WandbSink(directory, info)
    return TensorBoardSink(directory / "tensorboard", info)


def run_sinks(registry: Registry | None, run_id: str, epochs: int, is_main: bool,
              reporter: Reporter = SILENT) -> list[EpochSink]:
    """A run's sinks, in the order they are written: console, registry, ``metrics.jsonl``, the experiment
    logger of the run's registered config (``log``: TensorBoard by default). ``metrics.jsonl``, ``tensorboard/``
    and ``wandb/`` go into the run's folder.

    Args:
        registry: the run's registry (None on the processes other than the main one, which read run records).
        run_id: the run.
        epochs: the configured number of epochs (for the console line).
        is_main: whether this is the main process; the others get no sinks.
        reporter: where the console sink writes its line per epoch.

    Returns:
        The sinks.
    """
    if not is_main or registry is None:
        return []
    directory = registry.layout.run(run_id)
    sinks: list[EpochSink] = [ConsoleSink(epochs, reporter), RegistrySink(registry, run_id),
                              MetricsFileSink(registry, run_id, directory / "metrics.jsonl")]
    config = registry.run(run_id).config
    logger = experiment_logger(config.get("log", "tensorboard"), registry, run_id, directory, config)
    return sinks + ([logger] if logger is not None else [])


def write_step(sinks: list[EpochSink], step: int, record: dict) -> None:
    """Give a step record to the sinks that take them.

    Args:
        sinks: the run's sinks.
        step: the optimizer step the record ends with.
        record: the step record.
    """
    for sink in sinks:
        if hasattr(sink, "write_step"):
            sink.write_step(step, record)


def close_sinks(sinks: list[EpochSink], status: str) -> None:
    """Close the sinks that hold something open (the experiment loggers).

    Args:
        sinks: the run's sinks.
        status: how training ended: ``finished``, ``stopped`` or ``failed``.
    """
    for sink in sinks:
        if hasattr(sink, "close"):
            sink.close(status)
