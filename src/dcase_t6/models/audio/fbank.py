"""Kaldi filter-bank features for a whole batch at once, as BEATs and EAT compute them.

``torchaudio.compliance.kaldi.fbank`` takes one waveform; calling it per segment costs a Python loop, a
mel matrix rebuilt per call and many small kernels (on a GPU, one launch chain per segment). This module
computes the same features for a (batch, samples) tensor in one pass: frames by ``unfold`` (25 ms every
10 ms, ``snip_edges``), each frame's mean removed, pre-emphasis 0.97 (the first sample against itself),
the window (``povey``: Hann ** 0.85, or ``hanning``), zero-padded to 512 points, power spectrum, the
Kaldi mel bank (``get_mel_banks``, 20 Hz to Nyquist, built once per device and dtype), then the log floored
at the dtype's epsilon. No dither, no energy column: the options BEATs and EAT use. Each row equals
torchaudio's result for that row alone (``tests/test_fbank.py``; speed: ``benchmarks/bench_fbank.py``).
"""

from __future__ import annotations

import torch

SAMPLE_RATE = 16000
FRAME_SAMPLES, HOP_SAMPLES = 400, 160  # 25 ms window, 10 ms shift at 16 kHz
FFT_POINTS = 512  # the frame rounded up to a power of two
PREEMPHASIS = 0.97
LOW_HZ = 20.0
WINDOWS = ("povey", "hanning")

_MEL_BANKS: dict[tuple, torch.Tensor] = {}


def frame_count(samples: int | torch.Tensor) -> int | torch.Tensor:
    """Frames Kaldi gives ``samples`` samples (``snip_edges``: whole windows only; 0 below one window)."""
    if isinstance(samples, torch.Tensor):
        return torch.where(samples >= FRAME_SAMPLES, (samples - FRAME_SAMPLES) // HOP_SAMPLES + 1, 0)
    return (samples - FRAME_SAMPLES) // HOP_SAMPLES + 1 if samples >= FRAME_SAMPLES else 0


def mel_banks(mel_bins: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(FFT_POINTS // 2 + 1, mel_bins): Kaldi's triangular mel filters, the Nyquist bin's row zero."""
    key = (mel_bins, str(device), dtype)
    if key not in _MEL_BANKS:
        from torchaudio.compliance.kaldi import get_mel_banks

        banks, _ = get_mel_banks(mel_bins, FFT_POINTS, float(SAMPLE_RATE), LOW_HZ, 0.0, 100.0, -500.0, 1.0)
        banks = torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin has no filter
        _MEL_BANKS[key] = banks.to(device=device, dtype=dtype).T.contiguous()
    return _MEL_BANKS[key]


def window_function(window: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (FRAME_SAMPLES,) analysis window: ``povey`` (Hann ** 0.85, Kaldi's default) or ``hanning``."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
    hann = torch.hann_window(FRAME_SAMPLES, periodic=False, device=device, dtype=dtype)
    return hann.pow(0.85) if window == "povey" else hann


def kaldi_fbank(waveforms: torch.Tensor, mel_bins: int = 128, window: str = "povey") -> torch.Tensor:
    """Log mel filter-bank energies of each row, equal to ``torchaudio.compliance.kaldi.fbank`` of that row.

    Args:
        waveforms: (batch, samples) 16 kHz audio, any scale (BEATs multiplies by 2**15 first).
        mel_bins: number of mel filters.
        window: ``"povey"`` (BEATs) or ``"hanning"`` (EAT).

    Returns:
        (batch, frames, mel_bins) with ``frames = frame_count(samples)``.

    Example:
        >>> kaldi_fbank(torch.zeros(2, 16000)).shape
        torch.Size([2, 98, 128])
    """
    frames = frame_count(waveforms.shape[-1])
    if frames == 0:
        return waveforms.new_zeros(len(waveforms), 0, mel_bins)
    strided = waveforms.unfold(-1, FRAME_SAMPLES, HOP_SAMPLES)  # (batch, frames, 400), a view
    strided = strided - strided.mean(-1, keepdim=True)
    previous = torch.cat([strided[..., :1], strided[..., :-1]], dim=-1)
    strided = (strided - PREEMPHASIS * previous) * window_function(window, waveforms.device, waveforms.dtype)
    power = torch.fft.rfft(strided, n=FFT_POINTS).abs().pow(2.0)  # (batch, frames, 257)
    energies = power @ mel_banks(mel_bins, waveforms.device, waveforms.dtype)
    return energies.clamp_min(torch.finfo(waveforms.dtype).eps).log()
