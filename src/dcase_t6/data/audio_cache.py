"""Audio cache: every indexed clip kept at the backbone's rate, each dataset in its storage mode.

The storage modes (``float32``, ``int16``, ``window``) and their choice per dataset are described in
:mod:`dcase_t6.data.storage`. ``DATA/cache/<rate>/audio-<k>.f32`` and ``audio-<k>.i16`` are data files
("shards") holding decoded samples of clips back to back; each decoding worker appends to its own
shards, so samples never travel between processes. ``index.csv`` maps each index path to its
``storage``, ``shard``, ``offset`` and ``length`` (in samples at the cache's rate; a ``window`` clip has
no shard and records its source's ``frames`` and ``source_rate`` instead) and records the source
``size``, ``mtime_ns`` and ``crc32``. A clip is cached again only when its source changed or its
dataset's storage did: a new size or modification time makes the builder checksum the file, and a new
checksum re-caches it (new samples are appended; a ``window`` clip, which stores no samples, is
re-probed without a checksum). The index is replaced atomically every few seconds and at the end,
always after the samples it points at were written, and bytes past the last indexed clip of a shard
are dropped on start, so an interrupted run (Ctrl-C, a killed process) resumes where it stopped;
decoding workers end with the command, also when it is killed (``kill -9``). There is no fsync: after a
power failure, entries past the end of a shortened shard are dropped and re-cached on the next run.
Before it writes, a build states the space it needs and refuses when the file system lacks it.

Files that cannot be decoded are listed in ``skipped.csv`` and left out of the cache; training,
validation and ``embed`` leave out their clips and captions (:func:`drop_absent`, :func:`cached_split`),
saying how many. A file whose header promises more frames than the file holds (a truncated file) is
cached at the length that decodes and listed in ``truncated.csv``. Training reads a span of a clip
(:meth:`AudioCache.clip`): a slice of a memory map, without decoding, or, for ``window`` clips, a seek
and a decode of the span alone. A ``window`` source that changed since the build (the cache is then
not a snapshot of it) is noticed on read: one warning, and the span is read from the file as it is now.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import read_table, write_table
from dcase_t6.data.audio_io import AudioProblem, StreamFacts, declared_frames, stream_mono
from dcase_t6.data.layout import Layout
from dcase_t6.data.parallel import die_with_parent, ordered_map
from dcase_t6.data.reports import CacheReport
from dcase_t6.data.split_index import Split, index_path, list_datasets
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
from dcase_t6.data.windows import SourceFacts, probe_source, read_span

LEGACY_COLUMNS = ["path", "size", "mtime_ns", "crc32", "rate", "source_rate", "shard", "offset", "length"]
CACHE_COLUMNS = [*LEGACY_COLUMNS, "storage", "max_samples", "frames"]
INDEX_FILE, SKIPPED_FILE, TRUNCATED_FILE, LOCK_FILE = "index.csv", "skipped.csv", "truncated.csv", ".lock"
INTEGER_COLUMNS = ["size", "mtime_ns", "rate", "source_rate", "shard", "offset", "length", "max_samples", "frames"]
SUFFIXES = {"float32": "f32", "int16": "i16"}
DTYPES = {"float32": np.float32, "int16": np.int16}
INT16_SCALE = 32768.0
CRC_BLOCK = 4 << 20


def shard_path(directory: Path, shard: int, mode: str = "float32") -> Path:
    """Data file of one shard of a stored mode (``float32`` or ``int16``)."""
    return directory / f"audio-{shard}.{SUFFIXES[mode]}"


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples rounded to 16 bits (x 2^15, to nearest, clipped to the int16 range)."""
    return np.clip(np.rint(samples * INT16_SCALE), -32768, 32767).astype(np.int16)


def crop_span(length: int, max_samples: int | None, offset: float) -> tuple[int, int]:
    """The window training reads of a clip: at most ``max_samples`` from fraction ``offset`` of the possible starts.

    Args:
        length: the clip's samples.
        max_samples: the longest window (None: the whole clip).
        offset: in [0, 1); 0 is the clip's start.

    Returns:
        (start, count) in samples: the whole clip when it is no longer than ``max_samples``.

    Example:
        >>> crop_span(100, 30, 0.0), crop_span(100, 30, 0.999), crop_span(20, 30, 0.5)
        ((0, 30), (70, 30), (0, 20))
    """
    if max_samples is None or length <= max_samples:
        return 0, length
    spare = length - max_samples
    return int(offset * (spare + 1)), max_samples


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
        if mode not in self.files:
            self.files[mode] = open(shard_path(self.directory, self.shard, mode), "ab")
        out = self.files[mode]
        offset = out.tell() // SAMPLE_BYTES[mode]
        out.write(samples.data)
        out.flush()
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


