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


def distillation_loss(similarity: torch.Tensor, teacher_similarity: torch.Tensor,
                      teacher_temperature: float) -> torch.Tensor:
    """Cross-entropy of the student's softmax (over audios, over captions) of ``similarity`` (already
    divided by the student temperature) against softmax(``teacher_similarity`` / tau) in the same direction;
    each direction is averaged over its softmax groups and the loss is 0.5 * (over audios + over captions)."""
    targets = teacher_similarity / teacher_temperature
    over_audios = -(torch.softmax(targets, dim=0) * torch.log_softmax(similarity, dim=0)).sum(dim=0).mean()
    over_captions = -(torch.softmax(targets, dim=1) * torch.log_softmax(similarity, dim=1)).sum(dim=1).mean()
    return 0.5 * (over_audios + over_captions)


def cluster_loss(audio_logits: torch.Tensor, text_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(audio head, label) + CE(text head, label), each a mean over the pairs whose label is not negative."""
    known = labels >= 0
    if not bool(known.any()):
        return audio_logits.sum() * 0.0 + text_logits.sum() * 0.0
    return (torch.nn.functional.cross_entropy(audio_logits[known], labels[known])
            + torch.nn.functional.cross_entropy(text_logits[known], labels[known]))
