"""Resumable embedding: the finished chunks of a split's embeddings, kept in a partial folder next to the output.

``<dataset>.<split>.embeddings.partial/`` beside ``<dataset>.<split>.embeddings.npz`` holds ``manifest.json``
(the key of each kind of item: ``audio``, ``text``) and one ``<kind>-<start>-<stop>.npz`` per finished chunk:
the vectors of rows ``start`` to ``stop - 1`` of that kind's items, with the key they were made under, each
written atomically. A key hashes everything a chunk's vectors depend on (``Recipe``: the weights, the batch size,
the chunk size, the number of processes and the device type; and the items themselves), so a chunk is reused
only by an embedding that would compute the very same vectors, and never mixed into another. The main process
removes the chunks of other keys before any process starts (``prepare``), and the folder once the output is
written (``remove``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcase_t6.common.atomic import atomic_path

MANIFEST = "manifest.json"
KINDS = ("audio", "text")
_CHUNK = re.compile(r"(?P<kind>[a-z]+)-(?P<start>\d{9})-(?P<stop>\d{9})\.npz")


@dataclass(frozen=True)
class Recipe:
    """What the vectors of a chunk depend on besides its items: ``checkpoint`` (the hash of the weights),
    ``batch_size`` and ``chunk_batches`` (batches per chunk: together they place the batch boundaries),
    ``processes`` (the number of processes: it places each process's shard) and ``device`` (its type, cpu or
    cuda: the kernels differ)."""

    checkpoint: str
    batch_size: int
    chunk_batches: int
    processes: int
    device: str

    @property
    def chunk_size(self) -> int:
        """Items per chunk: a whole number of batches."""
        return self.batch_size * self.chunk_batches

    def key(self, kind: str, items: Iterable[str]) -> str:
        """The key of the chunks of ``kind`` made from ``items`` (every input that reaches the encoder, in order:
        clip paths and the input length, or caption texts)."""
        digest = hashlib.sha256(json.dumps([kind, dataclasses.asdict(self)], sort_keys=True).encode())
        for item in items:
            encoded = item.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
        return digest.hexdigest()


def partial_folder(output: Path) -> Path:
    """The partial folder of an output file: ``x.embeddings.npz`` -> ``x.embeddings.partial`` beside it."""
    return output.with_name(output.name.removesuffix(".npz") + ".partial")


def chunk_ranges(shard: range, size: int) -> list[range]:
    """``shard`` (a contiguous range of rows) cut into chunks of ``size`` rows, the last one shorter."""
    return [shard[offset:offset + size] for offset in range(0, len(shard), size)]


def chunk_path(folder: Path, kind: str, rows: range) -> Path:
    """Where the chunk of ``kind`` holding ``rows`` is kept."""
    return folder / f"{kind}-{rows.start:09d}-{rows.stop:09d}.npz"


def prepare(folder: Path, keys: dict[str, str]) -> list[str]:
    """Make ``folder`` hold only chunks made under ``keys`` (kind -> key) and record the keys (main process, before
    the others start).

    Args:
        folder: the partial folder (created if missing).
        keys: the key of each kind of item to embed now.

    Returns:
        The kinds whose chunks were removed because they were made under another key (other weights, items or
        settings), in order; empty when the folder was new or every chunk in it is still valid.
    """
    recorded = _manifest(folder)
    dropped = set()
    for path in _ours(folder):
        found = _CHUNK.fullmatch(path.name)
        if found is not None and (recorded.get(found["kind"]) is None
                                  or recorded.get(found["kind"]) != keys.get(found["kind"])):
            path.unlink(missing_ok=True)
            dropped.add(found["kind"])
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(keys, sort_keys=True), encoding="utf-8")
    return [kind for kind in KINDS if kind in dropped] + sorted(dropped - set(KINDS))


def load_chunk(folder: Path, kind: str, rows: range, key: str) -> np.ndarray | None:
    """The vectors of a finished chunk, or None when it is missing, made under another key, of the wrong shape
    or unreadable (then it is embedded again)."""
    path = chunk_path(folder, kind, rows)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            vectors = data["vectors"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if vectors.ndim != 2 or vectors.shape[0] != len(rows) or vectors.dtype != np.float32:
        return None
    return vectors


def save_chunk(folder: Path, kind: str, rows: range, key: str, vectors: np.ndarray) -> None:
    """Keep a finished chunk (atomically: a process killed meanwhile leaves no partial chunk under its name)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(chunk_path(folder, kind, rows)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), vectors=np.ascontiguousarray(vectors, dtype=np.float32))


def finished(folder: Path, kind: str, chunks: Sequence[range]) -> int:
    """How many of ``chunks`` of ``kind`` are kept in ``folder`` (after ``prepare``: made under the current key)."""
    return sum(chunk_path(folder, kind, rows).is_file() for rows in chunks)


def remove(folder: Path) -> None:
    """Remove the partial folder: its chunks, its manifest and temporary files killed writers left, then the
    folder itself unless something else was put in it."""
    for path in _ours(folder):
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _ours(folder: Path) -> list[Path]:
    """The files of ``folder`` this module writes (chunks, manifest, their temporary files)."""
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir() if path.is_file() and (
        path.name == MANIFEST or _CHUNK.fullmatch(path.name) or (path.name.startswith(".") and path.name.endswith(
            ".tmp") and (path.name.startswith(f".{MANIFEST}.") or _CHUNK.match(path.name[1:]))))]


def _manifest(folder: Path) -> dict[str, str]:
    try:
        recorded = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {kind: key for kind, key in recorded.items() if kind in KINDS and isinstance(key, str)}
