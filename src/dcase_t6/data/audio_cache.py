"""Audio cache: every indexed clip decoded once to mono float32 at the backbone's rate.

``DATA/cache/<rate>/audio-<k>.f32`` are data files ("shards") holding samples of clips back to back;
each decoding worker appends to its own shard, so samples never travel between processes.
``index.csv`` maps each index path to its ``shard``, ``offset`` and ``length`` (in samples) and
records the source ``size``, ``mtime_ns`` and ``crc32``. A clip is decoded again only when its source
changed: a new size or modification time makes the builder checksum the file, and a new checksum
re-caches it (new samples are appended). The index is replaced atomically every few seconds and at
the end, always after the samples it points at were written, and bytes past the last indexed clip of
a shard are dropped on start, so an interrupted run (Ctrl-C, a killed process) resumes where it
stopped; decoding workers end with the command, also when it is killed (``kill -9``). There is no fsync:
after a power failure, entries past the end of a shortened shard are dropped and re-cached on the next
run. Files that cannot be decoded are listed in ``skipped.csv`` and left out of the cache; training,
validation and ``embed`` leave out their clips and captions (:func:`drop_absent`, :func:`cached_split`),
saying how many. A WAV whose header promises more frames than the file holds (a truncated file) is cached
at the length that decodes and listed in ``truncated.csv``. Training reads a clip as a slice of a memory
map (:class:`AudioCache`), without decoding.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.console import count_progress, stderr_console
from dcase_t6.common.errors import UserError
from dcase_t6.common.tables import read_table, write_table
from dcase_t6.data.audio_io import AudioProblem, declared_frames, decode_mono, resample
from dcase_t6.data.layout import Layout
from dcase_t6.data.parallel import die_with_parent, ordered_map
from dcase_t6.data.reports import CacheReport
from dcase_t6.data.split_index import Split, index_path, list_datasets

CACHE_COLUMNS = ["path", "size", "mtime_ns", "crc32", "rate", "source_rate", "shard", "offset", "length"]
INDEX_FILE, SKIPPED_FILE, TRUNCATED_FILE, LOCK_FILE = "index.csv", "skipped.csv", "truncated.csv", ".lock"
SAMPLE_BYTES = 4
INTEGER_COLUMNS = ["size", "mtime_ns", "rate", "source_rate", "shard", "offset", "length"]


def shard_path(directory: Path, shard: int) -> Path:
    """Data file of one shard."""
    return directory / f"audio-{shard}.f32"


@dataclass(frozen=True)
class Job:
    """One clip to (re)cache: its index key, file, target rate and the checksum cached so far."""

    key: str
    path: Path
    rate: int
    cached_crc32: str | None


@dataclass(frozen=True)
class Outcome:
    """What a job did: appended samples (shard, offset, length), found the content unchanged, or a problem."""

    key: str
    size: int
    mtime_ns: int
    crc32: str
    source_rate: int = 0
    shard: int = -1
    offset: int = 0
    length: int = 0
    problem: str | None = None
    truncated: str | None = None


class ShardWriter:
    """Appends samples to one shard; used by exactly one process at a time."""

    def __init__(self, directory: Path, shard: int):
        self.shard = shard
        self.out = open(shard_path(directory, shard), "ab")

    def append(self, samples: np.ndarray) -> int:
        """Write ``samples`` at the end of the shard and flush; return their offset in samples."""
        offset = self.out.tell() // SAMPLE_BYTES
        self.out.write(samples.data)
        self.out.flush()
        return offset

    def close(self) -> None:
        """Close the shard file."""
        self.out.close()


def run_job(job: Job, writer: ShardWriter) -> Outcome:
    """Checksum one file and, if its content is new, decode, resample and append it (silent clips too)."""
    try:
        stat = job.path.stat()
        crc32 = file_crc32(job.path) if stat.st_size else ""
    except OSError as err:
        return Outcome(job.key, 0, 0, "", problem=f"unreadable ({err.strerror})")
    if crc32 == job.cached_crc32:
        return Outcome(job.key, stat.st_size, stat.st_mtime_ns, crc32)
    try:
        samples, source_rate = decode_mono(job.path)
    except AudioProblem as problem:
        return Outcome(job.key, stat.st_size, stat.st_mtime_ns, crc32, problem=str(problem))
    declared, decoded = declared_frames(job.path), len(samples)
    truncated = (f"truncated: the header says {declared} frames, {decoded} decode "
                 f"({decoded / source_rate:.3f} of {declared / source_rate:.3f} s); cached at the shorter length"
                 if declared is not None and decoded < declared else None)
    samples = resample(samples, source_rate, job.rate)
    return Outcome(job.key, stat.st_size, stat.st_mtime_ns, crc32, source_rate, writer.shard,
                   writer.append(samples), len(samples), truncated=truncated)


def file_crc32(path: Path) -> str:
    """CRC-32 of a file (8 hex digits), read through a memory map: no copy, 3-4 GB/s."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return f"{zlib.crc32(view):08x}"


