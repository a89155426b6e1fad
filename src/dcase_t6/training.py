"""`train`: the dual encoder trained with multi-positive InfoNCE, resumable bit for bit, DDP-ready.

All randomness of a step (data order, crop offsets, dropout, mel augmentation) is derived from
(seed, epoch, batch), and the learning rate is a pure function of the step, so a run resumed from
its last checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6 import losses
from dcase_t6.atomic import atomic_open, atomic_path
from dcase_t6.clips import ClipStore
from dcase_t6.config import TrainConfig, from_dict
from dcase_t6.data.split_index import load_split, read_index
from dcase_t6.distributed import World, gather, init_world, share_from_main
from dcase_t6.embedding import embed_audio, embed_text, pad_batch, similarity
from dcase_t6.errors import UserError
from dcase_t6.evaluation import evaluate
from dcase_t6.models import DualEncoder
from dcase_t6.data.progress import count_progress
from dcase_t6.registry import Registry
from dcase_t6.relevance import Relevance
from dcase_t6.simmatrix import SimilarityMatrix


@dataclass(frozen=True)
class CaptionPairs:
    """The (clip, caption) pairs of the training split(s); ``clip_ids`` mark captions of the same clip."""

    paths: list[Path]
    captions: list[str]
    clip_ids: np.ndarray
    fingerprint: str


@dataclass
class Position:
    """Where training stands: epoch, batches done in it, optimizer steps done, best monitored value."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -math.inf


