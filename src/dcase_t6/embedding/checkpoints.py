"""`embed`: a registered run's checkpoint -> audio and text embeddings and the similarity matrix of a split.

Input settings (``audio_seconds``) come from the config stored in the checkpoint, the same config its
validation used, so a model is embedded exactly as it was validated, also as a distillation teacher.
``embed_exported`` does the same with an exported model folder or hub repo id (``embed --model``), without
any registry: the files go to a folder of your choice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.cached_splits import cached_split
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import Split, load_split
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text, similarity
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from dcase_t6.runs.folder import load_exported
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry

MAX_BATCH = 65_536  # clips or captions per forward pass; 32 is the default, a large GPU takes a few hundred


def check_batch_size(value, where: str) -> int:
    """``value`` when it is a whole number from 1 to MAX_BATCH; a UserError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"{where} {shown}: the batch size must be a whole number between 1 and {MAX_BATCH} (clips "
                        "or captions per forward pass; 32 by default)")
    return value


@dataclass(frozen=True)
class SplitRequest:
    """What to embed: a split of a prepared data root, with which checkpoint of a run (``best`` or ``last``;
    an exported model has one) and how many clips or captions per forward pass."""

    data_root: str | Path
    dataset: str
    split: str
    checkpoint: str = "best"
    batch_size: int = 32


@dataclass(frozen=True)
class EmbedOutcome:
    """What ``embed_run`` / ``embed_exported`` wrote: the embeddings file and (unless not asked for) the similarity
    matrix of a split, with the run and checkpoint (or the exported model folder) that made them."""

    dataset: str
    split: str
    queries: int
    files: int
    audio_seconds: float | None
    embeddings: Path
    similarity: Path | None
    run: str | None = None  # a registered run's id
    checkpoint: str | None = None  # its checkpoint tag, and the epoch that checkpoint holds
    checkpoint_epoch: int | None = None
    model: str | None = None  # an exported model's folder

    def as_json(self) -> dict:
        """What ``embed --json`` prints (paths as text; the keys of the run or of the exported model)."""
        source = ({"model": self.model} if self.run is None else
                  {"run": self.run, "dataset": self.dataset, "split": self.split, "checkpoint": self.checkpoint,
                   "checkpoint_epoch": self.checkpoint_epoch})
        written = {**source, "dataset": self.dataset, "split": self.split, "audio_seconds": self.audio_seconds,
                   "queries": self.queries, "files": self.files, "embeddings": str(self.embeddings)}
        return written if self.similarity is None else {**written, "similarity": str(self.similarity)}


def embed_run(workdir: str | Path, run: str, request: SplitRequest, with_similarity: bool = True,
              reporter: Reporter = SILENT) -> EmbedOutcome:
    """Embed one split with a run's checkpoint and the input settings of the run's config.

    Writes and registers the embeddings and (unless ``with_similarity`` is False, as for a training split's
    distillation targets) the similarity matrix. Clips the audio cache skipped are left out with their queries
    (one warning); the evaluation set, which needs every clip, fails instead. The run is held with an "embed"
    lease meanwhile, so `runs rm` refuses it.

    Args:
        workdir: the registry's work directory.
        run: a run reference (id or unique prefix).
        request: the split, the checkpoint and the batch size.
        with_similarity: also write and register the similarity matrix.
        reporter: the bars and the warning about left-out clips.

    Returns:
        What was written.
    """
    check_batch_size(request.batch_size, "batch size")
    registry = Registry(workdir)
    with registry.using(run, "embed") as run_id:
        return _embed(registry, run_id, request, with_similarity, reporter)


