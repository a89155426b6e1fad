"""Training configuration: defaults = the DCASE 2025 baseline, a YAML file and CLI overrides on top.

Besides the baseline keys, every stage-2/3 mechanism of the AISTAT 2025 recipe is a switch here
(all off by default): ``init_from`` (start from another run's best weights), ``distill_from`` /
``distill_weight`` / ``distill_temperature`` (ensemble distillation), ``caption_augmentation``,
``audio_mix`` and ``clusters`` (auxiliary cluster classification).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dcase_t6.errors import UserError
from dcase_t6.models import ModelConfig


@dataclass
class CaptionAugmentation:
    """Caption changes drawn per training pair (see ``dcase_t6.augmentation``)."""

    deletion_p: float = 0.0
    synonym_p: float = 0.0
    synonyms_file: str | None = None
    extra_captions_file: str | None = None
    extra_captions_p: float = 0.0


@dataclass
class AudioMix:
    """Mix a pair's clip with a partner clip and use their merged caption, with probability ``p``."""

    p: float = 0.0
    merged_captions_file: str | None = None


@dataclass
class Clusters:
    """Auxiliary cluster classification (off while ``method`` is null); see ``dcase_t6.clustering``."""

    method: str | None = None
    count: int = 32
    min_cluster_size: int = 10
    source: str = "init"
    weight: float = 0.05


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in the registry with the run."""

    name: str = "run"
    data_root: str = "data"
    datasets: list[str] = field(default_factory=lambda: ["clotho"])
    train_split: str = "development-training"
    validation_dataset: str | None = None
    validation_split: str = "development-validation"
    model: ModelConfig = field(default_factory=ModelConfig)
    audio_weights: str = "download"
    audio_seconds: float = 30.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-5
    min_lr: float = 1e-7
    warmup_epochs: float = 1.0
    decay_epochs: float = 15.0
    weight_decay: float = 0.0
    grad_accumulation: int = 1
    grad_clip: float | None = None
    mixed_precision: bool = True
    seed: int = 0
    workers: int = 0
    monitor: str = "mAP@10"
    checkpoint_every: int = 0
    max_steps: int | None = None
    init_from: str | None = None
    distill_from: list[str] = field(default_factory=list)
    distill_weight: float = 1.0
    distill_temperature: float = 0.05
    caption_augmentation: CaptionAugmentation = field(default_factory=CaptionAugmentation)
    audio_mix: AudioMix = field(default_factory=AudioMix)
    clusters: Clusters = field(default_factory=Clusters)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def validation_source(self) -> str:
        return self.validation_dataset or self.datasets[0]


SECTIONS = {"model": ModelConfig, "caption_augmentation": CaptionAugmentation, "audio_mix": AudioMix,
            "clusters": Clusters}
_LIST_KEYS = ("datasets", "distill_from")


def build_config(config_file: str | Path | None, overrides: dict) -> TrainConfig:
    """Defaults, then the YAML file's keys, then the overrides (``section.key`` keys go into that section)."""
    values: dict = {}
    if config_file:
        values = read_yaml_mapping(Path(config_file))
    values = merge(values, dotted_to_nested({key: value for key, value in overrides.items() if value is not None}))
    return from_dict(values, source=str(config_file or "command line"))


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """A TrainConfig from a (possibly nested) dict, rejecting unknown keys by name."""
    values = dict(values)
    sections = {name: _section(values.pop(name, None), schema, source, name) for name, schema in SECTIONS.items()}
    _reject_unknown(values, TrainConfig, source, prefix="")
    for key in _LIST_KEYS:
        if isinstance(values.get(key), str):
            values[key] = [item.strip() for item in values[key].split(",") if item.strip()]
    return TrainConfig(**values, **sections)


def _section(values, schema, source: str, name: str):
    if values is None:
        return schema()
    if not isinstance(values, dict):
        raise UserError(f"{source}: config key '{name}' must be a mapping of {name}.* keys, got {values!r}")
    _reject_unknown(values, schema, source, prefix=f"{name}.")
    return schema(**values)


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping, or a UserError naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return values


def dotted_to_nested(overrides: dict) -> dict:
    """``{"model.embed_dim": 16}`` -> ``{"model": {"embed_dim": 16}}`` for the config sections."""
    nested: dict = {}
    for key, value in overrides.items():
        section, dot, name = key.partition(".")
        if dot and section in SECTIONS:
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return nested


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` on top; mappings are merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _reject_unknown(values: dict, schema, source: str, prefix: str) -> None:
    known = {item.name for item in dataclasses.fields(schema)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown config key '{prefix}{unknown[0]}'; known keys: "
                        f"{', '.join(prefix + name for name in sorted(known))}")