_worker_writer: ShardWriter | None = None


def _start_worker(directory: Path, shards, owner: int) -> None:
    """Pool initializer: end with the command (``owner``) and its fork server, then claim a free shard number
    and open its writer for this worker's lifetime."""
    global _worker_writer
    die_with_parent(owner)
    _worker_writer = ShardWriter(directory, shards.get())


def _pool_job(job: Job) -> Outcome:
    return run_job(job, _worker_writer)


class AudioCache:
    """Read-only view of a built cache: ``read(path)`` returns a clip's samples without decoding."""

    def __init__(self, root: str | Path, rate: int):
        self.layout = Layout.at(root)
        self.rate = rate
        directory = self.layout.cache_dir(rate)
        entries = _read_entries(directory)
        if entries.empty:
            raise UserError(f"{directory}: no cached audio at {rate} Hz; run "
                            f"`dcase-t6 prepare cache --root {self.layout.root} --rate {rate}` first")
        self._spans = dict(zip(entries["path"], zip(entries["shard"].tolist(), entries["offset"].tolist(),
                                                    entries["length"].tolist())))
        self._shards = {shard: np.memmap(shard_path(directory, shard), dtype=np.float32, mode="r")
                        for shard in entries["shard"].unique().tolist()}
        self.skipped_file = directory / SKIPPED_FILE
        skipped = (read_table(self.skipped_file, ["path", "reason"]) if self.skipped_file.is_file()
                   else pd.DataFrame(columns=["path", "reason"]))
        self._skipped = dict(zip(skipped["path"], skipped["reason"]))

    def __len__(self) -> int:
        return len(self._spans)

    def __contains__(self, path: str | Path) -> bool:
        return self._key(path) in self._spans

    def read(self, path: str | Path) -> np.ndarray:
        """Samples (float32, mono, at ``rate``) of a clip given by its index path (absolute or stored)."""
        key = self._key(path)
        if key in self._skipped:
            raise UserError(f"{path}: the {self.rate} Hz audio cache skipped it ({self._skipped[key]}; listed in "
                            f"{self.skipped_file}); {FIX_SKIPPED}")
        if key not in self._spans:
            raise UserError(f"{path}: not in the {self.rate} Hz audio cache; re-run `dcase-t6 prepare cache "
                            f"--root {self.layout.root} --rate {self.rate}`")
        shard, offset, length = self._spans[key]
        return np.array(self._shards[shard][offset: offset + length])

    def _key(self, path: str | Path) -> str:
        return self.layout.relative(Path(path)) if Path(path).is_absolute() else str(path)

    def reason(self, path: str | Path) -> str:
        """Why a clip is not cached: the reason ``skipped.csv`` gives, or that no build cached it."""
        return self._skipped.get(self._key(path), "not cached")


FIX_SKIPPED = ("re-encode or remove the file(s), then run `dcase-t6 prepare <dataset>` to re-index and "
               "`dcase-t6 prepare cache` again")


@dataclass(frozen=True)
class Absent:
    """Clips of a table (split index rows) that the audio cache does not hold, and how many rows named them."""

    where: str
    clips: list[str]
    rows: int


