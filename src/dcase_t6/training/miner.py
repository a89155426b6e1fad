"""Where the hard negatives of a run come from and when (config section ``negatives``; the batches themselves:
``training.negatives``).

``mining: run`` mines the registered embeddings of the training split of run ``negatives.source`` (embedded
once with that run's best checkpoint when missing, as distillation's teachers are: ``distillation``); the
neighbours are found once, when training is assembled. ``mining: self`` mines the model's own embeddings of the
training pairs (eval mode, no gradient, the first ``audio_seconds`` of each clip), made at the start of every
``refresh_epochs``-th epoch (0, N, 2N, ...): each process embeds its share of the clips and captions and finds
the neighbours of its share of the pairs, and the shares are gathered, so every process holds the same table.
The main process stores that table in the run's folder (``negatives.npz``, with the epoch it was mined at): a
run resumed in the middle of a refresh period reads it instead of mining the model as it is now, so its batches
are those of the uninterrupted run.

Every epoch the processes compare a digest of their batches (one all_reduce): a process that drew other batches
than the main one stops the run with an error instead of training on a mixed batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text
from dcase_t6.models import DualEncoder
from dcase_t6.runs.config import TrainConfig
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.training.data import CaptionPairs
from dcase_t6.training.distillation import ensure_embeddings, teacher_vectors
from dcase_t6.training.distributed import World, gather, share_from_main
from dcase_t6.training.negatives import (
    Neighbours,
    distinct_captions,
    mined_batches,
    nearest_neighbours,
    pair_groups,
    pair_vectors,
)

STORED = "negatives.npz"  # in the run's folder: the table of mining self, for a resume


@dataclass(frozen=True)
class MiningInputs:
    """What a miner reads: the run's ``config`` and ``registry``, its folder (``run_dir``), the training
    ``pairs``, the processes (``world``) and the main process's ``reporter``."""

    config: TrainConfig
    registry: RunLookup
    run_dir: Path
    pairs: CaptionPairs
    world: World
    reporter: Reporter = SILENT


@dataclass(frozen=True)
class ModelSource:
    """The model that ``mining: self`` embeds the pairs with: the (unwrapped) ``model``, the audio ``store``, the
    samples of each clip it sees (``max_samples``) and clips or captions per forward pass (``batch_size``)."""

    model: DualEncoder
    store: AudioCache
    max_samples: int
    batch_size: int


def build_miner(inputs: MiningInputs, model: ModelSource) -> BatchMiner | None:
    """The run's miner (None while ``negatives.mining`` is none); with ``mining: run`` its neighbours are found here.

    Args:
        inputs: the run and its pairs.
        model: the model, for ``mining: self``.

    Returns:
        The miner that cuts every epoch's order into batches.
    """
    negatives = inputs.config.negatives
    if negatives.mining == "none":
        return None
    if negatives.mining == "run":
        miner = BatchMiner(inputs, lambda: run_vectors(inputs), refresh_epochs=None)
        miner.neighbours(0)
        return miner
    return BatchMiner(inputs, lambda: model_vectors(model, inputs.pairs, inputs.world, inputs.reporter),
                      refresh_epochs=negatives.refresh_epochs)


