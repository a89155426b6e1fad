"""Clips for training and embedding at the model's sample rate, read from the prepared audio cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcase_t6.data.audio_cache import AudioCache, build_cache
from dcase_t6.data.layout import Layout


def refresh_cache(data_root: str | Path, rate: int, datasets: list[str], workers: int = 1) -> None:
    """Build or update the audio cache of ``datasets`` at ``rate`` (a no-op when it is fresh)."""
    build_cache(Layout.at(data_root), rate, sorted(set(datasets)), workers=max(1, workers))


class ClipStore:
    """Mono float32 clips at ``rate`` Hz from the prepared audio cache."""

    def __init__(self, data_root: str | Path, rate: int):
        self.cache = AudioCache(data_root, rate)

    def read(self, path: str | Path) -> np.ndarray:
        return self.cache.read(path)