def drop_absent(store: AudioCache, frame: pd.DataFrame, where: str, say: bool = True) -> tuple[pd.DataFrame, Absent]:
    """The rows (caption pairs) of ``frame`` (split index rows, absolute ``path``) whose clip the cache holds.

    Clips the cache skipped (unreadable when it was built) are left out with their rows: one warning line
    says how many and names the cache's skipped list. Nothing left is an error that names the files and the fix.

    Args:
        store: the audio cache.
        frame: split index rows.
        where: what the rows are part of, for the messages (``synthetic development-training``).
        say: print the warning (the main process only).

    Returns:
        The kept rows (index order, renumbered) and what was left out.
    """
    cached = frame["path"].map(store.__contains__).astype(bool)
    absent = Absent(where, list(dict.fromkeys(frame.loc[~cached, "path"])), int((~cached).sum()))
    if absent.clips:
        _left_out(store, absent.clips, where, f"{absent.rows} caption pair(s)", nothing_left=not cached.any(), say=say)
    return (frame[cached].reset_index(drop=True), absent) if absent.clips else (frame, absent)


def cached_split(store: AudioCache, split: Split, say: bool = True) -> Split:
    """``split`` without the clips the cache skipped and without their queries (see :func:`drop_absent`).

    A split whose queries are not tied to clips (the evaluation set) needs every clip: a skipped one is an error.
    """
    present = [path in store for path in split.paths]
    if all(present):
        return split
    gone = {name for name, cached in zip(split.files, present) if not cached}
    absent = [str(path) for path, cached in zip(split.paths, present) if not cached]
    where = f"{split.dataset} {split.split}"
    if any(name is None for name in split.query_files):
        _left_out(store, absent, f"{where} (it needs every clip)", "", nothing_left=True, say=say)
    keep = [name not in gone for name in split.query_files]
    _left_out(store, absent, where, f"{len(keep) - sum(keep)} query(ies)", nothing_left=not any(keep), say=say)
    return Split(dataset=split.dataset, split=split.split,
                 files=[name for name, cached in zip(split.files, present) if cached],
                 paths=[path for path, cached in zip(split.paths, present) if cached],
                 queries=[query for query, kept in zip(split.queries, keep) if kept],
                 query_files=[name for name, kept in zip(split.query_files, keep) if kept])


def _left_out(store: AudioCache, absent: list[str], where: str, rows: str, nothing_left: bool, say: bool) -> None:
    """Warn that ``rows`` of ``where`` are left out with their ``absent`` clips, or fail when nothing is left."""
    first = f"{absent[0]}: {store.reason(absent[0])}"
    if nothing_left:
        raise UserError(f"{store.skipped_file}: {len(absent)} clip(s) of {where} were skipped by the {store.rate} Hz "
                        f"audio cache, which leaves nothing to use (first {first}); {FIX_SKIPPED}")
    if say:
        stderr_console.print(f"[yellow]warning:[/] left out {rows} of {where}: their {len(absent)} clip(s) were "
                             f"skipped by the {store.rate} Hz audio cache (listed in {store.skipped_file}; "
                             f"first {first})", highlight=False, soft_wrap=True)


def build_cache(layout: Layout, rate: int, datasets: list[str] | None = None, workers: int = 1,
                checkpoint_s: float = 5.0) -> CacheReport:
    """Cache every clip of the given (default: all) indexed datasets at ``rate``; return a summary."""
    if not 8000 <= rate <= 192000:
        raise UserError(f"--rate {rate}: use the backbone's rate (32000 for PaSST, 16000 for the others)")
    keys = _clip_keys(layout, datasets or list_datasets(layout.root))
    directory = layout.cache_dir(rate)
    with _locked(directory):
        entries = _valid_entries(directory)
        jobs, fresh = _plan(layout, keys, entries, rate)
        book = _Book(directory, rate, entries)
        try:
            _run(jobs, workers, directory, book, checkpoint_s)
        finally:
            book.commit()
            write_table(pd.DataFrame(book.skipped, columns=["path", "reason"]), directory / SKIPPED_FILE)
    lengths = [book.rows[key]["length"] for key in keys if key in book.rows]
    truncated = [{"path": key, "reason": book.truncated[key]} for key in keys if key in book.truncated]
    return CacheReport(cache=str(directory), rate=rate, clips=len(keys), up_to_date=fresh, **book.counts,
                       skipped_file=str(directory / SKIPPED_FILE), skipped=book.skipped,
                       truncated_file=str(directory / TRUNCATED_FILE), truncated=truncated,
                       hours=round(sum(lengths) / rate / 3600, 3),
                       size_gb=round(sum(p.stat().st_size for p in directory.glob("audio-*.f32")) / 1e9, 3))