def load_pairs(config: TrainConfig) -> CaptionPairs:
    """Read the training split of every configured dataset from the prepared split indexes."""
    frames = [read_index(config.data_root, dataset, config.train_split) for dataset in config.datasets]
    paths, captions, clip_keys = [], [], []
    for frame in frames:
        paths += [Path(p) for p in frame["path"]]
        captions += frame["caption"].tolist()
        clip_keys += list(zip(frame["dataset"], frame["file_name"]))
    _, clip_ids = np.unique(np.array([f"{d}/{f}" for d, f in clip_keys]), return_inverse=True)
    digest = sha256_of_text("\n".join(f"{p}\t{c}" for p, c in zip(paths, captions)))
    return CaptionPairs(paths, captions, clip_ids.astype(np.int64), digest)


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def epoch_batches(n_pairs: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The seeded order of an epoch, cut into batches (a last batch of fewer than 2 pairs is dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
    batches = [order[start:start + batch_size] for start in range(0, n_pairs, batch_size)]
    return [batch for batch in batches if len(batch) >= 2]


def learning_rate(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_epochs``, cosine down to ``min_lr`` over ``decay_epochs``."""
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    decay = max(1, round(config.decay_epochs * steps_per_epoch))
    progress = min(1.0, (step - warmup) / decay)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, epoch: int, batch: int) -> int:
    """A 63-bit seed unique to one batch of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class BatchSource(torch.utils.data.Dataset):
    """The batches of one epoch for this process: random crops of the clips, captions and clip ids."""

    def __init__(self, pairs: CaptionPairs, batches: list[np.ndarray], store: ClipStore, max_samples: int,
                 seed: int, epoch: int, world: World):
        self.pairs, self.batches, self.store = pairs, batches, store
        self.max_samples, self.seed, self.epoch, self.world = max_samples, seed, epoch, world

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        offsets = rng.random(len(self.batches[index]))
        members = self.world.shard(list(zip(self.batches[index], offsets)))
        clips = [random_crop(self.store.read(self.pairs.paths[i]), self.max_samples, offset) for i, offset in members]
        waveforms, lengths = pad_batch(clips)
        captions = [self.pairs.captions[i] for i, _ in members]
        clip_ids = torch.from_numpy(self.pairs.clip_ids[[i for i, _ in members]])
        return waveforms, lengths, captions, clip_ids


def random_crop(clip: np.ndarray, max_samples: int, offset: float) -> np.ndarray:
    """A window of at most ``max_samples`` starting at fraction ``offset`` of the possible starts."""
    spare = len(clip) - max_samples
    if spare <= 0:
        return clip
    start = int(offset * (spare + 1))
    return clip[start:start + max_samples]


class Trainer:
    """Runs (or resumes) one registered training run."""

    def __init__(self, config: TrainConfig, registry: Registry, run_id: str, world: World):
        self.config, self.registry, self.run_id, self.world = config, registry, run_id, world
        self.directory = registry.workdir / "runs" / run_id
        self.pairs = load_pairs(config)
        self.validation = load_split(config.data_root, config.validation_source, config.validation_split)
        torch.manual_seed(config.seed)
        self.model = DualEncoder(config.model, audio_weights=config.audio_weights).to(world.device)
        self.store = ClipStore(config.data_root, self.model.sample_rate)
        self.max_samples = int(config.audio_seconds * self.model.sample_rate)
        self.network = self._wrap(self.model)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.use_amp = config.mixed_precision and world.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.position = Position()
        self._stop_requested = False

    def _wrap(self, model: DualEncoder) -> torch.nn.Module:
        if self.world.size == 1:
            return model
        device_ids = [self.world.device.index] if self.world.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def resume_from(self, checkpoint: Path) -> None:
        """Restore model, optimizer, scaler and position from a ``last`` checkpoint."""
        state = torch.load(checkpoint, map_location=self.world.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.position = Position(**state["position"])

    def run(self) -> Position:
        """Train until ``epochs`` (or ``max_steps``) is reached; returns the final position."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.position.epoch < self.config.epochs and not self._stopping():
                self._train_epoch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.position

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def _stopping(self) -> bool:
        limit = self.config.max_steps
        return self._stop_requested or (limit is not None and self.position.step >= limit)

    def _train_epoch(self) -> None:
        config, position = self.config, self.position
        batches = epoch_batches(len(self.pairs.captions), config.batch_size, config.seed, position.epoch)
        if not batches:
            raise UserError(f"{config.data_root}: the training split has fewer than 2 caption pairs; prepare more data")
        steps_per_epoch = math.ceil(len(batches) / config.grad_accumulation)
        source = BatchSource(self.pairs, batches, self.store, self.max_samples, config.seed, position.epoch, self.world)
        remaining = torch.utils.data.Subset(source, range(position.batch, len(batches)))
        loader = torch.utils.data.DataLoader(remaining, batch_size=None, num_workers=config.workers,
                                             persistent_workers=False)
        stats = {"loss_sum": 0.0, "batches": 0, "wait_s": 0.0, "start": time.perf_counter()}
        with count_progress() as bar:
            task = bar.add_task(f"epoch {position.epoch + 1}/{config.epochs}", total=len(batches),
                                completed=position.batch)
            waited = time.perf_counter()
            for waveforms, lengths, captions, clip_ids in loader:
                stats["wait_s"] += time.perf_counter() - waited
                loss = self._train_batch(waveforms, lengths, captions, clip_ids, steps_per_epoch)
                stats["loss_sum"] += loss
                stats["batches"] += 1
                bar.update(task, advance=1, description=f"epoch {position.epoch + 1}/{config.epochs} "
                           f"loss {stats['loss_sum'] / stats['batches']:.4f}")
                if self._at_step_boundary(len(batches)) and self._checkpoint_due():
                    self._save_last()
                    if self._stopping():
                        return
                waited = time.perf_counter()
        self._finish_epoch(stats)

    def _train_batch(self, waveforms, lengths, captions, clip_ids, steps_per_epoch: int) -> float:
        config, position, device = self.config, self.position, self.world.device
        torch.manual_seed(step_seed(config.seed, position.epoch, position.batch))
        self.network.train()
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp):
            audio, text = self.network(waveforms.to(device), lengths.to(device), captions)
            ids = clip_ids.to(device)
            loss = losses.multi_positive_infonce(gather(audio.float(), self.world), gather(text.float(), self.world),
                                                 gather(ids, self.world), gather(ids, self.world),
                                                 self.model.temperature)
        self.scaler.scale(loss * self.world.size / config.grad_accumulation).backward()
        position.batch += 1
        if position.batch % config.grad_accumulation == 0 or position.batch == self._batches_in_epoch():
            self._optimizer_step(learning_rate(position.step, steps_per_epoch, config))
        return float(loss.detach())

    def _batches_in_epoch(self) -> int:
        return len(epoch_batches(len(self.pairs.captions), self.config.batch_size, self.config.seed, self.position.epoch))

    def _optimizer_step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.position.step += 1

    def _at_step_boundary(self, n_batches: int) -> bool:
        return self.position.batch % self.config.grad_accumulation == 0 or self.position.batch == n_batches

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return self._stopping() or bool(every and self.position.step % every == 0)

    def _finish_epoch(self, stats: dict) -> None:
        metrics = self.validate() if self.world.is_main else {}
        position = self.position
        batches = max(1, stats["batches"])
        seconds = time.perf_counter() - stats["start"]
        record = {"train_loss": stats["loss_sum"] / batches, "lr": self.optimizer.param_groups[0]["lr"],
                  "step": position.step, "seconds": round(seconds, 3),
                  "data_wait_fraction": round(stats["wait_s"] / max(seconds, 1e-9), 4), **metrics}
        improved = self.world.is_main and metrics.get(self.config.monitor, -math.inf) > position.best
        if improved:
            position.best = metrics[self.config.monitor]
        position.epoch, position.batch = position.epoch + 1, 0
        if self.world.is_main:
            if improved:
                self._save_best(record)
            self._save_last()
            self.registry.log_epoch(self.run_id, position.epoch - 1, record)
            self._write_metrics_log()
        self.world.barrier()

    def validate(self) -> dict[str, float]:
        """Validation R@K/mAP@K (single-relevant: each caption's target is its own clip)."""
        split, device = self.validation, self.world.device
        paths = [Path(p) for p in split.paths]
        audio = embed_audio(self.model, paths, self.store.read, self.max_samples, self.config.batch_size, device)
        text = embed_text(self.model, split.queries, self.config.batch_size, device)
        matrix = SimilarityMatrix(split.queries, split.files, similarity(text, audio))
        truth = Relevance(split.queries, [[name] for name in split.query_files], Path(split.split))
        return evaluate(matrix, truth).scores

    def _checkpoint_state(self) -> dict:
        return {"model": self.model.state_dict(), "config": self.config.to_dict(),
                "position": vars(self.position).copy()}

    def _save_last(self) -> None:
        if not self.world.is_main:
            return
        state = {**self._checkpoint_state(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict()}
        self._save(state, "last", {"epoch": self.position.epoch, "step": self.position.step})

    def _save_best(self, record: dict) -> None:
        info = {"epoch": self.position.epoch, "step": self.position.step,
                "parameters": self.model.parameter_count(), self.config.monitor: self.position.best}
        self._save(self._checkpoint_state(), "best", info | {"metrics": record})

    def _save(self, state: dict, tag: str, info: dict) -> None:
        path = self.directory / f"{tag}.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        self.registry.add_file(self.run_id, "checkpoint", tag, path, info)

    def _write_metrics_log(self) -> None:
        epochs = self.registry.run(self.run_id)["epochs"]
        with atomic_open(self.directory / "metrics.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(epoch) + "\n" for epoch in epochs)


def train_new(workdir: str | Path, config: TrainConfig) -> dict:
    """Register and run a new training run; returns its summary."""
    world = init_world()
    registry = Registry(workdir)
    run_id = None
    if world.is_main:
        run_id = registry.create_run(config.name, config.to_dict(), data_fingerprint=None, seed=config.seed)
    run_id = share_from_main(run_id, world)
    trainer = Trainer(config, registry, run_id, world)
    if world.is_main:
        registry.set_fingerprint(run_id, trainer.pairs.fingerprint)
    return _run_to_end(trainer)


def resume(workdir: str | Path, reference: str, max_steps: int | None = None) -> dict:
    """Continue a run from its ``last`` checkpoint exactly where it stopped (optionally to a new step limit)."""
    world = init_world()
    registry = Registry(workdir)
    run = registry.run(reference)
    checkpoint = registry.file(run["id"], "checkpoint", "last")
    config = from_dict(run["config"], source=f"run {run['id']}")
    config.max_steps = max_steps
    trainer = Trainer(config, registry, run["id"], world)
    trainer.resume_from(checkpoint.path)
    return _run_to_end(trainer)


def _run_to_end(trainer: Trainer) -> dict:
    registry, run_id, world = trainer.registry, trainer.run_id, trainer.world
    if world.is_main:
        registry.set_status(run_id, "running")
    try:
        position = trainer.run()
    except BaseException:
        if world.is_main:
            registry.set_status(run_id, "failed")
        raise
    finished = position.epoch >= trainer.config.epochs
    if world.is_main:
        registry.set_status(run_id, "finished" if finished else "stopped")
    return {"run": run_id, "status": "finished" if finished else "stopped", "epoch": position.epoch,
            "step": position.step, f"best_{trainer.config.monitor}": position.best if position.best > -math.inf else None}
