"""The exported model folder: everything needed to rebuild a trained dual encoder, without the registry, the
training data or the network, and without pickle.

::

    README.md             model card (architecture, data, recipe, metrics, how to load)
    config.json           format, the model config (text_model: "text"), the text transformer's model_type,
                          the input settings (sample rate, audio_seconds), the parameter count, the SHA-256 of
                          both weight files
    model.safetensors     every weight except the text transformer's: audio backbone, projections, temperature,
                          cluster heads
    text/                 the text transformer as transformers saves one: config.json, model.safetensors,
                          tokenizer files (loadable alone with AutoModel/AutoTokenizer.from_pretrained)
    training.json         the run: id, name, code version, seed, data fingerprint, its full training config, every
                          epoch's record, the checkpoint exported, the dev-test scores

``load_exported`` builds a ``DualEncoder`` from ``config.json`` (the text encoder from ``text/``, the audio
backbone untrained) and then loads both weight files into it strictly: every parameter must be there with its
shape, and nothing else. Every value of ``config.json`` is checked first (types and the training config's
ranges, the hashes, ``text/config.json``'s model_type against the one recorded at export), so a damaged or
edited folder is one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.models.checkpoint import WeightSource, load_weights
from dcase_t6.models.text import quiet_transformers
from dcase_t6.runs.config import TrainConfig, checked_value, model_from_dict
from dcase_t6.runs.hub import download, looks_like_repo_id
from dcase_t6.runs.layout import TEXT_DIR
from dcase_t6.runs.records import sha256_of

FORMAT = "dcase-t6-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_NAME = "training.json"
CARD_NAME = "README.md"
TEXT_PREFIX = "text.model."  # the text transformer's parameters inside a DualEncoder
_REEXPORT = "export it again with `dcase-t6 export RUN --out DIR` (this dcase-t6 reads format version 1)"
_CHANGED = "the file was changed or damaged: download or export the folder again"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ExportedModel:
    """A model loaded from an exported folder: the model (eval mode), its folder, ``config.json`` and
    ``training.json`` as read, and the most samples of a clip it embeds (``audio_seconds`` at its rate)."""

    model: DualEncoder
    folder: Path
    config: dict
    training: dict
    max_samples: int

    @property
    def weights_sha256(self) -> str:
        """One hash for both weight files (``config.json`` records each), naming this model's embeddings."""
        hashes = self.config["sha256"]
        return hashlib.sha256(f"{hashes[WEIGHTS_NAME]}:{hashes[TEXT_DIR + '/' + WEIGHTS_NAME]}".encode()).hexdigest()


