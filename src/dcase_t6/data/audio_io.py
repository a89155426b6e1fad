"""Audio decoding (soundfile: WAV, FLAC, OGG, MP3), mono mix-down and resampling (soxr)."""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Iterator
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


@dataclass
class StreamFacts:
    """What :func:`stream_mono` found while decoding: the source's rate, the frames its header gives, the frames
    decoded, and whether it decoded to the end of the file (False: it stopped once ``max_samples`` were given)."""

    source_rate: int = 0
    header_frames: int = 0
    frames: int = 0
    to_end: bool = False


def stream_mono(source: Path | bytes, rate: int, max_samples: int = 0, facts: StreamFacts | None = None,
                block: int = _BLOCK) -> Iterator[np.ndarray]:
    """Decode, mix to mono and resample a file in blocks: the samples of ``load_audio`` (bit for bit), in pieces.

    Memory stays at a block whatever the clip's length: ``block`` source frames are decoded at a time and
    resampled with a streaming soxr resampler (whose output equals the one-shot ``resample``'s). With
    ``max_samples`` (> 0) the pieces stop after that many samples and decoding stops with them: at most the
    source frames they need, plus 50 ms and the resampler's delay.

    Args:
        source: an audio file (path or its bytes).
        rate: the target rate.
        max_samples: the most samples to give (0: the whole clip).
        facts: filled in while decoding (rate, frames, whether the end was reached).
        block: source frames decoded at a time.

    Yields:
        Mono float32 pieces at ``rate`` (some may be empty), at most ``max_samples`` in all.

    Raises:
        AudioProblem: the file does not open, holds no samples or fails to decode.
    """
    facts = StreamFacts() if facts is None else facts
    given = 0
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as handle:
            facts.source_rate, facts.header_frames = int(handle.samplerate), max(int(handle.frames), 0)
            stream = None if facts.source_rate == rate else soxr.ResampleStream(facts.source_rate, rate, 1,
                                                                                  dtype="float32")
            margin = math.ceil(facts.source_rate / 20)
            while not max_samples or given < max_samples:
                want = block
                if max_samples:  # the frames the missing samples need, and a little more for the filter
                    want = min(block, math.ceil((max_samples - given) * facts.source_rate / rate) + margin)
                frames = handle.read(want, dtype="float32", always_2d=True)
                facts.frames += len(frames)
                last = len(frames) < want
                if last and not facts.frames:
                    raise AudioProblem("no audio samples (empty file)")
                mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
                piece = np.ascontiguousarray(mono) if stream is None else stream.resample_chunk(mono, last=last)
                if max_samples:
                    piece = piece[:max_samples - given]
                given += len(piece)
                yield piece
                if last:
                    facts.to_end = True
                    return
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise AudioProblem(f"unreadable ({reason(err)})") from None


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
    """Decode, mix to mono and resample to ``target_rate``: the samples the cache stores (see :func:`stream_mono`).

    Decoded in blocks as the cache decodes (an MP3 decodes to slightly different floats, ~1e-7, when read in other
    amounts), so the two agree bit for bit.
    """
    return np.concatenate(list(stream_mono(source, target_rate)))


def reason(err: Exception) -> str:
    """libsndfile's reason without the "Error opening '<path>': " prefix (the path is reported beside it)."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^Error opening .*?: ", "", text)
