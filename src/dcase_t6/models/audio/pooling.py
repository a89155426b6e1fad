"""Temporal pooling: a backbone's token sequence -> one vector per segment (config key ``model.pooling``).

* ``default``: each backbone's own pooling, as before this key existed: PaSST the mean of its CLS and
  distillation tokens, BEATs the mean of its patch tokens without padding, EAT its CLS token, tiny-cnn the mean
  and the maximum over its frames (without padding).
* ``mean``: the mean of the patch (frame) tokens; CLS and distillation tokens are left out, and so are the tokens
  the backbone knows to be padding (beyond a segment's true samples).
* ``attention``: a learned query ``q`` scores every token ``x_i`` as ``q . x_i / sqrt(dim)``; a softmax over the
  non-padding tokens gives the weights of their weighted sum. ``q`` starts at zero, so training starts from the
  ``mean`` pooling. ``q`` is the backbone's parameter ``pool.query`` (``audio.pool.query`` in a checkpoint):
  trained with the backbone, saved with the model and loaded with it.

Pooling runs in float32 (also under autocast). A segment whose tokens are all padding (a patchout that kept only
columns beyond a short segment's end) is pooled over all of its tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dcase_t6.common.errors import UserError

POOLINGS = ("default", "mean", "attention")


class TokenPool(nn.Module):
    """The ``mean`` or ``attention`` pooling of tokens (``default`` is each backbone's own code; see the module).

    Args:
        kind: one of ``POOLINGS``.
        dim: the tokens' width.
        backbone: the backbone's name, for the error message.
    """

    def __init__(self, kind: str, dim: int, backbone: str):
        super().__init__()
        if kind not in POOLINGS:
            raise UserError(f"model.pooling {kind!r} is not a pooling of the {backbone} backbone; "
                            f"choose one of {', '.join(POOLINGS)}")
        self.kind = kind
        if kind == "attention":
            self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """Pool each row's tokens.

        Args:
            tokens: (rows, tokens, dim) patch or frame tokens (no CLS / distillation token).
            padding: (rows, tokens) True for a padding token, or None when every token is audio.

        Returns:
            (rows, dim) float32 vectors.
        """
        tokens = tokens.float()
        if padding is None:
            padding = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        padding = padding & ~padding.all(dim=1, keepdim=True)  # an all-padding row: pooled over every token
        if self.kind == "attention":  # elementwise product and sum: autocast leaves them in float32
            scores = (tokens * self.query.float()).sum(-1) / math.sqrt(tokens.shape[-1])
            weights = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=1)
            return (weights.unsqueeze(-1) * tokens).sum(1)
        valid = (~padding).unsqueeze(-1).to(tokens.dtype)
        return (tokens * valid).sum(1) / valid.sum(1)


def time_padding(valid: torch.Tensor, columns: torch.Tensor, repeats: int, time_major: bool) -> torch.Tensor:
    """The padding mask of a patch grid whose time columns are ``columns``, each row's first ``valid`` audio.

    Args:
        valid: (rows,) time columns of audio in each row (the columns from ``valid`` on are padding).
        columns: (time,) the time-column index of each kept column (all of them, or those patchout kept).
        repeats: patches per time column (frequency patches).
        time_major: tokens ordered time column by time column (BEATs, EAT); else frequency row by row (PaSST).

    Returns:
        (rows, time * repeats) True for the tokens of padding columns.
    """
    beyond = columns.to(valid.device)[None, :] >= valid[:, None]
    return beyond.repeat_interleave(repeats, dim=1) if time_major else beyond.repeat(1, repeats)
