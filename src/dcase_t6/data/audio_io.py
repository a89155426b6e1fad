"""Audio decoding (soundfile: WAV, FLAC, OGG, MP3), mono mix-down and resampling (soxr)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
_BLOCK = 1 << 16


class AudioProblem(Exception):
    """An audio file that cannot be used; the message says why in a few words."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file and whether all its samples are zero."""

    sample_rate: int
    n_samples: int
    silent: bool

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return self.n_samples / self.sample_rate


def inspect_audio(path: Path) -> AudioInfo:
    """Read the header and scan samples until one is non-zero; raise AudioProblem if unusable."""
    try:
        with sf.SoundFile(path) as handle:
            if handle.frames <= 0:
                raise AudioProblem("no audio samples (empty file)")
            silent = not any(np.any(block) for block in handle.blocks(_BLOCK, dtype="float32", always_2d=True))
            return AudioInfo(handle.samplerate, handle.frames, silent)
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise AudioProblem(f"unreadable ({_reason(err)})") from None


def decode_mono(source: Path | bytes) -> tuple[np.ndarray, int]:
    """Decode a file (path or its bytes) to mono float32 samples and its sample rate."""
    try:
        samples, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                                dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise AudioProblem(f"unreadable ({_reason(err)})") from None
    if samples.shape[0] == 0:
        raise AudioProblem("no audio samples (empty file)")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono), int(rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 samples with soxr (high quality); no-op at the same rate."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate).astype(np.float32, copy=False)


def load_audio(source: Path | bytes, target_rate: int) -> np.ndarray:
    """Decode, mix to mono and resample to ``target_rate``: what training and the cache use."""
    samples, rate = decode_mono(source)
    return resample(samples, rate, target_rate)


def _reason(err: Exception) -> str:
    """libsndfile's reason without the "Error opening '<path>': " prefix (the path is reported beside it)."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^Error opening .*?: ", "", text)
