"""The model card (``README.md``) of an exported folder: architecture, training data and recipe, validation and
dev-test metrics from the registry, and how to load the model. The hub shows it as the repo's page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcase_t6.runs.config import selection_rule
from dcase_t6.sharing.history import DevTest, RunHistory

_TAGS = ("audio", "text-to-audio-retrieval", "language-based-audio-retrieval", "dcase", "dcase-t6")
_EPOCH_COLUMNS = ("train_loss", "R@1", "R@10", "mAP@10", "mAP@16")
_DEV_TEST_COLUMNS = ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")
_SEGMENTED = ("passt", "beats", "eat")  # backbones that embed a clip over 10 s as the mean of its 10 s segments


@dataclass(frozen=True)
class CardFacts:
    """What the card says: the run, the exported checkpoint, the model and its input, the training config."""

    run_id: str
    code_version: str | None
    data_fingerprint: str | None
    checkpoint: str
    checkpoint_epoch: int | None
    history: RunHistory
    dev_test: DevTest | None
    training_config: dict
    text_model_origin: str
    sample_rate: int
    max_samples: int
    parameters: int
    repo_id: str | None = None


def render_card(facts: CardFacts) -> str:
    """The model card's Markdown, with YAML front matter (tags) for the hub.

    Args:
        facts: what to describe.

    Returns:
        The text of ``README.md``.
    """
    config, model = facts.training_config, facts.training_config["model"]
    where = facts.repo_id or "path/to/this-folder"
    parts = ["---\ntags:\n" + "".join(f"- {tag}\n" for tag in _TAGS) + "---\n",
             f"# {facts.run_id}: {model['backbone']} + {facts.text_model_origin} dual encoder\n",
             "A language-based audio retrieval model (DCASE Task 6): it embeds audio clips and text queries in one "
             "space, where a query's relevant clips score highest (cosine similarity). Trained and exported with "
             f"dcase-t6 {facts.code_version or ''}: run `{facts.run_id}`, its "
             f"`{facts.checkpoint}` checkpoint (epoch {_value(facts.checkpoint_epoch)}); in the work directory it "
             f"came from, `dcase-t6 runs show {facts.run_id}` shows its registry record.\n",
             _architecture(facts, model), _data(config, facts), _recipe(config, facts.history),
             _results(facts), _usage(facts, where), _files()]
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


_PROJECTIONS = {"linear": "linear projections", "mlp": "two-layer MLP projections (Linear, ReLU, Linear)"}


def _architecture(facts: CardFacts, model: dict) -> str:
    seconds = facts.max_samples / facts.sample_rate
    segments = ("; clips over 10 s: the mean of up to three 10 s segments" if model["backbone"] in _SEGMENTED
                else "")
    rows = [("audio backbone", f"`{model['backbone']}` at {facts.sample_rate} Hz, mono{segments}"),
            ("audio input", f"at most {seconds:g} s ({facts.max_samples} samples) of each clip"),
            ("text encoder", f"`{facts.text_model_origin}` (first-token state), captions lower-cased and stripped of "
                             f"punctuation, at most {model['text_max_length']} tokens"
                             + (" (frozen in training)" if model.get("freeze_text") else "")),
            ("embedding", f"{model['embed_dim']}-d, {_PROJECTIONS[model.get('projection', 'linear')]} of both "
                          "encoders, L2-normalised"),
            ("temperature", f"{model['temperature']:g}" + (" (trained)" if model.get("trainable_temperature")
                                                          else "")),
            ("parameters", f"{facts.parameters:,}")]
    if model.get("pooling", "default") != "default":
        rows.append(("audio pooling", f"{model['pooling']} over the backbone's tokens (model.pooling)"))
    if model.get("cluster_classes"):
        rows.append(("cluster heads", f"{model['cluster_classes']} classes (auxiliary task in training)"))
    return "## Architecture\n\n" + _table(("", ""), rows)


def _data(config: dict, facts: CardFacts) -> str:
    validation = config.get("validation_dataset") or config["datasets"][0]
    splits = [config["train_split"]] if isinstance(config["train_split"], str) else config["train_split"]
    lines = [f"- training: {', '.join(config['datasets'])}, split{'s' if len(splits) > 1 else ''} "
             + ", ".join(f"`{split}`" for split in splits),
             f"- validation: {validation}, split `{config['validation_split']}` (model selection by "
             f"{config.get('monitor', 'mAP@10')})" if config.get("validation_split") is not None else
             f"- validation: none (model selection: {selection_rule(config)})",
             f"- data fingerprint: `{facts.data_fingerprint or 'unknown'}`"]
    if config.get("init_from"):
        lines.append(f"- initialised from run `{config['init_from']}`")
    if config.get("distill_from"):
        lines.append(f"- distilled from runs {', '.join(f'`{run}`' for run in config['distill_from'])} "
                     f"(weight {config.get('distill_weight')}, temperature {config.get('distill_temperature')})")
    augmentation = {key: value for key, value in (config.get("caption_augmentation") or {}).items() if value}
    if augmentation:
        lines.append("- caption augmentation: " + ", ".join(f"{key} {value}" for key, value in augmentation.items()))
    mix = config.get("audio_mix") or {}
    if mix.get("p"):
        lines.append(f"- audio mix: p {mix['p']}, merged captions {mix.get('merged_captions_file')}")
    clusters = config.get("clusters") or {}
    if clusters.get("method"):
        lines.append(f"- cluster task: {clusters['method']} on {clusters.get('source')} embeddings, weight "
                     f"{clusters.get('weight')}")
    return "## Training data\n\n" + "\n".join(lines) + "\n"


def _recipe(config: dict, history: RunHistory) -> str:
    rows = [("epochs", f"{len(history.epochs)} of {config['epochs']}"),
            ("batch size", f"{config['batch_size']}" + (f" x {config['grad_accumulation']} accumulated"
                                                         if config.get("grad_accumulation", 1) > 1 else "")),
            ("optimizer", f"AdamW, lr {config['lr']:g} -> {config['min_lr']:g}, warm-up {config['warmup_epochs']:g} "
                          f"epoch(s), cosine over {config['decay_epochs']:g}, weight decay {config['weight_decay']:g}"
                          + (f", gradient clipping {config['grad_clip']:g}" if config.get("grad_clip") else "")),
            ("loss", f"multi-positive InfoNCE x {config.get('contrastive_weight', 1.0):g}"
                     + (" + distillation" if config.get("distill_from") else "")
                     + (" + cluster classification" if (config.get("clusters") or {}).get("method") else "")),
            ("precision", config.get("precision", "fp32")),
            ("seed", str(config.get("seed")))]
    return ("## Training recipe\n\n" + _table(("", ""), rows)
            + "\nThe complete training config is in `training.json` (`config`), with every epoch's record.\n")


def _results(facts: CardFacts) -> str:
    history, best = facts.history, facts.history.best
    text = "## Results\n\n"
    if history.epochs:
        text += (f"Validation after each epoch (single-relevant: each caption's own clip); best epoch "
                 f"{_value(history.best_epoch)} by {history.monitor}, marked **bold**:\n\n")
        rows = []
        for epoch in history.epochs:
            cells = [_value(epoch.get(key)) for key in _EPOCH_COLUMNS]
            if best is not None and epoch["epoch"] == best["epoch"]:
                cells = [f"**{cell}**" for cell in cells]
            rows.append((str(int(epoch["epoch"]) + 1), *cells))
        text += _table(("epoch", *_EPOCH_COLUMNS), rows)
    else:
        text += "No epoch records.\n"
    if facts.dev_test is not None:
        dev = facts.dev_test
        text += (f"\nDevelopment-testing ({dev.dataset}, {dev.n_queries} queries, against "
                 f"`{Path(dev.ground_truth).name}`, {dev.checkpoint or 'exported'} checkpoint):\n\n")
        text += _table(_DEV_TEST_COLUMNS, [tuple(_value(dev.scores.get(key)) for key in _DEV_TEST_COLUMNS)])
    else:
        text += "\nNo development-testing scores: the run had not embedded that split when it was exported.\n"
    return text


def _usage(facts: CardFacts, where: str) -> str:
    dim = facts.training_config["model"]["embed_dim"]
    return f"""## How to use

