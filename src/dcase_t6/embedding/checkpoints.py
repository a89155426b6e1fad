"""`embed`: a registered run's checkpoint -> audio and text embeddings and the similarity matrix of a split.

Input settings (``audio_seconds``) come from the config stored in the checkpoint, the same config its
validation used, so a model is embedded exactly as it was validated, also as a distillation teacher.
``embed_exported`` does the same with an exported model folder or hub repo id (``embed --model``), without
any registry: the files go to a folder of your choice.

Under torchrun (``SplitRequest.world``) each process embeds its shard of the clips and captions and the main
process writes the outputs; every embedding resumes from the finished chunks of an interrupted one
(``embedding.sharded``, ``embedding.partial``).
"""

from __future__ import annotations

import contextlib
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
from dcase_t6.embedding.encode import Clips, EncodeSettings, similarity
from dcase_t6.embedding.partial import partial_folder
from dcase_t6.embedding.sharded import DEFAULT_CHUNK_BATCHES, ShardedJob, check_chunk_batches, embed_split, finish
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from dcase_t6.runs.folder import load_exported
from dcase_t6.runs.lookup import lookup_for, resolved_by_main, writable
from dcase_t6.runs.model import load_model
from dcase_t6.runs.node_folders import folder_writer
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.runs.world import World, share_from_main

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
    an exported model has one) and how many clips or captions per forward pass (``batch_size``); the batches per
    resumable chunk (``chunk_batches``) and the processes that share the work (``world``, from ``init_world``
    under torchrun; None: this process alone, on the GPU if there is one)."""

    data_root: str | Path
    dataset: str
    split: str
    checkpoint: str = "best"
    batch_size: int = 32
    chunk_batches: int = DEFAULT_CHUNK_BATCHES
    world: World | None = None


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
    lease meanwhile, so `runs rm` refuses it. Under torchrun (``request.world``) every process calls it: each
    embeds its shard, the main process writes and registers (and alone opens the registry: the others resolve
    nothing and read the run's record, ``runs.lookup``). An interrupted embedding resumes from its finished
    chunks (``<dataset>.<split>.embeddings.partial`` beside the output, removed once the output is written).

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
    check_chunk_batches(request.chunk_batches, "chunk size")
    world = request.world or World()
    lookup = lookup_for(world, workdir)  # under torchrun only the main process opens the registry
    run_id = resolved_by_main(lookup, run, world)  # the others read the run's record by its full id
    with writable(lookup).using(run_id, "embed") if world.is_main else contextlib.nullcontext(run_id):
        return _embed(lookup, run_id, request, with_similarity, reporter)


def _embed(registry: RunLookup, run: str, request: SplitRequest, with_similarity: bool,
           reporter: Reporter) -> EmbedOutcome:
    dataset, split = request.dataset, request.split
    world = request.world or World(device=_device())
    reporter = reporter.for_rank(world.is_main)
    settings = EncodeSettings(request.batch_size, world.device)
    loaded = load_model(registry, run, request.checkpoint, str(settings.device))
    model, checkpoint = loaded.model, loaded.checkpoint
    data, store = _cached_split(request, model.sample_rate, reporter)
    directory = registry.layout.outputs(checkpoint.run_id)
    # the clips this checkpoint already embedded for any split are reused, the others embedded once each (the
    # main process decides which: every process then shards the same list)
    known = _known_audio(directory, checkpoint.sha256) if world.is_main else {}
    # positions, not paths: on node-local data roots a path is each node's own
    unique = list(dict.fromkeys(str(p) for p in data.paths))
    missing = [unique[i] for i in share_from_main([i for i, p in enumerate(unique) if p not in known], world)]
    embeddings_path = directory / f"{dataset}.{split}.embeddings.npz"
    job = ShardedJob(model, settings, world, partial_folder(embeddings_path), checkpoint.sha256,
                     request.chunk_batches)
    clips = Clips([Path(p) for p in missing], store.clip, loaded.config.clip_samples(model.sample_rate))
    vectors = embed_split(job, clips, data.queries, reporter, split)
    outcome = EmbedOutcome(dataset, split, len(data.queries), len(data.files), loaded.config.audio_seconds,
                           embeddings_path, None, run=checkpoint.run_id, checkpoint=request.checkpoint,
                           checkpoint_epoch=checkpoint.info.get("epoch"))
    matrix_path = directory / f"{dataset}.{split}.similarity.npz" if with_similarity else None
    if world.is_main:
        known.update(zip(missing, vectors.audio))
        audio, text = np.stack([known[str(p)] for p in data.paths]), vectors.text
        _save_npz(embeddings_path, checkpoint=checkpoint.sha256, files=np.array(data.files),
                  paths=np.array([str(p) for p in data.paths]), audio=audio, queries=np.array(data.queries), text=text)
        info = {"dataset": dataset, "split": split, "checkpoint": request.checkpoint,
                "checkpoint_epoch": outcome.checkpoint_epoch, "audio_seconds": outcome.audio_seconds,
                "queries": outcome.queries, "files": outcome.files}
        writable(registry).add_file(checkpoint.run_id, "embeddings", split_tag(dataset, split), embeddings_path, info)
        if matrix_path is not None:
            write_matrix(SimilarityMatrix(data.queries, data.files, similarity(text, audio)), matrix_path)
            writable(registry).add_file(checkpoint.run_id, "similarity", split_tag(dataset, split), matrix_path, info)
    finish(job)  # the partial folder goes only now that the outputs are in place
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
        What was written, with the model's folder (on every process under torchrun; the main one writes).
    """
    dataset, split = request.dataset, request.split
    check_batch_size(request.batch_size, "batch size")
    check_chunk_batches(request.chunk_batches, "chunk size")
    world = request.world or World(device=_device())
    reporter = reporter.for_rank(world.is_main)
    settings = EncodeSettings(request.batch_size, world.device)
    # the main process fetches a hub model first: the others then load it from the local cache
    loaded = load_exported(source, settings.device, revision) if world.is_main else None
    world.barrier()
    if loaded is None:
        loaded = load_exported(source, settings.device, revision)
    model = loaded.model
    data, store = _cached_split(request, model.sample_rate, reporter)
    paths = list(dict.fromkeys(str(p) for p in data.paths))
    out = Path(out)
    embeddings_path = out / f"{dataset}.{split}.embeddings.npz"
    job = ShardedJob(model, settings, world, partial_folder(embeddings_path), loaded.weights_sha256,
                     request.chunk_batches)
    vectors = embed_split(job, Clips([Path(p) for p in paths], store.clip, loaded.max_samples), data.queries,
                          reporter, split)
    matrix_path = out / f"{dataset}.{split}.similarity.npz"
    if world.is_main:
        by_path = dict(zip(paths, vectors.audio))
        audio, text = np.stack([by_path[str(p)] for p in data.paths]), vectors.text
        _save_npz(embeddings_path, checkpoint=loaded.weights_sha256, files=np.array(data.files),
                  paths=np.array([str(p) for p in data.paths]), audio=audio, queries=np.array(data.queries), text=text)
        write_matrix(SimilarityMatrix(data.queries, data.files, similarity(text, audio)), matrix_path)
    finish(job)
    return EmbedOutcome(dataset, split, len(data.queries), len(data.files), loaded.config.get("audio_seconds"),
                        embeddings_path, matrix_path, model=str(loaded.folder))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cached_split(request: SplitRequest, sample_rate: int, reporter: Reporter) -> tuple[Split, AudioCache]:
    """The split without the clips the audio cache skipped (unreadable: left out with their queries), and the
    cache at ``sample_rate`` (built or updated first, by the main process, or on node-local data roots by each
    node's first process, while the others wait)."""
    data_root, world = request.data_root, request.world or World()
    data = load_split(data_root, request.dataset, request.split)
    if folder_writer(world, data_root, reporter):  # one process per node sharing the data root (node_folders)
        build_cache(Layout.at(data_root), CacheRequest(sample_rate, [request.dataset]), reporter)
    world.barrier()
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
