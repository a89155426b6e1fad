"""The multi-positive InfoNCE loss against a hand computation."""

import math

import pytest
import torch

from dcase_t6.training.losses import multi_positive_infonce, positive_mask


def test_two_pairs_match_the_closed_form():
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    ids = torch.tensor([0, 1])
    tau = 0.5
    # C = A T^T / tau = [[2, 1.2], [0, 1.6]]; positives on the diagonal
    c = [[2.0, 1.2], [0.0, 1.6]]
    log_sm_audios = [c[0][0] - math.log(math.exp(c[0][0]) + math.exp(c[1][0])),
                     c[1][1] - math.log(math.exp(c[0][1]) + math.exp(c[1][1]))]
    log_sm_captions = [c[0][0] - math.log(math.exp(c[0][0]) + math.exp(c[0][1])),
                       c[1][1] - math.log(math.exp(c[1][0]) + math.exp(c[1][1]))]
    expected = -0.5 * (sum(log_sm_audios) / 2 + sum(log_sm_captions) / 2)
    assert multi_positive_infonce(audio, text, ids, ids, tau).item() == pytest.approx(expected, rel=1e-6)


def test_every_pair_of_the_same_clip_is_positive():
    ids = torch.tensor([7, 3, 7])
    assert positive_mask(ids, ids).tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    # identical embeddings for the two captions of clip 7: swapping them changes nothing
    audio = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [1.0, 0.2]]), dim=1)
    text = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.8, 0.3]]), dim=1)
    loss = multi_positive_infonce(audio, text, ids, ids, 0.05)
    swapped = multi_positive_infonce(audio, text[[2, 1, 0]], ids, ids[[2, 1, 0]], 0.05)
    assert torch.isclose(loss, swapped)


def test_loss_falls_when_positives_align():
    ids = torch.arange(4)
    aligned = torch.eye(4)
    shuffled = torch.eye(4)[[1, 0, 3, 2]]
    matched = multi_positive_infonce(aligned, aligned, ids, ids, 0.05)
    assert matched < multi_positive_infonce(aligned, shuffled, ids, ids, 0.05)

