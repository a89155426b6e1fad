"""`train`: the dual encoder trained with multi-positive InfoNCE, resumable bit for bit, DDP-ready.

All randomness of a step (data order, crop offsets, caption/audio augmentation, dropout, mel
augmentation) is derived from (seed, epoch, batch), and the learning rate is a pure function of the
step, so a run resumed from its last checkpoint continues exactly as if it had never stopped.

The loss of a batch is a weighted sum of named terms: ``contrastive_weight`` * contrastive (the
baseline's multi-positive InfoNCE) + ``distill_weight`` * distillation (when ``distill_from`` names
teachers, see ``dcase_t6.distillation``) + ``clusters.weight`` * cluster (CE_audio + CE_text, when
``clusters.method`` is set, see ``dcase_t6.clustering``); every term is logged per epoch as
``train_<term>``, also one whose weight is 0. ``init_from`` starts from another run's best weights.

A run's status in the registry is honest: ``running`` while a process trains it (its host and process
id are recorded and a heartbeat is written every 30 s), ``finished``, ``stopped`` (step limit or
Ctrl-C/SIGTERM, resumable), or ``failed`` with the one-line reason; a run whose process died without a
word is listed as ``interrupted``. ``train --resume`` continues any of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6.training import losses
from dcase_t6.common.atomic import atomic_open, atomic_path
from dcase_t6.training.augmentation import NO_PAIR, PairAugmenter, mix_clips
from dcase_t6.training.clustering import caption_labels
from dcase_t6.training.config import TrainConfig, from_dict
from dcase_t6.data.audio_cache import AudioCache, build_cache
from dcase_t6.data.layout import Layout
from dcase_t6.common.console import count_progress, stderr_console
from dcase_t6.data.split_index import load_split, read_index
from dcase_t6.training.distillation import load_teachers
from dcase_t6.training.distributed import World, gather, init_world, share_from_main
from dcase_t6.embedding.encode import embed_audio, embed_text, pad_batch, similarity
from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.models import DualEncoder
from dcase_t6.registry import Registry
from dcase_t6.retrieval.ground_truth import Relevance
from dcase_t6.retrieval.matrices import SimilarityMatrix

EXTERNAL_TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class CaptionPairs:
    """The (clip, caption) pairs of the training split(s); ``clip_ids`` mark captions of the same clip,
    ``clip_names[clip_id]`` is the clip's ``dataset/file_name``."""

    paths: list[Path]
    captions: list[str]
    clip_ids: np.ndarray
    clip_names: np.ndarray
    fingerprint: str

    def pair_clips(self) -> list[str]:
        """``dataset/file_name`` of every pair's clip."""
        return self.clip_names[self.clip_ids].tolist()


@dataclass
class Position:
    """Where training stands: epoch, batches done in it, optimizer steps done, best monitored value."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -math.inf


def load_pairs(config: TrainConfig) -> CaptionPairs:
    """Read the training split of every configured dataset from the prepared split indexes."""
    frames = [_training_rows(config, dataset) for dataset in config.datasets]
    paths, captions, clip_keys = [], [], []
    for frame in frames:
        paths += [Path(p) for p in frame["path"]]
        captions += frame["caption"].tolist()
        clip_keys += list(zip(frame["dataset"], frame["file_name"]))
    clip_names, clip_ids = np.unique(np.array([f"{d}/{f}" for d, f in clip_keys]), return_inverse=True)
    digest = sha256_of_text("\n".join(f"{p}\t{c}" for p, c in zip(paths, captions)))
    return CaptionPairs(paths, captions, clip_ids.astype(np.int64), clip_names, digest)


def _training_rows(config: TrainConfig, dataset: str):
    """A dataset's rows of ``train_split`` (Clotho layout), or of ``train`` (AudioCaps, WavCaps)."""
    index = read_index(config.data_root, dataset)
    for split in (config.train_split, EXTERNAL_TRAIN_SPLIT):
        if (index["split"] == split).any():
            return index[index["split"] == split]
    raise UserError(f"{config.data_root}: dataset {dataset!r} has no split {config.train_split!r} or "
                    f"{EXTERNAL_TRAIN_SPLIT!r} (it has {sorted(set(index['split']))}); set train_split")


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


@dataclass
class TrainingBatch:
    """This process's share of a batch: audio, (augmented) captions, clip ids (a mixed pair gets a new id,
    -1 - its position in the batch), the training pairs they come from and the mixed-in partner pairs."""

    waveforms: torch.Tensor
    lengths: torch.Tensor
    captions: list[str]
    clip_ids: torch.Tensor
    pairs: torch.Tensor
    partners: torch.Tensor


