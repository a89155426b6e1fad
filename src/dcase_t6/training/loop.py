"""The training loop: epochs of batches, optimizer steps, checkpoints, stop signals. It only loops; what it
loops over is assembled by ``dcase_t6.training.builder``.

All randomness of a step (data order, crop offsets, augmentation, dropout, mel augmentation) is derived
from (seed, epoch, batch), dropout also from the process's rank, and the learning rate is a pure function
of the step, so a run resumed from its ``last`` checkpoint continues exactly as if it had never stopped. The
running sums of the epoch in progress (loss, loss terms, seconds, data wait) are checkpointed with the
position, so the record of an epoch resumed mid-way covers the whole epoch: the same ``train_loss`` as
without the stop, and ``seconds`` that add the time before the stop to the time after it.

Every ``log_every`` optimizer steps the loop gives the sinks that take them (the experiment loggers) a step
record: the loss and its terms averaged over the batches since the last one, the learning rate, the share of
that time spent waiting for the data loader and the epoch as a fraction. It costs a few additions per batch
(the loss is read as a number for the epoch record anyway).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dcase_t6.runs.config import TrainConfig
from dcase_t6.training.builder import TrainingSetup
from dcase_t6.training.checkpointing import Position
from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.finetuning import scheduled_learning_rate, set_learning_rate
from dcase_t6.training.grad_cache import BatchPlan, StepParts, backward_batch
from dcase_t6.training.sinks import close_sinks, write_step


def learning_rate(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_epochs``, cosine down to ``min_lr`` over ``decay_epochs``. Each
    parameter group trains at this rate times its ``lr_scale`` (``training.finetuning``; 1 by default).

    Args:
        step: optimizer steps done.
        steps_per_epoch: optimizer steps of an epoch.
        config: the run's config (``lr``, ``min_lr``, ``warmup_epochs``, ``decay_epochs``).

    Returns:
        The learning rate of the next step.
    """
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    decay = max(1, round(config.decay_epochs * steps_per_epoch))
    progress = min(1.0, (step - warmup) / decay)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """A 63-bit seed unique to one batch of one epoch on one process.

    Args:
        seed: the run's seed.
        epoch: the epoch (0-based).
        batch: the batch in the epoch (0-based).
        rank: the process (its dropout masks differ from the other processes'; the main process draws as a
            single process does).

    Returns:
        The seed for ``torch.manual_seed``.
    """
    entropy = [seed, epoch, batch] + ([rank] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class _EpochStats:
    """Sums over this process's batches of an epoch, the part before a resume included (``earlier_s`` is the
    time spent on the epoch before this process took it up)."""

    start: float = field(default_factory=time.perf_counter)
    earlier_s: float = 0.0
    loss_sum: float = 0.0
    batches: int = 0
    wait_s: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def resumed(cls, sums: dict) -> _EpochStats:
        """The sums a checkpoint stored (``Position.epoch_sums``; empty: a fresh epoch)."""
        return cls(earlier_s=sums.get("seconds", 0.0), loss_sum=sums.get("loss_sum", 0.0),
                   batches=sums.get("batches", 0), wait_s=sums.get("wait_s", 0.0), terms=dict(sums.get("terms", {})))

    def sums(self) -> dict:
        """What a checkpoint stores to resume these sums."""
        return {"loss_sum": self.loss_sum, "batches": self.batches, "wait_s": self.wait_s,
                "seconds": self.seconds(), "terms": dict(self.terms)}

    def seconds(self) -> float:
        return self.earlier_s + time.perf_counter() - self.start

    def add(self, loss: float, terms: dict[str, float]) -> None:
        self.loss_sum += loss
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value
        self.batches += 1

    def record(self, lr: float, step: int, metrics: dict[str, float]) -> dict:
        """The epoch record every sink receives."""
        batches = max(1, self.batches)
        seconds = self.seconds()
        return {"train_loss": self.loss_sum / batches,
                **{f"train_{name}": value / batches for name, value in self.terms.items()},
                "lr": lr, "step": step, "seconds": round(seconds, 3),
                "data_wait_fraction": round(self.wait_s / max(seconds, 1e-9), 4), **metrics}


@dataclass
class _StepLog:
    """Sums over the batches since the last step record (what ``write_step`` averages)."""

    start: float = field(default_factory=time.perf_counter)
    loss_sum: float = 0.0
    batches: int = 0
    wait_s: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, terms: dict[str, float], wait_s: float) -> None:
        self.loss_sum += loss
        self.wait_s += wait_s
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value
        self.batches += 1

    def record(self, lr: float, epoch: float) -> dict:
        """The step record: mean loss and terms, ``lr``, ``data_wait_fraction``, ``epoch`` (a fraction)."""
        batches, seconds = max(1, self.batches), max(time.perf_counter() - self.start, 1e-9)
        return {"train_loss": self.loss_sum / batches,
                **{f"train_{name}": value / batches for name, value in self.terms.items()},
                "lr": lr, "data_wait_fraction": round(self.wait_s / seconds, 4), "epoch": round(epoch, 4)}


