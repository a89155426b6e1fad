"""The training data: the (clip, caption) pairs, the seeded batches of an epoch and this process's share of each.

All randomness of a batch (order, crop offsets, caption/audio augmentation) is derived from (seed, epoch,
batch), so the batches of a resumed run are the batches it would have seen without stopping. Since the
batches of an epoch are themselves a function of (seed, epoch), the window read of a pair's clip is a
function of (seed, epoch, pair): a random ``max_samples`` window of a longer clip, a new one each epoch
(the DCASE baseline's 30 s windows of WavCaps), read by ``AudioCache.clip`` from any storage mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.cached_splits import drop_absent
from dcase_t6.data.parallel import torch_worker_dies_with_parent
from dcase_t6.data.split_index import read_index
from dcase_t6.embedding.encode import pad_batch
from dcase_t6.runs.config import TrainConfig
from dcase_t6.training.augmentation import NO_PAIR, PairAugmenter, mix_clips
from dcase_t6.training.distributed import World

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

    def weighted_groups(self, weights: dict[str, float]) -> list[tuple[np.ndarray, float]] | None:
        """The pairs of each dataset with its weight (``dataset_weights``; 1 when not named), or None when every
        weight is 1 (each pair once per epoch, the unweighted order)."""
        datasets = np.array([name.split("/", 1)[0] for name in self.clip_names.tolist()])[self.clip_ids]
        names = list(dict.fromkeys(datasets.tolist()))
        if all(weights.get(name, 1.0) == 1.0 for name in names):
            return None
        return [(np.flatnonzero(datasets == name), float(weights.get(name, 1.0))) for name in names]


def load_pairs(config: TrainConfig, store: AudioCache | None = None, reporter: Reporter = SILENT) -> CaptionPairs:
    """Read the training split of every configured dataset from the prepared split indexes.

    Args:
        config: the run's config (``data_root``, ``datasets``, ``train_split``).
        store: the audio cache; the pairs of clips it skipped (unreadable at prepare time) are left out, the
            same ones every time the cache is the same (see ``cached_splits.drop_absent``).
        reporter: told about the pairs left out.

    Returns:
        The pairs in index order, with a SHA-256 fingerprint of their paths and captions (of the pairs kept).
    """
    indexes = {dataset: read_index(config.data_root, dataset) for dataset in config.datasets}
    splits = training_splits(config, {dataset: sorted(set(index["split"])) for dataset, index in indexes.items()})
    frames = [_training_rows(indexes[dataset], splits[dataset]) for dataset in config.datasets]
    if store is not None:
        frames = [drop_absent(store, frame, f"{dataset} {'+'.join(splits[dataset])}", reporter)[0]
                  for dataset, frame in zip(config.datasets, frames)]
    paths, captions, clip_keys = [], [], []
    for frame in frames:
        paths += [Path(p) for p in frame["path"]]
        captions += frame["caption"].tolist()
        clip_keys += list(zip(frame["dataset"], frame["file_name"]))
    clip_names, clip_ids = np.unique(np.array([f"{d}/{f}" for d, f in clip_keys]), return_inverse=True)
    digest = sha256_of_text("\n".join(f"{p}\t{c}" for p, c in zip(paths, captions)))
    return CaptionPairs(paths, captions, clip_ids.astype(np.int64), clip_names, digest)


def _training_rows(index, splits: list[str]):
    """A dataset's rows of its training splits (see ``training_splits``), in index order."""
    return index[index["split"] == splits[0]] if len(splits) == 1 else index[index["split"].isin(splits)]


