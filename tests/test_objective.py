"""The objective: float32 under autocast, one device for every tensor of a step, the backward scaling."""

import pytest
import torch

from dcase_t6.runs.config import TrainConfig
from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.distributed import World
from dcase_t6.training.objective import build_objective


def _batch(rows: int = 6) -> TrainingBatch:
    return TrainingBatch(torch.zeros(rows, 8), torch.full((rows,), 8), ["x"] * rows,
                         torch.tensor([0, 1, 0, 2, 3, 2])[:rows], torch.arange(rows), torch.full((rows,), -1))


def _outputs(generator_seed: int = 0):
    generator = torch.Generator().manual_seed(generator_seed)
    audio = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=1)
    return audio.requires_grad_(), text.requires_grad_()


def test_the_loss_is_float32_and_unchanged_under_cpu_bf16_autocast():
    """In bf16, audio @ text.T / 0.05 keeps 8 bits of mantissa: the loss moves by ~1e-2. The objective
    disables autocast, so under the model's autocast it is the float32 loss, bit for bit."""
    objective = build_objective(TrainConfig(), World())
    temperature = torch.tensor(0.05)
    plain = objective(_outputs(), _batch(), temperature)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = objective(_outputs(), _batch(), temperature)
    assert mixed.total.dtype == torch.float32 and mixed.terms["contrastive"].dtype == torch.float32
    assert torch.equal(mixed.total, plain.total)


def test_a_model_output_on_another_device_is_named_in_one_line():
    objective = build_objective(TrainConfig(), World())
    audio, text = _outputs()
    with pytest.raises(AssertionError, match=r"^objective: output 1 is on meta, the step runs on cpu$"):
        objective((audio, text.to("meta")), _batch(), torch.tensor(0.05))


def test_the_backward_total_is_scaled_by_the_world_size_and_the_accumulation():
    objective = build_objective(TrainConfig(), World())
    losses = objective(_outputs(), _batch(), torch.tensor(0.05))
    assert objective.backward_total(losses, 4).item() == pytest.approx(losses.total.item() / 4)
    assert build_objective(TrainConfig(), World(rank=0, size=3)).backward_total(losses, 2).item() == \
        pytest.approx(losses.total.item() * 1.5)
