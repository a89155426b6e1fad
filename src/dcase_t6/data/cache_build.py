"""Building the audio cache (`dcase-t6 prepare cache`, and before training or embedding): plan which clips to
(re)decode, decode them in worker processes that die with the command (each appending to its own shard), and
commit the index every few seconds so an interrupted build resumes where it stopped."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import read_table, write_table
from dcase_t6.data.audio_cache import (
    CACHE_COLUMNS,
    INDEX_FILE,
    SKIPPED_FILE,
    SUFFIXES,
    TRUNCATED_FILE,
    file_crc32,
    locked,
    shard_path,
    to_int16,
    valid_entries,
)
from dcase_t6.data.audio_io import AudioProblem, StreamFacts, declared_frames, stream_mono
from dcase_t6.data.layout import Layout
from dcase_t6.data.parallel import die_with_parent, ordered_map, stat_all
from dcase_t6.data.reports import CacheReport
from dcase_t6.data.split_index import index_path, list_datasets
from dcase_t6.data.storage import (
    SAMPLE_BYTES,
    SpaceCheck,
    Storage,
    StorageRequest,
    check_space,
    choose,
    gigabytes,
    kept_length,
    remember,
    stored_bytes,
)
from dcase_t6.data.windows import probe_source


@dataclass(frozen=True)
class Job:
    """One clip to (re)cache: its index key, file, target rate, storage and the checksum cached so far (None when
    the storage changed: the content must be stored again whatever it is)."""

    key: str
    path: Path
    rate: int
    storage: Storage
    cached_crc32: str | None


@dataclass(frozen=True)
class Outcome:
    """What a job did: ``stored`` (appended samples at shard/offset/length, or probed a window source),
    ``unchanged`` (same content) or ``problem``."""

    key: str
    size: int
    mtime_ns: int
    crc32: str
    kind: str = "stored"
    storage: str = "float32"
    max_samples: int = 0
    frames: int = 0
    source_rate: int = 0
    shard: int = -1
    offset: int = 0
    length: int = 0
    problem: str | None = None
    truncated: str | None = None


class ShardWriter:
    """Appends samples to one worker's shards (a float32 and an int16 file, opened when first used)."""

    def __init__(self, directory: Path, shard: int):
        self.directory, self.shard = directory, shard
        self.files: dict[str, object] = {}

    def append(self, samples: np.ndarray, mode: str = "float32") -> int:
        """Write ``samples`` (of the mode's dtype) at the end of the mode's shard and flush; return their offset
        in samples."""
        path = shard_path(self.directory, self.shard, mode)
        try:
            if mode not in self.files:
                self.files[mode] = open(path, "ab")
            out = self.files[mode]
            offset = out.tell() // SAMPLE_BYTES[mode]
            out.write(samples.data)
            out.flush()
        except OSError as err:  # a full disk: a write error names no file; this one names the shard
            if err.filename is not None:
                raise
            raise OSError(err.errno, err.strerror, str(path)) from err
        return offset

    def cut(self, offset: int, mode: str = "float32") -> None:
        """Drop the mode's shard after ``offset`` samples: the part of a clip that failed to decode."""
        out = self.files[mode]
        out.truncate(offset * SAMPLE_BYTES[mode])
        out.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Close the shard files."""
        for out in self.files.values():
            out.close()


def run_job(job: Job, writer: ShardWriter) -> Outcome:
    """Cache one clip: probe a ``window`` source; for a stored mode checksum the file and, if its content is new,
    decode, resample, cap and append it (silent clips too)."""
    try:
        stat = job.path.stat()
        crc32 = file_crc32(job.path) if stat.st_size and job.storage.mode != "window" else ""
    except OSError as err:
        return Outcome(job.key, 0, 0, "", kind="problem", problem=f"unreadable ({err.strerror})")
    facts = (stat.st_size, stat.st_mtime_ns, crc32)
    if crc32 and crc32 == job.cached_crc32:
        return Outcome(job.key, *facts, kind="unchanged")
    cap = job.storage.cap(job.rate)
    if job.storage.mode == "window":
        try:
            source = probe_source(job.path)
        except AudioProblem as problem:
            return Outcome(job.key, *facts, kind="problem", problem=str(problem))
        return Outcome(job.key, *facts, storage="window", max_samples=cap, frames=source.frames,
                       source_rate=source.source_rate, truncated=source.truncated,
                       length=kept_length(source.frames, source.source_rate, job.rate, cap))
    try:
        stream, offset, length = _store(job, cap, writer)
    except AudioProblem as problem:
        return Outcome(job.key, *facts, kind="problem", problem=str(problem))
    rate, decoded, verb = stream.source_rate, stream.frames, "decode"
    if not stream.to_end:  # stopped at the cap: the rest is not decoded, the frames are those the file holds
        decoded, verb = max(decoded, stream.header_frames), "are in the file"
    declared = declared_frames(job.path)
    truncated = (f"truncated: the header says {declared} frames, {decoded} {verb} "
                 f"({decoded / rate:.3f} of {declared / rate:.3f} s); cached at the shorter length"
                 if declared is not None and decoded < declared else None)
    return Outcome(job.key, *facts, storage=job.storage.mode, max_samples=cap, frames=decoded, source_rate=rate,
                   shard=writer.shard, offset=offset, length=length, truncated=truncated)


def _store(job: Job, cap: int, writer: ShardWriter) -> tuple[StreamFacts, int, int]:
    """Decode, resample and append a clip to the shard block by block (memory: a block, whatever its length).

    Returns:
        What decoding found, and the clip's offset and length in the shard, in samples.

    Raises:
        AudioProblem: the file fails to decode; what was appended of it is cut off again.
    """
    mode, stream = job.storage.mode, StreamFacts()
    offset = length = None
    try:
        for piece in stream_mono(job.path, job.rate, cap, stream):
            at = writer.append(to_int16(piece) if mode == "int16" else piece, mode)
            offset, length = (at, 0) if offset is None else (offset, length)
            length += len(piece)
    except BaseException:
        if offset is not None:
            writer.cut(offset, mode)
        raise
    if offset is None:
        raise AudioProblem("no audio samples (empty file)")
    return stream, offset, length


_worker_writer: ShardWriter | None = None


def _start_worker(directory: Path, shards, owner: int) -> None:
    """Pool initializer: end with the command (``owner``) and its fork server, then claim a free shard number
    and open its writer for this worker's lifetime."""
    global _worker_writer
    die_with_parent(owner)
    _worker_writer = ShardWriter(directory, shards.get())