def training_splits(config: TrainConfig, available: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The splits each of ``config.datasets`` trains on.

    Every name of ``train_split`` applies to each dataset that has that split; ``DATASET/SPLIT`` applies to that
    dataset only. A dataset that has none of them trains on its ``train`` split (AudioCaps, WavCaps, a captions
    set without splits), so ``train_split: [development-training, development-validation]`` trains on Clotho's
    development and validation splits and on AudioCaps' ``train``.

    Args:
        config: the run's config (``data_root``, ``datasets``, ``train_split``).
        available: each dataset's splits (default: read from the prepared split indexes).

    Returns:
        The dataset's splits in ``train_split``'s order, per dataset.

    Raises:
        UserError: a dataset without any of its splits nor ``train``, a ``DATASET/SPLIT`` the dataset lacks, or a
            name that no dataset has (a typo would otherwise be ignored).
    """
    if available is None:
        available = {dataset: sorted(set(read_index(config.data_root, dataset)["split"]))
                     for dataset in config.datasets}
    chosen, used = {}, set()
    for dataset, splits in available.items():
        wanted = []
        for name in config.train_split:
            owner, slash, split = name.rpartition("/")
            if slash and owner != dataset:
                continue
            if split in splits:
                wanted.append(split)
                used.add(name)
            elif slash:
                raise UserError(f"{config.data_root}: train_split {name!r}: dataset {dataset!r} has no split {split!r} "
                                f"(it has {', '.join(splits)}); fix train_split")
        if not wanted and EXTERNAL_TRAIN_SPLIT in splits:
            wanted = [EXTERNAL_TRAIN_SPLIT]
        if not wanted:
            raise UserError(f"{config.data_root}: dataset {dataset!r} has none of the splits "
                            f"{', '.join(config.train_split)} nor {EXTERNAL_TRAIN_SPLIT!r} (it has "
                            f"{', '.join(splits)}); set train_split")
        chosen[dataset] = list(dict.fromkeys(wanted))
    unused = [name for name in config.train_split if name not in used and "/" not in name]
    if unused:
        raise UserError(f"{config.data_root}: train_split {unused[0]!r} is a split of none of the datasets "
                        f"{', '.join(config.datasets)}; fix train_split (their splits: "
                        f"{'; '.join(f'{d}: ' + ', '.join(s) for d, s in available.items())})")
    return chosen


def sha256_of_text(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def epoch_batches(n_pairs: int, batch_size: int, seed: int, epoch: int,
                  groups: list[tuple[np.ndarray, float]] | None = None) -> list[np.ndarray]:
    """The seeded order of an epoch, cut into batches (a last batch of fewer than 2 pairs is dropped).

    Args:
        n_pairs: number of training pairs.
        batch_size: pairs per (global) batch.
        seed: the run's seed.
        epoch: the epoch (0-based).
        groups: ``dataset_weights`` as (pairs, weight) per dataset (``CaptionPairs.weighted_groups``), or None:
            every pair once. A weight w draws each pair of its group int(w) times plus a seeded random
            round(frac(w) * n) of its n pairs once more, so its share of the epoch is w * n pairs (to half a pair)
            and every pair is drawn w times per epoch on average; the draws are a function of (seed, epoch).

    Returns:
        One array of pair indices per batch.
    """
    order = epoch_order(n_pairs, seed, epoch, groups)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return [batch for batch in batches if len(batch) >= 2]


def epoch_order(n_pairs: int, seed: int, epoch: int,
                groups: list[tuple[np.ndarray, float]] | None = None) -> np.ndarray:
    """The seeded order of an epoch's pairs (``epoch_batches`` cuts it into batches; so does hard-negative mining,
    ``negatives.mined_batches``): a permutation, or with ``groups`` each group's draws permuted together."""
    return np.random.default_rng([seed, epoch]).permutation(n_pairs) if groups is None else (
        _weighted_order(groups, np.random.default_rng([seed, epoch, 2])))


def _weighted_order(groups: list[tuple[np.ndarray, float]], rng: np.random.Generator) -> np.ndarray:
    drawn = []
    for pairs, weight in groups:
        whole, part = divmod(weight, 1.0)
        drawn += [np.tile(pairs, int(whole)),
                  rng.choice(pairs, size=int(np.floor(part * len(pairs) + 0.5)), replace=False)]
    return rng.permutation(np.concatenate(drawn).astype(np.int64))


