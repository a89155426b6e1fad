"""Audio cache: every indexed clip decoded once to mono float32 at the backbone's rate.

``DATA/cache/<rate>/audio.f32`` holds the samples of all clips back to back; ``index.csv`` maps each
index path to its ``offset`` and ``length`` (in samples) and records the source ``size``, ``mtime_ns``
and ``crc32``. A clip is decoded again only when its source changed: a new size or modification time
makes the builder checksum the file, and a new checksum re-caches it (new samples are appended). The
index is replaced atomically every few seconds and at the end, and bytes past the last indexed clip
are dropped on start, so an interrupted run resumes where it stopped. Training reads a clip with a
memory-mapped slice (:class:`AudioCache`), without decoding.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from dcase_t6.data.audio_io import AudioProblem, decode_mono, resample
from dcase_t6.data.layout import Layout
from dcase_t6.data.progress import count_progress
from dcase_t6.data.split_index import list_datasets, read_index
from dcase_t6.data.tables import read_table, write_table
from dcase_t6.errors import UserError

CACHE_COLUMNS = ["path", "size", "mtime_ns", "crc32", "rate", "source_rate", "offset", "length"]
DATA_FILE, INDEX_FILE, SKIPPED_FILE, LOCK_FILE = "audio.f32", "index.csv", "skipped.csv", ".lock"
SAMPLE_BYTES = 4


@dataclass(frozen=True)
class Job:
    """One clip to (re)cache: its index key, file, target rate and the checksum cached so far."""

    key: str
    path: Path
    rate: int
    cached_crc32: str | None


@dataclass(frozen=True)
class Outcome:
    """What a job produced: samples (None when the content was unchanged) or a problem."""

    key: str
    size: int
    mtime_ns: int
    crc32: str
    source_rate: int
    samples: np.ndarray | None
    problem: str | None = None


def run_job(job: Job) -> Outcome:
    """Checksum one file and, if its content is new, decode and resample it (silent clips are kept)."""
    try:
        stat = job.path.stat()
        crc32 = file_crc32(job.path) if stat.st_size else ""
    except OSError as err:
        return Outcome(job.key, 0, 0, "", 0, None, f"unreadable ({err.strerror})")
    if crc32 == job.cached_crc32:
        return Outcome(job.key, stat.st_size, stat.st_mtime_ns, crc32, 0, None)
    try:
        samples, source_rate = decode_mono(job.path)
    except AudioProblem as problem:
        return Outcome(job.key, stat.st_size, stat.st_mtime_ns, crc32, 0, None, str(problem))
    return Outcome(job.key, stat.st_size, stat.st_mtime_ns, crc32, source_rate, resample(samples, source_rate, job.rate))


def file_crc32(path: Path) -> str:
    """CRC-32 of a file (8 hex digits), read through a memory map: no copy, 3-4 GB/s."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return f"{zlib.crc32(view):08x}"


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
        self._spans = dict(zip(entries["path"], zip(entries["offset"].tolist(), entries["length"].tolist())))
        self._samples = np.memmap(directory / DATA_FILE, dtype=np.float32, mode="r")

    def __len__(self) -> int:
        return len(self._spans)

    def __contains__(self, path: str | Path) -> bool:
        return self._key(path) in self._spans

    def read(self, path: str | Path) -> np.ndarray:
        """Samples (float32, mono, at ``rate``) of a clip given by its index path (absolute or stored)."""
        key = self._key(path)
        if key not in self._spans:
            raise UserError(f"{path}: not in the {self.rate} Hz audio cache; re-run `dcase-t6 prepare cache "
                            f"--root {self.layout.root} --rate {self.rate}`")
        offset, length = self._spans[key]
        return np.array(self._samples[offset: offset + length])

    def _key(self, path: str | Path) -> str:
        return self.layout.relative(Path(path)) if Path(path).is_absolute() else str(path)