def _pool_job(job: Job) -> Outcome:
    return run_job(job, _worker_writer)


@dataclass(frozen=True)
class CacheRequest:
    """One build of the audio cache, as its caller asks for it.

    Attributes:
        rate: the backbone's sample rate (Hz): the cache of this rate is built.
        datasets: the datasets to cache (None or empty: every indexed one).
        workers: decoding processes.
        checkpoint_s: seconds between index commits.
        storage: storage modes / caps asked for (None: remembered, else the defaults of ``storage``).
        force: build even when the free space looks too small.
    """

    rate: int
    datasets: list[str] | None = None
    workers: int = 1
    checkpoint_s: float = 5.0
    storage: StorageRequest | None = None
    force: bool = False


def build_cache(layout: Layout, request: CacheRequest, reporter: Reporter = SILENT) -> CacheReport:
    """Cache every clip of the requested (default: all) indexed datasets at its rate, each in its storage.

    Args:
        layout: the data root.
        request: the rate, datasets, workers, checkpoint interval, storage asked for and whether to force.
        reporter: the space line before the build starts, and the bar over the clips.

    Returns:
        A summary: counts, hours, size on disk, the space needed and free, and the storage of each dataset.
    """
    rate = request.rate
    if not 8000 <= rate <= 192000:
        raise UserError(f"--rate {rate}: use the backbone's rate (32000 for PaSST, 16000 for the others)")
    names = request.datasets or list_datasets(layout.root)
    clips = _clips(layout, names)
    directory = layout.cache_dir(rate)
    with locked(directory):
        chosen = choose(directory, names, request.storage or StorageRequest.none())
        entries = valid_entries(directory)
        jobs, fresh = _plan(layout, clips, entries, rate, chosen)
        needed = sum(stored_bytes(clips[job.key].n_samples, clips[job.key].sample_rate, rate, job.storage)
                     for job in jobs)
        space = check_space(directory, needed, len(jobs), request.force)
        if jobs:
            reporter.info(f"cache {directory}: {len(jobs)} clip(s) to cache need about {gigabytes(needed)} GB; "
                          f"{gigabytes(space.free)} GB free")
        remember(directory, chosen)
        book = _Book(directory, rate, entries)
        try:
            _run(jobs, book, request, reporter)
        finally:
            book.commit()
            write_table(pd.DataFrame(book.skipped, columns=["path", "reason"]), directory / SKIPPED_FILE)
    return _report(book, clips, chosen, fresh, space)


