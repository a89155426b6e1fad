"""``tiny-cnn``: a small CNN on log-mel spectrograms for CPU demos and tests (16 kHz input)."""

from __future__ import annotations

import torch
from torch import nn

from dcase_t6.models import weights as weight_files
from dcase_t6.models.audio import register
from dcase_t6.models.audio.logmel import LogMel
from dcase_t6.models.audio.pooling import TokenPool
from dcase_t6.models.depth import EncoderLayers


@register("tiny-cnn")
class TinyCNN(nn.Module):
    """Four conv blocks (conv-BN-ReLU-pool) on 64 log-mel bands (20 ms hop), then mean+max pooling over time
    (``model.pooling`` ``default``; ``mean`` and ``attention`` pool the frames into half as many dimensions)."""

    sample_rate = 16000

    def __init__(self, channels: int = 16, weights: str | None = None, pooling: str = "default", **_ignored):
        """``weights``: a state-dict file saved from this backbone, or None/'download'/'random' for random init."""
        super().__init__()
        self.logmel = LogMel(self.sample_rate, n_fft=1024, hop=320, n_mels=64)
        widths = [1, channels, 2 * channels, 4 * channels, 4 * channels]
        self.blocks = nn.Sequential(*[_block(a, b) for a, b in zip(widths, widths[1:])])
        self.output_dim = 2 * widths[-1] if pooling == "default" else widths[-1]
        self.weights_source = "random initialisation (tiny-cnn has no published weights)"
        if weights not in (None, "download", "random"):
            path = weight_files.local_file(weights, "tiny-cnn", "--audio-weights")
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.weights_source = str(path)
        self.pool = TokenPool(pooling, widths[-1], "tiny-cnn")  # after the load: the file holds no query

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.logmel(waveforms).unsqueeze(1)).mean(dim=2)  # (batch, channels, frames)
        frames = features.shape[-1]
        if self.pool.kind != "default":
            return self.pool(features.transpose(1, 2), ~_valid_frames(lengths, waveforms.shape[-1], frames))
        valid = _valid_frames(lengths, waveforms.shape[-1], frames).unsqueeze(1)
        mean = (features * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        peak = features.masked_fill(~valid, float("-inf")).amax(-1)
        return torch.cat([mean, peak], dim=1)

    def compile_network(self, **options) -> None:
        """``torch.compile`` the conv blocks in place; the log-mel front end stays eager."""
        self.blocks.compile(**options)

    def encoder_layers(self) -> EncoderLayers:
        """A stand-in's answer: the four conv blocks, nothing below them (the log-mel front end has no parameters).
        Frozen blocks keep updating their batch-norm statistics in training mode."""
        return EncoderLayers.of([], self.blocks)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(), nn.MaxPool2d(2))


def _valid_frames(lengths: torch.Tensor, samples: int, frames: int) -> torch.Tensor:
    """(batch, frames) mask of the frames that come from real (non-padding) audio."""
    last = torch.clamp((lengths.float() / samples * frames).ceil().long(), min=1)
    return torch.arange(frames, device=lengths.device)[None, :] < last[:, None]
