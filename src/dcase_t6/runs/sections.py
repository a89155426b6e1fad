"""The sections of the training configuration (``TrainConfig``'s nested mappings, ``section.key`` on the command
line): caption augmentation, audio mixing, cluster classification, fine-tuning depth and hard negatives. Their
ranges and the rules that tie them to other keys are checked in ``runs.config``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CaptionAugmentation:
    """Caption changes drawn per training pair (see ``dcase_t6.augmentation``)."""

    deletion_p: float = 0.0
    synonym_p: float = 0.0
    synonyms_file: str | None = None
    extra_captions_file: str | None = None
    extra_captions_p: float = 0.0


@dataclass
class AudioMix:
    """Mix a pair's clip with a partner clip and use their merged caption, with probability ``p``."""

    p: float = 0.0
    merged_captions_file: str | None = None


@dataclass
class Clusters:
    """Auxiliary cluster classification (off while ``method`` is null: kmeans, hdbscan or bertopic) on caption
    embeddings from ``source`` (init, run:RUN, model:NAME, sentence:NAME, e5[:PATH]); see
    ``dcase_t6.training.clustering``."""

    method: str | None = None
    count: int = 32
    min_cluster_size: int = 10
    source: str = "init"
    weight: float = 0.05


@dataclass
class FineTune:
    """Which encoder blocks train, at which learning rates (``training.finetuning``); defaults: all, at ``lr``."""

    audio_frozen_blocks: int = 0  # the audio encoder's embeddings and first N blocks are not trained; -1: none of it
    text_frozen_blocks: int = 0  # the same for the text transformer (model.freeze_text freezes it whole)
    layer_decay: float = 1.0  # an encoder's block k levels below its top trains at its lr * layer_decay**k; 1: off
    lr_audio: float | None = None  # the audio encoder's learning rate (its top block's); null: lr
    lr_text: float | None = None  # the text transformer's (its top layer's); null: lr
    lr_heads: float | None = None  # projections, temperature and cluster heads; null: lr
    no_decay_bias_norm: bool = False  # biases, norms and other 1-d (or scalar) parameters get no weight decay


@dataclass
class Negatives:
    """Hard negatives (``training.negatives``): batches of mined neighbours and HN-NCE weighting; off by default."""

    mining: str = "none"  # none, run (source's registered embeddings of the training split) or self (the model's)
    source: str | None = None  # with mining run: the run whose embeddings are mined
    share: float = 0.5  # the part of each batch filled by mined groups (a random anchor and its neighbours)
    neighbours: int = 8  # k: each pair's nearest pairs (a mined group grows through them, breadth first)
    refresh_epochs: int = 1  # with mining self: the model embeds the training pairs again every N epochs
    hardness: float = 0.0  # HN-NCE beta: a negative weighs exp(beta * logit), mean weight 1; 0: the baseline loss
