"""The training objective: named loss terms on the global batch and their weighted total.

Each term is an object computing one named value from the gathered batch outputs (``GatheredBatch``):

* ``contrastive``: the baseline's multi-positive InfoNCE (weight ``contrastive_weight``), HN-NCE with
  ``negatives.hardness`` > 0 (see ``losses.hard_negative_infonce``);
* ``distillation``: cross-entropy against the teachers' similarities (weight ``distill_weight``; only when
  ``distill_from`` names teachers, see ``dcase_t6.training.distillation``);
* ``cluster``: CE(audio head) + CE(text head) on the run's cluster labels (weight ``clusters.weight``;
  only when ``clusters.method`` is set, see ``dcase_t6.training.clustering``).

The objective returns every term (as open_clip's losses return a dict of named terms) and their weighted
total. A term whose weight is 0 is still computed, for the log, but without gradient.

The objective runs in float32 with autocast disabled (the similarities and softmaxes of a global batch in
fp16/bf16 would lose the precision the loss needs), and every tensor of a step is on the world's device by
construction: cluster labels are moved there once, the teachers' rows of a batch at each lookup (their tables
stay on the host), the batch ids when gathered. A tensor found elsewhere is a one-line error naming it
(``check_devices``), not a device error deep in a term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from dcase_t6.runs.config import TrainConfig
from dcase_t6.training import losses
from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.distillation import TeacherSimilarity
from dcase_t6.training.distributed import World, gather, replicated


@dataclass(frozen=True)
class GatheredBatch:
    """The model outputs and batch ids of every process (rank order), as float32, and the model temperature."""

    audio: torch.Tensor
    text: torch.Tensor
    clip_ids: torch.Tensor
    pairs: torch.Tensor
    partners: torch.Tensor
    temperature: torch.Tensor
    audio_logits: torch.Tensor | None = None
    text_logits: torch.Tensor | None = None


def gather_batch(outputs: tuple, batch: TrainingBatch, temperature: torch.Tensor, world: World) -> GatheredBatch:
    """Gather this process's outputs and batch ids from every process (gradients flow to the local part).

    Args:
        outputs: the model's forward outputs: audio and text embeddings, then cluster logits if it has heads.
        batch: this process's share of the batch.
        temperature: the model's temperature.
        world: the processes.

    Returns:
        The global batch's outputs and ids on ``world.device``; a process's outputs are cut to its share
        (``len(batch.pairs)`` rows: none for a stand-in row, see ``distributed.Share``).
    """
    device, kept = world.device, batch.pairs.shape[0]
    check_devices({f"output {index}": output for index, output in enumerate(outputs)}, device)
    audio, text = gather(outputs[0][:kept].float(), world), gather(outputs[1][:kept].float(), world)
    ids = gather(batch.clip_ids.to(device, non_blocking=True), world)
    pairs = gather(batch.pairs.to(device, non_blocking=True), world)
    partners = gather(batch.partners.to(device, non_blocking=True), world)
    logits = [gather(output[:kept].float(), world) for output in outputs[2:4]]
    return GatheredBatch(audio, text, ids, pairs, partners, replicated(temperature.float(), world), *logits)


def check_devices(tensors: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Every named tensor is on ``device``, or an AssertionError (one line) naming the first that is not.

    Args:
        tensors: the tensors by name (None is skipped).
        device: the step's device.
    """
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != device:
            raise AssertionError(f"objective: {name} is on {tensor.device}, the step runs on {device}")


class Term(Protocol):
    """One loss term: a named scalar computed from the gathered batch."""

    name: str

    def __call__(self, batch: GatheredBatch) -> torch.Tensor: ...


class Contrastive:
    """The baseline's multi-positive InfoNCE: captions of the same clip are all positives; with ``hardness`` > 0
    (config key ``negatives.hardness``) its HN-NCE form, ``losses.hard_negative_infonce``."""

    name = "contrastive"

    def __init__(self, hardness: float = 0.0):
        self.hardness = hardness

    def __call__(self, batch: GatheredBatch) -> torch.Tensor:
        if self.hardness:
            return losses.hard_negative_infonce(batch.audio, batch.text, batch.clip_ids, batch.temperature,
                                                self.hardness)
        return losses.multi_positive_infonce(batch.audio, batch.text, batch.clip_ids, batch.clip_ids,
                                             batch.temperature)


