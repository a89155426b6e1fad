"""``runs import --format baseline``: the DCASE 2025 baseline's Lightning checkpoint -> a registered run.

The baseline (``CPJKU/dcase2025_task6_baseline``, ``d25_t6/retrieval_module.py``) is a Lightning module,
``AudioRetrievalModel``: PaSST ``passt_s_p16_s16_128_ap468`` cut into 10 s segments, roberta-large without a
pooler, two projections to 1024-d and a temperature ``tau``. It is our default architecture, so its checkpoint
maps onto our ``DualEncoder`` tensor for tensor:

====================================================  ==========================================
the baseline's key (``state_dict``)                    ours
====================================================  ==========================================
``audio_embedding_model.model.model.*``                ``audio.net.*`` (the PaSST transformer)
``audio_embedding_model.model.mel.*``                  ``audio.mel.*`` (the mel front end's buffers)
``audio_projection.*``, ``text_projection.*``          the same
``text_embedding_model.*``                             ``text.model.*`` (the RoBERTa encoder)
``tau`` (shape [1], used as ``abs(tau)``)              ``log_temperature`` = log(abs(tau))
====================================================  ==========================================

Dropped, each by its name: PaSST's AudioSet heads (``...model.model.head.*``, ``...model.model.head_dist.*``), the
text pooler (``text_embedding_model.pooler.*``, absent in the baseline's own files) and the constant
``text_embedding_model.embeddings.position_ids`` buffer older transformers saved. A ``_orig_mod.`` part that
``torch.compile`` puts into the keys of a compiled module (the baseline compiles both encoders on GPUs of
compute capability >= 7) is removed first. Any other key is an error naming it.

The file is read without running anything from it (``models.weights.read_checkpoint``: torch's
``weights_only`` unpickler, objects it does not allow become inert placeholders and are dropped). Its
``hyper_parameters`` (the baseline's command-line arguments) give the run's training config: datasets,
epochs, batch size, learning rates, warm-up and ramp-down, seed, patchout, roberta-base or -large. Input
settings are the baseline's, which are our defaults: 32 kHz, 30 s cut into three 10 s segments (1, 2 or 3 used by
duration), captions lower-cased without punctuation, 32 tokens, first token.

The text encoder's architecture and tokenizer come from ``text_model`` (default: the hub's ``roberta-large`` or
``roberta-base``, as the baseline loads them; only ``config.json`` and the tokenizer files are read, never the
weights, which are the checkpoint's); offline, a local folder with those files. The checkpoint is converted into
an exported model folder (``sharing.folder``) and registered like any imported folder (``sharing.importing``), so
the run works everywhere a run does.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import staging_dir
from dcase_t6.common.inputs import require_file
from dcase_t6.models import DualEncoder
from dcase_t6.models import weights as weight_files
from dcase_t6.models.checkpoint import WeightSource, load_weights
from dcase_t6.models.text import quiet_transformers
from dcase_t6.models.weights import read_checkpoint
from dcase_t6.runs.config import from_dict
from dcase_t6.runs.folder import FORMAT as FOLDER_FORMAT
from dcase_t6.runs.folder import FORMAT_VERSION, model_config_json, write_model_folder
from dcase_t6.runs.records import code_version, sha256_of
from dcase_t6.sharing.importing import ImportResult, register_folder

FORMAT = "baseline"
CHECKPOINT_URL = "https://cloud.cp.jku.at/index.php/s/6ZTQ3mcwk9AAS4i/download"
CHECKPOINT_PAGE = "https://github.com/CPJKU/dcase2025_task6_baseline (README, 'A checkpoint of the model ...')"
CHECKPOINT_NAME = "dcase2025_task6_baseline.ckpt"
# The baseline README's dev-test results of that checkpoint (Clotho, AudioCaps, WavCaps; new annotations for mAP@16).
PUBLISHED_DEV_TEST = {"mAP@16": 0.4059, "mAP@10": 0.3523, "R@1": 0.2329, "R@5": 0.5217, "R@10": 0.6478}

_COMPILED = "_orig_mod."
_RENAMED = (("audio_embedding_model.model.model.", "audio.net."),
            ("audio_embedding_model.model.mel.", "audio.mel."),
            ("audio_projection.", "audio_projection."),
            ("text_projection.", "text_projection."),
            ("text_embedding_model.", "text.model."))
DROPPED = {"audio_embedding_model.model.model.head.": "PaSST's AudioSet classifier head",
           "audio_embedding_model.model.model.head_dist.": "PaSST's AudioSet distillation head",
           "text_embedding_model.pooler.": "the text pooler (never reaches the loss)",
           "text_embedding_model.embeddings.position_ids": "a constant buffer (0..n-1) that transformers rebuilds"}
_FIX = ("pass the checkpoint of CPJKU/dcase2025_task6_baseline (a Lightning .ckpt of its AudioRetrievalModel), "
        f"e.g. the published one: {CHECKPOINT_URL}")


@dataclass(frozen=True)
class BaselineCheckpoint:
    """A baseline checkpoint read and mapped onto our model's names.

    Attributes:
        path: the file.
        state: the tensors under our ``DualEncoder``'s names (``log_temperature`` already converted).
        mapped: (the file's key, our key) for every tensor kept, in the file's order.
        dropped: the file's keys left out, each listed in ``DROPPED``.
        hyper_parameters: the baseline's arguments as saved (plain values only).
        epoch: Lightning's epoch counter at saving (None when absent).
        global_step: Lightning's optimizer step counter at saving.
        lightning_version: the Lightning version that wrote it.
    """

    path: Path
    state: dict[str, torch.Tensor]
    mapped: list[tuple[str, str]]
    dropped: list[str]
    hyper_parameters: dict
    epoch: int | None
    global_step: int | None
    lightning_version: str | None

    @property
    def temperature(self) -> float:
        return float(self.state["log_temperature"].exp())

    @property
    def text_model(self) -> str:
        """The hub model the baseline built its text encoder from (its ``roberta_base`` argument)."""
        return "roberta-base" if self.hyper_parameters.get("roberta_base") is True else "roberta-large"


def map_key(key: str) -> str | None:
    """Our name for one of the baseline's keys (``_orig_mod.`` parts removed); None for a key dropped by name.

    Raises:
        UserError: a key that is neither mapped nor dropped.
    """
    plain = key.replace(_COMPILED, "")
    if plain.startswith(tuple(DROPPED)):
        return None
    if plain == "tau":
        return "log_temperature"
    for theirs, ours in _RENAMED:
        if plain.startswith(theirs):
            return ours + plain[len(theirs):]
    raise UserError(f"baseline checkpoint: unexpected tensor {key!r} (neither a part of the baseline's "
                    f"AudioRetrievalModel nor one of the keys dropped by name); {_FIX}")


def read_baseline_checkpoint(path: str | Path) -> BaselineCheckpoint:
    """Read a baseline Lightning checkpoint safely and map its tensors onto our names.

    Args:
        path: the ``.ckpt`` file.

    Returns:
        The mapped tensors, what was dropped, and the saved hyper-parameters and counters.

    Raises:
        UserError: the file is missing, not a torch checkpoint, not readable safely, has no ``state_dict``, or holds
            a key that is neither mapped nor dropped (named), or a ``tau`` that is zero or not finite.
    """

    path = Path(path).expanduser()
    require_file(path, f"checkpoint file not found; {_FIX}")
    content = read_checkpoint(path, _FIX)
    state = content.get("state_dict") if isinstance(content, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: no 'state_dict' in this file (not a Lightning checkpoint); {_FIX}")
    mapped, dropped, ours = [], [], {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: state_dict entry {key!r} is not a tensor; {_FIX}")
        try:
            target = map_key(str(key))
        except UserError as err:
            raise UserError(f"{path}: {str(err).removeprefix('baseline checkpoint: ')}") from None
        if target is None:
            dropped.append(key)
            continue
        if target in ours:
            raise UserError(f"{path}: tensor {key!r} appears twice (with and without {_COMPILED!r}); {_FIX}")
        if target == "log_temperature":
            tau = value.detach().float().abs().reshape(-1)
            if tau.numel() != 1 or not math.isfinite(float(tau[0])) or float(tau[0]) == 0.0:
                raise UserError(f"{path}: 'tau' must be one finite non-zero number, got {value.tolist()!r}; {_FIX}")
            value = tau[0].log()
        ours[target] = value
        mapped.append((key, target))
    hyper = content.get("hyper_parameters")
    epoch, step = content.get("epoch"), content.get("global_step")
    version = content.get("pytorch-lightning_version")
    return BaselineCheckpoint(path.absolute(), ours, mapped, dropped, hyper if isinstance(hyper, dict) else {},
                              epoch if isinstance(epoch, int) else None, step if isinstance(step, int) else None,
                              version if isinstance(version, str) else None)


def training_config(checkpoint: BaselineCheckpoint, name: str) -> dict:
    """The baseline run's training config in our terms, from its saved arguments (defaults: the baseline's).

    Args:
        checkpoint: the read checkpoint.
        name: the run's name.

    Returns:
        A config dict that ``training.config.from_dict`` accepts.
    """
    hyper = checkpoint.hyper_parameters

    def value(key: str, kind: type, default):
        """The saved argument when it has the argument's type (a bool is no number here), else the default."""
        found = hyper.get(key, default)
        fits = isinstance(found, bool) if kind is bool else isinstance(found, kind) and not isinstance(found, bool)
        return found if fits else default

    datasets = ["clotho"] + [name_ for name_ in ("audiocaps", "wavcaps") if value(name_, bool, False)]
    return {"name": name, "datasets": datasets, "epochs": value("max_epochs", int, 20),
            "batch_size": value("batch_size", int, 64), "lr": float(value("max_lr", float, 2e-5)),
            "min_lr": float(value("min_lr", float, 1e-7)), "warmup_epochs": float(value("warmup_epochs", int, 1)),
            "decay_epochs": float(value("rampdown_epochs", int, 15)), "seed": value("seed", int, 0),
            "precision": "fp16", "monitor": "mAP@10", "audio_seconds": 30.0, "audio_weights": "download",
            "model": {"backbone": "passt", "text_model": checkpoint.text_model, "embed_dim": 1024,
                      "temperature": checkpoint.temperature,
                      "trainable_temperature": value("tau_trainable", bool, False), "text_max_length": 32,
                      "text_dropout": 0.2, "patchout_t": value("s_patchout_t", int, 15),
                      "patchout_f": value("s_patchout_f", int, 2)}}


