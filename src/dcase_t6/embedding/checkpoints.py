"""`embed`: a registered run's checkpoint -> audio and text embeddings and the similarity matrix of a split.

Input settings (``audio_seconds``) come from the config stored in the checkpoint, the same config its
validation used, so a model is embedded exactly as it was validated, also as a distillation teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.console import count_progress
from dcase_t6.data.audio_cache import AudioCache, build_cache, cached_split
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import Split, load_split
from dcase_t6.embedding.encode import embed_audio, embed_text, similarity
from dcase_t6.models import DualEncoder
from dcase_t6.models.checkpoint import load_weights
from dcase_t6.registry import RegisteredFile, Registry
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from dcase_t6.training.config import TrainConfig, from_dict


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A run's model rebuilt from one of its checkpoints, the registry record of that file and the run's config."""

    model: DualEncoder
    checkpoint: RegisteredFile
    config: TrainConfig


def load_model(registry: Registry, run: str, tag: str = "best", device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild a run's model from a checkpoint whose hash the registry verifies (no weight download).

    The model is built from the config stored in the checkpoint (for a run with cluster heads: with its
    class count), so it is the model that was trained.

    Args:
        registry: the registry of the run.
        run: a run reference.
        tag: the checkpoint, ``best`` or ``last``.
        device: where to put the model.

    Returns:
        The model, the checkpoint's registry record and the stored config.

    Raises:
        UserError: the weights do not fit the model the stored config describes (see ``load_weights``).
    """
    record = registry.file(run, "checkpoint", tag)
    state = torch.load(record.path, map_location=device, weights_only=True)
    config = from_dict(state["config"], source=str(record.path))
    model = DualEncoder(config.model, audio_weights="random")
    load_weights(model, state["model"], source=f"run {record.run_id} checkpoint {tag}", path=record.path,
                 target="the model its config describes",
                 fix=lambda: (f"it was written by another dcase-t6 version ({_code_version_of(registry, record)}): "
                              "embed with that version or retrain"))
    return LoadedCheckpoint(model.to(device), record, config)


def _code_version_of(registry: Registry, record: RegisteredFile) -> str:
    """The code version recorded for the run that wrote ``record``."""
    return registry.run(record.run_id).code_version


def embed_run(workdir: str | Path, run: str, data_root: str | Path, dataset: str, split: str, tag: str = "best",
              batch_size: int = 32, with_similarity: bool = True) -> dict:
    """Embed one split with a run's checkpoint (``best`` or ``last``) and the input settings of the run's
    config; writes and registers the embeddings and (unless ``with_similarity`` is False, as for a training
    split's distillation targets) the similarity matrix. Clips the audio cache skipped are left out with
    their queries (one warning line); the evaluation set, which needs every clip, fails instead. The run is
    held with an "embed" lease meanwhile, so `runs rm` refuses it."""
    registry = Registry(workdir)
    with registry.using(run, "embed") as run_id:
        return _embed(registry, run_id, data_root, dataset, split, tag, batch_size, with_similarity)


def _embed(registry: Registry, run: str, data_root: str | Path, dataset: str, split: str, tag: str, batch_size: int,
           with_similarity: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(registry, run, tag, str(device))
    model, checkpoint = loaded.model, loaded.checkpoint
    data = load_split(data_root, dataset, split)
    build_cache(Layout.at(data_root), model.sample_rate, [dataset])
    store = AudioCache(data_root, model.sample_rate)
    data = cached_split(store, data)  # clips the cache skipped (unreadable) are left out with their queries
    audio = _audio_embeddings(registry, checkpoint, model, data, store, device, batch_size,
                              loaded.config.clip_samples(model.sample_rate))
    with count_progress() as bar:
        task = bar.add_task(f"{split}: captions", total=len(data.queries))
        text = embed_text(model, data.queries, batch_size, device, lambda n: bar.advance(task, n))
    directory = registry.workdir / "runs" / checkpoint.run_id / "outputs"
    embeddings_path = _save_npz(directory / f"{dataset}.{split}.embeddings.npz", checkpoint=checkpoint.sha256,
                                files=np.array(data.files), paths=np.array([str(p) for p in data.paths]),
                                audio=audio, queries=np.array(data.queries), text=text)
    info = {"dataset": dataset, "split": split, "checkpoint": tag, "checkpoint_epoch": checkpoint.info.get("epoch"),
            "audio_seconds": loaded.config.audio_seconds, "queries": len(data.queries), "files": len(data.files)}
    registry.add_file(checkpoint.run_id, "embeddings", split_tag(dataset, split), embeddings_path, info)
    written = {"run": checkpoint.run_id, **info, "embeddings": str(embeddings_path)}
    if with_similarity:
        matrix_path = directory / f"{dataset}.{split}.similarity.npz"
        write_matrix(SimilarityMatrix(data.queries, data.files, similarity(text, audio)), matrix_path)
        registry.add_file(checkpoint.run_id, "similarity", split_tag(dataset, split), matrix_path, info)
        written["similarity"] = str(matrix_path)
    return written


def split_tag(dataset: str, split: str) -> str:
    """Registry tag of a split's outputs: ``<dataset>/<split>``."""
    return f"{dataset}/{split}"


def _audio_embeddings(registry: Registry, checkpoint: RegisteredFile, model: DualEncoder, data: Split,
                      store: AudioCache, device: torch.device, batch_size: int, max_samples: int) -> np.ndarray:
    """Embed the split's clips, reusing clips this checkpoint already embedded for any split."""
    known = _known_audio(registry.workdir / "runs" / checkpoint.run_id / "outputs", checkpoint.sha256)
    paths = [str(p) for p in data.paths]
    missing = [p for p in dict.fromkeys(paths) if p not in known]
    if missing:
        with count_progress() as bar:
            task = bar.add_task(f"{data.split}: audio", total=len(missing))
            vectors = embed_audio(model, [Path(p) for p in missing], store.clip, max_samples, batch_size, device,
                                  lambda n: bar.advance(task, n))
        known.update(zip(missing, vectors))
    return np.stack([known[p] for p in paths])


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