class Distillation:
    """Cross-entropy of the student's similarities against the teachers' (softened by ``temperature``)."""

    name = "distillation"

    def __init__(self, teachers: TeacherSimilarity, temperature: float):
        self.teachers, self.temperature = teachers, temperature

    def __call__(self, batch: GatheredBatch) -> torch.Tensor:
        teacher_similarity = self.teachers(batch.pairs, batch.partners)
        return losses.distillation_loss(batch.audio @ batch.text.T / batch.temperature, teacher_similarity,
                                        self.temperature)


class ClusterClassification:
    """CE(audio head) + CE(text head) on every pair's cluster label; mixed pairs have no label."""

    name = "cluster"

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __call__(self, batch: GatheredBatch) -> torch.Tensor:
        labels = torch.where(batch.partners >= 0, -1, self.labels[batch.pairs])
        return losses.cluster_loss(batch.audio_logits, batch.text_logits, labels)


@dataclass(frozen=True)
class WeightedTerm:
    """A term and its weight in the total."""

    term: Term
    weight: float


@dataclass(frozen=True)
class Losses:
    """Every (unweighted) term of a batch by name, and the weighted total that is back-propagated."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor

    def values(self) -> dict[str, float]:
        """Each term as a float (for the epoch record)."""
        return {name: float(value.detach()) for name, value in self.terms.items()}


class Objective:
    """The weighted sum of named loss terms on the global batch."""

    def __init__(self, terms: list[WeightedTerm], world: World):
        self.terms, self.world = terms, world

    @property
    def names(self) -> list[str]:
        """The terms' names, in order."""
        return [weighted.term.name for weighted in self.terms]

    def __call__(self, outputs: tuple, batch: TrainingBatch, temperature: torch.Tensor) -> Losses:
        """The terms and their weighted total on the global batch.

        Args:
            outputs: the model's forward outputs on this process's share of the batch.
            batch: that share.
            temperature: the model's temperature.

        Returns:
            Every term by name, and the total (terms of weight 0 carry no gradient and are not added).
        """
        with torch.autocast(self.world.device.type, enabled=False):  # float32, also inside the model's autocast
            gathered = gather_batch(outputs, batch, temperature, self.world)
            check_devices({"temperature": gathered.temperature}, self.world.device)
            terms = {}
            for weighted in self.terms:
                with torch.set_grad_enabled(torch.is_grad_enabled() and weighted.weight != 0):
                    terms[weighted.term.name] = weighted.term(gathered)
            total = sum(weighted.weight * terms[weighted.term.name] for weighted in self.terms if weighted.weight != 0)
        return Losses(terms, total)

    def backward_total(self, losses: Losses, accumulation: int) -> torch.Tensor:
        """What a process back-propagates: the total times the world size (each process's loss is the whole
        global batch's and DDP averages the processes' gradients, see ``distributed.gather``), divided by
        the batches accumulated per optimizer step.

        Args:
            losses: the batch's losses.
            accumulation: batches per optimizer step.

        Returns:
            The scalar to back-propagate (through the gradient scaler).
        """
        return losses.total * self.world.size / accumulation


def build_objective(config: TrainConfig, world: World, teachers: TeacherSimilarity | None = None,
                    cluster_labels: torch.Tensor | None = None) -> Objective:
    """The run's objective: contrastive, plus distillation with ``teachers``, plus cluster with ``cluster_labels``.

    Args:
        config: the run's config (the weights and the distillation temperature).
        world: the processes (outputs are gathered from all).
        teachers: the teachers' similarities, or None without distillation.
        cluster_labels: every training pair's cluster label on ``world.device``, or None without clusters.

    Returns:
        The objective.
    """
    check_devices({"cluster labels": cluster_labels, **(teachers.tensors() if teachers is not None else {})},
                  world.device)
    terms = [WeightedTerm(Contrastive(config.negatives.hardness), config.contrastive_weight)]
    if teachers is not None:
        terms.append(WeightedTerm(Distillation(teachers, config.distill_temperature), config.distill_weight))
    if cluster_labels is not None:
        terms.append(WeightedTerm(ClusterClassification(cluster_labels), config.clusters.weight))
    return Objective(terms, world)
