"""The dual encoder: audio backbone and text encoder, each projected to a shared space and L2-normalised."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dcase_t6.common.errors import UserError
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.audio import recompute
from dcase_t6.models.text import TextEncoder, TextSettings

# Config key model.projection: the heads from each encoder to the shared space (see ``projection_head``).
PROJECTIONS = ("linear", "mlp")


@dataclass
class ModelConfig:
    """What defines the architecture; stored with every checkpoint so embed can rebuild it."""

    backbone: str = "passt"
    text_model: str = "roberta-large"
    embed_dim: int = 1024
    temperature: float = 0.05
    trainable_temperature: bool = False
    text_max_length: int = 32
    text_dropout: float | None = 0.2
    freeze_text: bool = False
    patchout_t: int = 15
    patchout_f: int = 2
    cluster_classes: int = 0
    pooling: str = "default"  # audio tokens -> one vector: default (each backbone's own), mean, attention
    projection: str = "linear"  # encoder -> shared space: linear (the baseline's) or mlp (WavCaps's two layers)


# Name prefixes of the cluster heads' parameters (present when ``cluster_classes`` > 0).
CLUSTER_HEADS = ("audio_cluster_head.", "text_cluster_head.")


def projection_head(kind: str, input_dim: int, embed_dim: int) -> nn.Module:
    """An encoder's head into the shared space (config key ``model.projection``).

    ``linear``: ``Linear(d -> embed_dim)``, the DCASE 2025 baseline's (parameters ``weight`` and ``bias``, the names
    of every earlier checkpoint). ``mlp``: WavCaps's projection, ``Linear(d -> embed_dim)``, ReLU,
    ``Linear(embed_dim -> embed_dim)`` (parameters ``0.*`` and ``2.*``).
    """
    if kind == "linear":
        return nn.Linear(input_dim, embed_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(input_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
    raise UserError(f"model.projection {kind!r} is not a projection head; choose one of {', '.join(PROJECTIONS)}")


def cluster_head(input_dim: int, classes: int) -> nn.Sequential:
    """The auxiliary classifier: Linear(d -> 3d), ReLU, Linear(3d -> classes)."""
    return nn.Sequential(nn.Linear(input_dim, 3 * input_dim), nn.ReLU(), nn.Linear(3 * input_dim, classes))


class DualEncoder(nn.Module):
    """``encode_audio(waveforms, lengths)`` and ``encode_text(captions)`` give unit vectors in one space.

    With ``cluster_classes`` > 0 (training derives the model config with the class count of the run's
    cluster labels and stores that config in its checkpoints) both embeddings also feed a cluster
    classification head; models without heads load and embed as before.

    ``text_pretrained`` False builds the text transformer from its config and tokenizer only, with random weights
    (no weight download), for a caller that loads every weight right after (``runs import --format baseline``).
    """

    def __init__(self, config: ModelConfig, audio_weights: str | None = "download", text_pretrained: bool = True):
        super().__init__()
        self.config = config
        self.audio = audio_backbones.build(config.backbone, weights=audio_weights, patchout_t=config.patchout_t,
                                           patchout_f=config.patchout_f, pooling=config.pooling)
        text = TextSettings(config.text_model, config.text_max_length, config.text_dropout, config.freeze_text)
        self.text = TextEncoder(text, pretrained=text_pretrained)
        self.audio_projection = projection_head(config.projection, self.audio.output_dim, config.embed_dim)
        self.text_projection = projection_head(config.projection, self.text.output_dim, config.embed_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature)),
                                            requires_grad=config.trainable_temperature)
        if config.cluster_classes:
            self.audio_cluster_head = cluster_head(config.embed_dim, config.cluster_classes)
            self.text_cluster_head = cluster_head(config.embed_dim, config.cluster_classes)
        self._register_load_state_dict_pre_hook(_drop_retired_parameters)

    @property
    def sample_rate(self) -> int:
        return self.audio.sample_rate

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, captions: list[str]):
        """What training (and DDP) calls: both embeddings of a batch of (clip, caption) pairs, followed by
        the audio and text cluster logits when the model has cluster heads."""
        audio, text = self.encode_audio(waveforms, lengths), self.encode_text(captions)
        if not self.config.cluster_classes:
            return audio, text
        return audio, text, self.audio_cluster_head(audio), self.text_cluster_head(text)

    def encode_audio(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.audio_projection(self.audio(waveforms, lengths)), dim=-1)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return nn.functional.normalize(self.text_projection(self.text(captions)), dim=-1)

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def checkpoint_gradients(self) -> list[str]:
        """Gradient checkpointing (config key ``gradient_checkpointing``): the audio backbone's transformer blocks
        (``models.audio.recompute``) and the text transformer's layers recompute their activations in the backward
        pass. Returns the parts that now do (a CNN backbone and a frozen text encoder have nothing to checkpoint)."""
        parts = ["the audio backbone's blocks"] if recompute.enable(self.audio) else []
        return parts + (["the text transformer's layers"] if self.text.checkpoint_gradients() else [])

    def compile_encoders(self, **options) -> None:
        """``torch.compile`` the audio backbone's network (its ``compile_network``, else the whole backbone) and
        the text transformer in place, with ``nn.Module.compile``: the model keeps its parameters, so its
        state dict, checkpoints and exports have exactly the keys of the eager model and load into one.
        Projections, heads and the loss stay eager. ``options`` are ``torch.compile``'s (``backend``, ``mode``)."""
        compile_network = getattr(self.audio, "compile_network", None)
        if compile_network is not None:
            compile_network(**options)
        else:
            self.audio.compile(**options)
        self.text.compile_network(**options)


# Parameters that never reach the loss and that checkpoints of earlier versions still hold: PaSST's two
# AudioSet classifier heads and the text encoder's pooler. They are dropped when such a checkpoint loads.
RETIRED_PARAMETERS = ("audio.net.head.", "audio.net.head_dist.", "text.model.pooler.")


def _drop_retired_parameters(state_dict: dict, prefix: str, *_args) -> None:
    for key in [key for key in state_dict if key.startswith(tuple(prefix + name for name in RETIRED_PARAMETERS))]:
        del state_dict[key]