class HardNegativeBatches(Protocol):
    """Cuts an epoch's order into batches with mined hard negatives (``training.miner.BatchMiner``)."""

    def batches(self, epoch: int, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """The global batches of ``epoch`` from its seeded ``order`` (every process must call it, in step)."""
        ...


@dataclass
class TrainingBatch:
    """This process's share of a batch: audio, (augmented) captions, clip ids (a mixed pair gets a new id,
    -1 - its position in the batch), the training pairs they come from and the mixed-in partner pairs.

    A process whose share is empty (a batch of fewer pairs than processes) gets one stand-in row of audio and
    caption and no ids: the model's outputs are cut to ``len(pairs)`` rows before the gather (see
    ``distributed.Share``)."""

    waveforms: torch.Tensor
    lengths: torch.Tensor
    captions: list[str]
    clip_ids: torch.Tensor
    pairs: torch.Tensor
    partners: torch.Tensor

    def pin_memory(self) -> TrainingBatch:
        """The batch with its tensors in page-locked memory (what a DataLoader with ``pin_memory`` calls), so the
        copies to the GPU can run while the step computes (``non_blocking``)."""
        return TrainingBatch(self.waveforms.pin_memory(), self.lengths.pin_memory(), self.captions,
                             self.clip_ids.pin_memory(), self.pairs.pin_memory(), self.partners.pin_memory())


class BatchSource(torch.utils.data.Dataset):
    """The batches of one epoch for this process: random crops of the clips, augmented as configured.

    ``data`` gives the pairs, the audio cache, the augmenter, the crop length, the seed and the processes;
    ``batches`` are the epoch's global batches (``TrainingData.batches(epoch)``).
    """

    def __init__(self, data: TrainingData, epoch: int, batches: list[np.ndarray]):
        self.pairs, self.store, self.augmenter = data.pairs, data.store, data.augmenter
        self.max_samples, self.seed, self.world = data.max_samples, data.seed, data.world
        self.epoch, self.batches = epoch, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> TrainingBatch:
        batch = self.batches[index]
        offsets = np.random.default_rng([self.seed, self.epoch, index]).random(len(batch))
        plan = self.augmenter.plan(batch, np.random.default_rng([self.seed, self.epoch, index, 1]))
        clip_ids = np.where(plan.mixed, -1 - np.arange(len(batch)), self.pairs.clip_ids[batch])
        share = self.world.share(len(batch))
        rows = np.array(share.rows, dtype=np.int64)
        kept = rows[:share.kept]
        clips = [self._clip(batch[row], offsets[row], plan.partners[row], plan.partner_offsets[row]) for row in rows]
        waveforms, lengths = pad_batch(clips)
        return TrainingBatch(waveforms, lengths, [plan.captions[row] for row in rows], torch.from_numpy(clip_ids[kept]),
                             torch.from_numpy(batch[kept]), torch.from_numpy(plan.partners[kept]))

    def _clip(self, pair: int, offset: float, partner: int, partner_offset: float) -> np.ndarray:
        clip = self.store.clip(self.pairs.paths[pair], self.max_samples, offset)
        if partner == NO_PAIR:
            return clip
        return mix_clips(clip, self.store.clip(self.pairs.paths[partner], self.max_samples, partner_offset))


@dataclass(frozen=True)
class TrainingData:
    """Everything the loop reads batches from: the pairs, the audio cache, the augmenter and the batch settings."""

    pairs: CaptionPairs
    store: AudioCache
    augmenter: PairAugmenter
    max_samples: int
    batch_size: int
    seed: int
    workers: int
    world: World
    data_root: str
    dataset_weights: dict[str, float] = field(default_factory=dict)
    negatives: HardNegativeBatches | None = None  # config section negatives (mining); None: the order cut in batches

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch`` (see ``epoch_batches``, with mining ``negatives``); a UserError when
        there is not one.

        Args:
            epoch: the epoch (0-based).

        Returns:
            One array of pair indices per batch.
        """
        groups = self.pairs.weighted_groups(self.dataset_weights)
        if self.negatives is not None:
            order = epoch_order(len(self.pairs.captions), self.seed, epoch, groups)
            batches = self.negatives.batches(epoch, order, self.batch_size)
        else:
            batches = epoch_batches(len(self.pairs.captions), self.batch_size, self.seed, epoch, groups)
        if not batches:
            raise UserError(f"{self.data_root}: the training split has fewer than 2 caption pairs; prepare more data")
        return batches

    def source(self, epoch: int, batches: list[np.ndarray]) -> BatchSource:
        """This process's share of every batch of ``epoch``.

        Args:
            epoch: the epoch (0-based).
            batches: its global batches, from ``batches(epoch)``.

        Returns:
            A dataset of ``TrainingBatch``, one item per batch.
        """
        return BatchSource(self, epoch, batches)

    def loader(self, epoch: int, batches: list[np.ndarray], start: int) -> torch.utils.data.DataLoader:
        """A loader of the batches of ``epoch`` from batch ``start`` on (``workers`` loader processes).

        Args:
            epoch: the epoch (0-based).
            batches: its global batches, from ``batches(epoch)``.
            start: the first batch to load (the batches done before a resume are skipped).

        Returns:
            A DataLoader yielding ``TrainingBatch`` items.
        """
        remaining = torch.utils.data.Subset(self.source(epoch, batches), range(start, len(batches)))
        return torch.utils.data.DataLoader(remaining, batch_size=None, num_workers=self.workers,
                                           persistent_workers=False, pin_memory=self.world.device.type == "cuda",
                                           worker_init_fn=torch_worker_dies_with_parent if self.workers else None)