class BatchMiner:
    """Every epoch's batches with mined groups (``negatives.mined_batches``), from neighbours found on ``vectors``
    once (``refresh_epochs`` None) or at every ``refresh_epochs``-th epoch."""

    def __init__(self, inputs: MiningInputs, vectors: Callable[[], torch.Tensor], refresh_epochs: int | None):
        self.inputs, self.vectors, self.refresh_epochs = inputs, vectors, refresh_epochs
        self.groups = pair_groups(inputs.pairs)
        self._mined_at: int | None = None
        self._table: np.ndarray | None = None

    def batches(self, epoch: int, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """The global batches of ``epoch`` (every process calls this at the epoch's start).

        Args:
            epoch: the epoch (0-based).
            order: its seeded order (``data.epoch_order``).
            batch_size: pairs per global batch.

        Returns:
            One array of pair indices per batch.
        """
        config, world = self.inputs.config, self.inputs.world
        drawn = mined_batches(order, self.neighbours(epoch), batch_size, config.negatives.share,
                              np.random.default_rng([config.seed, epoch, 3]))
        digest = drawn.digest()
        check_same_batches(digest, world, epoch)
        self.inputs.reporter.info(f"negatives: epoch {epoch + 1}: {drawn.mined_fraction():.0%} of the pairs drawn "
                                  f"in mined groups (batches {digest})")
        return drawn.batches

    def neighbours(self, epoch: int) -> Neighbours:
        """The neighbour table the batches of ``epoch`` are mined from (found again at a refresh epoch)."""
        mined_at = 0 if self.refresh_epochs is None else epoch - epoch % self.refresh_epochs
        if self._table is None or self._mined_at != mined_at:
            self._table, self._mined_at = self._find(epoch, mined_at), mined_at
        return Neighbours(self._table, self.groups)

    def _find(self, epoch: int, mined_at: int) -> np.ndarray:
        inputs, world, k = self.inputs, self.inputs.world, self.inputs.config.negatives.neighbours
        stored = self._stored(mined_at) if world.is_main and self.refresh_epochs is not None else None
        if share_from_main(stored is not None, world):
            return share_from_main(stored, world)
        if epoch != mined_at:
            inputs.reporter.warning(f"negatives: no stored neighbours of epoch {mined_at + 1} ({STORED}): mined from "
                                    "the model as it is now; these batches differ from an uninterrupted run's")
        table = nearest_neighbours(self.vectors(), self.groups, k, world)
        if world.is_main and self.refresh_epochs is not None:
            with atomic_path(inputs.run_dir / STORED) as path, open(path, "wb") as handle:
                np.savez(handle, epoch=mined_at, neighbours=table, fingerprint=inputs.pairs.fingerprint)
        source = "the model" if self.refresh_epochs is not None else f"run {inputs.config.negatives.source}"
        inputs.reporter.info(f"negatives: the {table.shape[1]} nearest of {len(table)} training pairs, by "
                             f"{source}'s embeddings (epoch {epoch + 1})")
        return table

    def _stored(self, mined_at: int) -> np.ndarray | None:
        """The stored table when it was mined at ``mined_at`` from these pairs with this k."""
        path = self.inputs.run_dir / STORED
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            table = stored["neighbours"]
            current = (int(stored["epoch"]) == mined_at and str(stored["fingerprint"]) == self.inputs.pairs.fingerprint
                       and table.shape == (len(self.groups.clip_ids),
                                           min(self.inputs.config.negatives.neighbours, len(self.groups.clip_ids) - 1)))
        return table if current else None


def check_same_batches(digest: str, world: World, epoch: int) -> None:
    """Every process drew the batches whose digest is ``digest``, or a RuntimeError on every process."""
    if world.size == 1:
        return
    value = int(digest, 16) - 2**63  # the digest's 64 bits as a signed integer
    highest, lowest = (torch.tensor([value], dtype=torch.long, device=world.device) for _ in range(2))
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    if int(highest) != int(lowest):
        raise RuntimeError(f"negatives: the processes drew different batches for epoch {epoch + 1} (their mined "
                           "neighbours differ); every process must build the same batches")


def run_vectors(inputs: MiningInputs) -> torch.Tensor:
    """The training pairs' points (``negatives.pair_vectors``) by run ``negatives.source``'s registered embeddings
    of the training split (embedded first when missing, each process its share), on ``world.device``."""
    config, world, source = inputs.config, inputs.world, inputs.config.negatives.source
    ensure_embeddings(inputs.registry, source, config, inputs.reporter, world)
    world.wait("write the negatives source's embeddings", "embed them first with `dcase-t6 embed`")
    audio, text = teacher_vectors(inputs.registry, source, config, inputs.pairs.captions, inputs.pairs.clip_names)
    device = world.device
    return pair_vectors(torch.from_numpy(audio).to(device), torch.from_numpy(text).to(device),
                        torch.from_numpy(inputs.pairs.clip_ids).to(device))


def model_vectors(source: ModelSource, pairs: CaptionPairs, world: World, reporter: Reporter = SILENT) -> torch.Tensor:
    """The training pairs' points by the model itself: each process embeds its share of the clips (the first
    ``max_samples`` of each) and of the distinct captions, gathered on ``world.device``."""
    first_pair = np.unique(pairs.clip_ids, return_index=True)[1]
    paths = [pairs.paths[index] for index in first_pair]
    captions, caption_ids = distinct_captions(pairs.captions)
    settings = EncodeSettings(source.batch_size, world.device)
    audio = _shared(lambda rows: embed_audio(source.model, Clips([paths[row] for row in rows], source.store.clip,
                                                                 source.max_samples), settings, reporter,
                                             "negatives: clips"), len(paths), world)
    text = _shared(lambda rows: embed_text(source.model, [captions[row] for row in rows], settings, reporter,
                                           "negatives: captions"), len(captions), world)
    device = world.device
    return pair_vectors(audio, text[torch.from_numpy(caption_ids).to(device)],
                        torch.from_numpy(pairs.clip_ids).to(device))


def _shared(embed: Callable[[list[int]], np.ndarray], count: int, world: World) -> torch.Tensor:
    """``embed`` of every item, each process embedding its share (one stand-in row when it has none), gathered."""
    rows = world.shard(list(range(count)))
    local = torch.from_numpy(embed(rows or [0]))[:len(rows)]
    return gather(local.to(world.device), world)
