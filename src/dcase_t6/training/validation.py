"""Validation during training: R@K/mAP@K of the model on the configured validation split, every process
embedding its share of the clips and captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dcase_t6.common.errors import UserError
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.split_index import Split
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text, similarity
from dcase_t6.embedding.sharded import gather_rows
from dcase_t6.models import DualEncoder
from dcase_t6.retrieval.directions import prefixed
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import single_relevant
from dcase_t6.retrieval.matrices import SimilarityMatrix
from dcase_t6.runs.world import World


class Validator:
    """Scores a model on a validation split, single-relevant: each caption's target is its own clip.

    Clips are cut to ``max_samples`` as in training and ``embed``, so the scores recorded for the best epoch
    are what ``embed`` + ``evaluate`` give for the best checkpoint. Under torchrun every process embeds a
    contiguous share of whole batches of the clips and of the captions (``batch_shard``), the main process
    gathers them in rank order and scores: the batches are those of one process, so are the scores.
    """

    def __init__(self, split: Split, store: AudioCache, max_samples: int, batch_size: int, world: World):
        self.split, self.store, self.max_samples, self.world = split, store, max_samples, world
        self.settings = EncodeSettings(batch_size, world.device)

    def __call__(self, model: DualEncoder) -> dict[str, float]:
        """The model's validation scores (a collective: every process calls it).

        Args:
            model: the (unwrapped) model; it is left in eval mode.

        Returns:
            On the main process R@1, R@5, R@10, mAP@10, ... by name (text to audio; ``monitor`` picks among
            these), and the same audio to text as ``a2t/R@1`` ... ``a2t/mAP@16`` (logged, never monitored);
            an empty dict on the others.
        """
        split, world, batch_size = self.split, self.world, self.settings.batch_size
        truth = single_relevant(split.queries, split.query_files, split.split)
        if truth is None:  # every process fails alike, none waits for the others
            raise UserError(f"validation split {split.split}: no caption of a cached clip to validate with; "
                            "set validation_split to a split with captions, or null")
        main_buffers(model, world)
        clips = batch_shard(len(split.paths), batch_size, world)
        captions = batch_shard(len(split.queries), batch_size, world)
        paths = [Path(p) for p in split.paths[clips.start:clips.stop]]
        audio = gather_rows(embed_audio(model, Clips(paths, self.store.clip, self.max_samples), self.settings)
                            if paths else _NONE, world)
        text = gather_rows(embed_text(model, split.queries[captions.start:captions.stop], self.settings)
                           if len(captions) else _NONE, world)
        if not world.is_main:
            return {}
        matrix = SimilarityMatrix(split.queries, split.files, similarity(text, audio))
        result = evaluate(matrix, truth, both_directions=True)
        return {**result.scores, **prefixed(result.audio_to_text.scores)}


_NONE = np.zeros((0, 0), dtype=np.float32)  # the vectors of an empty share


def batch_shard(count: int, batch_size: int, world: World) -> range:
    """This process's contiguous share of ``count`` rows in whole batches of ``batch_size`` (the last one
    shorter): shares differ by at most one batch, and each starts where a batch of one process would."""
    batches = world.shard(range((count + batch_size - 1) // batch_size))
    return range(min(count, batches.start * batch_size), min(count, batches.stop * batch_size))


def main_buffers(model: torch.nn.Module, world: World) -> None:
    """Give every process the main process's buffers (batch-norm statistics): DDP broadcasts them before each
    training forward, so after the epoch's last one each process holds those of its own share."""
    if world.size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)
