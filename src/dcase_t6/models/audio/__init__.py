"""Audio backbones by name. Add one (EAT, BEATs, ...) as one module that calls ``register``.

A backbone is an ``nn.Module`` with attributes ``sample_rate`` (Hz of the waveforms it expects),
``output_dim`` and ``weights_source`` (where its initial weights came from, said at training start),
whose ``forward(waveforms, lengths)`` maps a zero-padded (batch, samples) float tensor and the true
lengths in samples to (batch, output_dim) clip embeddings. Every trainable parameter must reach that
output (DDP requires it): drop classifier heads a checkpoint brings. ``build`` passes every backbone
the model options it may use (``weights``, ``patchout_t``, ``patchout_f``, ``pooling``: ``pooling.py``); a backbone
ignores the rest. A module of a backbone that runs transformer blocks has a ``gradient_checkpointing`` attribute
and runs them with ``recompute.run_blocks`` (config key ``gradient_checkpointing``).
A backbone may define ``compile_network(**options)``: ``torch.compile`` its network in place with
``nn.Module.compile`` (transformer layers one by one, the front end left eager), so its parameters and
state-dict keys stay those of the eager model; ``DualEncoder.compile_encoders`` calls it (config key
``compile``), and compiles a backbone without it whole. ``encoder_layers()`` (an ``EncoderLayers`` of
``models.depth``: its embedding-level parameters and its blocks from input to output) lets training freeze the
lower blocks and decay learning rates by depth (config section ``finetune``); a backbone without it refuses both.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from dcase_t6.common.errors import UserError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Class decorator: make a backbone constructible by ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BACKBONES[name] = factory
        return factory

    return add


def available() -> list[str]:
    """Names of the registered audio backbones."""
    return sorted(_BACKBONES)


def sample_rate(name: str) -> int:
    """The sample rate (Hz) backbone ``name`` expects, without building it (its class attribute)."""
    if name not in _BACKBONES:
        raise UserError(f"unknown audio backbone '{name}'; choose one of {', '.join(available())}")
    return int(_BACKBONES[name].sample_rate)


def build(name: str, **options) -> nn.Module:
    """Construct the audio backbone ``name`` with its options (e.g. ``weights`` for pretrained files)."""
    if name not in _BACKBONES:
        raise UserError(f"unknown audio backbone '{name}'; choose one of {', '.join(available())}")
    return _BACKBONES[name](**options)


from dcase_t6.models.audio import beats, eat, passt, tiny_cnn  # noqa: E402,F401  (registers the built-in backbones)
