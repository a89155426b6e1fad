"""Files for the tests: the organisers' files shipped in ``tests/data`` and real ones built here (WAV/FLAC tones, a
Clotho release of 7z archives, 7z archives), digests and snapshots of folders, and an interrupted cache build."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import py7zr
import soundfile as sf

from dcase_t6.data import cache_build
from dcase_t6.data.synthetic import SyntheticConfig, generate

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
# The organisers' Clotho dev-test multi-relevance file (public; 1037 queries), as distributed.
DEVTEST_RELEVANCE = TEST_DATA / "clotho-devtest-relevance-metadata_eval.csv"

SMALL = SyntheticConfig(seed=3, development=4, validation=3, evaluation=5, min_duration=2.0, max_duration=3.0)


def write_tone(path: Path, seconds: float = 1.0, rate: int = 44100, channels: int = 1, frequency: float = 440.0,
               amplitude: float = 0.5, subtype: str | None = None) -> np.ndarray:
    """Write a sine tone (silence if amplitude is 0) and return the samples written."""
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * frequency * t)
    samples = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else mono
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype)
    return samples


def md5(path: Path) -> str:
    """MD5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: file bytes, link targets, folders (to compare before and after)."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = path.relative_to(folder).as_posix()
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("dir",)
            else:
                entries[key] = ("file", path.read_bytes())
    return entries


def clotho_release(folder: Path, config: SyntheticConfig = SMALL) -> dict[str, str]:
    """Build the nine Clotho v2.1 files (real 7z archives with a top-level part folder) in ``folder``."""
    layout_dir = folder / "layout"
    generate(config, layout_dir)
    for part in ("development", "validation", "evaluation"):
        with py7zr.SevenZipFile(folder / f"clotho_audio_{part}.7z", "w") as archive:
            archive.writeall(layout_dir / "audio" / part, arcname=part)
        for kind in ("captions", "metadata"):
            (folder / f"clotho_{kind}_{part}.csv").write_bytes((layout_dir / f"clotho_{kind}_{part}.csv").read_bytes())
    return {p.name: md5(p) for p in sorted(folder.iterdir()) if p.is_file()}


def seven_zip(path: Path, members: dict[str, bytes], unchecked: bool = False) -> Path:
    """A real 7z archive; ``unchecked`` stores names py7zr would refuse (``../evil``, absolute paths)."""
    with py7zr.SevenZipFile(path, "w") as archive:
        for name, data in members.items():
            (archive._writestr if unchecked else archive.writestr)(data, name)
    return path


def interrupt_at_job(monkeypatch, number: int):
    """Make the cache build's ``number``-th job raise KeyboardInterrupt (a Ctrl-C mid-build); return the real job
    function, to put back."""
    real_job, calls = cache_build.run_job, []

    def interrupted(job, writer):
        calls.append(job.key)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real_job(job, writer)

    monkeypatch.setattr(cache_build, "run_job", interrupted)
    return real_job
