"""Training configuration: defaults = the DCASE 2025 baseline, a YAML file and CLI overrides on top."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dcase_t6.errors import UserError
from dcase_t6.models import ModelConfig


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def validation_source(self) -> str:
        return self.validation_dataset or self.datasets[0]


def build_config(config_file: str | Path | None, overrides: dict) -> TrainConfig:
    """Defaults, then the YAML file's keys, then the CLI overrides (``model.x`` keys go to the model)."""
    values: dict = {}
    if config_file:
        values = _read_yaml(Path(config_file))
    values = _merge(values, {key: value for key, value in overrides.items() if value is not None})
    return from_dict(values, source=str(config_file or "command line"))


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """A TrainConfig from a (possibly nested) dict, rejecting unknown keys by name."""
    values = dict(values)
    model_values = values.pop("model", {}) or {}
    _reject_unknown(values, TrainConfig, source, prefix="")
    _reject_unknown(model_values, ModelConfig, source, prefix="model.")
    if isinstance(values.get("datasets"), str):
        values["datasets"] = [name for name in values["datasets"].split(",") if name]
    return TrainConfig(**values, model=ModelConfig(**model_values))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return values


def _merge(values: dict, overrides: dict) -> dict:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for key, value in overrides.items():
        if key.startswith("model."):
            merged.setdefault("model", {})[key.removeprefix("model.")] = value
        else:
            merged[key] = value
    return merged


def _reject_unknown(values: dict, schema, source: str, prefix: str) -> None:
    known = {item.name for item in dataclasses.fields(schema)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown config key '{prefix}{unknown[0]}'; known keys: "
                        f"{', '.join(prefix + name for name in sorted(known))}")
