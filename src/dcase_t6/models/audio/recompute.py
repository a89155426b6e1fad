"""Gradient checkpointing of an audio backbone's transformer blocks (config key ``gradient_checkpointing``).

A backbone with transformer blocks has a ``gradient_checkpointing`` attribute (False) on the module that runs
them and runs them with ``run_blocks``. ``enable`` sets every such attribute of a backbone. Then, while gradients
are recorded, each block runs under ``torch.utils.checkpoint`` (non-reentrant): only its input is kept, and its
activations are computed again in the backward pass. The random state is saved with the input and restored for
the recomputation, so dropout draws the same masks twice; patchout draws its columns and rows before the blocks,
once. Gradients are those of a run without checkpointing; memory falls, a step takes longer (a second forward pass
of the blocks). Works with ``torch.compile``'d blocks (the compiled block is what is checkpointed) and with DDP.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_blocks(blocks: Iterable[nn.Module], tokens: torch.Tensor, checkpointed: bool, *extra) -> torch.Tensor:
    """Apply ``blocks`` in order, each to the previous one's output (and ``extra``, passed to every block).

    Args:
        blocks: the transformer blocks.
        tokens: the first block's input.
        checkpointed: checkpoint each block (only while gradients are recorded; otherwise there is no backward
            pass to recompute for).
        *extra: further arguments of every block (masks, position biases; None allowed).

    Returns:
        The last block's output.
    """
    recompute = checkpointed and torch.is_grad_enabled()
    for block in blocks:
        tokens = checkpoint(block, tokens, *extra, use_reentrant=False) if recompute else block(tokens, *extra)
    return tokens


def enable(backbone: nn.Module) -> int:
    """Turn on gradient checkpointing in every part of ``backbone`` that supports it.

    Returns:
        How many parts now checkpoint their blocks (0: the backbone has no transformer blocks, e.g. tiny-cnn).
    """
    parts = [module for module in backbone.modules() if hasattr(module, "gradient_checkpointing")]
    for module in parts:
        module.gradient_checkpointing = True
    return len(parts)