def file_crc32(path: Path) -> str:
    """CRC-32 of a file (8 hex digits), read in 4 MiB blocks into one buffer: constant memory (a memory map would
    count every page of a 10-hour source as resident), 2-3 GB/s."""
    crc, buffer = 0, bytearray(CRC_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            crc = zlib.crc32(view[:count], crc)
    return f"{crc:08x}"


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
    """Read-only view of a built cache: ``clip(path, max_samples, offset)`` returns a span of a clip, ``read(path)``
    the whole clip, without decoding (stored modes) or decoding only the span (``window``)."""

    def __init__(self, root: str | Path, rate: int, reporter: Reporter = SILENT):
        self.layout = Layout.at(root)
        self.rate = rate
        self.reporter = reporter  # told when a source changed since the cache indexed it
        directory = self.layout.cache_dir(rate)
        entries = _read_entries(directory)
        if entries.empty:
            raise UserError(f"{directory}: no cached audio at {rate} Hz; run "
                            f"`dcase-t6 prepare cache --root {self.layout.root} --rate {rate}` first")
        self._rows = dict(zip(entries["path"], range(len(entries))))
        self._storage = entries["storage"].to_numpy()
        self._numbers = {column: entries[column].to_numpy(np.int64)
                         for column in ("shard", "offset", "length", "frames", "source_rate", "size", "mtime_ns",
                                        "max_samples")}
        stored = entries[entries["storage"] != "window"][["storage", "shard"]].drop_duplicates()
        self._shards = {(mode, shard): np.memmap(shard_path(directory, shard, mode), dtype=DTYPES[mode], mode="r")
                        for mode, shard in zip(stored["storage"], stored["shard"].tolist())}
        self._changed: dict[str, tuple[int, int, SourceFacts]] = {}
        self.skipped_file = directory / SKIPPED_FILE
        skipped = (read_table(self.skipped_file, ["path", "reason"]) if self.skipped_file.is_file()
                   else pd.DataFrame(columns=["path", "reason"]))
        self._skipped = dict(zip(skipped["path"], skipped["reason"]))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, path: str | Path) -> bool:
        return self._key(path) in self._rows

    def read(self, path: str | Path) -> np.ndarray:
        """Samples (float32, mono, at ``rate``) of a whole clip given by its index path (absolute or stored)."""
        return self.clip(path)

    def clip(self, path: str | Path, max_samples: int | None = None, offset: float = 0.0) -> np.ndarray:
        """A span of a clip: at most ``max_samples`` from fraction ``offset`` of its possible starts (see
        :func:`crop_span`); the same samples whatever the storage mode (to rounding).

        Args:
            path: the clip's index path (absolute or as stored).
            max_samples: the longest span (None: the whole clip).
            offset: in [0, 1); 0 reads from the clip's start.

        Returns:
            Mono float32 samples at ``rate``.
        """
        key = self._key(path)
        row = self._row(path, key)
        mode = self._storage[row]
        if mode == "window":
            return self._window(key, row, max_samples, offset)
        start, count = crop_span(int(self._numbers["length"][row]), max_samples, offset)
        first = int(self._numbers["offset"][row]) + start
        samples = self._shards[mode, int(self._numbers["shard"][row])][first:first + count]
        return np.array(samples) if mode == "float32" else samples.astype(np.float32) * np.float32(1 / INT16_SCALE)

    def length(self, path: str | Path) -> int:
        """Samples of a clip at ``rate`` (after its dataset's cap)."""
        return int(self._numbers["length"][self._row(path, self._key(path))])

    def _row(self, path: str | Path, key: str) -> int:
        if key in self._skipped:
            raise UserError(f"{path}: the {self.rate} Hz audio cache skipped it ({self._skipped[key]}; listed in "
                            f"{self.skipped_file}); {FIX_SKIPPED}")
        if key not in self._rows:
            raise UserError(f"{path}: not in the {self.rate} Hz audio cache; re-run `dcase-t6 prepare cache "
                            f"--root {self.layout.root} --rate {self.rate}`")
        return self._rows[key]

    def _window(self, key: str, row: int, max_samples: int | None, offset: float) -> np.ndarray:
        """A span decoded from the source; a source changed since the build is re-probed (one warning)."""
        source = self.layout.resolve(key)
        numbers = {name: int(values[row]) for name, values in self._numbers.items()}
        facts, length = SourceFacts(numbers["frames"], numbers["source_rate"]), numbers["length"]
        try:
            stat = source.stat()
            if (stat.st_size, stat.st_mtime_ns) != (numbers["size"], numbers["mtime_ns"]):
                facts = self._reprobe(key, source, stat)
                length = kept_length(facts.frames, facts.source_rate, self.rate, numbers["max_samples"])
            start, count = crop_span(length, max_samples, offset)
            return read_span(source, facts, self.rate, start, count)
        except (OSError, AudioProblem) as err:
            why = err.strerror if isinstance(err, OSError) else str(err)
            raise UserError(f"{source}: a window of this source cannot be read ({why}); restore the file, or run "
                            f"`dcase-t6 prepare cache --root {self.layout.root} --rate {self.rate}` to leave it out, "
                            "then `dcase-t6 train --resume RUN`") from None

    def _reprobe(self, key: str, source: Path, stat: os.stat_result) -> SourceFacts:
        known = self._changed.get(key)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        facts = probe_source(source)
        self._changed[key] = (stat.st_size, stat.st_mtime_ns, facts)
        self.reporter.warning(f"{source}: changed since the {self.rate} Hz audio cache indexed it; reading it as it "
                              f"is now ({facts.frames / facts.source_rate:.1f} s); the next `dcase-t6 prepare cache` "
                              "re-indexes it")
        return facts

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


