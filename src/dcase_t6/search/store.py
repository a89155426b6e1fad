"""The search index folder. Its manifest names the files of the current generation and is written last::

    dcase-t6-index.json     the manifest: format, generation, the model (run or exported folder, weights digest),
                            the audio folder, the vector count and dimension, the files below, the files left out
    embeddings.<g>.npy      (count, dim) float32 unit vectors, row i for row i of the table (memory-mapped)
    files.<g>.csv           path (relative to the audio folder, /-separated), size, mtime_ns, sha256 of the content
    ivf.<g>.faiss           the approximate index (FAISS IVF-Flat, inner product), when one is built
    pending/chunk-*.npz     vectors of a build that has not committed yet, in chunks (a resumed build reuses them)
    .dcase-t6-index.lock    held while a build runs

A build writes generation g+1's files beside g's, then replaces the manifest atomically: a crash before that
leaves generation g whole and readable. After the commit, generations below g are removed (a search that read
g's manifest still finds g's files). Only files of these names are ever removed or replaced.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import exclusive_lock
from dcase_t6.common.jsonfile import read_json, write_json

FORMAT, FORMAT_VERSION = "dcase-t6-search-index", 1
MANIFEST, LOCK, PENDING = "dcase-t6-index.json", ".dcase-t6-index.lock", "pending"
TABLE_FIELDS = ("path", "size", "mtime_ns", "sha256")
_GENERATION_FILE = re.compile(r"(embeddings|files|ivf)\.(\d+)\.(npy|csv|faiss)")
_CHUNK = re.compile(r"chunk-\d+-\d+\.npz")
_REBUILD = "build it again into a new folder with `dcase-t6 index build`"


@dataclass(frozen=True)
class ModelIdentity:
    """The model whose vectors an index holds."""

    kind: str  # "run" (a registered run) or "folder" (an exported model folder)
    reference: str  # the run's id, or the exported folder's absolute path
    checkpoint: str | None  # the run's checkpoint tag (best / last); None for a folder
    sha256: str  # digest of the weights: the identity compared on every rebuild and search

    def describe(self) -> str:
        """``run ID (checkpoint best)`` or ``exported model DIR``, with the digest's start."""
        where = (f"run {self.reference} (checkpoint {self.checkpoint})" if self.kind == "run"
                 else f"exported model {self.reference}")
        return f"{where}, weights {self.sha256[:12]}"


@dataclass(frozen=True)
class FileEntry:
    """One indexed audio file: a row of the table and of the vectors."""

    path: str  # relative to the audio folder, /-separated
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds
    sha256: str  # digest of the content (a file touched or moved but unchanged keeps its vector)


@dataclass(frozen=True)
class Skipped:
    """A file left out because it does not decode; tried again once its size or time changes."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class Approximate:
    """The approximate index of a generation: its file and the FAISS IVF-Flat settings it was built with."""

    file: str  # file name inside the index folder
    lists: int  # inverted lists (k-means centroids)
    probe: int  # lists searched per query (nprobe)


@dataclass(frozen=True)
class Manifest:
    """What ``dcase-t6-index.json`` holds: the current generation of an index."""

    generation: int
    model: ModelIdentity
    audio: str  # the indexed folder (absolute)
    dim: int  # vector dimension
    count: int  # vectors (= table rows)
    approximate: Approximate | None = None
    skipped: tuple[Skipped, ...] = ()

    @property
    def embeddings(self) -> str:
        """File name of the vectors."""
        return f"embeddings.{self.generation}.npy"

    @property
    def table(self) -> str:
        """File name of the file table."""
        return f"files.{self.generation}.csv"

    def as_json(self) -> dict:
        """The manifest's JSON object."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": self.generation,
                "model": asdict(self.model), "audio": self.audio, "dim": self.dim, "count": self.count,
                "embeddings": self.embeddings, "files": self.table,
                "approximate": None if self.approximate is None else asdict(self.approximate),
                "skipped": [asdict(item) for item in self.skipped]}


@dataclass(frozen=True)
class IndexView:
    """An index opened for reading: its manifest, the file table and the vectors (memory-mapped, read-only)."""

    folder: Path
    manifest: Manifest
    entries: tuple[FileEntry, ...]
    vectors: np.ndarray