def write_model_folder(model: DualEncoder, folder: Path, config: dict, training: dict) -> None:
    """Write the weights, the text encoder's files, ``config.json`` and ``training.json`` into ``folder``.

    Args:
        model: the model to export.
        folder: an empty folder (a staging folder: the caller renames it into place).
        config: ``config.json`` without the weight hashes (added here), with ``model`` (the ModelConfig as a dict).
        training: ``training.json``.
    """

    state = _unshared(model.state_dict())
    text_state = {key[len(TEXT_PREFIX):]: value for key, value in state.items() if key.startswith(TEXT_PREFIX)}
    rest = {key: value for key, value in state.items() if not key.startswith(TEXT_PREFIX)}
    text_dir = folder / TEXT_DIR
    text_dir.mkdir(parents=True)
    save_file(rest, folder / WEIGHTS_NAME, metadata={"format": "pt", "dcase_t6": FORMAT})
    save_file(text_state, text_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    model.text.model.config.save_pretrained(text_dir)
    model.text.tokenizer.save_pretrained(text_dir)
    hashes = {WEIGHTS_NAME: sha256_of(folder / WEIGHTS_NAME),
              f"{TEXT_DIR}/{WEIGHTS_NAME}": sha256_of(text_dir / WEIGHTS_NAME)}
    write_json({**config, "text_model_type": model.text.model.config.model_type, "sha256": hashes},
               folder / CONFIG_NAME)
    write_json(training, folder / TRAINING_NAME)


def model_config_json(model: DualEncoder) -> dict:
    """The ``model`` entry of ``config.json``: the model's config with ``text_model`` pointing at ``text/``."""
    return {**dataclasses.asdict(model.config), "text_model": TEXT_DIR}


def read_folder_config(folder: Path) -> tuple[dict, dict]:
    """``config.json`` and ``training.json`` of an exported folder, checked.

    Raises:
        UserError: a file is missing or not of this format.
    """
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; pass a folder written by `dcase-t6 export` or a hub repo id")
    remedy = f"{folder} is not a complete dcase-t6 model folder; {_REEXPORT}"
    config = read_json(folder / CONFIG_NAME, remedy)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG_NAME}: not a dcase-t6 model config (format {FORMAT!r} expected); "
                        "pass a folder written by `dcase-t6 export`")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{folder / CONFIG_NAME}: format version {config.get('format_version')!r}; {_REEXPORT}, "
                        "or load it with the dcase-t6 version that wrote it")
    training = read_json(folder / TRAINING_NAME, remedy)
    if not isinstance(training, dict):
        raise UserError(f"{folder / TRAINING_NAME}: expected a JSON object; {_REEXPORT}")
    for path in (folder / WEIGHTS_NAME, folder / TEXT_DIR / WEIGHTS_NAME):
        if not path.is_file():
            raise UserError(f"{path}: missing; {remedy}")
    _check_values(folder, config, remedy)
    return config, training


def _check_values(folder: Path, config: dict, remedy: str) -> None:
    """The values of ``config.json`` that loading uses, checked before anything is built: the model config and
    ``audio_seconds`` (types and the training config's ranges), the two SHA-256 hashes, and ``text/config.json``
    (a transformers config whose model_type is the one recorded at export, when recorded)."""

    where = folder / CONFIG_NAME
    model_from_dict(_model_values(config, folder), str(where))
    checked_value("audio_seconds", config.get("audio_seconds", 30.0), str(where))
    hashes = config.get("sha256")
    for name in (WEIGHTS_NAME, f"{TEXT_DIR}/{WEIGHTS_NAME}"):
        value = hashes.get(name) if isinstance(hashes, dict) else None
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            found = "missing" if hashes is None else f"got {_short(value if isinstance(hashes, dict) else hashes)}"
            raise UserError(f"{where}: key 'sha256' must map {name} to its SHA-256 (64 hex digits), {found}; "
                            f"{_CHANGED}")
    text_path = folder / TEXT_DIR / CONFIG_NAME
    text = read_json(text_path, remedy)
    model_type = text.get("model_type") if isinstance(text, dict) else None
    if not isinstance(model_type, str):
        raise UserError(f"{text_path}: key 'model_type' missing or not a string: not a transformers model config; "
                        f"{_CHANGED}")
    recorded = config.get("text_model_type")
    if recorded is not None and model_type != recorded:
        raise UserError(f"{text_path}: key 'model_type' is {_short(model_type)}, but {where} records "
                        f"{_short(recorded)} (the architecture its text weights were trained as); {_CHANGED}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_values(config: dict, folder: Path) -> dict:
    """The ``model`` mapping of ``config.json``; a UserError for keys this dcase-t6 does not know."""
    values = config.get("model")
    known = {item.name for item in dataclasses.fields(ModelConfig)}
    if not isinstance(values, dict) or set(values) - known:
        unknown = sorted(set(values) - known, key=str) if isinstance(values, dict) else ["(not a mapping)"]
        raise UserError(f"{folder / CONFIG_NAME}: model config has unknown keys {_short(unknown)}; it was written by "
                        "a newer dcase-t6: load it with that version")
    return values


def model_config(config: dict, folder: Path, text_model: str | None = None) -> ModelConfig:
    """The ModelConfig of ``config.json`` with ``text_model`` set to ``text_model`` (default: ``folder/text``).

    Raises:
        UserError: unknown keys, or a value of the wrong type or out of range.
    """

    values = _model_values(config, folder)
    return model_from_dict({**values, "text_model": text_model or str(folder / TEXT_DIR)}, str(folder / CONFIG_NAME))


def read_weights(folder: Path, config: dict) -> dict[str, torch.Tensor]:
    """Both weight files as one state dict of a DualEncoder (text parameters under ``text.model.``).

    Args:
        folder: the exported folder.
        config: its ``config.json`` (with the SHA-256 of each weight file).

    Raises:
        UserError: a file is not safetensors, or its hash differs from the one ``config.json`` records.
    """

    recorded = config.get("sha256") or {}
    state = {}
    for relative, prefix in ((WEIGHTS_NAME, ""), (f"{TEXT_DIR}/{WEIGHTS_NAME}", TEXT_PREFIX)):
        path = folder / relative
        if relative in recorded and sha256_of(path) != recorded[relative]:
            raise UserError(f"{path}: SHA-256 differs from the one {folder / CONFIG_NAME} records; the file was "
                            "changed or damaged: download or export the folder again")
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path}: not a safetensors file ({err}); download or export the folder again") from None
        state.update({prefix + key: value for key, value in tensors.items()})
    return state


