"""`embed --bank`: QB-Norm's query bank of a split, the captions of a bank split (training) scored against the clips
of the split just embedded.

A bank is an ordinary similarity matrix (``<dataset>.<split>.bank.npz``, read by ``read_matrix``): its rows are
the distinct captions of the bank split (each text once, in first-seen order), its columns the scored split's
clips in the order of that split's similarity matrix, its scores the same cosine similarities ``embed`` writes
(``encode.similarity``) of the same model. The clips' vectors come from the scored split's embeddings file;
the captions' vectors from the bank split's embeddings file when the same weights wrote it, else they are
embedded now (text only: a few seconds per thousand captions on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.split_index import load_split
from dcase_t6.embedding.checkpoints import EmbedOutcome, SplitRequest, split_tag
from dcase_t6.embedding.encode import EncodeSettings, embed_text, similarity
from dcase_t6.models import DualEncoder
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from dcase_t6.runs.folder import load_exported
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from dcase_t6.runs.world import World


@dataclass(frozen=True)
class BankRequest:
    """A bank to write: the scored split's request and what ``embed`` wrote for it (its embeddings file), and
    the bank split as ``SPLIT`` (of the same dataset) or ``DATASET/SPLIT``."""

    split: SplitRequest
    scored: EmbedOutcome
    bank: str

    @property
    def bank_dataset_split(self) -> tuple[str, str]:
        """(dataset, split) of the bank."""
        dataset, separator, split = self.bank.partition("/")
        return (dataset, split) if separator else (self.split.dataset, self.bank)


def check_bank_split(bank: str, dataset: str, split: str) -> None:
    """A UserError (``--bank``) for an empty bank name or the scored split itself.

    Args:
        bank: ``SPLIT`` or ``DATASET/SPLIT``.
        dataset: the scored split's dataset.
        split: the scored split.
    """
    bank_dataset, separator, bank_split = bank.partition("/")
    bank_dataset, bank_split = (bank_dataset, bank_split) if separator else (dataset, bank)
    if not bank_dataset.strip() or not bank_split.strip():
        raise UserError(f"--bank {bank!r}: give the bank's split, e.g. --bank development-training (or "
                        "DATASET/SPLIT)")
    if (bank_dataset, bank_split) == (dataset, split):
        raise UserError(f"--bank {bank}: the bank must not be the scored split {dataset}/{split} (QB-Norm's bank is "
                        "other captions, e.g. --bank development-training)")


def bank_run(workdir: str | Path, run: str, request: BankRequest, reporter: Reporter = SILENT) -> Path:
    """Write and register a run's bank of a split (``embed RUN --bank``), after its embeddings were written.

    Args:
        workdir: the registry's work directory.
        run: the run reference.
        request: the scored split, what embed wrote for it, and the bank split.
        reporter: a bar over the captions embedded.

    Returns:
        The bank file, ``<dataset>.<split>.bank.npz`` beside the split's embeddings.
    """
    registry = Registry(workdir)
    settings = EncodeSettings(request.split.batch_size, _device(request.split.world))
    with registry.using(run, "embed") as run_id:
        loaded = load_model(registry, run_id, request.split.checkpoint, str(settings.device))
        path = _write_bank(loaded.model, loaded.checkpoint.sha256, request, settings, reporter)
        info = {"dataset": request.split.dataset, "split": request.split.split, "bank": "/".join(
            request.bank_dataset_split), "checkpoint": request.split.checkpoint}
        registry.add_file(loaded.checkpoint.run_id, "bank", split_tag(request.split.dataset, request.split.split),
                          path, info)
    return path


def bank_exported(source: str | Path, request: BankRequest, revision: str | None = None,
                  reporter: Reporter = SILENT) -> Path:
    """Write an exported model's bank of a split (``embed --model DIR --bank``) beside its embeddings.

    Args:
        source: the exported folder or hub repo id (as given to ``embed_exported``).
        request: the scored split, what embed wrote for it, and the bank split.
        revision: with a repo id: branch, tag or commit.
        reporter: a bar over the captions embedded.

    Returns:
        The bank file.
    """
    settings = EncodeSettings(request.split.batch_size, _device(request.split.world))
    loaded = load_exported(source, settings.device, revision)
    return _write_bank(loaded.model, loaded.weights_sha256, request, settings, reporter)


def bank_captions(data_root: str | Path, dataset: str, split: str) -> list[str]:
    """The distinct captions of a split, in first-seen order.

    Raises:
        UserError: for a split without captions.
    """
    captions = list(dict.fromkeys(load_split(data_root, dataset, split).queries))
    if not captions:
        raise UserError(f"--bank {dataset}/{split}: the split has no captions; use a training split, e.g. "
                        "--bank development-training")
    return captions


def _write_bank(model: DualEncoder, weights_sha: str, request: BankRequest, settings: EncodeSettings,
                reporter: Reporter) -> Path:
    dataset, split = request.bank_dataset_split
    captions = bank_captions(request.split.data_root, dataset, split)
    folder = request.scored.embeddings.parent
    known = _known_text(folder / f"{dataset}.{split}.embeddings.npz", weights_sha)
    missing = [caption for caption in captions if caption not in known]
    if missing:
        known.update(zip(missing, embed_text(model, missing, settings, reporter, f"bank {dataset}/{split}")))
    with np.load(request.scored.embeddings, allow_pickle=False) as scored:
        files, audio = scored["files"].tolist(), scored["audio"]
    text = np.stack([known[caption] for caption in captions])
    path = folder / f"{request.split.dataset}.{request.split.split}.bank.npz"
    write_matrix(SimilarityMatrix(captions, files, similarity(text, audio)), path)
    return path


def _known_text(path: Path, weights_sha: str) -> dict[str, np.ndarray]:
    """Caption -> text vector of an embeddings file written by the same weights (empty when none is)."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        if str(data["checkpoint"]) != weights_sha:
            return {}
        return dict(zip(data["queries"].tolist(), data["text"]))


def _device(world: World | None) -> torch.device:
    return world.device if world is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