def _clip_keys(layout: Layout, datasets: list[str]) -> list[str]:
    """Unique audio paths of the datasets, as stored in their indexes (the cache keys)."""
    if not datasets:
        raise UserError(f"{layout.root / 'index'}: no split index; run `dcase-t6 prepare synthetic|clotho|...` first")
    return list(dict.fromkeys(key for dataset in datasets
                              for key in read_table(index_path(layout.root, dataset), ["path"])["path"]))


def _plan(layout: Layout, keys: list[str], entries: pd.DataFrame, rate: int) -> tuple[list[Job], int]:
    """Jobs for the clips whose source size or modification time differs from the cached one."""
    cached = {row["path"]: row for row in entries.to_dict("records")}
    jobs, fresh = [], 0
    for key in keys:
        path, row = layout.resolve(key), cached.get(key)
        stat = path.stat() if path.exists() else None
        if row is not None and stat is not None and (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            fresh += 1
        else:
            jobs.append(Job(key, path, rate, None if row is None else row["crc32"]))
    return jobs, fresh


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
        """Store one outcome: point at the new samples, refresh the source facts, or list the problem."""
        if outcome.shard >= 0 or outcome.problem is not None:
            self.truncated.pop(outcome.key, None)
        if outcome.problem is not None:
            self.skipped.append({"path": outcome.key, "reason": outcome.problem})
            self.rows.pop(outcome.key, None)
            return
        row = self.rows.get(outcome.key, {})
        if outcome.shard < 0:
            self.counts["unchanged_content"] += 1
        else:
            self.counts["decoded"] += 1
            row = {"source_rate": outcome.source_rate, "shard": outcome.shard, "offset": outcome.offset,
                   "length": outcome.length}
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


def _run(jobs: list[Job], workers: int, directory: Path, book: _Book, checkpoint_s: float) -> None:
    """Run the jobs in this process or in ``workers`` processes, committing every ``checkpoint_s``."""
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
        progress = stack.enter_context(count_progress())
        task = progress.add_task(f"caching audio at {book.rate} Hz", total=len(jobs))
        last = time.monotonic()
        for outcome in outcomes:
            book.record(outcome)
            progress.advance(task)
            if time.monotonic() - last > checkpoint_s:
                book.commit()
                last = time.monotonic()


def worker_context() -> multiprocessing.context.BaseContext:
    """Fork server with this module preloaded: safe from a threaded caller (training), workers start fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _read_entries(directory: Path) -> pd.DataFrame:
    if not (directory / INDEX_FILE).is_file():
        return pd.DataFrame({column: pd.Series(dtype=object) for column in CACHE_COLUMNS})
    return read_table(directory / INDEX_FILE, CACHE_COLUMNS).astype({column: np.int64 for column in INTEGER_COLUMNS})


def _valid_entries(directory: Path) -> pd.DataFrame:
    """Committed entries whose samples are on disk; every shard is cut after its last indexed clip."""
    entries = _read_entries(directory)
    sizes = {int(p.stem.split("-")[1]): p.stat().st_size // SAMPLE_BYTES for p in directory.glob("audio-*.f32")}
    ends = entries["offset"] + entries["length"]
    entries = entries[ends <= entries["shard"].map(sizes).fillna(-1)].reset_index(drop=True)
    last = (entries["offset"] + entries["length"]).groupby(entries["shard"]).max()
    for shard in sizes:
        with open(shard_path(directory, shard), "ab") as handle:
            handle.truncate(int(last.get(shard, 0)) * SAMPLE_BYTES)
    return entries


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{directory}: another `dcase-t6 prepare cache` is writing this cache; "
                            "wait for it to finish") from None
        yield