class TrainingLoop:
    """Trains an assembled run from ``position`` until ``epochs`` (or ``max_steps``) is reached or a stop signal
    (Ctrl-C, SIGTERM) arrives; it then checkpoints ``last`` at the next optimizer step and returns.

    Under torchrun a signal may reach one process only (a scheduler's SIGTERM): the processes agree on
    stopping at every optimizer step and at the end of every epoch (``World.any``, one small all_reduce),
    so all of them stop at the same step and none is left waiting for the others in a collective."""

    def __init__(self, setup: TrainingSetup, position: Position | None = None):
        self.setup, self.config = setup, setup.config
        self.position = position or Position()
        self._stop_requested = False  # a signal reached this process
        self._stop_agreed = False  # a signal reached some process, as of the last agreement
        self._step_log = _StepLog()

    def run(self) -> Position:
        """Train; returns the final position.

        Returns:
            Where training stopped (``epoch == config.epochs`` when it finished).
        """
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = "failed"
        try:
            while self.position.epoch < self.config.epochs and not self._stopping():
                self._train_epoch()
            status = "finished" if self.position.epoch >= self.config.epochs else "stopped"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            close_sinks(self.setup.sinks, status)
        return self.position

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def _stopping(self) -> bool:
        limit = self.config.max_steps
        return self._stop_agreed or (limit is not None and self.position.step >= limit)

    def _agree_on_stop(self) -> None:
        """Whether any process was asked to stop (every process calls this at the same points)."""
        self._stop_agreed = self.setup.world.any(self._stop_requested)

    def _train_epoch(self) -> None:
        config, position, data = self.config, self.position, self.setup.data
        batches = data.batches(position.epoch)
        steps_per_epoch = math.ceil(len(batches) / config.grad_accumulation)
        loader = data.loader(position.epoch, batches, start=position.batch)
        stats = _EpochStats.resumed(position.epoch_sums if position.batch else {})
        with self.setup.reporter.task(f"epoch {position.epoch + 1}/{config.epochs}", len(batches),
                                      completed=position.batch) as task:
            waited = time.perf_counter()
            for batch in loader:
                wait_s = time.perf_counter() - waited
                stats.wait_s += wait_s
                loss, terms = self._train_batch(batch, steps_per_epoch, len(batches))
                stats.add(loss, terms)
                self._log_step(loss, terms, wait_s, len(batches))
                task.advance()
                task.describe(f"epoch {position.epoch + 1}/{config.epochs} loss {stats.loss_sum / stats.batches:.4f}")
                if self._at_step_boundary(len(batches)):
                    self._agree_on_stop()
                if self._at_step_boundary(len(batches)) and self._checkpoint_due():
                    position.epoch_sums = stats.sums()
                    self._save_last()
                    self.setup.world.wait("save the last checkpoint")
                    if self._stopping():
                        return
                waited = time.perf_counter()
        self._finish_epoch(stats)

    def _train_batch(self, batch: TrainingBatch, steps_per_epoch: int,
                     n_batches: int) -> tuple[float, dict[str, float]]:
        setup, config, position = self.setup, self.config, self.position
        torch.manual_seed(step_seed(config.seed, position.epoch, position.batch, setup.world.rank))
        setup.network.train()
        # one forward and backward, or with grad_cache_chunk two forwards per chunk (training.grad_cache)
        parts = StepParts(setup.network, setup.model, setup.objective, setup.scaler, setup.autocast_dtype)
        losses = backward_batch(parts, batch, BatchPlan(config.grad_cache_chunk, config.grad_accumulation,
                                                        last=self._at_step_boundary(n_batches, position.batch + 1)))
        position.batch += 1
        if self._at_step_boundary(n_batches):
            self._optimizer_step(learning_rate(position.step, steps_per_epoch, config))
        return float(losses.total.detach()), losses.values()

    def _log_step(self, loss: float, terms: dict[str, float], wait_s: float, n_batches: int) -> None:
        """Add a batch to the step record; every ``log_every`` optimizer steps, give it to the sinks."""
        self._step_log.add(loss, terms, wait_s)
        position = self.position
        if not self._at_step_boundary(n_batches) or position.step % self.config.log_every:
            return
        epoch = position.epoch + position.batch / max(1, n_batches)
        write_step(self.setup.sinks, position.step,
                   self._step_log.record(scheduled_learning_rate(self.setup.optimizer), epoch))
        self._step_log = _StepLog()

    def _optimizer_step(self, lr: float) -> None:
        optimizer, scaler = self.setup.optimizer, self.setup.scaler
        set_learning_rate(optimizer, lr)  # each parameter group: lr times its scale (training.finetuning)
        if self.config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.setup.model.parameters(), self.config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.position.step += 1

    def _at_step_boundary(self, n_batches: int, done: int | None = None) -> bool:
        """Whether an optimizer step follows ``done`` batches of the epoch (default: the batches done now)."""
        done = self.position.batch if done is None else done
        return done % self.config.grad_accumulation == 0 or done == n_batches

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return self._stopping() or bool(every and self.position.step % every == 0)

    def _save_last(self) -> None:
        setup = self.setup
        setup.checkpointer.save_last(setup.model, setup.optimizer, setup.scaler, self.position)

    def _finish_epoch(self, stats: _EpochStats) -> None:
        setup, position = self.setup, self.position
        validates = setup.validator is not None
        metrics = setup.validator(setup.model) if validates else {}  # every process embeds its share
        record = stats.record(scheduled_learning_rate(setup.optimizer), position.step, metrics)
        # without validation every epoch is the best so far: best = last (config.selection)
        improved = setup.world.is_main and (not validates
                                            or metrics.get(self.config.monitor, -math.inf) > position.best)
        if improved and validates:
            position.best = metrics[self.config.monitor]
        position.epoch, position.batch, position.epoch_sums = position.epoch + 1, 0, {}
        if improved:
            setup.checkpointer.save_best(setup.model, position, record)
        self._save_last()
        for sink in setup.sinks:
            sink.write(position.epoch - 1, record, improved)
        setup.world.wait("save the epoch's checkpoints")
        self._agree_on_stop()  # every process has validated, the main one has checkpointed
