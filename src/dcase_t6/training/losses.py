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


def hard_negative_infonce(audio: torch.Tensor, text: torch.Tensor, clip_ids: torch.Tensor,
                          temperature: torch.Tensor | float, hardness: float) -> torch.Tensor:
    """HN-NCE (Radenovic et al. 2023) on the baseline's multi-positive InfoNCE (config key ``negatives.hardness``),
    for the pairs of a batch: audio row i and caption row i are pair i, of clip ``clip_ids[i]``.

    In each softmax (over the audios of a caption, over the captions of an audio) a negative's exp(logit) is
    weighted by w = n exp(beta * logit) / sum over the n negatives of that softmax of exp(beta * logit): the
    negatives' mean weight is 1 and the most similar weigh most; positives (every caption of the same clip) weigh
    1 (the paper's alpha = 1). The weights are constants of the step: no gradient flows through them. beta 0 gives
    ``multi_positive_infonce`` (to rounding; the objective calls that one then).
    """
    similarity = audio @ text.T / temperature
    positives = positive_mask(clip_ids, clip_ids)
    over_audios = torch.log_softmax(_hard_weighted(similarity, positives, hardness, 0), dim=0)[positives].mean()
    over_captions = torch.log_softmax(_hard_weighted(similarity, positives, hardness, 1), dim=1)[positives].mean()
    return -0.5 * (over_audios + over_captions)


def _hard_weighted(logits: torch.Tensor, positives: torch.Tensor, hardness: float, dim: int) -> torch.Tensor:
    """``logits`` with log w added to the negatives' (their HN-NCE weights in the softmax along ``dim``)."""
    negatives = ~positives
    with torch.no_grad():
        scaled = torch.where(negatives, hardness * logits, -torch.inf)
        count = negatives.sum(dim=dim, keepdim=True).to(logits.dtype)
        # a softmax without negatives gives nan here, where no negative takes it
        log_weights = scaled - torch.logsumexp(scaled, dim=dim, keepdim=True) + count.log()
    return torch.where(negatives, logits + log_weights, logits)


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