def checkpoint_file(source: str) -> Path:
    """The checkpoint a user named: a local file, or a URL downloaded once into the weights cache.

    A download that turns out to be a zip of a shared folder (not a torch checkpoint) holding one ``.ckpt`` gives
    that file, extracted beside it.

    Raises:
        UserError: no such file, the download failed (the message names the URL and where to put the file), or
            the zip holds no ``.ckpt`` or several.
    """

    if not source.startswith(("http://", "https://")):
        path = Path(source).expanduser()
        require_file(path, f"checkpoint file not found; download it from {CHECKPOINT_URL} (linked in "
                           f"{CHECKPOINT_PAGE}) and pass its path")
        return path
    downloaded = weight_files.fetch(source, "DCASE 2025 baseline checkpoint", "`runs import --format baseline`",
                                    name=CHECKPOINT_NAME if source == CHECKPOINT_URL else None, page=CHECKPOINT_PAGE)
    return _inner_checkpoint(downloaded)


def _inner_checkpoint(path: Path) -> Path:
    if not zipfile.is_zipfile(path):
        return path
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(name.endswith("data.pkl") for name in names):
            return path  # a torch checkpoint is a zip itself
        inner = [info for info in archive.infolist() if info.filename.endswith(".ckpt") and not info.is_dir()]
        if len(inner) != 1:
            raise UserError(f"{path}: a zip with {len(inner)} .ckpt files, expected exactly one; extract the "
                            "checkpoint you want and pass its path")
        target = path.with_name(path.stem + ".inner.ckpt")
        if not target.is_file():

            with atomic_path(target) as tmp, archive.open(inner[0]) as source, open(tmp, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        return target


def import_baseline(workdir: str | Path, source: str, text_model: str | None = None,
                    name: str = "dcase2025-baseline") -> BaselineImport:
    """Register the baseline's checkpoint as a run (status ``imported``).

    Args:
        workdir: the registry's folder.
        source: the ``.ckpt`` file, or a URL to download it from (``CHECKPOINT_URL``: the published one).
        text_model: where the text encoder's config and tokenizer come from (hub name or local folder; default the
            checkpoint's own: ``roberta-large`` unless it was trained with ``--roberta_base``).
        name: the run's name.

    Returns:
        ``sharing.importing.ImportResult``, plus what was mapped and dropped (``BaselineImport``).

    Raises:
        UserError: see ``read_baseline_checkpoint``; the text model cannot be loaded; the tensors do not fit the
            architecture (the first one is named).
    """

    path = checkpoint_file(source)
    checkpoint = read_baseline_checkpoint(path)
    config = from_dict(training_config(checkpoint, name), source=f"{path} (hyper_parameters)")
    origin = config.model.text_model
    if text_model:
        config.model.text_model = text_model
    with quiet_transformers():
        model = DualEncoder(config.model, audio_weights="random", text_pretrained=False)
    load_weights(model, checkpoint.state, WeightSource(
        f"baseline checkpoint {path}", path, target=f"PaSST + {origin} with 1024-d projections",
        fix=f"pass --text-model with the text model it was trained with; {_FIX}"))
    model.eval()
    digest = sha256_of(path)
    config_dict = config.to_dict()
    config_dict["model"]["text_model"] = origin
    lightning = {"file": str(path.absolute()), "checkpoint_sha256": digest, "epoch": checkpoint.epoch,
                 "global_step": checkpoint.global_step, "lightning_version": checkpoint.lightning_version}
    folder_config = {"format": FOLDER_FORMAT, "format_version": FORMAT_VERSION, "model": model_config_json(model),
                     "text_model_origin": origin, "sample_rate": model.sample_rate,
                     "audio_seconds": config.audio_seconds, "max_samples": config.clip_samples(model.sample_rate),
                     "parameters": model.parameter_count(), "run": name, "checkpoint": FORMAT,
                     "checkpoint_epoch": checkpoint.epoch, "written_by": f"dcase-t6 {code_version()}",
                     "converted_from": {"format": FORMAT, **lightning}}
    training = {"run": {"id": name, "name": name, "seed": config.seed,
                        "code_version": "CPJKU/dcase2025_task6_baseline"
                                        + (f" (lightning {checkpoint.lightning_version})"
                                           if checkpoint.lightning_version else "")},
                "config": config_dict, "monitor": "mAP@10",
                "checkpoint": {"tag": FORMAT, "epoch": checkpoint.epoch, "step": checkpoint.global_step,
                               "sha256": digest},
                "epochs": [], "dev_test": None}
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with staging_dir(workdir / ".baseline-import") as staging:
        folder = staging / "model"
        folder.mkdir()
        write_model_folder(model, folder, folder_config, training)
        result = register_folder(workdir, folder, str(source),
                                 {"source": str(source), "format": FORMAT, **lightning,
                                  "mapped": len(checkpoint.mapped), "dropped": checkpoint.dropped})
    return BaselineImport(result, checkpoint.mapped, checkpoint.dropped, origin)


@dataclass(frozen=True)
class BaselineImport:
    """What ``import_baseline`` did: the registered run (``sharing.importing.ImportResult``), the tensors mapped
    (the file's key, ours) and the file's keys dropped, and the text model the architecture came from."""

    result: ImportResult
    mapped: list[tuple[str, str]]
    dropped: list[str]
    text_model: str

    def as_json(self) -> dict:
        return {**self.result.as_json(), "format": FORMAT, "text_model": self.text_model,
                "mapped": len(self.mapped), "dropped": self.dropped}
