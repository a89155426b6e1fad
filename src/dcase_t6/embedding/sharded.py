"""A split's clips and captions embedded in shards across torchrun processes, in resumable chunks.

Each process embeds a contiguous shard of the clips and one of the captions (``World.shard``: shard sizes differ
by at most one), chunk by chunk (``chunk_batches`` whole batches each); every finished chunk is kept in the
partial folder (``partial``), and a chunk found there from an interrupted run of the same embedding is loaded
instead of embedded again. The main process then gathers the shards in rank order. Alone, the one shard is the
whole list and the batches are those of an unsharded run, so the vectors are bit for bit the same. Work that fits
in one chunk per kind and process is not kept (it takes no longer to redo than to reload): no partial folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import ITEMS, SILENT, Reporter, Task
from dcase_t6.embedding import partial
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text
from dcase_t6.embedding.partial import Recipe, chunk_ranges
from dcase_t6.models import DualEncoder
from dcase_t6.runs.world import World

DEFAULT_CHUNK_BATCHES = 32  # batches per resumable chunk: 1024 clips or captions at the default batch size
MAX_CHUNK_BATCHES = 65_536
GATHER_ROWS = 16_384  # rows per process and gather: bounds the main process's receive buffers


def check_chunk_batches(value, where: str) -> int:
    """``value`` when it is a whole number from 1 to MAX_CHUNK_BATCHES; a UserError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHUNK_BATCHES:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"{where} {shown}: the chunk size must be a whole number of batches between 1 and "
                        f"{MAX_CHUNK_BATCHES} ({DEFAULT_CHUNK_BATCHES} by default; an interrupted embedding "
                        "resumes at the first unfinished chunk)")
    return value


@dataclass(frozen=True)
class ShardedJob:
    """How a split is embedded: ``model`` run with ``settings`` (batch size, device), by the processes of
    ``world`` (each its shard), chunks kept in the ``partial`` folder, ``checkpoint`` the hash of the weights (a
    chunk of other weights is never reused) and ``chunk_batches`` batches per chunk."""

    model: DualEncoder
    settings: EncodeSettings
    world: World
    partial: Path
    checkpoint: str
    chunk_batches: int = DEFAULT_CHUNK_BATCHES

    @property
    def recipe(self) -> Recipe:
        return Recipe(self.checkpoint, self.settings.batch_size, self.chunk_batches, self.world.size,
                      self.settings.device.type)


@dataclass(frozen=True)
class ChunkPlan:
    """One kind of item as one process embeds it: ``kind`` (audio or text), the ``key`` its chunks are made under,
    ``chunks`` (this process's, as row ranges of all the items of that kind) and the ``folder`` that keeps them
    (None: they are not kept)."""

    kind: str
    key: str
    chunks: list[range]
    folder: Path | None


@dataclass(frozen=True)
class SplitVectors:
    """A split's vectors as the main process gathers them: ``audio`` (clips, dim) in the order of the clips given
    and ``text`` (captions, dim) in caption order (zero rows when there were none); None on the other processes.
    ``embedded`` and ``reused``: the chunks this process embedded now and found finished."""

    audio: np.ndarray | None
    text: np.ndarray | None
    embedded: int = 0
    reused: int = 0


def embed_split(job: ShardedJob, clips: Clips, captions: Sequence[str], reporter: Reporter = SILENT,
                label: str = "") -> SplitVectors:
    """Embed clips and captions, each process its shard, resuming from the partial folder (a collective: every
    process calls it with the same clips and captions). Call ``finish`` once the outputs are written.

    Args:
        job: the model, the processes and the partial folder.
        clips: the clips (all of them; each process embeds its shard).
        captions: the captions (all of them).
        reporter: the bars (this process's share) and the note on resuming (main process).
        label: what the bars start with (the split's name).

    Returns:
        The gathered vectors on the main process.
    """
    recipe, world = job.recipe, job.world
    keys = {"audio": recipe.key("audio", [f"max_samples={clips.max_samples}", *(str(p) for p in clips.paths)]),
            "text": recipe.key("text", captions)}
    counts = {"audio": len(clips.paths), "text": len(captions)}
    # kept when some process has more than one chunk of some kind (the main process's shards are the longest)
    kept = any(len(World(0, world.size).shard(range(count))) > recipe.chunk_size for count in counts.values())
    if kept and world.is_main:
        _prepare(job, keys, counts, reporter)
    world.barrier()
    plans = {kind: ChunkPlan(kind, keys[kind], chunk_ranges(world.shard(range(counts[kind])), recipe.chunk_size),
                             job.partial if kept else None) for kind in keys}
    settings, suffix = job.settings, "" if world.size == 1 else f" (process {world.rank + 1} of {world.size})"

    def audio(rows: range, bar: Reporter) -> np.ndarray:
        part = Clips(clips.paths[rows.start:rows.stop], clips.read, clips.max_samples)
        return embed_audio(job.model, part, settings, bar)

    def text(rows: range, bar: Reporter) -> np.ndarray:
        return embed_text(job.model, captions[rows.start:rows.stop], settings, bar)

    results = {}
    for kind, encode, name in (("audio", audio, "audio"), ("text", text, "captions")):
        if counts[kind]:  # the same on every process: none calls a collective the others skip
            local, embedded, reused = run_chunks(plans[kind], encode, reporter, f"{label}: {name}{suffix}")
            results[kind] = (gather_rows(local, world), embedded, reused)
        else:
            results[kind] = (np.zeros((0, 0), dtype=np.float32) if world.is_main else None, 0, 0)
    (audio_vectors, audio_new, audio_old), (text_vectors, text_new, text_old) = results["audio"], results["text"]
    return SplitVectors(audio_vectors, text_vectors, audio_new + text_new, audio_old + text_old)