def drop_absent(store: AudioCache, frame: pd.DataFrame, where: str,
                reporter: Reporter = SILENT) -> tuple[pd.DataFrame, Absent]:
    """The rows (caption pairs) of ``frame`` (split index rows, absolute ``path``) whose clip the cache holds.

    Clips the cache skipped (unreadable when it was built) are left out with their rows: one warning line
    says how many and names the cache's skipped list. Nothing left is an error that names the files and the fix.

    Args:
        store: the audio cache.
        frame: split index rows.
        where: what the rows are part of, for the messages (``synthetic development-training``).
        reporter: told what was left out.

    Returns:
        The kept rows (index order, renumbered) and what was left out.
    """
    cached = frame["path"].map(store.__contains__).astype(bool)
    absent = Absent(where, list(dict.fromkeys(frame.loc[~cached, "path"])), int((~cached).sum()))
    if absent.clips:
        _left_out(store, absent.clips, where, f"{absent.rows} caption pair(s)", nothing_left=not cached.any(),
                  reporter=reporter)
    return (frame[cached].reset_index(drop=True), absent) if absent.clips else (frame, absent)


def cached_split(store: AudioCache, split: Split, reporter: Reporter = SILENT) -> Split:
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
        _left_out(store, absent, f"{where} (it needs every clip)", "", nothing_left=True, reporter=reporter)
    keep = [name not in gone for name in split.query_files]
    _left_out(store, absent, where, f"{len(keep) - sum(keep)} query(ies)", nothing_left=not any(keep),
              reporter=reporter)
    return Split(dataset=split.dataset, split=split.split,
                 files=[name for name, cached in zip(split.files, present) if cached],
                 paths=[path for path, cached in zip(split.paths, present) if cached],
                 queries=[query for query, kept in zip(split.queries, keep) if kept],
                 query_files=[name for name, kept in zip(split.query_files, keep) if kept])


def _left_out(store: AudioCache, absent: list[str], where: str, rows: str, nothing_left: bool,
              reporter: Reporter) -> None:
    """Warn that ``rows`` of ``where`` are left out with their ``absent`` clips, or fail when nothing is left."""
    first = f"{absent[0]}: {store.reason(absent[0])}"
    if nothing_left:
        raise UserError(f"{store.skipped_file}: {len(absent)} clip(s) of {where} were skipped by the {store.rate} Hz "
                        f"audio cache, which leaves nothing to use (first {first}); {FIX_SKIPPED}")
    reporter.warning(f"left out {rows} of {where}: their {len(absent)} clip(s) were skipped by the {store.rate} Hz "
                     f"audio cache (listed in {store.skipped_file}; first {first})")


