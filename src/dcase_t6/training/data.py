"""The training data: the (clip, caption) pairs, the seeded batches of an epoch and this process's share of each.

All randomness of a batch (order, crop offsets, caption/audio augmentation) is derived from (seed, epoch,
batch), so the batches of a resumed run are the batches it would have seen without stopping. Since the
batches of an epoch are themselves a function of (seed, epoch), the window read of a pair's clip is a
function of (seed, epoch, pair): a random ``max_samples`` window of a longer clip, a new one each epoch
(the DCASE baseline's 30 s windows of WavCaps), read by ``AudioCache.clip`` from any storage mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.data.audio_cache import AudioCache, drop_absent
from dcase_t6.data.parallel import torch_worker_dies_with_parent
from dcase_t6.data.split_index import read_index
from dcase_t6.embedding.encode import pad_batch
from dcase_t6.training.augmentation import NO_PAIR, PairAugmenter, mix_clips
from dcase_t6.training.config import TrainConfig
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


def load_pairs(config: TrainConfig, store: AudioCache | None = None, say: bool = False) -> CaptionPairs:
    """Read the training split of every configured dataset from the prepared split indexes.

    Args:
        config: the run's config (``data_root``, ``datasets``, ``train_split``).
        store: the audio cache; the pairs of clips it skipped (unreadable at prepare time) are left out, the
            same ones every time the cache is the same (see ``audio_cache.drop_absent``).
        say: print the warning line about the pairs left out (the main process).

    Returns:
        The pairs in index order, with a SHA-256 fingerprint of their paths and captions (of the pairs kept).
    """
    frames = [_training_rows(config, dataset) for dataset in config.datasets]
    if store is not None:
        frames = [drop_absent(store, frame, f"{frame['dataset'].iloc[0]} {frame['split'].iloc[0]}", say=say)[0]
                  for frame in frames]
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
    """Hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def epoch_batches(n_pairs: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The seeded order of an epoch, cut into batches (a last batch of fewer than 2 pairs is dropped).

    Args:
        n_pairs: number of training pairs.
        batch_size: pairs per (global) batch.
        seed: the run's seed.
        epoch: the epoch (0-based).

    Returns:
        One array of pair indices per batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
    batches = [order[start:start + batch_size] for start in range(0, n_pairs, batch_size)]
    return [batch for batch in batches if len(batch) >= 2]


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

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch`` (see ``epoch_batches``); a UserError when there is not one.

        Args:
            epoch: the epoch (0-based).

        Returns:
            One array of pair indices per batch.
        """
        batches = epoch_batches(len(self.pairs.captions), self.batch_size, self.seed, epoch)
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
        return BatchSource(self.pairs, batches, self.store, self.augmenter, self.max_samples, self.seed, epoch,
                           self.world)

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
                                           persistent_workers=False,
                                           worker_init_fn=torch_worker_dies_with_parent if self.workers else None)