@dataclass(frozen=True)
class _Clip:
    """A clip to cache: its dataset and the frames and rate its split index recorded (for the space estimate)."""

    dataset: str
    n_samples: int
    sample_rate: int


def _clips(layout: Layout, datasets: list[str]) -> dict[str, _Clip]:
    """Unique audio paths of the datasets, as stored in their indexes (the cache keys), in index order."""
    if not datasets:
        raise UserError(f"{layout.root / 'index'}: no split index; run `dcase-t6 prepare synthetic|clotho|...` first")
    clips: dict[str, _Clip] = {}
    for dataset in datasets:
        table = read_table(index_path(layout.root, dataset), ["path", "n_samples", "sample_rate"])
        for key, frames, rate in zip(table["path"], table["n_samples"], table["sample_rate"]):
            if key not in clips:
                clips[key] = _Clip(dataset, int(frames or 0), int(rate or 1))
    return clips


def _plan(layout: Layout, clips: dict[str, _Clip], entries: pd.DataFrame, rate: int,
          chosen: dict[str, Storage]) -> tuple[list[Job], int]:
    """Jobs for the clips whose source size or modification time, or whose dataset's storage, differ."""
    cached = {row["path"]: row for row in entries.to_dict("records")}
    paths = [layout.resolve(key) for key in clips]
    jobs, fresh = [], 0
    for (key, clip), path, facts in zip(clips.items(), paths, stat_all(paths)):
        row, storage = cached.get(key), chosen[clip.dataset]
        same_storage = row is not None and (row["storage"], row["max_samples"]) == (storage.mode, storage.cap(rate))
        if same_storage and facts is not None and (row["size"], row["mtime_ns"]) == facts:
            fresh += 1
        else:
            jobs.append(Job(key, path, rate, storage, row["crc32"] if same_storage else None))
    return jobs, fresh


def _report(book: _Book, clips: dict[str, _Clip], chosen: dict[str, Storage], fresh: int,
            space: SpaceCheck) -> CacheReport:
    """The build's summary (of ``book``'s cache), with hours and clips per dataset and storage."""
    directory, rate = book.directory, book.rate
    per_dataset = {name: {"mode": storage.mode, "max_seconds": storage.max_seconds, "clips": 0, "hours": 0.0}
                   for name, storage in chosen.items()}
    for key, clip in clips.items():
        if key in book.rows:
            per_dataset[clip.dataset]["clips"] += 1
            per_dataset[clip.dataset]["hours"] += book.rows[key]["length"] / rate / 3600
    for entry in per_dataset.values():
        entry["hours"] = round(entry["hours"], 3)
    truncated = [{"path": key, "reason": book.truncated[key]} for key in clips if key in book.truncated]
    shards = sum(p.stat().st_size for suffix in SUFFIXES.values() for p in directory.glob(f"audio-*.{suffix}"))
    live = sum(row["length"] * SAMPLE_BYTES[row["storage"]] for row in book.rows.values())
    return CacheReport(cache=str(directory), rate=rate, clips=len(clips), up_to_date=fresh, **book.counts,
                       skipped_file=str(directory / SKIPPED_FILE), skipped=book.skipped,
                       truncated_file=str(directory / TRUNCATED_FILE), truncated=truncated,
                       hours=round(sum(entry["hours"] for entry in per_dataset.values()), 3),
                       size_gb=gigabytes(live), stale_gb=gigabytes(shards - live),
                       needed_gb=gigabytes(space.needed), free_gb=gigabytes(space.free), storage=per_dataset)


