"""``index build``: embed every audio file of a folder into an index folder, incrementally.

A rebuild embeds only what it has no vector for: a file whose path, size and modification time are those of an
indexed file keeps its vector; a new or changed one is hashed (SHA-256) first, and keeps a vector of the same
content (a file touched, renamed or copied is not embedded again); the rest is embedded, ``chunk_files`` files at a
time, each chunk saved under ``pending/`` at once, so an interrupted build resumes where it stopped. The new
generation is committed by replacing the manifest (``store``): the old index stays readable until then. Files
that do not decode are left out (one warning) and tried again once they change. An index holds one model's
vectors: another model is refused.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import FolderKind, OutputRequest, check_output_dir, is_within, resolved
from dcase_t6.common.reporting import BYTES, SILENT, Reporter
from dcase_t6.runs.records import sha256_of
from dcase_t6.search.approximate import APPROXIMATE_FROM, INSTALL, build_ivf, faiss_available, ivf_settings
from dcase_t6.search.encoder import EncodedFiles
from dcase_t6.search.scan import FoundFile, scan_folder
from dcase_t6.search.store import (
    MANIFEST,
    Approximate,
    Chunk,
    FileEntry,
    Manifest,
    ModelIdentity,
    Skipped,
    chunk_name,
    clear_pending,
    commit,
    is_index,
    locked,
    open_index,
    read_chunks,
    read_manifest,
    read_vectors,
    remove_uncommitted,
    write_chunk,
    write_table,
)

COPY_ROWS = 65_536  # vectors copied into a new generation at a time
UNREADABLE = "cannot be read"


class FileEncoder(Protocol):
    """What a build needs of a model (``encoder.Encoder``; tests pass a stand-in)."""

    identity: ModelIdentity

    @property
    def dim(self) -> int: ...

    def encode_files(self, paths: Sequence[Path]) -> EncodedFiles: ...


@dataclass(frozen=True)
class BuildRequest:
    """What ``index build`` indexes, and where."""

    audio: str | Path  # the folder of sounds (searched recursively)
    out: str | Path  # the index folder
    approximate: bool | None = None  # True: always build the approximate index; False: never; None: by size
    chunk_files: int = 256  # files embedded and saved per chunk (what an interrupted build keeps)


@dataclass(frozen=True)
class BuildOutcome:
    """What a build did: the files the index now holds, and how each got its vector."""

    index: Path
    audio: Path
    model: ModelIdentity
    files: int  # files in the index now
    embedded: int  # embedded by this build
    resumed: int  # taken from the saved chunks of an interrupted build
    unchanged: int  # same path, size and modification time as indexed
    same_content: int  # changed time or name (or a copy), same content: vector kept
    removed: int  # indexed before, gone from the folder now
    skipped: int  # left out: they do not decode
    approximate: bool  # whether the index has an approximate index
    updated: bool  # False: nothing had changed, nothing was written
    seconds: float

    def as_json(self) -> dict:
        """What ``index build --json`` prints."""
        return {"index": str(self.index), "audio": str(self.audio), "model": self.model.describe(),
                "files": self.files, "embedded": self.embedded, "resumed": self.resumed,
                "unchanged": self.unchanged, "same_content": self.same_content, "removed": self.removed,
                "skipped": self.skipped, "approximate": self.approximate, "updated": self.updated,
                "seconds": round(self.seconds, 3)}


def check_index_folder(out: str | Path, audio: str | Path, inputs: Sequence[tuple[str, str | Path | None]] = (),
                       protected: Sequence[tuple[str, str | Path | None]] = ()) -> Path:
    """The index folder, absolute, or a UserError (call it before anything is read): a new or empty folder or an
    index written by ``index build``, neither inside ``audio`` nor holding it, nor any of ``inputs`` or
    ``protected`` ((option, path) pairs: the model folder; the work directory)."""
    if not Path(audio).expanduser().is_dir():
        raise UserError(f"--audio {audio}: no such folder; pass the folder that holds your sounds")
    target = check_output_dir(
        OutputRequest(out, "--out", inputs=[("--audio", audio), *inputs], protected=protected),
        FolderKind("a search index", legacy_marker=MANIFEST,
                   remedy="choose a new or empty folder, or an index written by `dcase-t6 index build`"))
    if is_within(resolved(out, "--out"), resolved(audio, "--audio")):
        raise UserError(f"--out {out}: inside the --audio folder {audio}; the index would lie among the sounds it "
                        "indexes: choose a folder outside it")
    if is_index(target):
        read_manifest(target)
    return target


class _Vectors:
    """Where each known vector is: by (path, size, time) and by content digest, as (array, row)."""

    def __init__(self):
        self.by_key: dict[tuple[str, int, int], tuple[FileEntry, np.ndarray, int, bool]] = {}
        self.by_sha: dict[str, tuple[np.ndarray, int]] = {}

    def add(self, entries: Sequence[FileEntry], vectors: np.ndarray, indexed: bool, same_folder: bool = True
            ) -> None:
        """Know these vectors by content, and by path, size and time when their paths are of the folder indexed
        now (``same_folder``)."""
        for row, entry in enumerate(entries):
            if same_folder:
                self.by_key.setdefault((entry.path, entry.size, entry.mtime_ns), (entry, vectors, row, indexed))
            self.by_sha.setdefault(entry.sha256, (vectors, row))


@dataclass
class _Tally:
    embedded: int = 0
    resumed: int = 0
    unchanged: int = 0
    same_content: int = 0


def build_index(request: BuildRequest, encoder: FileEncoder, reporter: Reporter = SILENT) -> BuildOutcome:
    """Build or update the index of ``request.audio`` in ``request.out`` with ``encoder``'s model.

    Args:
        request: the folders, the approximate index's choice, the chunk size.
        encoder: the model (its identity is recorded; another than the index's is refused).
        reporter: bars over hashing and embedding, the warning about files that do not decode.

    Returns:
        What the build did.
    """
    started = time.perf_counter()
    audio, out = (Path(folder).expanduser().absolute() for folder in (request.audio, request.out))
    if request.approximate and not faiss_available():
        raise UserError(f"--approximate: the approximate index needs FAISS, which is not installed: {INSTALL}")
    found = scan_folder(audio)
    if not found:
        raise UserError(f"--audio {audio}: holds no audio file (.wav, .flac, .mp3, .ogg, in any sub-folder); "
                        "nothing to index")
    with locked(out):
        manifest = read_manifest(out) if is_index(out) else None
        if manifest is not None and manifest.model.sha256 != encoder.identity.sha256:
            raise UserError(f"--out {out}: this index holds the vectors of {manifest.model.describe()}, not of "
                            f"{encoder.identity.describe()}; use a new --out for another model")
        remove_uncommitted(out, manifest.generation if manifest else 0)
        previous = open_index(out) if manifest is not None else None
        known = _Vectors()
        if previous is not None:
            known.add(previous.entries, previous.vectors, True, manifest.audio == str(audio))
        for chunk in read_chunks(out, encoder.identity.sha256, encoder.dim):
            known.add(chunk.entries, chunk.vectors, False, chunk.audio == str(audio))
        tally = _Tally()
        skipped_before = ({(item.path, item.size, item.mtime_ns): item for item in manifest.skipped}
                          if manifest is not None and manifest.audio == str(audio) else {})
        entries, skipped = _embed_missing(found, known, skipped_before, _Work(encoder, out, request, reporter),
                                          tally)
        removed = len({entry.path for entry in previous.entries} - {file.path for file in found}) if previous else 0
        if skipped:
            reporter.warning(f"{len(skipped)} of {len(found)} files do not decode and are left out (first "
                             f"{skipped[0].path}: {skipped[0].reason})")
        wanted = _wants_approximate(request.approximate, len(entries), manifest, reporter)
        # what does not decode is tried again once it changes; what could not be read, on every build
        remembered = tuple(item for item in skipped if not item.reason.startswith(UNREADABLE))
        updated = (manifest is None or previous.entries != tuple(entries) or manifest.skipped != remembered
                   or manifest.audio != str(audio) or wanted != (manifest.approximate is not None))
        if updated:
            generation = (manifest.generation if manifest else 0) + 1
            written = Manifest(generation, encoder.identity, str(audio), encoder.dim, len(entries), None, remembered)
            _write_generation(out, written, entries, known, reporter)
            commit(out, _with_approximate(out, written, reporter) if wanted else written)
        clear_pending(out)
    return BuildOutcome(out, audio, encoder.identity, len(entries), tally.embedded, tally.resumed, tally.unchanged,
                        tally.same_content, removed, len(skipped), wanted, updated, time.perf_counter() - started)


@dataclass(frozen=True)
class _Work:
    encoder: FileEncoder
    out: Path
    request: BuildRequest
    reporter: Reporter


def _embed_missing(found: list[FoundFile], known: _Vectors, skipped_before: dict, work: _Work, tally: _Tally
                   ) -> tuple[list[FileEntry], list[Skipped]]:
    """The table of the new generation (``found`` less the files that do not decode), embedding what ``known``
    has no vector for; ``known`` gains the new vectors."""
    audio = Path(work.request.audio).expanduser().absolute()
    to_hash = [file for file in found if file.key not in known.by_key and file.key not in skipped_before]
    digests, problems = {}, {}
    with work.reporter.task("hashing new and changed files", sum(file.size for file in to_hash), BYTES) as task:
        for file in to_hash:
            try:
                digests[file.key] = sha256_of(audio / file.path)
            except OSError as err:  # unreadable (permissions), or removed since the scan
                digests[file.key] = f"unreadable:{file.path}"
                problems[digests[file.key]] = f"{UNREADABLE} ({err.strerror or err})"
            task.advance(file.size)
    to_embed = list({digests[file.key]: file for file in reversed(to_hash) if digests[file.key] not in known.by_sha
                     and digests[file.key] not in problems}.values())[::-1]  # one file per new content
    build, step = time.time_ns(), max(1, work.request.chunk_files)
    with work.reporter.task("embedding", len(to_embed)) as task:
        for number, start in enumerate(range(0, len(to_embed), step)):
            batch = to_embed[start:start + step]
            encoded = work.encoder.encode_files([audio / file.path for file in batch])
            good = [FileEntry(file.path, file.size, file.mtime_ns, digests[file.key])
                    for file, problem in zip(batch, encoded.problems) if problem is None]
            problems.update({digests[file.key]: problem for file, problem in zip(batch, encoded.problems) if problem})
            vectors = np.asarray(encoded.vectors, dtype=np.float32).reshape(len(good), work.encoder.dim)
            write_chunk(work.out, chunk_name(build, number),
                        Chunk(tuple(good), vectors, work.encoder.identity.sha256, str(audio)))
            known.add(good, vectors, indexed=False)
            tally.embedded += len(good)
            task.advance(len(batch))
    embedded_now = {file.key for file in to_embed}
    entries, skipped = [], []
    for file in found:
        if file.key in skipped_before:
            skipped.append(skipped_before[file.key])
        elif file.key in known.by_key:
            entry, _, _, indexed = known.by_key[file.key]
            if file.key not in embedded_now:
                tally.unchanged += indexed
                tally.resumed += not indexed
            entries.append(entry)
        elif digests[file.key] in problems:
            skipped.append(Skipped(file.path, file.size, file.mtime_ns, problems[digests[file.key]]))
        else:
            entries.append(FileEntry(file.path, file.size, file.mtime_ns, digests[file.key]))
            tally.same_content += 1
    return entries, skipped


def _wants_approximate(asked: bool | None, count: int, manifest: Manifest | None, reporter: Reporter) -> bool:
    """Whether the new generation gets an approximate index: as asked, else from ``APPROXIMATE_FROM`` vectors
    (or when the index had one) if FAISS is installed."""
    if asked is not None or count == 0:
        return bool(asked) and count > 0
    wanted = count >= APPROXIMATE_FROM or (manifest is not None and manifest.approximate is not None)
    if wanted and not faiss_available():
        reporter.warning(f"{count} files: an approximate index would answer faster, but FAISS is not installed "
                         f"({INSTALL}); searches will be exact")
        return False
    return wanted


def _write_generation(out: Path, manifest: Manifest, entries: list[FileEntry], known: _Vectors,
                      reporter: Reporter) -> None:
    """Write the vectors and the table of ``manifest``'s generation (not yet committed)."""
    path = out / manifest.embeddings
    if entries:
        vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(entries), manifest.dim))
        with reporter.task("writing the index", len(entries)) as task:
            for start in range(0, len(entries), COPY_ROWS):
                block = entries[start:start + COPY_ROWS]
                vectors[start:start + len(block)] = _gather(block, known, manifest.dim)
                task.advance(len(block))
        vectors.flush()
        del vectors
    else:
        np.save(path, np.zeros((0, manifest.dim), dtype=np.float32))
    write_table(out / manifest.table, entries)


def _with_approximate(out: Path, manifest: Manifest, reporter: Reporter) -> Manifest:
    """Build the approximate index of ``manifest``'s vectors (just written); the manifest naming it."""
    settings = ivf_settings(manifest.count)
    name = f"ivf.{manifest.generation}.faiss"
    build_ivf(read_vectors(out / manifest.embeddings, manifest.dim), out / name, settings, reporter)
    return dataclasses.replace(manifest, approximate=Approximate(name, settings.lists, settings.probe))


def _gather(block: Sequence[FileEntry], known: _Vectors, dim: int) -> np.ndarray:
    """The vectors of ``block``'s entries, grouped by the array they come from (one fancy index each)."""
    gathered = np.empty((len(block), dim), dtype=np.float32)
    groups: dict[int, tuple[np.ndarray, list[int], list[int]]] = {}
    for position, entry in enumerate(block):
        found = known.by_key.get((entry.path, entry.size, entry.mtime_ns))
        array, row = (found[1], found[2]) if found is not None else known.by_sha[entry.sha256]
        group = groups.setdefault(id(array), (array, [], []))
        group[1].append(position)
        group[2].append(row)
    for array, positions, rows in groups.values():
        gathered[positions] = array[rows]
    return gathered
