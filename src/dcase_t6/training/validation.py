"""Validation during training: R@K/mAP@K of the model on the configured validation split."""

from __future__ import annotations

from pathlib import Path

import torch

from dcase_t6.common.errors import UserError
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.split_index import Split
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text, similarity
from dcase_t6.models import DualEncoder
from dcase_t6.retrieval.directions import prefixed
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import single_relevant
from dcase_t6.retrieval.matrices import SimilarityMatrix


class Validator:
    """Scores a model on a validation split, single-relevant: each caption's target is its own clip.

    Clips are cut to ``max_samples`` as in training and ``embed``, so the scores recorded for the best epoch
    are what ``embed`` + ``evaluate`` give for the best checkpoint.
    """

    def __init__(self, split: Split, store: AudioCache, max_samples: int, batch_size: int, device: torch.device):
        self.split, self.store, self.max_samples = split, store, max_samples
        self.settings = EncodeSettings(batch_size, device)

    def __call__(self, model: DualEncoder) -> dict[str, float]:
        """The model's validation scores.

        Args:
            model: the (unwrapped) model; it is left in eval mode.

        Returns:
            R@1, R@5, R@10, mAP@10, ... by name (text to audio; ``monitor`` picks among these), and the same
            audio to text as ``a2t/R@1`` ... ``a2t/mAP@16`` (logged, never monitored).
        """
        split = self.split
        paths = [Path(p) for p in split.paths]
        audio = embed_audio(model, Clips(paths, self.store.clip, self.max_samples), self.settings)
        text = embed_text(model, split.queries, self.settings)
        matrix = SimilarityMatrix(split.queries, split.files, similarity(text, audio))
        truth = single_relevant(split.queries, split.query_files, split.split)
        if truth is None:
            raise UserError(f"validation split {split.split}: no caption of a cached clip to validate with; "
                            "set validation_split to a split with captions, or null")
        result = evaluate(matrix, truth, both_directions=True)
        return {**result.scores, **prefixed(result.audio_to_text.scores)}
