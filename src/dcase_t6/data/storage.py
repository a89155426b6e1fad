"""How the audio cache keeps each dataset: the storage modes, their choice per dataset, sizes and the disk check.

Three modes, chosen per dataset (``prepare cache --storage DATASET=MODE``; the choice is remembered in
``DATA/cache/<rate>/storage.json`` and used by every later build, also the one ``train`` and ``embed`` run):

* ``float32``: decoded, resampled samples in memory-mapped shards, 4 bytes a sample: exactly the audio
  that decoding gives (the default for Clotho and the synthetic data: their embeddings never change).
* ``int16``: the same samples rounded to 16 bits, 2 bytes a sample (half the size; the rounding error,
  at most 2^-16, is below the 16-bit sources' own step). The default for AudioCaps (10 s clips).
* ``window``: nothing decoded is stored; the cache indexes the source files (size, time, frames, rate)
  and each read decodes only the window it needs, after a seek (WAV, FLAC and MP3 seek exactly). The
  default for WavCaps (403,050 clips, 67.6 s on average: 3.5 TB as float32 at 32 kHz), as the DCASE
  baseline keeps WavCaps as its distributed files and decodes a random 30 s window per epoch.

A window read gives the samples a ``float32`` store holds for the same span (to about 1e-7: the seek is
aligned to the resampler's grid and 50 ms of margin are decoded on both sides). ``max_seconds`` keeps
only the first seconds of every clip of a dataset (stored modes store no more; windows are drawn from
that part only).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json

MODES = ("float32", "int16", "window")
DEFAULT_MODES = {"audiocaps": "int16", "wavcaps": "window"}
FALLBACK_MODE = "float32"
SAMPLE_BYTES = {"float32": 4, "int16": 2, "window": 0}
INDEX_ROW_BYTES = 160  # one index.csv row: path, source facts and position, measured on WavCaps-like names
CHOICES_FILE = "storage.json"
RESERVE_FRACTION = 0.02  # the build needs this much more than its estimate (index rewrites, rounding)


@dataclass(frozen=True)
class Storage:
    """How one dataset is kept: ``mode`` (``float32``, ``int16`` or ``window``) and ``max_seconds`` kept of
    each clip (0: the whole clip)."""

    mode: str = FALLBACK_MODE
    max_seconds: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"storage mode {self.mode!r}: use one of {', '.join(MODES)}")
        if not (self.max_seconds == 0 or 0 < self.max_seconds < 1e6) or math.isnan(self.max_seconds):
            raise UserError(f"max seconds {self.max_seconds}: use a positive number of seconds, or 0 for whole clips")

    def cap(self, rate: int) -> int:
        """Most samples kept of a clip at ``rate`` (0: no cap)."""
        return round(self.max_seconds * rate) if self.max_seconds else 0


@dataclass(frozen=True)
class StorageRequest:
    """What a user asked for: a mode and/or a cap per dataset; ``None`` as dataset means every dataset built."""

    modes: dict[str | None, str]
    max_seconds: dict[str | None, float]

    @classmethod
    def none(cls) -> StorageRequest:
        """Nothing asked: remembered choices, else the defaults."""
        return cls({}, {})


def choose(directory: Path, datasets: list[str], request: StorageRequest) -> dict[str, Storage]:
    """Each dataset's storage: asked now, else remembered in ``storage.json``, else the default.

    Args:
        directory: the cache folder of one rate.
        datasets: the datasets being built.
        request: the modes and caps asked for (by dataset, or for all under ``None``).

    Returns:
        The storage of every dataset in ``datasets``.
    """
    for name in [*request.modes, *request.max_seconds]:
        if name is not None and name not in datasets:
            raise UserError(f"--storage/--max-seconds name dataset {name!r}, which this build does not cache "
                            f"(it caches {', '.join(datasets)}); name one of those")
    remembered = remembered_choices(directory)
    chosen = {}
    for name in datasets:
        before = remembered.get(name, Storage(DEFAULT_MODES.get(name, FALLBACK_MODE)))
        mode = request.modes.get(name, request.modes.get(None, before.mode))
        seconds = request.max_seconds.get(name, request.max_seconds.get(None, before.max_seconds))
        chosen[name] = Storage(mode, float(seconds))
    return chosen


def remembered_choices(directory: Path) -> dict[str, Storage]:
    """The storage each dataset was last built with (empty before the first build)."""
    path = directory / CHOICES_FILE
    if not path.is_file():
        return {}
    document = read_json(path, "delete it: the next build writes it again from the defaults")
    try:
        return {name: Storage(str(entry["mode"]), float(entry["max_seconds"])) for name, entry in document.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{path}: not a storage choice file ({type(err).__name__}: {err}); delete it: the next "
                        "build writes it again from the defaults") from None


def remember(directory: Path, chosen: dict[str, Storage]) -> None:
    """Store the choices of this build beside the others (atomically)."""
    document = {name: asdict(storage) for name, storage in {**remembered_choices(directory), **chosen}.items()}
    write_json(document, directory / CHOICES_FILE)


def resampled_length(frames: int, source_rate: int, rate: int) -> int:
    """Samples soxr gives for ``frames`` at ``source_rate`` resampled to ``rate`` (rounded to nearest)."""
    return frames if source_rate == rate else int(frames * rate / source_rate + 0.5)


def kept_length(frames: int, source_rate: int, rate: int, cap: int) -> int:
    """Samples of a clip at ``rate`` after a cap of ``cap`` samples (0: no cap; see ``Storage.cap``)."""
    length = resampled_length(frames, source_rate, rate)
    return min(length, cap) if cap else length


def stored_bytes(frames: int, source_rate: int, rate: int, storage: Storage) -> int:
    """Bytes a clip takes in the cache: its samples (stored modes) or its index row (``window``)."""
    if storage.mode == "window":
        return INDEX_ROW_BYTES
    return kept_length(frames, source_rate, rate, storage.cap(rate)) * SAMPLE_BYTES[storage.mode] + INDEX_ROW_BYTES


@dataclass(frozen=True)
class SpaceCheck:
    """The space a build needs and what the file system under the cache has free, in bytes."""

    needed: int
    free: int
    clips: int

    @property
    def enough(self) -> bool:
        """Whether the free space covers the need with a small reserve."""
        return self.needed * (1 + RESERVE_FRACTION) <= self.free


def check_space(directory: Path, needed: int, clips: int, force: bool) -> SpaceCheck:
    """Compare what a build will write with the free space; refuse (one line) unless ``force``.

    Args:
        directory: the cache folder (it exists).
        needed: bytes the build will add.
        clips: clips it will (re)cache.
        force: go on even when the space looks too small.

    Returns:
        The figures, for the report.

    Raises:
        UserError: not enough space and not ``force``.
    """
    check = SpaceCheck(needed, shutil.disk_usage(directory).free, clips)
    if not check.enough and not force:
        raise UserError(f"{directory}: caching {clips} clip(s) needs {gigabytes(needed)} GB, the file system has "
                        f"{gigabytes(check.free)} GB free; free space, keep long sets as windows of their sources "
                        "(--storage DATASET=window), store int16 (--storage DATASET=int16), cap clips "
                        "(--max-seconds), or pass --force")
    return check


def gigabytes(count: int) -> float:
    """Bytes as GB (10^9), rounded to 3 places."""
    return round(count / 1e9, 3)