def is_index(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest (of any content: ``read_manifest`` checks it)."""
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the index in ``folder``, checked; a UserError naming the file and the key otherwise."""
    path = folder / MANIFEST
    data = read_json(path, f"{folder} is not a search index; build one with `dcase-t6 index build`")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not a dcase-t6 search index (format {FORMAT!r} expected); pass a folder written "
                        "by `dcase-t6 index build`")
    if data.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format version {data.get('format_version')!r} (this dcase-t6 reads "
                        f"{FORMAT_VERSION}); {_REBUILD}")
    try:
        model, approximate = data["model"], data["approximate"]
        manifest = Manifest(
            _number(data["generation"]), ModelIdentity(**model), str(data["audio"]), _number(data["dim"]),
            _number(data["count"]), None if approximate is None else Approximate(**approximate),
            tuple(Skipped(**item) for item in data["skipped"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: damaged ({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
                        f"{_REBUILD}") from None
    if data.get("embeddings") != manifest.embeddings or data.get("files") != manifest.table:
        raise UserError(f"{path}: names files of another generation than {manifest.generation}; {_REBUILD}")
    return manifest


def _number(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def open_index(folder: str | Path) -> IndexView:
    """Open the index in ``folder``: manifest, table and memory-mapped vectors, checked against each other."""
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; pass an index folder written by `dcase-t6 index build`")
    manifest = read_manifest(folder)
    entries = read_table(folder / manifest.table)
    vectors = read_vectors(folder / manifest.embeddings, manifest.dim)
    if len(entries) != manifest.count or len(vectors) != manifest.count:
        raise UserError(f"{folder}: the manifest counts {manifest.count} files, {manifest.table} has "
                        f"{len(entries)} and {manifest.embeddings} {len(vectors)}; {_REBUILD}")
    return IndexView(folder, manifest, entries, vectors)


def read_vectors(path: Path, dim: int) -> np.ndarray:
    """The (count, dim) float32 vectors of ``path``, memory-mapped read-only."""
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # numpy cannot map zero bytes: an index of no file
        vectors = np.load(path, allow_pickle=False)
    except OSError as err:
        raise UserError(f"{path}: cannot read the index's vectors ({err.strerror or err}); {_REBUILD}") from None
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dim:
        raise UserError(f"{path}: {vectors.dtype} {vectors.shape}, expected float32 (count, {dim}); {_REBUILD}")
    return vectors


def write_table(path: Path, entries: Sequence[FileEntry]) -> None:
    """Write the file table (CSV; names that are not UTF-8 kept byte for byte)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_FIELDS)
        writer.writerows((entry.path, entry.size, entry.mtime_ns, entry.sha256) for entry in entries)


def read_table(path: Path) -> tuple[FileEntry, ...]:
    """The file table of ``path``."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            rows = csv.reader(handle)
            if tuple(next(rows, ())) != TABLE_FIELDS:
                raise UserError(f"{path}: expected the columns {', '.join(TABLE_FIELDS)}; {_REBUILD}")
            return tuple(FileEntry(name, int(size), int(mtime), sha) for name, size, mtime, sha in rows)
    except OSError as err:
        raise UserError(f"{path}: cannot read the index's file table ({err.strerror or err}); {_REBUILD}") from None
    except ValueError as err:
        raise UserError(f"{path}: damaged row ({' '.join(str(err).split())[:120]}); {_REBUILD}") from None


def commit(folder: Path, manifest: Manifest) -> None:
    """Make ``manifest`` the index's current generation (an atomic replace), then remove older generations
    (all but the one before) and files of generations never committed."""
    write_json(manifest.as_json(), folder / MANIFEST)
    keep = {manifest.generation, manifest.generation - 1}
    for path in folder.iterdir():
        match = _GENERATION_FILE.fullmatch(path.name)
        if match and int(match.group(2)) not in keep and path.is_file() and not path.is_symlink():
            path.unlink()


def remove_uncommitted(folder: Path, generation: int) -> None:
    """Remove files of generations above ``generation`` (a build that died before its commit)."""
    for path in folder.iterdir():
        match = _GENERATION_FILE.fullmatch(path.name)
        if match and int(match.group(2)) > generation and path.is_file() and not path.is_symlink():
            path.unlink()


def locked(folder: Path) -> contextlib.AbstractContextManager[None]:
    """The index's build lock for the block; a UserError while another build holds it."""
    return exclusive_lock(folder, LOCK, "another `dcase-t6 index build` is writing this index; wait for it to finish")


@dataclass(frozen=True)
class Chunk:
    """Vectors a build embedded and saved before committing: its files and their rows."""

    entries: tuple[FileEntry, ...]
    vectors: np.ndarray  # (len(entries), dim) float32
    model: str  # the weights digest of the model that embedded them
    audio: str  # the folder the entries' paths are relative to


def write_chunk(folder: Path, name: str, chunk: Chunk) -> None:
    """Save a chunk as ``pending/<name>`` atomically (``chunk_name`` gives the name)."""
    pending = folder / PENDING
    pending.mkdir(exist_ok=True)
    entries = chunk.entries
    with atomic_path(pending / name) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, paths=np.array([entry.path for entry in entries], dtype=str),
                 sizes=np.array([entry.size for entry in entries], dtype=np.int64),
                 mtimes=np.array([entry.mtime_ns for entry in entries], dtype=np.int64),
                 hashes=np.array([entry.sha256 for entry in entries], dtype=str),
                 vectors=chunk.vectors.astype(np.float32, copy=False), model=np.array(chunk.model),
                 audio=np.array(chunk.audio))


def chunk_name(build: int, number: int) -> str:
    """The name of a build's ``number``-th chunk (``build``: the build's start, nanoseconds)."""
    return f"chunk-{build}-{number:06d}.npz"


def read_chunks(folder: Path, model: str, dim: int) -> list[Chunk]:
    """The pending chunks embedded by ``model`` with vectors of ``dim``; a damaged chunk is left out."""
    chunks = []
    pending = folder / PENDING
    for path in sorted(pending.iterdir()) if pending.is_dir() else []:
        if not _CHUNK.fullmatch(path.name):
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["model"]) != model or data["vectors"].shape[1:] != (dim,):
                    continue
                entries = tuple(FileEntry(str(name), int(size), int(mtime), str(sha)) for name, size, mtime, sha
                                in zip(data["paths"], data["sizes"], data["mtimes"], data["hashes"]))
                vectors = np.asarray(data["vectors"], dtype=np.float32)
                audio = str(data["audio"])
        except (OSError, ValueError, KeyError, EOFError):
            continue
        if len(entries) == len(vectors):
            chunks.append(Chunk(entries, vectors, model, audio))
    return chunks


def clear_pending(folder: Path) -> None:
    """Remove the pending chunks (after a commit, or when the model changed)."""
    pending = folder / PENDING
    if not pending.is_dir() or pending.is_symlink():
        return
    for path in pending.iterdir():
        if _CHUNK.fullmatch(path.name) and path.is_file():
            path.unlink()
    with contextlib.suppress(OSError):  # holds something else: left as it is
        pending.rmdir()
