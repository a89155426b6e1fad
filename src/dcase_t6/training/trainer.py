"""`train`: a run's life: registered, assembled, trained, its status kept honest in the registry.

The dual encoder is trained with multi-positive InfoNCE, resumable bit for bit, DDP-ready. A run is
assembled by ``builder.build_training`` (data, model, objective, validation, checkpoints, log sinks, in a
documented order, without changing the registered config) and trained by ``loop.TrainingLoop``. The loss
of a batch is a weighted sum of named terms (``objective``), every term logged per epoch as
``train_<term>`` (``sinks``): ``contrastive_weight`` * contrastive + ``distill_weight`` * distillation
(``distillation``) + ``clusters.weight`` * cluster (``clustering``). ``init_from`` starts from another
run's best weights.

A run's status in the registry is honest: ``running`` while a process trains it (its host and process
id are recorded and a heartbeat is written every 30 s), ``finished``, ``stopped`` (step limit or
Ctrl-C/SIGTERM, resumable), or ``failed`` with the one-line reason; a run whose process died without a
word is listed as ``interrupted``. ``train --resume`` continues any of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dcase_t6.common.errors import UserError, file_system_error
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.runs.config import DEFAULT_TIMEOUT_MINUTES, TrainConfig, from_dict
from dcase_t6.runs.lookup import lookup_for, writable
from dcase_t6.runs.record_reader import RunLookup, RunRecords, recorded_id
from dcase_t6.runs.registry import Registry
from dcase_t6.training.builder import build_training
from dcase_t6.training.checkpointing import Position
from dcase_t6.training.distributed import World, init_world, share_from_main
from dcase_t6.training.loop import TrainingLoop
from dcase_t6.training.sinks import check_logger


@dataclass(frozen=True)
class TrainOutcome:
    """How a ``train_new`` / ``resume`` / ``continue_run`` call ended.

    ``monitor`` is the validation metric that chose the best checkpoint and ``best`` its best value (None before
    the first validation); a run without a validation split has no monitor, and ``selection`` says which rule
    chose its best checkpoint (the last epoch).
    """

    run: str
    status: str  # finished (every epoch) or stopped (max_steps, a graceful stop): resumable
    epoch: int
    step: int
    monitor: str | None = None
    best: float | None = None
    selection: str | None = None

    def as_json(self) -> dict:
        """The summary ``train --json`` prints: run, status, epoch, step and ``best_<monitor>`` (or ``best``)."""
        summary = {"run": self.run, "status": self.status, "epoch": self.epoch, "step": self.step}
        if self.monitor is None:
            return {**summary, "best": self.selection}
        return {**summary, f"best_{self.monitor}": self.best}


def register_run(registry: Registry, config: TrainConfig) -> str:
    """Register a new run, its ``init_from``/``distill_from``/``negatives.source`` references resolved to full run
    ids.

    Args:
        registry: where to register it.
        config: the run's config.

    Returns:
        The new run's id.
    """
    source = config.negatives.source
    config = dataclasses.replace(config, init_from=registry.resolve(config.init_from) if config.init_from else None,
                                 distill_from=[registry.resolve(teacher) for teacher in config.distill_from],
                                 negatives=dataclasses.replace(config.negatives, source=source and
                                                               registry.resolve(source)))
    return registry.create_run(config.name, config.to_dict(), data_fingerprint=None, seed=config.seed)


def train_new(workdir: str | Path, config: TrainConfig, world: World | None = None,
              reporter: Reporter = SILENT) -> TrainOutcome:
    """Register and run a new training run.

    Args:
        workdir: the registry's folder.
        config: the run's config (its ``max_steps`` also limits this invocation).
        world: the processes (default: from the torchrun environment, or this process alone).
        reporter: progress bars and notes (the main process's).

    Returns:
        How the run ended (a :class:`TrainOutcome`).
    """
    world = world or init_world(config.dist_timeout_minutes)
    lookup = lookup_for(world, workdir)  # under torchrun only the main process opens the registry
    run_id = share_from_main(register_run(writable(lookup), config) if world.is_main else None, world)
    return continue_run(lookup, run_id, world, max_steps=config.max_steps, reporter=reporter)


def resume(workdir: str | Path, reference: str, max_steps: int | None = None, world: World | None = None,
           reporter: Reporter = SILENT) -> TrainOutcome:
    """Continue a run exactly where it stopped: from its ``last`` checkpoint, or from the start when it
    failed or died before writing one (optionally to a new step limit).

    Args:
        workdir: the registry's folder.
        reference: the run's id or a unique prefix of it.
        max_steps: stop after this many optimizer steps in all (None: train all epochs).
        world: the processes (default: from the torchrun environment, or this process alone).
        reporter: progress bars and notes (the main process's).

    Returns:
        How the run ended (a :class:`TrainOutcome`).
    """
    lookup = lookup_for(world, workdir)
    # before the processes are joined (their timeout is the run's): the others find the run among the records
    run = lookup.run(recorded_id(lookup.workdir, reference) if isinstance(lookup, RunRecords) else reference)
    if run.status == "imported":
        raise UserError(f"run {run.id} was imported (`runs import`): it has weights but no training state to "
                        f"continue; train on from it with `dcase-t6 train --init-from {run.id} ...`")
    check_logger(run.config.get("log", "tensorboard"))
    world = world or init_world(timeout_minutes(run.config))
    return continue_run(lookup, share_from_main(run.id, world), world, max_steps, reporter)


def timeout_minutes(values: dict) -> float:
    """A stored config's ``dist_timeout_minutes`` (the default when the config does not check: ``continue_run``
    then records why in the run's status)."""
    try:
        return from_dict(values).dist_timeout_minutes
    except UserError:
        return DEFAULT_TIMEOUT_MINUTES


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """With ``enabled`` (config key ``deterministic``): only deterministic algorithms while the block runs
    (``torch.use_deterministic_algorithms``; an operation that has none fails), with cuBLAS's workspace set
    for it (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set, before the run's first CUDA kernel);
    both are restored afterwards.

    Args:
        enabled: the config's ``deterministic``.
    """
    if not enabled:
        yield
        return
    before, workspace = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def continue_run(lookup: RunLookup, run_id: str, world: World, max_steps: int | None,
                 reporter: Reporter = SILENT) -> TrainOutcome:
    """Train a registered run with its stored config: from its ``last`` checkpoint, or from the start without one.

    Whatever fails from here on (data, weights, the model, training itself) leaves the run ``failed`` with
    its one-line reason in the registry, and a Ctrl-C that is not a graceful stop leaves it ``interrupted``.
    The registered config is read, never changed: ``max_steps`` belongs to this invocation.

    Args:
        lookup: the run's registry on the main process, its records on the others (``runs.lookup.lookup_for``);
            only the main process writes.
        run_id: the run's full id.
        world: the processes.
        max_steps: stop after this many optimizer steps in all (None: train all epochs).
        reporter: progress bars and notes; only the main process speaks.

    Returns:
        How the run ended (a :class:`TrainOutcome`: ``finished`` or ``stopped``, epoch, step, the best value of
        the monitored metric, or without a validation split the rule that chose the best checkpoint).
    """
    registry = writable(lookup) if world.is_main else None  # the others read run records and write nothing
    heartbeat = registry.claim(run_id) if registry is not None else None
    try:
        run = lookup.run(run_id)
        config = dataclasses.replace(from_dict(run.config, source=f"run {run_id}"), max_steps=max_steps)
        with deterministic_algorithms(config.deterministic):
            setup = build_training(config, lookup, run_id, world, reporter)
            if registry is not None and run.data_fingerprint is None:
                registry.set_fingerprint(run_id, setup.data.pairs.fingerprint)
            position = Position()
            if any(record.kind == "checkpoint" and record.tag == "last" for record in run.files):
                position = setup.checkpointer.restore(lookup.file(run_id, "checkpoint", "last").path, setup.model,
                                                      setup.optimizer, setup.scaler, world.device)
            position = TrainingLoop(setup, position).run()
    except BaseException as err:
        if registry is not None and heartbeat is not None:
            heartbeat.stop()
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            _record_end(registry, run_id, status, failure_reason(err))
        translated = file_system_error(err)  # a full disk, a read-only folder...: one line, as the run records it
        if translated is not None:
            raise translated from err
        raise
    finished = position.epoch >= config.epochs
    status = "finished" if finished else "stopped"
    if registry is not None and heartbeat is not None:
        heartbeat.stop()
        registry.set_status(run_id, status)
    # No process returns before the main one has saved and registered the last checkpoint and the status: a caller
    # that resumes the run next in the same processes (a pipeline, a script) must find them on every process.
    world.wait("save the last checkpoint and record the run's end")
    if config.validation_split is None:
        return TrainOutcome(run_id, status, position.epoch, position.step, selection=config.selection)
    return TrainOutcome(run_id, status, position.epoch, position.step, monitor=config.monitor,
                        best=position.best if position.best > -math.inf else None)


def _record_end(registry: Registry, run_id: str, status: str, reason: str) -> None:
    """Record how a run ended; on a full disk, where its ``run.json`` cannot be rewritten, in the registry alone
    (the database has room for the change in its write-ahead log more often than a new file has)."""
    try:
        registry.set_status(run_id, status, reason=reason)
    except (OSError, sqlite3.Error, UserError):
        with contextlib.suppress(OSError, sqlite3.Error, UserError):
            registry.set_status(run_id, status, reason=reason, write_record=False)


def failure_reason(err: BaseException) -> str:
    """One line saying why a run ended: a UserError's message, the file and fix of a file system's refusal (a full
    disk, see ``file_system_error``), else the exception's type and first line.

    Args:
        err: what ended the run.

    Returns:
        The reason the registry records.
    """
    if isinstance(err, KeyboardInterrupt):
        return "interrupted by Ctrl-C; continue with `dcase-t6 train --resume RUN`"
    err = file_system_error(err) or err
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}".rstrip(": ")
