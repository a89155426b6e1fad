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
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import exclusive_lock
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import read_table
from dcase_t6.data.audio_io import AudioProblem
from dcase_t6.data.layout import Layout
from dcase_t6.data.storage import (
    SAMPLE_BYTES,
    kept_length,
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
FIX_SKIPPED = ("re-encode or remove the file(s), then run `dcase-t6 prepare <dataset>` to re-index and "
               "`dcase-t6 prepare cache` again")


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


def file_crc32(path: Path) -> str:
    """CRC-32 of a file (8 hex digits), read in 4 MiB blocks into one buffer: constant memory (a memory map would
    count every page of a 10-hour source as resident), 2-3 GB/s."""
    crc, buffer = 0, bytearray(CRC_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            crc = zlib.crc32(view[:count], crc)
    return f"{crc:08x}"


class AudioCache:
    """Read-only view of a built cache: ``clip(path, max_samples, offset)`` returns a span of a clip, ``read(path)``
    the whole clip, without decoding (stored modes) or decoding only the span (``window``)."""

    def __init__(self, root: str | Path, rate: int, reporter: Reporter = SILENT):
        self.layout = Layout.at(root)
        self.rate = rate
        self.reporter = reporter  # told when a source changed since the cache indexed it
        directory = self.layout.cache_dir(rate)
        entries = read_entries(directory)
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


def read_entries(directory: Path) -> pd.DataFrame:
    """The committed index; an index written before storage modes existed reads as ``float32`` clips."""
    if not (directory / INDEX_FILE).is_file():
        return pd.DataFrame({column: pd.Series(dtype=object) for column in CACHE_COLUMNS})
    entries = read_table(directory / INDEX_FILE, LEGACY_COLUMNS)
    for column, legacy in (("storage", "float32"), ("max_samples", "0"), ("frames", "0")):
        if column not in entries.columns:
            entries[column] = legacy
    return entries[CACHE_COLUMNS].astype({column: np.int64 for column in INTEGER_COLUMNS})


def valid_entries(directory: Path) -> pd.DataFrame:
    """Committed entries whose samples are on disk; every shard is cut after its last indexed clip."""
    entries = read_entries(directory)
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


def locked(directory: Path) -> contextlib.AbstractContextManager[None]:
    """The cache folder's build lock (one `prepare cache` at a time)."""
    return exclusive_lock(directory, LOCK_FILE, "another `dcase-t6 prepare cache` is writing this cache; wait for it "
                          "to finish")
