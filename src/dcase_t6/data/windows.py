"""Reading a span of a clip straight from its source file: seek, decode only the span, resample.

This is how the ``window`` storage mode reads (see ``storage``). The span is given in samples at the
target rate; the seek lands on the resampler's grid (a multiple of ``source_rate / gcd`` source frames,
which is a whole number of target samples) and 50 ms more are decoded on each side, so the samples are
those of resampling the whole file and cutting the span (to about 1e-7; at the file's ends, where the
whole-file resampler stops too, the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dcase_t6.data.audio_io import AudioProblem, StreamFacts, declared_frames, reason, resample, stream_mono

MARGIN_SECONDS = 0.05


@dataclass(frozen=True)
class SourceFacts:
    """What a window read needs to know of a source: its frames, rate and, when the file holds less than its
    header promises, why (the frames are then the ones that decode)."""

    frames: int
    source_rate: int
    truncated: str | None = None


def probe_source(path: Path) -> SourceFacts:
    """Read a source's header and check that its last second decodes (a cut file is measured by decoding it).

    Args:
        path: an audio file (WAV, FLAC, MP3, OGG).

    Returns:
        Its frames and rate.

    Raises:
        AudioProblem: the file does not open, is empty, or nothing of it decodes.
    """
    try:
        with sf.SoundFile(path) as handle:
            frames, rate = handle.frames, handle.samplerate
            if frames <= 0:
                raise AudioProblem("no audio samples (empty file)")
            tail = min(frames, rate)
            handle.seek(frames - tail)
            complete = len(handle.read(tail, dtype="float32", always_2d=True)) == tail
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise AudioProblem(f"unreadable ({reason(err)})") from None
    declared = declared_frames(path)
    if complete and (declared is None or declared <= frames):
        return SourceFacts(frames, rate)
    counted = StreamFacts()
    for _ in stream_mono(path, rate, facts=counted):  # counts the frames that decode, a block at a time
        pass
    decoded = counted.frames
    promised = max(frames, declared or 0)
    return SourceFacts(decoded, rate, f"truncated: the header says {promised} frames, {decoded} decode "
                                      f"({decoded / rate:.3f} of {promised / rate:.3f} s); read at the shorter length")


def read_span(path: Path, facts: SourceFacts, rate: int, start: int, count: int) -> np.ndarray:
    """Samples ``start`` to ``start + count`` (at ``rate``) of a source, decoding only what they need.

    Args:
        path: the source file.
        facts: its frames and rate (from :func:`probe_source`).
        rate: the target rate.
        start: first sample, at ``rate``.
        count: number of samples, at ``rate``.

    Returns:
        Mono float32 samples (fewer than ``count`` only when the file ends early).

    Raises:
        AudioProblem: the file no longer opens or decodes.
    """
    source_rate = facts.source_rate
    if source_rate == rate:
        first, last, skip = start, start + count, 0
    else:
        common = math.gcd(source_rate, rate)
        step_in, step_out = source_rate // common, rate // common
        margin = step_out * math.ceil(MARGIN_SECONDS * rate / step_out)
        aligned = max(0, start - margin) // step_out * step_out
        first = aligned // step_out * step_in
        last = min(facts.frames, math.ceil((start + count + margin) * source_rate / rate) + step_in)
        skip = start - aligned
    samples = _decode(path, first, last)
    return resample(samples, source_rate, rate)[skip:skip + count]


def _decode(path: Path, first: int, last: int) -> np.ndarray:
    """Mono float32 frames ``first`` to ``last`` of a file (the channel mean, as ``decode_mono`` mixes)."""
    try:
        with sf.SoundFile(path) as handle:
            if first:
                handle.seek(first)
            block = handle.read(max(0, last - first), dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise AudioProblem(f"unreadable ({reason(err)})") from None
    mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono)
