"""Builders for the search index tests: a stand-in model that embeds a file by its bytes (no torch), and
folders of files to index."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dcase_t6.search.encoder import EncodedFiles
from dcase_t6.search.store import ModelIdentity


def unit_vector(seed_text: str | bytes, dim: int) -> np.ndarray:
    """A unit vector drawn from a seed made of ``seed_text``."""
    data = seed_text.encode("utf-8") if isinstance(seed_text, str) else seed_text
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "little"))
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


class FakeEncoder:
    """Embeds a file as a unit vector seeded by its bytes and a text by its characters; a file starting with
    ``bad`` does not decode. ``embedded`` lists every file it embedded; with ``fail_after`` it raises once it has
    embedded that many batches (an interrupted build)."""

    def __init__(self, digest: str = "f" * 64, dim: int = 8, fail_after: int | None = None):
        self.identity = ModelIdentity("folder", f"/models/{digest[:6]}", None, digest)
        self.dim = dim
        self.fail_after = fail_after
        self.embedded: list[str] = []
        self.batches = 0

    def encode_files(self, paths: Sequence[Path]) -> EncodedFiles:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.batches += 1
        problems, vectors = [], []
        for path in paths:
            data = Path(path).read_bytes()
            if data.startswith(b"bad"):
                problems.append("unreadable (not audio)")
                continue
            problems.append(None)
            vectors.append(unit_vector(data, self.dim))
            self.embedded.append(Path(path).name)
        stacked = np.stack(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)
        return EncodedFiles(stacked, tuple(problems))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([unit_vector(text, self.dim) for text in texts])


def sound_folder(root: Path, count: int, prefix: str = "clip") -> dict[str, bytes]:
    """``count`` files with distinct contents under ``root`` (some in sub-folders, mixed suffixes), plus files
    the index passes over (a text file, a hidden file); their relative paths and contents."""
    files = {}
    for number in range(count):
        folder = "" if number % 3 else "sub/deeper/" if number % 2 else "sub/"
        suffix = (".wav", ".FLAC", ".mp3", ".ogg")[number % 4]
        files[f"{folder}{prefix} {number:03d}{suffix}"] = f"sound {prefix} {number}".encode()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not a sound")
    (root / "._clip.wav").write_bytes(b"macOS metadata")
    return files


def require_faiss():
    """The ``faiss`` module; the test is skipped without it (it is the optional extra ``search``), but fails in CI,
    which installs it (``make install``)."""
    try:
        import faiss
    except ImportError:
        problem = "FAISS is not installed: pip install 'dcase-t6[search]'"
        if os.environ.get("CI"):
            pytest.fail(f"the approximate index cannot be tested in CI: {problem}")
        pytest.skip(problem)
    return faiss