def _embed(registry: Registry, run: str, request: SplitRequest, with_similarity: bool,
           reporter: Reporter) -> EmbedOutcome:
    dataset, split = request.dataset, request.split
    settings = EncodeSettings(request.batch_size, _device())
    loaded = load_model(registry, run, request.checkpoint, str(settings.device))
    model, checkpoint = loaded.model, loaded.checkpoint
    data, store = _cached_split(request.data_root, dataset, split, model.sample_rate, reporter)
    directory = registry.layout.outputs(checkpoint.run_id)
    # the clips this checkpoint already embedded for any split are reused, the others embedded once each
    known = _known_audio(directory, checkpoint.sha256)
    missing = [p for p in dict.fromkeys(str(p) for p in data.paths) if p not in known]
    if missing:
        clips = Clips([Path(p) for p in missing], store.clip, loaded.config.clip_samples(model.sample_rate))
        known.update(zip(missing, embed_audio(model, clips, settings, reporter, f"{split}: audio")))
    audio = np.stack([known[str(p)] for p in data.paths])
    text = embed_text(model, data.queries, settings, reporter, f"{split}: captions")
    embeddings_path = _save_npz(directory / f"{dataset}.{split}.embeddings.npz", checkpoint=checkpoint.sha256,
                                files=np.array(data.files), paths=np.array([str(p) for p in data.paths]),
                                audio=audio, queries=np.array(data.queries), text=text)
    outcome = EmbedOutcome(dataset, split, len(data.queries), len(data.files), loaded.config.audio_seconds,
                           embeddings_path, None, run=checkpoint.run_id, checkpoint=request.checkpoint,
                           checkpoint_epoch=checkpoint.info.get("epoch"))
    info = {"dataset": dataset, "split": split, "checkpoint": request.checkpoint,
            "checkpoint_epoch": outcome.checkpoint_epoch, "audio_seconds": outcome.audio_seconds,
            "queries": outcome.queries, "files": outcome.files}
    registry.add_file(checkpoint.run_id, "embeddings", split_tag(dataset, split), embeddings_path, info)
    if not with_similarity:
        return outcome
    matrix_path = directory / f"{dataset}.{split}.similarity.npz"
    write_matrix(SimilarityMatrix(data.queries, data.files, similarity(text, audio)), matrix_path)
    registry.add_file(checkpoint.run_id, "similarity", split_tag(dataset, split), matrix_path, info)
    return dataclasses.replace(outcome, similarity=matrix_path)


def embed_exported(source: str | Path, request: SplitRequest, out: str | Path, revision: str | None = None,
                   reporter: Reporter = SILENT) -> EmbedOutcome:
    """Embed one split with an exported model (a folder of `dcase-t6 export`, or a hub repo id), no registry.

    Writes ``<dataset>.<split>.embeddings.npz`` (the same arrays as a registered run's: ``files``, ``paths``,
    ``audio``, ``queries``, ``text``, and ``checkpoint``: the hash of the model's weights) and
    ``<dataset>.<split>.similarity.npz`` into ``out``, each atomically. Input settings (``audio_seconds``) are
    the folder's, those of the run it was exported from.

    Args:
        source: the exported folder or hub repo id.
        request: the split and the batch size (an exported model has one checkpoint).
        out: the folder to write to (created if missing).
        revision: with a repo id: branch, tag or commit.
        reporter: the bars and the warning about left-out clips.

    Returns:
        What was written, with the model's folder.
    """
    dataset, split = request.dataset, request.split
    check_batch_size(request.batch_size, "batch size")
    settings = EncodeSettings(request.batch_size, _device())
    loaded = load_exported(source, settings.device, revision)
    model = loaded.model
    data, store = _cached_split(request.data_root, dataset, split, model.sample_rate, reporter)
    paths = list(dict.fromkeys(str(p) for p in data.paths))
    vectors = embed_audio(model, Clips([Path(p) for p in paths], store.clip, loaded.max_samples), settings,
                          reporter, f"{split}: audio")
    by_path = dict(zip(paths, vectors))
    audio = np.stack([by_path[str(p)] for p in data.paths])
    text = embed_text(model, data.queries, settings, reporter, f"{split}: captions")
    out = Path(out)
    embeddings_path = _save_npz(out / f"{dataset}.{split}.embeddings.npz", checkpoint=loaded.weights_sha256,
                                files=np.array(data.files), paths=np.array([str(p) for p in data.paths]),
                                audio=audio, queries=np.array(data.queries), text=text)
    matrix_path = out / f"{dataset}.{split}.similarity.npz"
    write_matrix(SimilarityMatrix(data.queries, data.files, similarity(text, audio)), matrix_path)
    return EmbedOutcome(dataset, split, len(data.queries), len(data.files), loaded.config.get("audio_seconds"),
                        embeddings_path, matrix_path, model=str(loaded.folder))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cached_split(data_root: str | Path, dataset: str, split: str, sample_rate: int,
                  reporter: Reporter) -> tuple[Split, AudioCache]:
    """The split without the clips the audio cache skipped (unreadable: left out with their queries), and the
    cache at ``sample_rate`` (built or updated first)."""
    data = load_split(data_root, dataset, split)
    build_cache(Layout.at(data_root), CacheRequest(sample_rate, [dataset]), reporter)
    store = AudioCache(data_root, sample_rate, reporter)
    return cached_split(store, data, reporter), store


def split_tag(dataset: str, split: str) -> str:
    """Registry tag of a split's outputs: ``<dataset>/<split>``."""
    return f"{dataset}/{split}"


def _known_audio(directory: Path, checkpoint_sha: str) -> dict[str, np.ndarray]:
    known: dict[str, np.ndarray] = {}
    for path in sorted(directory.glob("*.embeddings.npz")):
        with np.load(path, allow_pickle=False) as data:
            if str(data["checkpoint"]) == checkpoint_sha:
                known.update(zip(data["paths"].tolist(), data["audio"]))
    return known


def _save_npz(path: Path, **arrays) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return path
