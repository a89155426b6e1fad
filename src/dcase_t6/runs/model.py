"""Loading a run's model: rebuilt from one of its checkpoints, whose hash the registry verifies, with the
config stored in that checkpoint (so it is the model that was trained), without downloading any weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from dcase_t6.models import DualEncoder
from dcase_t6.models.checkpoint import WeightSource, load_weights
from dcase_t6.models.text import quiet_transformers
from dcase_t6.runs.config import TrainConfig, from_dict
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.runs.records import RegisteredFile


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A run's model rebuilt from one of its checkpoints, the registry record of that file and the run's config."""

    model: DualEncoder
    checkpoint: RegisteredFile
    config: TrainConfig


def load_model(registry: RunLookup, run: str, tag: str = "best", device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild a run's model from a checkpoint whose hash the registry verifies (no weight download).

    The model is built from the config stored in the checkpoint (for a run with cluster heads: with its
    class count), so it is the model that was trained.

    Args:
        registry: the registry of the run (or, on a process other than the main one, its records).
        run: a run reference (a full id with records).
        tag: the checkpoint, ``best`` or ``last``.
        device: where to put the model.

    Returns:
        The model, the checkpoint's registry record and the stored config.

    Raises:
        UserError: the weights do not fit the model the stored config describes (see ``load_weights``).
    """
    record = registry.file(run, "checkpoint", tag)
    state = torch.load(record.path, map_location=device, weights_only=True)
    config = _moved_text_model(from_dict(state["config"], source=str(record.path)), registry, record.run_id)
    with quiet_transformers():  # every weight is replaced by the checkpoint's (strictly) right after
        model = DualEncoder(config.model, audio_weights="random")
    load_weights(model, state["model"], WeightSource(
        f"run {record.run_id} checkpoint {tag}", record.path, target="the model its config describes",
        fix=lambda: (f"it was written by another dcase-t6 version ({_code_version_of(registry, record)}): "
                     "embed with that version or retrain")))
    return LoadedCheckpoint(model.to(device), record, config)


def _moved_text_model(config: TrainConfig, registry: RunLookup, run_id: str) -> TrainConfig:
    """An imported run's config with its text model found again after the work directory moved: the checkpoint
    names the copied ``runs/<run>/model/text`` by its absolute path (see ``sharing.importing``)."""
    stored = Path(config.model.text_model)
    here = registry.layout.imported_text_model(run_id)
    if not stored.is_absolute() or stored.exists() or stored.parts[-3:] != here.parts[-3:] or not here.is_dir():
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, text_model=str(here.absolute())))


def _code_version_of(registry: RunLookup, record: RegisteredFile) -> str:
    """The code version recorded for the run that wrote ``record``."""
    return registry.run(record.run_id).code_version