def build_cache(layout: Layout, rate: int, datasets: list[str] | None = None, workers: int = 1,
                checkpoint_s: float = 5.0, request: StorageRequest | None = None, force: bool = False,
                reporter: Reporter = SILENT) -> CacheReport:
    """Cache every clip of the given (default: all) indexed datasets at ``rate``, each in its storage.

    Args:
        layout: the data root.
        rate: the backbone's sample rate.
        datasets: the datasets to cache (default: every indexed one).
        workers: decoding processes.
        checkpoint_s: seconds between index commits.
        request: storage modes / caps asked for (default: remembered, else the defaults of ``storage``).
        force: build even when the free space looks too small.
        reporter: the space line before the build starts, and the bar over the clips.

    Returns:
        A summary: counts, hours, size on disk, the space needed and free, and the storage of each dataset.
    """
    if not 8000 <= rate <= 192000:
        raise UserError(f"--rate {rate}: use the backbone's rate (32000 for PaSST, 16000 for the others)")
    names = datasets or list_datasets(layout.root)
    clips = _clips(layout, names)
    directory = layout.cache_dir(rate)
    with _locked(directory):
        chosen = choose(directory, names, request or StorageRequest.none())
        entries = _valid_entries(directory)
        jobs, fresh = _plan(layout, clips, entries, rate, chosen)
        needed = sum(stored_bytes(clips[job.key].n_samples, clips[job.key].sample_rate, rate, job.storage)
                     for job in jobs)
        space = check_space(directory, needed, len(jobs), force)
        if jobs:
            reporter.info(f"cache {directory}: {len(jobs)} clip(s) to cache need about {gigabytes(needed)} GB; "
                          f"{gigabytes(space.free)} GB free")
        remember(directory, chosen)
        book = _Book(directory, rate, entries)
        try:
            _run(jobs, workers, directory, book, checkpoint_s, reporter)
        finally:
            book.commit()
            write_table(pd.DataFrame(book.skipped, columns=["path", "reason"]), directory / SKIPPED_FILE)
    return _report(directory, rate, clips, chosen, book, fresh, space)


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
    jobs, fresh = [], 0
    for key, clip in clips.items():
        path, row, storage = layout.resolve(key), cached.get(key), chosen[clip.dataset]
        same_storage = row is not None and (row["storage"], row["max_samples"]) == (storage.mode, storage.cap(rate))
        stat = path.stat() if path.exists() else None
        if same_storage and stat is not None and (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            fresh += 1
        else:
            jobs.append(Job(key, path, rate, storage, row["crc32"] if same_storage else None))
    return jobs, fresh


def _report(directory: Path, rate: int, clips: dict[str, _Clip], chosen: dict[str, Storage], book: _Book,
            fresh: int, space: SpaceCheck) -> CacheReport:
    """The build's summary, with hours and clips per dataset and storage."""
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


def _run(jobs: list[Job], workers: int, directory: Path, book: _Book, checkpoint_s: float, reporter: Reporter) -> None:
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
        task = stack.enter_context(reporter.task(f"caching audio at {book.rate} Hz", len(jobs)))
        last = time.monotonic()
        for outcome in outcomes:
            book.record(outcome)
            task.advance()
            if time.monotonic() - last > checkpoint_s:
                book.commit()
                last = time.monotonic()


def worker_context() -> multiprocessing.context.BaseContext:
    """Fork server with this module preloaded: safe from a threaded caller (training), workers start fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _read_entries(directory: Path) -> pd.DataFrame:
    """The committed index; an index written before storage modes existed reads as ``float32`` clips."""
    if not (directory / INDEX_FILE).is_file():
        return pd.DataFrame({column: pd.Series(dtype=object) for column in CACHE_COLUMNS})
    entries = read_table(directory / INDEX_FILE, LEGACY_COLUMNS)
    for column, legacy in (("storage", "float32"), ("max_samples", "0"), ("frames", "0")):
        if column not in entries.columns:
            entries[column] = legacy
    return entries[CACHE_COLUMNS].astype({column: np.int64 for column in INTEGER_COLUMNS})


def _valid_entries(directory: Path) -> pd.DataFrame:
    """Committed entries whose samples are on disk; every shard is cut after its last indexed clip."""
    entries = _read_entries(directory)
    sizes = {(mode, int(p.stem.split("-")[1])): p.stat().st_size // SAMPLE_BYTES[mode]
             for mode, suffix in SUFFIXES.items() for p in directory.glob(f"audio-*.{suffix}")}
    ends = entries["offset"] + entries["length"]
    on_disk = pd.Series([sizes.get((mode, shard), -1) for mode, shard in zip(entries["storage"], entries["shard"])],
                        index=entries.index, dtype=np.int64)
    entries = entries[(entries["storage"] == "window") | (ends <= on_disk)].reset_index(drop=True)
    stored = entries[entries["storage"] != "window"]
    last = (stored["offset"] + stored["length"]).groupby([stored["storage"], stored["shard"]]).max()
    for mode, shard in sizes:
        with open(shard_path(directory, shard, mode), "ab") as handle:
            handle.truncate(int(last.get((mode, shard), 0)) * SAMPLE_BYTES[mode])
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