def load_exported(source: str | Path, device: str | torch.device = "cpu", revision: str | None = None
                  ) -> ExportedModel:
    """Load an exported model: a local folder, or a Hugging Face hub repo id (downloaded, then read offline).

    Args:
        source: the folder, or ``owner/name`` on the hub.
        device: where to put the model.
        revision: with a repo id: branch, tag or commit.

    Returns:
        The model in eval mode and its folder's description.

    Raises:
        UserError: the folder is incomplete, not of this format, or its weights do not fit its config.
    """

    folder = resolve_source(source, revision)
    config, training = read_folder_config(folder)
    model_settings = model_config(config, folder)
    with quiet_transformers():  # every weight is replaced by the folder's (strictly) right after
        try:
            model = DualEncoder(model_settings, audio_weights="random", text_pretrained=False)
        except UserError:
            raise
        except Exception as err:  # transformers raises many kinds for a text/config.json it cannot build
            reason = " ".join(str(err).split())[:200]
            raise UserError(f"{folder / TEXT_DIR / CONFIG_NAME}: cannot build the text transformer it describes "
                            f"({type(err).__name__}: {reason}); {_CHANGED}") from None
    load_weights(model, read_weights(folder, config), WeightSource(
        f"exported model {folder}", folder / WEIGHTS_NAME, target=f"the model its {CONFIG_NAME} describes",
        fix=_REEXPORT))
    model.eval().to(device)
    audio_seconds = checked_value("audio_seconds", config.get("audio_seconds", TrainConfig.audio_seconds),
                                  str(folder / CONFIG_NAME))
    max_samples = TrainConfig(model=model_settings, audio_seconds=audio_seconds).clip_samples(model.sample_rate)
    return ExportedModel(model, folder, config, training, max_samples)


def resolve_source(source: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; anything else shaped ``owner/name`` is downloaded from the hub.

    Raises:
        UserError: neither a folder nor a repo id, or the download failed.
    """

    path = Path(source).expanduser()
    if path.exists():
        return path.absolute()
    if looks_like_repo_id(str(source)):
        return download(str(source), revision)
    raise UserError(f"{source}: no such folder, and not a hub repo id (OWNER/NAME); pass a folder written by "
                    "`dcase-t6 export`")


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state with every tensor contiguous on the CPU, a copy of any tensor sharing memory with an earlier one
    (safetensors stores no shared tensors)."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            value = value.clone()
        seen.add(storage)
        out[key] = value
    return out