class BatchSource(torch.utils.data.Dataset):
    """The batches of one epoch for this process: random crops of the clips, augmented as configured."""

    def __init__(self, pairs: CaptionPairs, batches: list[np.ndarray], store: AudioCache, augmenter: PairAugmenter,
                 max_samples: int, seed: int, epoch: int, world: World):
        self.pairs, self.batches, self.store, self.augmenter = pairs, batches, store, augmenter
        self.max_samples, self.seed, self.epoch, self.world = max_samples, seed, epoch, world

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> TrainingBatch:
        batch = self.batches[index]
        offsets = np.random.default_rng([self.seed, self.epoch, index]).random(len(batch))
        plan = self.augmenter.plan(batch, np.random.default_rng([self.seed, self.epoch, index, 1]))
        clip_ids = np.where(plan.mixed, -1 - np.arange(len(batch)), self.pairs.clip_ids[batch])
        rows = np.array(self.world.shard(list(range(len(batch)))), dtype=np.int64)
        clips = [self._clip(batch[row], offsets[row], plan.partners[row], plan.partner_offsets[row]) for row in rows]
        waveforms, lengths = pad_batch(clips)
        return TrainingBatch(waveforms, lengths, [plan.captions[row] for row in rows], torch.from_numpy(clip_ids[rows]),
                             torch.from_numpy(batch[rows]), torch.from_numpy(plan.partners[rows]))

    def _clip(self, pair: int, offset: float, partner: int, partner_offset: float) -> np.ndarray:
        clip = random_crop(self.store.read(self.pairs.paths[pair]), self.max_samples, offset)
        if partner == NO_PAIR:
            return clip
        partner_clip = random_crop(self.store.read(self.pairs.paths[partner]), self.max_samples, partner_offset)
        return mix_clips(clip, partner_clip)


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
        self.augmenter = PairAugmenter(config, self.pairs.captions, self.pairs.clip_ids, self.pairs.clip_names)
        self.teachers = (load_teachers(registry, config, self.pairs.captions, self.pairs.clip_ids,
                                       self.pairs.clip_names, world) if config.distill_from else None)
        self.cluster_labels = self._cluster_labels()
        torch.manual_seed(config.seed)
        self.model = DualEncoder(config.model, audio_weights="random" if config.init_from else config.audio_weights)
        if config.init_from:
            initialise_from(self.model, registry, config.init_from)
        elif world.is_main:
            stderr_console.print(f"audio backbone {config.model.backbone}: {self.model.audio.weights_source}",
                                 highlight=False, soft_wrap=True)
        self.model.to(world.device)
        if world.is_main:  # one process builds the cache, the others wait and read it
            build_cache(Layout.at(config.data_root), self.model.sample_rate,
                        list(dict.fromkeys([*config.datasets, config.validation_source])),
                        workers=max(1, config.workers))
        world.barrier()
        self.store = AudioCache(config.data_root, self.model.sample_rate)
        self.max_samples = config.clip_samples(self.model.sample_rate)
        self.network = self._wrap(self.model)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
        self.autocast_dtype = autocast_dtype(config.precision, world.device, say=world.is_main)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.position = Position()
        self._stop_requested = False

    def _cluster_labels(self) -> torch.Tensor | None:
        """Every pair's cluster label (and the model config's class count set from them), or None when off."""
        if not self.config.clusters.method:
            self.config.model.cluster_classes = 0
            return None
        labels = caption_labels(self.registry, self.run_id, self.config, self.pairs.captions, self.pairs.pair_clips(),
                                self.world)
        self.config.model.cluster_classes = int(labels.max()) + 1
        return torch.from_numpy(labels).to(self.world.device)

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
        source = BatchSource(self.pairs, batches, self.store, self.augmenter, self.max_samples, config.seed,
                             position.epoch, self.world)
        remaining = torch.utils.data.Subset(source, range(position.batch, len(batches)))
        loader = torch.utils.data.DataLoader(remaining, batch_size=None, num_workers=config.workers,
                                             persistent_workers=False)
        stats = {"loss_sum": 0.0, "batches": 0, "wait_s": 0.0, "start": time.perf_counter(), "terms": {}}
        with count_progress() as bar:
            task = bar.add_task(f"epoch {position.epoch + 1}/{config.epochs}", total=len(batches),
                                completed=position.batch)
            waited = time.perf_counter()
            for batch in loader:
                stats["wait_s"] += time.perf_counter() - waited
                loss, terms = self._train_batch(batch, steps_per_epoch, len(batches))
                stats["loss_sum"] += loss
                for name, value in terms.items():
                    stats["terms"][name] = stats["terms"].get(name, 0.0) + value
                stats["batches"] += 1
                bar.update(task, advance=1, description=f"epoch {position.epoch + 1}/{config.epochs} "
                           f"loss {stats['loss_sum'] / stats['batches']:.4f}")
                if self._at_step_boundary(len(batches)) and self._checkpoint_due():
                    self._save_last()
                    if self._stopping():
                        return
                waited = time.perf_counter()
        self._finish_epoch(stats)

    def _train_batch(self, batch: TrainingBatch, steps_per_epoch: int,
                     n_batches: int) -> tuple[float, dict[str, float]]:
        config, position, device = self.config, self.position, self.world.device
        torch.manual_seed(step_seed(config.seed, position.epoch, position.batch))
        self.network.train()
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            outputs = self.network(batch.waveforms.to(device), batch.lengths.to(device), batch.captions)
            loss, terms = self._loss(outputs, batch)
        self.scaler.scale(loss * self.world.size / config.grad_accumulation).backward()
        position.batch += 1
        if self._at_step_boundary(n_batches):
            self._optimizer_step(learning_rate(position.step, steps_per_epoch, config))
        return float(loss.detach()), terms

    def _loss(self, outputs: tuple, batch: TrainingBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of the loss terms on the global batch, and each (unweighted) term."""
        world, device, config = self.world, self.world.device, self.config
        audio, text = gather(outputs[0].float(), world), gather(outputs[1].float(), world)
        ids = gather(batch.clip_ids.to(device), world)
        pairs, partners = gather(batch.pairs.to(device), world), gather(batch.partners.to(device), world)
        weighted = {"contrastive": config.contrastive_weight}
        with torch.set_grad_enabled(torch.is_grad_enabled() and config.contrastive_weight != 0):
            terms = {"contrastive": losses.multi_positive_infonce(audio, text, ids, ids, self.model.temperature)}
        if self.teachers is not None:
            teacher_similarity = self.teachers(pairs, partners).to(device)
            terms["distillation"] = losses.distillation_loss(audio @ text.T / self.model.temperature,
                                                             teacher_similarity, config.distill_temperature)
            weighted["distillation"] = config.distill_weight
        if self.cluster_labels is not None:
            labels = torch.where(partners >= 0, -1, self.cluster_labels[pairs])
            terms["cluster"] = losses.cluster_loss(gather(outputs[2].float(), world), gather(outputs[3].float(), world),
                                                   labels)
            weighted["cluster"] = config.clusters.weight
        loss = sum(weight * terms[name] for name, weight in weighted.items() if weight != 0)
        return loss, {name: float(value.detach()) for name, value in terms.items()}

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
        record = {"train_loss": stats["loss_sum"] / batches,
                  **{f"train_{name}": value / batches for name, value in stats["terms"].items()},
                  "lr": self.optimizer.param_groups[0]["lr"],
                  "step": position.step, "seconds": round(seconds, 3),
                  "data_wait_fraction": round(stats["wait_s"] / max(seconds, 1e-9), 4), **metrics}
        improved = self.world.is_main and metrics.get(self.config.monitor, -math.inf) > position.best
        if improved:
            position.best = metrics[self.config.monitor]
        position.epoch, position.batch = position.epoch + 1, 0
        if self.world.is_main:
            _report_epoch(position.epoch, self.config.epochs, record, improved)
            if improved:
                self._save_best(record)
            self._save_last()
            self.registry.log_epoch(self.run_id, position.epoch - 1, record)
            self._write_metrics_log()
            _log_tensorboard(self.directory / "tensorboard", position.epoch - 1, record)
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


def _log_tensorboard(folder: Path, epoch: int, record: dict) -> None:
    """Also write the epoch's numbers as TensorBoard scalars when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(folder)) as writer:
        for key, value in record.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, epoch)


