"""Audio decoding (soundfile: WAV, FLAC, OGG, MP3), mono mix-down and resampling (soxr)."""

from __future__ import annotations

import io
import re
import struct
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
        raise AudioProblem(f"unreadable ({reason(err)})") from None


def decode_mono(source: Path | bytes) -> tuple[np.ndarray, int]:
    """Decode a file (path or its bytes) to mono float32 samples and its sample rate."""
    try:
        samples, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                                dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise AudioProblem(f"unreadable ({reason(err)})") from None
    if samples.shape[0] == 0:
        raise AudioProblem("no audio samples (empty file)")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono), int(rate)


def declared_frames(path: Path) -> int | None:
    """The frame count a file's header promises (WAV: its ``data`` chunk; FLAC: STREAMINFO), or None when
    the format has no exact count (MP3, OGG) or the header leaves it open (a streamed WAV).

    libsndfile silently shortens a WAV whose ``data`` chunk runs past the end of the file, so the WAV
    header is read here; compare with what decodes to find truncated files.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                return _wav_data_frames(handle)
            if head[:4] == b"fLaC":
                return sf.info(str(path)).frames or None
    except (OSError, RuntimeError, struct.error):
        return None
    return None


def _wav_data_frames(handle) -> int | None:
    """Frames of the ``data`` chunk (size / block align) of a RIFF/WAVE file positioned after its 12-byte header."""
    block_align = 0
    while True:
        header = handle.read(8)
        if len(header) < 8:
            return None
        kind, size = header[:4], struct.unpack("<I", header[4:])[0]
        if kind == b"fmt ":
            block_align = struct.unpack("<H", handle.read(16)[12:14])[0]
            handle.seek(size - 16 + (size & 1), io.SEEK_CUR)
        elif kind == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        else:
            handle.seek(size + (size & 1), io.SEEK_CUR)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 samples with soxr (high quality); no-op at the same rate."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate).astype(np.float32, copy=False)


def load_audio(source: Path | bytes, target_rate: int) -> np.ndarray:
    """Decode, mix to mono and resample to ``target_rate``: what training and the cache use."""
    samples, rate = decode_mono(source)
    return resample(samples, rate, target_rate)


def reason(err: Exception) -> str:
    """libsndfile's reason without the "Error opening '<path>': " prefix (the path is reported beside it)."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^Error opening .*?: ", "", text)