class _Book:
    """The index rows, counts, skipped and truncated files of a build; commits the index (and the list of
    truncated files, which outlives the build that found them) atomically."""

    def __init__(self, directory: Path, rate: int, entries: pd.DataFrame):
        self.directory, self.rate = directory, rate
        self.rows = {row["path"]: row for row in entries.to_dict("records")}
        self.counts = {"decoded": 0, "unchanged_content": 0}
        self.skipped: list[dict] = []
        listed = (read_table(directory / TRUNCATED_FILE, ["path", "reason"])
                  if (directory / TRUNCATED_FILE).is_file() else pd.DataFrame(columns=["path", "reason"]))
        self.truncated: dict[str, str] = dict(zip(listed["path"], listed["reason"]))

    def record(self, outcome: Outcome) -> None:
        """Store one outcome: point at the new samples or source, refresh the source facts, or list the problem."""
        if outcome.kind != "unchanged":
            self.truncated.pop(outcome.key, None)
        if outcome.kind == "problem":
            self.skipped.append({"path": outcome.key, "reason": outcome.problem})
            self.rows.pop(outcome.key, None)
            return
        row = self.rows.get(outcome.key, {})
        if outcome.kind == "unchanged":
            self.counts["unchanged_content"] += 1
        else:
            self.counts["decoded"] += 1
            row = {name: getattr(outcome, name) for name in
                   ("storage", "max_samples", "frames", "source_rate", "shard", "offset", "length")}
        if outcome.truncated is not None:
            self.truncated[outcome.key] = outcome.truncated
        self.rows[outcome.key] = {**row, "path": outcome.key, "size": outcome.size, "mtime_ns": outcome.mtime_ns,
                                  "crc32": outcome.crc32, "rate": self.rate}

    def commit(self) -> None:
        """Atomically replace the index (the samples it points at were flushed by their writers), then the list
        of truncated files among the indexed clips."""
        write_table(pd.DataFrame(list(self.rows.values()), columns=CACHE_COLUMNS), self.directory / INDEX_FILE)
        truncated = [(key, reason) for key, reason in self.truncated.items() if key in self.rows]
        write_table(pd.DataFrame(truncated, columns=["path", "reason"]), self.directory / TRUNCATED_FILE)


def _run(jobs: list[Job], book: _Book, request: CacheRequest, reporter: Reporter) -> None:
    """Run the jobs in this process or in the request's ``workers`` processes, committing ``book`` (into its
    cache directory) every ``checkpoint_s``."""
    workers, directory = request.workers, book.directory
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            context = worker_context()
            shards = context.SimpleQueue()
            for shard in range(workers):
                shards.put(shard)
            pool = ProcessPoolExecutor(workers, context, initializer=_start_worker,
                                       initargs=(directory, shards, os.getpid()))
            stack.callback(pool.shutdown, cancel_futures=True)
            outcomes = ordered_map(pool, _pool_job, jobs, 8 * workers)
        else:
            writer = ShardWriter(directory, 0)
            stack.callback(writer.close)
            outcomes = (run_job(job, writer) for job in jobs)
        task = stack.enter_context(reporter.task(f"caching audio at {book.rate} Hz", len(jobs)))
        last = time.monotonic()
        for outcome in outcomes:
            book.record(outcome)
            task.advance()
            if time.monotonic() - last > request.checkpoint_s:
                book.commit()
                last = time.monotonic()


def worker_context() -> multiprocessing.context.BaseContext:
    """Fork server with this module preloaded: safe from a threaded caller (training), workers start fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context
