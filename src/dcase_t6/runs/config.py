"""Training configuration: defaults = the DCASE 2025 baseline, a YAML file and CLI overrides on top.

Besides the baseline keys, every stage-2/3 mechanism of the AISTAT 2025 recipe is a switch here
(all off by default): ``init_from`` (start from another run's best weights), ``distill_from`` /
``distill_weight`` / ``distill_temperature`` (ensemble distillation), ``caption_augmentation``,
``audio_mix`` and ``clusters`` (auxiliary cluster classification), as are the training choices of
``finetune`` and ``negatives`` (hard-negative batches, HN-NCE). The loss is
``contrastive_weight`` * contrastive + ``distill_weight`` * distillation + ``clusters.weight`` * cluster.
The sections' dataclasses are in ``runs.sections``; their ranges and cross-key rules are here.

Every value, from YAML or ``--set KEY=VALUE`` (always a string there), is converted to its field's
type and checked against the field's range before anything is registered or loaded; a bad value is
one ``UserError`` naming the key, the value and what is expected. The ranges (``RANGES``) bound every size,
duration, count and seed far beyond any real DCASE setting, so that no value can overflow, exhaust memory or
fail deep inside a run; YAML is read by ``common.yamlfile`` (aliases counted, nesting bounded).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import check_name
from dcase_t6.common.yamlfile import read_yaml
from dcase_t6.models import PROJECTIONS, ModelConfig
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.audio.pooling import POOLINGS
from dcase_t6.retrieval.metrics import METRIC_KEYS
from dcase_t6.runs.sections import AudioMix, CaptionAugmentation, Clusters, FineTune, Negatives
from dcase_t6.runs.values import convert, shown

PRECISIONS = ("fp16", "bf16", "fp32")
LOGGERS = ("tensorboard", "wandb", "none")
# torch.compile of the audio network and the text transformer: auto = on CUDA GPUs of compute capability >= 7
# (the DCASE 2025 baseline's rule), never on a CPU; on = also on a CPU; off = never.
COMPILE_MODES = ("auto", "on", "off")
# Every metric `evaluate` reports (and validation computes); the default, mAP@10, is the DCASE 2025 baseline's
# model-selection metric, mAP@16 the 2025 ranking metric.
MONITORED = METRIC_KEYS

DEFAULT_TIMEOUT_MINUTES = 120.0  # dist_timeout_minutes' default: how long a collective waits (NCCL's own is 10)


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in the registry with the run."""

    name: str = "run"
    data_root: str = "data"
    datasets: list[str] = field(default_factory=lambda: ["clotho"])
    # dataset -> how often its pairs are drawn per epoch (1: each pair once, the default; 2: twice; 0.25: a random
    # quarter of them); see training.data.epoch_batches
    dataset_weights: dict[str, float] = field(default_factory=dict)
    # the splits trained on: names any dataset may have, or DATASET/SPLIT for one dataset; a dataset with none of
    # them trains on its `train` split (AudioCaps, WavCaps); see training.data.training_splits
    train_split: list[str] = field(default_factory=lambda: ["development-training"])
    validation_dataset: str | None = None
    # null: no validation (a final system on all data); the best checkpoint is then the last epoch's
    validation_split: str | None = "development-validation"
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
    grad_cache_chunk: int | None = None  # pairs per chunk per process (training.grad_cache); null: one piece
    grad_clip: float | None = None
    precision: str = "fp16"
    seed: int = 0
    # DataLoader processes per training process; None: 0 on a CPU, on a GPU the CPU cores per process less one
    # (at most 8; see training.builder.loader_workers)
    workers: int | None = None
    monitor: str = "mAP@10"
    checkpoint_every: int = 0
    max_steps: int | None = None
    contrastive_weight: float = 1.0
    init_from: str | None = None
    distill_from: list[str] = field(default_factory=list)
    distill_weight: float = 1.0
    distill_temperature: float = 0.05
    caption_augmentation: CaptionAugmentation = field(default_factory=CaptionAugmentation)
    audio_mix: AudioMix = field(default_factory=AudioMix)
    clusters: Clusters = field(default_factory=Clusters)
    finetune: FineTune = field(default_factory=FineTune)
    negatives: Negatives = field(default_factory=Negatives)
    log: str = "tensorboard"  # experiment logger besides the registry: tensorboard, wandb or none
    log_every: int = 50  # optimizer steps between per-step log points (loss terms, lr, data-loader wait)
    dist_timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES  # how long processes wait for each other (torchrun)
    deterministic: bool = False  # deterministic algorithms only (bit-exact resume on a GPU too; slower)
    # Train although a training split shares Freesound ids with dev-test or the evaluation set (see data.audit).
    allow_test_overlap: bool = False
    # torch.compile the encoders: auto, on or off (COMPILE_MODES); speed only. off until the GPU acceptance run
    # (benchmarks/gpu_check.py) has measured compiled training on a GPU; auto is the baseline's rule.
    compile: str = "off"
    gradient_checkpointing: bool = False  # recompute encoder blocks in backward: less memory, same gradients

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def validation_source(self) -> str:
        return self.validation_dataset or self.datasets[0]

    @property
    def selection(self) -> str:
        """How the run's ``best`` checkpoint is chosen, in words (``runs show``, the summary, the metadata)."""
        return selection_rule(self.to_dict())

    def clip_samples(self, sample_rate: int) -> int:
        """The most samples of a clip the model sees, in training, validation, ``embed`` and as a teacher:
        ``audio_seconds`` at the backbone's rate (the one place this input setting is turned into samples)."""
        return int(self.audio_seconds * sample_rate)


