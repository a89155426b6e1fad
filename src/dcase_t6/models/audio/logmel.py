"""A plain log-mel front end in torch (Slaney mel scale), used by the small backbones."""

from __future__ import annotations

import math

import torch
from torch import nn


class LogMel(nn.Module):
    """Waveforms (batch, samples) -> log-mel (batch, n_mels, frames), normalised like PaSST's."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, fmax: float | None = None):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filters(sample_rate, n_fft, n_mels, fmax or sample_rate / 2),
                             persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """In float32 with autocast disabled, as PaSST's front end: a full-scale tone's power spectrum (~6.6e4
        for n_fft 1024) overflows fp16 in the mel product."""
        with torch.autocast(waveforms.device.type, enabled=False):
            spectrum = torch.stft(waveforms.float(), self.n_fft, self.hop, window=self.window,
                                  return_complex=True).abs() ** 2
            return (torch.log(self.filters @ spectrum + 1e-5) + 4.5) / 5.0


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmax: float) -> torch.Tensor:
    """Triangular mel filters (n_mels, n_fft // 2 + 1) with peak 1."""
    mel_edges = torch.linspace(_hz_to_mel(0.0), _hz_to_mel(fmax), n_mels + 2)
    hz_edges = 700.0 * (10 ** (mel_edges / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_edges[:-2, None], hz_edges[1:-1, None], hz_edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)