def _report_epoch(epoch: int, epochs: int, record: dict, improved: bool) -> None:
    """One line per epoch on stderr: loss, validation metrics, time, data-loader wait."""
    metrics = " ".join(f"{key} {record[key]:.4f}" for key in ("R@1", "R@10", "mAP@10") if key in record)
    stderr_console.print(f"epoch {epoch}/{epochs}  loss {record['train_loss']:.4f}  {metrics}  "
                         f"{record['seconds']:.1f} s  data wait {100 * record['data_wait_fraction']:.1f}%"
                         f"{'  [green]best[/]' if improved else ''}", highlight=False)


def initialise_from(model: DualEncoder, registry: Registry, run: str) -> None:
    """Load a run's best weights into ``model``; cluster heads (new, or of other clusters there) start fresh."""
    record = registry.file(run, "checkpoint", "best")
    state = torch.load(record.path, map_location="cpu", weights_only=True)["model"]
    state = {key: value for key, value in state.items() if "cluster_head" not in key}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        reason = str(err).splitlines()[-1].strip()
        raise UserError(f"init_from {record.run_id}: its weights do not fit this model ({reason}); "
                        "use the same model.* settings as that run") from None
    if unexpected or any("cluster_head" not in key for key in missing):
        first = (unexpected or [key for key in missing if "cluster_head" not in key])[0]
        raise UserError(f"init_from {record.run_id}: its weights do not fit this model (parameter {first}); "
                        "use the same model.* settings as that run")