SECTIONS = {"model": ModelConfig, "caption_augmentation": CaptionAugmentation, "audio_mix": AudioMix,
            "clusters": Clusters, "finetune": FineTune, "negatives": Negatives}
# Keys that older versions stored with their runs, and what they mean now.
_RENAMED = {"mixed_precision": ("precision", lambda old: "fp16" if old in (True, "true", "True") else "fp32")}


def build_config(config_file: str | Path | None, overrides: dict) -> TrainConfig:
    """Defaults, then the YAML file's keys, then the overrides (``section.key`` keys go into that section)."""
    values: dict = {}
    if config_file:
        values = read_yaml_mapping(Path(config_file))
    values = merge(values, dotted_to_nested({key: value for key, value in overrides.items() if value is not None}))
    return from_dict(values, source=str(config_file or "command line"))


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """A checked TrainConfig from a (possibly nested) dict of YAML values or strings, rejecting unknown keys,
    values that are not of the field's type and values out of the field's range, by name."""
    values = dict(values)
    for old, (new, upgrade) in _RENAMED.items():
        if old in values:
            legacy = values.pop(old)
            values.setdefault(new, upgrade(legacy))
    if isinstance(values.get("compile"), bool):  # YAML 1.1 reads `compile: on` / `off` as true / false
        values["compile"] = "on" if values["compile"] else "off"
    sections = {name: _section(values.pop(name, None), schema, source, name) for name, schema in SECTIONS.items()}
    config = TrainConfig(**_typed(values, TrainConfig, source, prefix=""), **sections)
    check(config, source)
    return config


def _section(values, schema, source: str, name: str):
    if values is None:
        return schema()
    if not isinstance(values, dict):
        raise UserError(f"{source}: config key '{name}' must be a mapping of {name}.* keys, got {shown(values)}")
    return schema(**_typed(values, schema, source, prefix=f"{name}."))


def _typed(values: dict, schema, source: str, prefix: str) -> dict:
    """``values`` converted to the types of ``schema``'s fields; unknown keys are refused by name."""
    hints = typing.get_type_hints(schema)
    known = [item.name for item in dataclasses.fields(schema) if item.name not in SECTIONS]
    unknown = sorted(set(values) - set(known), key=lambda name: (not isinstance(name, str), str(name)))
    if unknown:
        raise UserError(f"{source}: unknown config key '{prefix}{shown(unknown[0], quoted=False)}'; known keys: "
                        f"{', '.join(prefix + name for name in sorted(known))}")
    return {key: convert(value, hints[key], f"{prefix}{key}", source) for key, value in values.items()}


def _at_least(bound: float) -> tuple[Callable[[float], bool], str]:
    return (lambda value: value >= bound), f">= {bound:g}"


def _above(bound: float) -> tuple[Callable[[float], bool], str]:
    return (lambda value: value > bound), f"> {bound:g}"


def _between(low: float, high: float, unit: str = "") -> tuple[Callable[[float], bool], str]:
    return (lambda value: low <= value <= high), f"between {_number(low)} and {_number(high)}{unit}"


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _one_of(*choices) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value in choices), f"one of {', '.join(str(choice) for choice in choices)}"


_CLUSTER_SOURCES = ("run", "model", "sentence", "e5")  # clusters.source KIND:NAME (see dcase_t6.training.clustering)
_PROBABILITY = ((lambda value: 0.0 <= value <= 1.0), "a probability in [0, 1]")
_DROPOUT = ((lambda value: 0.0 <= value < 1.0), "in [0, 1)")
# Upper bounds no real setting reaches (DCASE clips are 10-30 s; embeddings of a few thousand dimensions; seeds are
# what every library accepts: scikit-learn's and UMAP's random_state is at most 2**32 - 1), so that no value can
# overflow, exhaust memory or fail deep inside a run. docs/training.md ("Typed configuration") lists them.
MAX_AUDIO_SECONDS = 600
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_SEED = 2**32 - 1
MAX_WORKERS = 256
MAX_EMBED_DIM = 8192
MAX_TEXT_TOKENS = 512  # the position limit of roberta-large, BERT and MiniLM
MAX_CLASSES = 100_000
MAX_DATASET_WEIGHT = 1000
MAX_NEIGHBOURS, MAX_HARDNESS = 1024, 100  # negatives.neighbours (k) and negatives.hardness (beta)
MINING = ("none", "run", "self")  # negatives.mining

RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio_seconds": _between(1, MAX_AUDIO_SECONDS, " (seconds of audio per clip)"),
    "epochs": _between(1, MAX_EPOCHS), "batch_size": _between(2, MAX_BATCH), "lr": _above(0),
    "min_lr": _at_least(0), "warmup_epochs": _between(0, MAX_EPOCHS),
    "decay_epochs": ((lambda value: 0 < value <= MAX_EPOCHS), f"in (0, {MAX_EPOCHS}]"), "weight_decay": _at_least(0),
    "grad_accumulation": _between(1, MAX_BATCH), "grad_clip": _above(0), "precision": _one_of(*PRECISIONS),
    "seed": _between(0, MAX_SEED), "workers": _between(0, MAX_WORKERS), "monitor": _one_of(*MONITORED),
    "checkpoint_every": _at_least(0), "max_steps": _at_least(1), "contrastive_weight": _at_least(0),
    "distill_weight": _at_least(0), "distill_temperature": _above(0), "log": _one_of(*LOGGERS),
    "log_every": _at_least(1), "grad_cache_chunk": _between(1, MAX_BATCH),
    "dist_timeout_minutes": ((lambda value: 0 < value <= 10080), "in (0, 10080] (minutes: at most a week)"),
    "compile": _one_of(*COMPILE_MODES),
    "dataset_weights": ((lambda weights: all(math.isfinite(w) and 0 <= w <= MAX_DATASET_WEIGHT
                                             for w in weights.values())),
                        f"a mapping of dataset names to weights between 0 and {MAX_DATASET_WEIGHT}"),
    "model.embed_dim": _between(1, MAX_EMBED_DIM), "model.temperature": _above(0),
    "model.text_max_length": _between(1, MAX_TEXT_TOKENS, " (tokens)"),
    "model.text_dropout": _DROPOUT, "model.patchout_t": _between(0, 1000), "model.patchout_f": _between(0, 1000),
    "model.cluster_classes": _between(0, MAX_CLASSES), "model.pooling": _one_of(*POOLINGS),
    "model.projection": _one_of(*PROJECTIONS),
    "caption_augmentation.deletion_p": _PROBABILITY, "caption_augmentation.synonym_p": _PROBABILITY,
    "caption_augmentation.extra_captions_p": _PROBABILITY, "audio_mix.p": _PROBABILITY,
    "clusters.method": _one_of(None, "kmeans", "hdbscan", "bertopic"), "clusters.count": _between(2, MAX_CLASSES),
    "clusters.min_cluster_size": _between(2, 10**6), "clusters.weight": _at_least(0),
    "clusters.source": (lambda value: value in ("init", "e5") or (value.partition(":")[0] in _CLUSTER_SOURCES
                                                                   and bool(value.partition(":")[2])),
                        "init, run:RUN, model:NAME, sentence:NAME, e5 or e5:PATH"),
    **{f"finetune.{encoder}_frozen_blocks": ((lambda value: -1 <= value <= 1000), "-1 (the whole encoder) or 0 to "
       "1000 blocks") for encoder in ("audio", "text")},
    "finetune.layer_decay": ((lambda value: 0 < value <= 1), "in (0, 1] (1: no layer-wise decay)"),
    "finetune.lr_audio": _above(0), "finetune.lr_text": _above(0), "finetune.lr_heads": _above(0),
    "negatives.mining": _one_of(*MINING), "negatives.share": _PROBABILITY,
    "negatives.neighbours": _between(1, MAX_NEIGHBOURS), "negatives.refresh_epochs": _between(1, MAX_EPOCHS),
    "negatives.hardness": _between(0, MAX_HARDNESS),
}