def run_chunks(plan: ChunkPlan, encode: Callable[[range, Reporter], np.ndarray], reporter: Reporter,
               label: str) -> tuple[np.ndarray, int, int]:
    """This process's chunks of one kind: the finished ones loaded, the others encoded and kept (one bar).

    Args:
        plan: the chunks and where they are kept.
        encode: rows -> their (rows, dim) float32 vectors, advancing the bar of the reporter it is given.
        reporter: the bar.
        label: the bar's description.

    Returns:
        The (rows of the shard, dim) vectors, the number of chunks embedded and the number reused.
    """
    found = [None if plan.folder is None else partial.load_chunk(plan.folder, plan.kind, rows, plan.key)
             for rows in plan.chunks]
    done = sum(len(rows) for rows, vectors in zip(plan.chunks, found) if vectors is not None)
    parts = []
    with reporter.task(label, sum(len(rows) for rows in plan.chunks), ITEMS, completed=done) as task:
        for rows, vectors in zip(plan.chunks, found):
            if vectors is None:
                vectors = encode(rows, _OneBar(task))
                if plan.folder is not None:
                    partial.save_chunk(plan.folder, plan.kind, rows, plan.key, vectors)
            parts.append(vectors)
    embedded = sum(vectors is None for vectors in found)
    local = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    return local, embedded, len(found) - embedded


def finish(job: ShardedJob) -> None:
    """After the main process wrote the outputs: it removes the partial folder (also one an earlier embedding with
    other settings left), and every process waits for it (a collective)."""
    if job.world.is_main:
        partial.remove(job.partial)
    job.world.barrier()


def gather_rows(local: np.ndarray, world: World) -> np.ndarray | None:
    """Every process's (rows, dim) float32 vectors concatenated in rank order on the main process, None on the
    others (a collective). Shards may hold different numbers of rows, none at all included; the values travel
    unchanged, in blocks of at most GATHER_ROWS rows per process.

    Args:
        local: this process's vectors.
        world: the processes.

    Returns:
        All the vectors on the main process.
    """
    if world.size == 1:
        return local
    shape = torch.tensor([local.shape[0], local.shape[1] if local.shape[0] else 0], device=world.device)
    shapes = [torch.zeros_like(shape) for _ in range(world.size)]
    dist.all_gather(shapes, shape)
    rows = [int(size[0]) for size in shapes]
    width, longest = max(int(size[1]) for size in shapes), max(rows)
    received: list[list[np.ndarray]] = [[] for _ in range(world.size)]
    for start in range(0, longest, GATHER_ROWS):
        block = torch.zeros(min(GATHER_ROWS, longest - start), width, dtype=torch.float32, device=world.device)
        mine = local[start:start + block.shape[0]]
        if len(mine):
            block[:len(mine)] = torch.from_numpy(np.ascontiguousarray(mine, dtype=np.float32)).to(world.device)
        parts = [torch.empty_like(block) for _ in range(world.size)] if world.is_main else None
        dist.gather(block, parts, dst=0)
        for rank, part in enumerate(parts or []):
            received[rank].append(part[:max(0, min(block.shape[0], rows[rank] - start))].cpu().numpy())
    if not world.is_main:
        return None
    return np.concatenate([part for parts in received for part in parts])


def _prepare(job: ShardedJob, keys: dict[str, str], counts: dict[str, int], reporter: Reporter) -> None:
    """The main process readies the partial folder and says whether the embedding starts over or resumes."""
    dropped = partial.prepare(job.partial, {kind: key for kind, key in keys.items() if counts[kind]})
    if dropped:
        reporter.info(f"{job.partial}: removed the finished chunks of {' and '.join(dropped)} made with other "
                      "weights, items, batch size, chunk size, number of processes or device; embedding them anew")
    size = job.recipe.chunk_size
    chunks = {kind: [rows for rank in range(job.world.size)
                     for rows in chunk_ranges(World(rank, job.world.size).shard(range(counts[kind])), size)]
              for kind in keys}
    done = sum(partial.finished(job.partial, kind, chunks[kind]) for kind in keys if counts[kind])
    if done:
        total = sum(len(chunks[kind]) for kind in keys)
        reporter.info(f"{job.partial}: resuming an interrupted embedding, {done} of {total} chunks already "
                      "embedded")


class _OneBar(Reporter):
    """Hands one bar to every task asked for: the batches of all the chunks advance the same bar."""

    def __init__(self, task: Task):
        self._task = task

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = ITEMS, completed: float = 0) -> Iterator[Task]:
        yield self._task