def build_cache(layout: Layout, rate: int, datasets: list[str] | None = None, workers: int = 1,
                checkpoint_s: float = 5.0) -> dict:
    """Cache every clip of the given (default: all) indexed datasets at ``rate``; return a summary."""
    if not 8000 <= rate <= 192000:
        raise UserError(f"--rate {rate}: use the backbone's rate (32000 for PaSST, 16000 for the others)")
    keys = _clip_keys(layout, datasets or list_datasets(layout.root))
    directory = layout.cache_dir(rate)
    with _locked(directory):
        entries = _valid_entries(directory)
        jobs, fresh = _plan(layout, keys, entries, rate)
        writer = _Writer(directory, rate, entries)
        try:
            _run(jobs, workers, writer, checkpoint_s)
        finally:
            writer.close()
            write_table(pd.DataFrame(writer.skipped, columns=["path", "reason"]), directory / SKIPPED_FILE)
    lengths = [writer.rows[key]["length"] for key in keys if key in writer.rows]
    return {"cache": str(directory), "rate": rate, "clips": len(keys), "up_to_date": fresh, **writer.counts,
            "skipped_file": str(directory / SKIPPED_FILE),
            "skipped": writer.skipped, "hours": round(sum(lengths) / rate / 3600, 3),
            "size_gb": round((directory / DATA_FILE).stat().st_size / 1e9, 3)}


def _clip_keys(layout: Layout, datasets: list[str]) -> list[str]:
    if not datasets:
        raise UserError(f"{layout.root / 'index'}: no split index; run `dcase-t6 prepare synthetic|clotho|...` first")
    paths = pd.concat([read_index(layout.root, dataset)["path"] for dataset in datasets])
    return list(dict.fromkeys(layout.relative(Path(path)) for path in paths))


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


class _Writer:
    """Appends samples to the data file and keeps the index rows, counts and skipped files."""

    def __init__(self, directory: Path, rate: int, entries: pd.DataFrame):
        self.directory, self.rate = directory, rate
        self.rows = {row["path"]: row for row in entries.to_dict("records")}
        self.counts = {"decoded": 0, "unchanged_content": 0}
        self.skipped: list[dict] = []
        self.out = open(directory / DATA_FILE, "ab")

    def record(self, outcome: Outcome) -> None:
        """Store one outcome: append new samples, refresh the source facts, or list the problem."""
        if outcome.problem is not None:
            self.skipped.append({"path": outcome.key, "reason": outcome.problem})
            self.rows.pop(outcome.key, None)
            return
        row = self.rows.get(outcome.key, {})
        if outcome.samples is None:
            self.counts["unchanged_content"] += 1
        else:
            self.counts["decoded"] += 1
            row = {"source_rate": outcome.source_rate, "offset": self.out.tell() // SAMPLE_BYTES,
                   "length": len(outcome.samples)}
            self.out.write(outcome.samples.data)
        self.rows[outcome.key] = {**row, "path": outcome.key, "size": outcome.size, "mtime_ns": outcome.mtime_ns,
                                  "crc32": outcome.crc32, "rate": self.rate}

    def commit(self) -> None:
        """Make the appended samples durable, then atomically replace the index that points at them."""
        self.out.flush()
        os.fsync(self.out.fileno())
        write_table(pd.DataFrame(list(self.rows.values()), columns=CACHE_COLUMNS), self.directory / INDEX_FILE)

    def close(self) -> None:
        """Commit and close the data file."""
        self.commit()
        self.out.close()


def _run(jobs: list[Job], workers: int, writer: _Writer, checkpoint_s: float) -> None:
    """Run the jobs (in worker processes when ``workers`` > 1), committing every ``checkpoint_s``."""
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    outcomes = pool.map(run_job, jobs, chunksize=2) if pool else map(run_job, jobs)  # workers start before threads
    try:
        with count_progress() as progress:
            task = progress.add_task(f"caching audio at {writer.rate} Hz", total=len(jobs))
            last = time.monotonic()
            for outcome in outcomes:
                writer.record(outcome)
                progress.advance(task)
                if time.monotonic() - last > checkpoint_s:
                    writer.commit()
                    last = time.monotonic()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def _read_entries(directory: Path) -> pd.DataFrame:
    if not (directory / INDEX_FILE).is_file():
        return pd.DataFrame({column: pd.Series(dtype=object) for column in CACHE_COLUMNS})
    frame = read_table(directory / INDEX_FILE, CACHE_COLUMNS)
    return frame.astype({"size": np.int64, "mtime_ns": np.int64, "rate": np.int64, "source_rate": np.int64,
                         "offset": np.int64, "length": np.int64})


def _valid_entries(directory: Path) -> pd.DataFrame:
    """Committed entries whose samples are fully on disk; the data file is cut after the last of them."""
    entries = _read_entries(directory)
    data = directory / DATA_FILE
    size = data.stat().st_size // SAMPLE_BYTES if data.exists() else 0
    entries = entries[(entries["offset"] + entries["length"]) <= size].reset_index(drop=True)
    end = int((entries["offset"] + entries["length"]).max()) if len(entries) else 0
    with open(data, "ab") as handle:
        handle.truncate(end * SAMPLE_BYTES)
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