def check(config: TrainConfig, source: str = "config") -> None:
    """Every range of ``RANGES`` and the rules that tie keys together, or a UserError naming the key."""
    check_name(config.name, f"{source}: config key 'name' (the run name)")
    for key in RANGES:
        section, _, name = key.rpartition(".")
        _check_range(key, getattr(getattr(config, section) if section else config, name), source)
    if not config.datasets:
        raise UserError(f"{source}: config key 'datasets' is empty; name at least one prepared dataset, e.g. clotho")
    unknown = sorted(set(config.dataset_weights) - set(config.datasets))
    if unknown:
        raise UserError(f"{source}: config key 'dataset_weights' names {unknown[0]!r}, which is not in datasets "
                        f"({', '.join(config.datasets)}); weigh only the datasets trained on")
    if config.dataset_weights and not any(config.dataset_weights.get(name, 1.0) for name in config.datasets):
        raise UserError(f"{source}: config key 'dataset_weights' gives every dataset weight 0: no pair would be "
                        "drawn; give at least one dataset a weight > 0")
    if not config.train_split:
        raise UserError(f"{source}: config key 'train_split' is empty; name at least one split, e.g. "
                        "development-training or development-training,development-validation")
    if config.min_lr > config.lr:
        raise UserError(f"{source}: config key 'min_lr' = {config.min_lr!r} is above 'lr' = {config.lr!r}; "
                        "the schedule decays from lr to min_lr")
    if config.clusters.method and config.clusters.weight == 0:
        raise UserError(f"{source}: config key 'clusters.weight' = 0 with clusters.method {config.clusters.method}: "
                        "the cluster heads would get no gradient (under torchrun DDP then fails at step 2); "
                        "set clusters.weight > 0, or clusters.method null to train without clusters")
    weights = [config.contrastive_weight, config.distill_weight if config.distill_from else 0.0,
               config.clusters.weight if config.clusters.method else 0.0]
    if not any(weights):
        raise UserError(f"{source}: every loss term has weight 0 (contrastive_weight {weights[0]:g}, distillation "
                        f"{weights[1]:g}, cluster {weights[2]:g}); set contrastive_weight > 0, or distill_from with "
                        "distill_weight > 0 (distillation alone: salsa's stage 2)")
    negatives = config.negatives
    if (negatives.mining == "run") != bool(negatives.source):
        raise UserError(f"{source}: config key 'negatives.source' = {shown(negatives.source)} with negatives.mining "
                        f"{negatives.mining}: mining run needs the run whose embeddings are mined, and only it reads "
                        "one; set negatives.mining=run with negatives.source=RUN, or leave negatives.source unset")
    if config.model.backbone not in audio_backbones.available():
        raise UserError(f"{source}: config key 'model.backbone' = {config.model.backbone!r} must be one of "
                        f"{', '.join(audio_backbones.available())}")


def _check_range(key: str, value, source: str) -> None:
    valid, expected = RANGES[key]
    if value is None and key != "clusters.method":
        return
    if (isinstance(value, float) and not math.isfinite(value)) or not valid(value):
        raise UserError(f"{source}: config key '{key}' = {shown(value)} must be {expected}")


def checked_value(key: str, value, source: str):
    """One top-level config key's value (e.g. ``audio_seconds`` of an exported model) converted to its field's
    type and range-checked, as ``from_dict`` checks it; a UserError naming ``source`` and the key."""
    converted = convert(value, typing.get_type_hints(TrainConfig)[key], key, source)
    if key in RANGES:
        _check_range(key, converted, source)
    return converted


def model_from_dict(values, source: str) -> ModelConfig:
    """A checked ModelConfig from a ``model`` mapping (e.g. an exported model's ``config.json``): unknown keys,
    types and the ``model.*`` ranges, as ``from_dict`` checks them; a UserError naming ``source`` and the key."""
    model = _section(values, ModelConfig, source, "model")
    for key in RANGES:
        section, _, name = key.rpartition(".")
        if section == "model":
            _check_range(key, getattr(model, name), source)
    return model


def split_names(value) -> list[str]:
    """A stored ``train_split`` (one name, as earlier versions stored it, or a list) as a list of names."""
    return [value] if isinstance(value, str) else list(value or ["development-training"])


def selection_rule(config: dict) -> str:
    """How a (stored) config's run chooses its ``best`` checkpoint, in words."""
    if "validation_split" in config and config["validation_split"] is None:
        return "the last epoch (no validation split: best = last)"
    dataset = config.get("validation_dataset") or (config.get("datasets") or ["clotho"])[0]
    return (f"the epoch of the highest validation {config.get('monitor', 'mAP@10')} on "
            f"{dataset}/{config.get('validation_split', 'development-validation')}")


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (read by ``common.yamlfile``: never a pipe or a device, aliases
    counted, nesting and size bounded), or a UserError naming the file."""
    values = read_yaml(path, "config file") or {}
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


def nested_to_dotted(values: dict, prefix: str = "") -> dict:
    """``{"model": {"backbone": "passt"}}`` -> ``{"model.backbone": "passt"}`` (the inverse of ``dotted_to_nested``)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(nested_to_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` on top; mappings are merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