def register_run(registry: Registry, config: TrainConfig) -> str:
    """Register a new run, its ``init_from``/``distill_from`` references resolved to full run ids."""
    config = dataclasses.replace(config, init_from=registry.resolve(config.init_from) if config.init_from else None,
                                 distill_from=[registry.resolve(teacher) for teacher in config.distill_from])
    return registry.create_run(config.name, config.to_dict(), data_fingerprint=None, seed=config.seed)


def train_new(workdir: str | Path, config: TrainConfig, world: World | None = None) -> dict:
    """Register and run a new training run; returns its summary."""
    world = world or init_world()
    registry = Registry(workdir)
    run_id = share_from_main(register_run(registry, config) if world.is_main else None, world)
    return continue_run(registry, run_id, world, max_steps=config.max_steps)


def resume(workdir: str | Path, reference: str, max_steps: int | None = None, world: World | None = None) -> dict:
    """Continue a run exactly where it stopped: from its ``last`` checkpoint, or from the start when it
    failed or died before writing one (optionally to a new step limit)."""
    registry = Registry(workdir)
    return continue_run(registry, registry.resolve(reference), world or init_world(), max_steps)


def continue_run(registry: Registry, run_id: str, world: World, max_steps: int | None) -> dict:
    """Train a registered run with its stored config: from its ``last`` checkpoint, or from the start without one.

    Whatever fails from here on (data, weights, the model, training itself) leaves the run ``failed`` with
    its one-line reason in the registry, and a Ctrl-C that is not a graceful stop leaves it ``interrupted``.
    """
    heartbeat = registry.claim(run_id) if world.is_main else None
    try:
        run = registry.run(run_id)
        config = from_dict(run["config"], source=f"run {run_id}")
        config.max_steps = max_steps
        trainer = Trainer(config, registry, run_id, world)
        if world.is_main and run["data_fingerprint"] is None:
            registry.set_fingerprint(run_id, trainer.pairs.fingerprint)
        if any(record.kind == "checkpoint" and record.tag == "last" for record in run["files"]):
            trainer.resume_from(registry.file(run_id, "checkpoint", "last").path)
        position = trainer.run()
    except BaseException as err:
        if heartbeat is not None:
            heartbeat.stop()
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            registry.set_status(run_id, status, reason=failure_reason(err))
        raise
    finished = position.epoch >= trainer.config.epochs
    status = "finished" if finished else "stopped"
    if heartbeat is not None:
        heartbeat.stop()
        registry.set_status(run_id, status)
    return {"run": run_id, "status": status, "epoch": position.epoch, "step": position.step,
            f"best_{trainer.config.monitor}": position.best if position.best > -math.inf else None}


def failure_reason(err: BaseException) -> str:
    """One line saying why a run ended: a UserError's message, else the exception's type and first line."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted by Ctrl-C; continue with `dcase-t6 train --resume RUN`"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}".rstrip(": ")


def autocast_dtype(precision: str, device: torch.device, say: bool = False) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: fp16 mixed precision on a GPU (the baseline),
    bf16 on a GPU or CPU, None (fp32) for fp32 or for fp16 on a CPU (which has no fp16 training kernels)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    if precision == "fp16" and say:
        stderr_console.print("precision fp16 needs a GPU: training in fp32 on the CPU (bf16 works on CPUs too)",
                             highlight=False)
    return None
