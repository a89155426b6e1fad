"""Reading clips for training and embedding at the model's sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcase_t6.data.audio_io import AudioProblem, load_audio
from dcase_t6.errors import UserError


class ClipStore:
    """Mono float32 clips at ``rate`` Hz, decoded and resampled from the prepared files."""

    def __init__(self, data_root: str | Path, rate: int):
        self.data_root, self.rate = Path(data_root), rate

    def read(self, path: Path) -> np.ndarray:
        try:
            return load_audio(Path(path), self.rate)
        except AudioProblem as err:
            raise UserError(f"{path}: {err}; re-run `dcase-t6 prepare` to re-index the data") from None
