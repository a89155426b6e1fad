"""Fine-tuning depth and learning rates (config section ``finetune``): which encoder parameters train, and the
optimizer's parameter groups.

* Freezing: ``finetune.audio_frozen_blocks`` / ``text_frozen_blocks`` N > 0 stop training the encoder's
  embedding level and its first N blocks (``EncoderLayers``, from input to output), -1 the whole encoder. Frozen
  parameters get ``requires_grad`` False before DDP wraps the model (DDP then reduces only the others) and are
  left out of the optimizer. They still run in training mode (dropout, patchout).
* Learning rates: the audio encoder trains at ``finetune.lr_audio``, the text transformer at ``lr_text``, the
  rest of the model (projections, temperature, cluster heads) at ``lr_heads`` (each null: ``lr``). With
  ``finetune.layer_decay`` d < 1 an encoder's block k levels below its top block trains at its rate times d**k,
  its embeddings at d**(blocks); parameters above the last block (PaSST's final norm) at its rate.
* Weight decay: ``weight_decay`` for every parameter; with ``finetune.no_decay_bias_norm`` none for biases,
  norms and other 1-d or scalar parameters.

Parameters of equal learning rate and weight decay share a group, in the model's parameter order, so the
defaults give today's single group. Each group keeps ``lr_scale``, its rate over ``lr``: the schedule sets every
group's rate to the scheduled ``lr`` times its scale (``set_learning_rate``), so warm-up and cosine apply to all
groups alike. The optimizer's state dict holds the groups with their scales, so a resumed run continues with
them; a group saved before scales existed (one group) has scale 1.
"""

from __future__ import annotations

import torch
from torch import nn

from dcase_t6.common.errors import UserError
from dcase_t6.models import DualEncoder
from dcase_t6.models.depth import EncoderLayers
from dcase_t6.runs.config import FineTune, TrainConfig

SCALE = "lr_scale"  # a parameter group's learning rate over config key lr


def freeze_layers(model: DualEncoder, finetune: FineTune) -> None:
    """Stop training the encoder blocks ``finetune`` names (``requires_grad`` False); call before DDP wraps
    the model.

    Args:
        model: the model (not wrapped).
        finetune: the run's ``finetune`` section.

    Raises:
        UserError: more frozen blocks than the encoder has, in one line.
    """
    for encoder, frozen, what in ((model.audio, finetune.audio_frozen_blocks, "audio"),
                                  (model.text, finetune.text_frozen_blocks, "text")):
        if frozen == -1:
            encoder.requires_grad_(False)
        elif frozen:
            layers = _layers(encoder, what, f"finetune.{what}_frozen_blocks")
            if frozen > len(layers.blocks):
                raise UserError(f"config key 'finetune.{what}_frozen_blocks' = {frozen}: the {what} encoder "
                                f"({_encoder_name(model, what)}) has {len(layers.blocks)} blocks; use 0 to "
                                f"{len(layers.blocks)}, or -1 to freeze all of it")
            for parameter in layers.frozen(frozen):
                parameter.requires_grad_(False)


def parameter_groups(model: DualEncoder, config: TrainConfig) -> list[dict]:
    """AdamW's parameter groups for the parameters that train (``requires_grad``), as the module docstring says.

    Args:
        model: the model, frozen blocks already frozen.
        config: the run's config (``lr``, ``weight_decay``, ``finetune``).

    Returns:
        Groups ``{"params", "lr", "weight_decay", "lr_scale"}``, in the model's parameter order.
    """
    rates = _learning_rates(model, config)
    groups: dict[tuple[float, float], dict] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        lr = rates[id(parameter)]
        decay = 0.0 if config.finetune.no_decay_bias_norm and parameter.ndim <= 1 else config.weight_decay
        group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay,
                                                SCALE: lr / config.lr})
        group["params"].append(parameter)
    return list(groups.values())


def build_optimizer(model: DualEncoder, config: TrainConfig) -> torch.optim.AdamW:
    """The run's AdamW over ``parameter_groups``.

    Args:
        model: the model, frozen blocks already frozen.
        config: the run's config.

    Returns:
        The optimizer.
    """
    return torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every group the scheduled ``lr`` times its ``lr_scale`` (1 for a group without one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(SCALE, 1.0)


def scheduled_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The scheduled ``lr`` the groups were last set from (what the logs record as ``lr``)."""
    first = optimizer.param_groups[0]
    return first["lr"] / first.get(SCALE, 1.0)


def describe(model: DualEncoder, optimizer: torch.optim.Optimizer) -> str:
    """One line for the start of training: parameters trained and frozen, groups and their learning rates.

    Args:
        model: the model.
        optimizer: its optimizer.

    Returns:
        The line.
    """
    frozen = sum(parameter.numel() for parameter in model.parameters() if not parameter.requires_grad)
    trained = sum(parameter.numel() for group in optimizer.param_groups for parameter in group["params"])
    rates = sorted(group["lr"] for group in optimizer.param_groups)
    return (f"fine-tuning: {trained:,} parameters train, {frozen:,} frozen; {len(rates)} parameter group(s), "
            f"learning rates {rates[0]:.3g} to {rates[-1]:.3g} before the schedule")


def _learning_rates(model: DualEncoder, config: TrainConfig) -> dict[int, float]:
    """Each parameter's learning rate (by ``id``)."""
    finetune = config.finetune
    heads = config.lr if finetune.lr_heads is None else finetune.lr_heads
    rates = {id(parameter): heads for parameter in model.parameters()}
    for encoder, lr, what in ((model.audio, finetune.lr_audio, "audio"), (model.text, finetune.lr_text, "text")):
        base = config.lr if lr is None else lr
        depths = {} if finetune.layer_decay == 1 else _layers(encoder, what, "finetune.layer_decay").depths()
        for parameter in encoder.parameters():
            rates[id(parameter)] = base * finetune.layer_decay ** depths.get(id(parameter), 0)
    return rates


def _layers(encoder: nn.Module, what: str, key: str) -> EncoderLayers:
    """The encoder's ``encoder_layers()``, or a UserError naming ``key`` for one that lists none."""
    listing = getattr(encoder, "encoder_layers", None)
    if listing is None:
        raise UserError(f"config key '{key}': the {what} encoder ({type(encoder).__name__}) does not list its blocks "
                        "(no encoder_layers method); leave the key at its default")
    return listing()


def _encoder_name(model: DualEncoder, what: str) -> str:
    return f"backbone {model.config.backbone}" if what == "audio" else f"text model {model.config.text_model}"
