"""Contrastive losses for the dual encoder."""

from __future__ import annotations

import torch


def positive_mask(audio_ids: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """(audios, captions) mask: True where the caption describes the same clip as the audio."""
    return audio_ids[:, None] == text_ids[None, :]


def multi_positive_infonce(audio: torch.Tensor, text: torch.Tensor, audio_ids: torch.Tensor,
                           text_ids: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """The baseline's loss: C = A T^T / tau; every (audio, caption) pair of the same clip is positive;
    loss = -0.5 (mean over positives of log_softmax over audios + of log_softmax over captions)."""
    similarity = audio @ text.T / temperature
    positives = positive_mask(audio_ids, text_ids)
    over_audios = torch.log_softmax(similarity, dim=0)[positives].mean()
    over_captions = torch.log_softmax(similarity, dim=1)[positives].mean()
    return -0.5 * (over_audios + over_captions)