With dcase-t6 installed:

```bash
# embed a prepared split (audio and text embeddings, similarity matrix; --csv for a submission CSV)
dcase-t6 embed --model {where} --data-root DATA --dataset clotho --split development-testing --out embeddings/
# register it in a work directory: then it is a run like any other (embed, ensemble, --distill-from, --init-from)
dcase-t6 runs import {where}
```

In Python:

```python
import torch
from dcase_t6.runs.folder import load_exported

loaded = load_exported("{where}")  # a folder or a hub repo id; weights loaded strictly, eval mode
model = loaded.model
with torch.no_grad():
    text = model.encode_text(["a dog barks in the distance"])  # (1, {dim}), unit length
    # waveforms: (batch, samples) mono float32 at {facts.sample_rate} Hz, at most {facts.max_samples} samples;
    # lengths: (batch,) the true number of samples of each clip
    audio = model.encode_audio(waveforms, lengths)
scores = text @ audio.T  # rank the clips of each query by score
```

`text/` alone is the trained text transformer and its tokenizer
(`transformers.AutoModel.from_pretrained("{where}/text")`, before the projection).
"""


def _files() -> str:
    return """## Files

| file | contents |
|---|---|
| `config.json` | format version, model config, input settings, parameter count, SHA-256 of the weight files |
| `model.safetensors` | audio backbone, projections, temperature (and cluster heads) |
| `text/` | text transformer (`config.json`, `model.safetensors`) and tokenizer |
| `training.json` | the run: id, code version, seed, data fingerprint, training config, epochs, dev-test scores |

No file is a pickle: the weights are safetensors, the rest JSON and text.
"""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
