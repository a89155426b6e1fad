"""The distillation teachers' vectors as float16 files that every process of a node maps read-only.

Holding the teachers' vectors in float32 in every process costs, for the full recipe (3 teachers x 1024 dims
over ~0.45 M clips and ~0.5 M captions), ~11.7 GB per process and ~93 GB per 8-GPU node. Instead the
vectors, aligned to the training pairs and side by side (``distillation``), are written once as two float16
``.npy`` files (audio: clips x teachers*d in clip-id order; text: pairs x teachers*d in pair order) in a folder
of the work directory keyed by the sha256 of the teachers' registered embeddings and of the pairs' order
(``<workdir>/cache/teacher-tables/<key>/``). Every process maps them with ``np.load(mmap_mode="r")``, so the
pages are the operating system's page cache, shared by the node's processes, not copies.

Written once: by the main process when the work directory is shared (the usual case: every process reads the
run registry there); a node that still lacks the folder afterwards (a node-local work directory) has it
written by its local rank 0. A write goes to a temporary folder that is renamed into place, so a reader sees
the whole folder or none, and a writer that finds the folder already there leaves it as it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcase_t6.runs.world import World

TABLES_DTYPE = np.float16
AUDIO_FILE, TEXT_FILE = "audio.npy", "text.npy"


@dataclass(frozen=True)
class TeacherTables:
    """The teachers' vectors side by side, read-only float16 memory maps.

    audio: (clips, teachers * d) in clip-id order; text: (pairs, teachers * d) in pair order; folder: where
    the two files lie.
    """

    audio: np.ndarray
    text: np.ndarray
    folder: Path


def tables_folder(workdir: Path, embedding_shas: Sequence[str], captions: Sequence[str],
                  clip_names: Sequence[str]) -> Path:
    """The folder for the tables of the teachers whose registered embeddings files have ``embedding_shas`` (in
    teacher order), aligned to pairs with ``captions`` of clips ``clip_names`` (pair order)."""
    digest = hashlib.sha256()
    for part in (*embedding_shas, "\0pairs", *captions, "\0clips", *clip_names):
        digest.update(part.encode("utf-8") + b"\0")
    return workdir / "cache" / "teacher-tables" / digest.hexdigest()[:32]


def write_tables(folder: Path, audio: np.ndarray, text: np.ndarray) -> bool:
    """Write the tables as float16 into ``folder`` atomically (a temporary folder renamed into place).

    Returns:
        True when this call wrote them; False when the folder was already there (it is left unchanged).
    """
    if folder.is_dir():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        for name, table in ((AUDIO_FILE, audio), (TEXT_FILE, text)):
            with open(partial / name, "wb") as out:
                np.save(out, np.ascontiguousarray(table, dtype=TABLES_DTYPE))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(partial / name, 0o444)
        os.rename(partial, folder)  # fails when another process renamed its folder first
    except OSError:
        if not folder.is_dir():
            raise
        return False
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


def open_tables(folder: Path) -> TeacherTables:
    """The tables in ``folder``, mapped read-only (no copy: pages come from the page cache when touched)."""
    return TeacherTables(np.load(folder / AUDIO_FILE, mmap_mode="r"), np.load(folder / TEXT_FILE, mmap_mode="r"),
                         folder)


def shared_tables(folder: Path, build: Callable[[], tuple[np.ndarray, np.ndarray]], world: World) -> TeacherTables:
    """The tables in ``folder`` on every process, written once by the main process (``build`` gives the float32
    audio and text tables) or, on a node that cannot see its folder, by that node's local rank 0. Every process
    must call it (it waits for the others)."""
    if world.is_main:
        if not folder.is_dir():
            write_tables(folder, *build())
    world.barrier()
    if world.any(not folder.is_dir()):  # a node-local work directory
        if world.is_local_main and not folder.is_dir():
            write_tables(folder, *build())
        world.barrier()
    return open_tables(folder)
