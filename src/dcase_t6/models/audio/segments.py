"""Cutting clips into the fixed-length segments a backbone embeds, and averaging the segments' embeddings.

Every backbone here sees at most ``count`` segments of ``samples`` samples (10 s, three of them, as the
DCASE 2025 baseline does for PaSST): a clip of at most one segment uses the first, at most two the mean
of the first two, and so on; samples beyond ``count`` segments are not seen. Padding in a batch never
changes which segments a clip uses (that depends on its true length only).
"""

from __future__ import annotations

import torch


def segment_clips(waveforms: torch.Tensor, lengths: torch.Tensor, samples: int,
                  count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut zero-padded clips into the segments they use.

    Args:
        waveforms: (batch, samples) zero-padded clips.
        lengths: (batch,) true lengths in samples.
        samples: samples per segment.
        count: most segments per clip.

    Returns:
        (segments, samples) the used segments, the owning clip of each, and the segment count of each clip.

    Example:
        >>> cut, owners, counts = segment_clips(torch.zeros(2, 25), torch.tensor([5, 25]), 10, 3)
        >>> cut.shape, owners.tolist(), counts.tolist()
        (torch.Size([4, 10]), [0, 1, 1, 1], [1, 3])
    """
    total = samples * count
    padded = torch.nn.functional.pad(waveforms[:, :total], (0, max(0, total - waveforms.shape[1])))
    counts = segment_counts(lengths, samples, count)
    used = torch.arange(count, device=waveforms.device)[None, :] < counts[:, None]
    segments = padded.view(len(lengths), count, samples)[used]
    owners = torch.arange(len(lengths), device=waveforms.device)[:, None].expand(-1, count)[used]
    return segments, owners, counts


def segment_counts(lengths: torch.Tensor, samples: int, count: int) -> torch.Tensor:
    """Segments each clip uses: its length in whole or partial segments, at least 1, at most ``count``."""
    return torch.clamp(torch.ceil(lengths.clamp(max=samples * count).float() / samples).long(), 1, count)


def segment_lengths(lengths: torch.Tensor, samples: int, count: int) -> torch.Tensor:
    """True samples in each used segment (same order as ``segment_clips``): the last one of a clip may be short.

    Args:
        lengths: (batch,) true lengths in samples.
        samples: samples per segment.
        count: most segments per clip.

    Returns:
        (segments,) lengths in samples, each in [1, samples].
    """
    counts = segment_counts(lengths, samples, count)
    starts = torch.arange(count, device=lengths.device)[None, :] * samples
    used = torch.arange(count, device=lengths.device)[None, :] < counts[:, None]
    return (lengths[:, None] - starts).clamp(1, samples)[used]


def mean_of_segments(features: torch.Tensor, owners: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each clip's mean of its segments' embeddings.

    Args:
        features: (segments, dim) embeddings of the used segments.
        owners: (segments,) owning clip of each.
        counts: (batch,) segments per clip.

    Returns:
        (batch, dim) clip embeddings.

    Deterministic on every device (no atomic adds, unlike ``index_add_`` on CUDA): the segments are placed
    in a zero-padded (batch, most segments, dim) tensor, each at its own place, and summed over the segments.
    """
    firsts = torch.cumsum(counts, 0) - counts  # each clip's first segment (``owners`` is sorted, see segment_clips)
    places = torch.arange(len(owners), device=owners.device) - firsts[owners]
    width = int(counts.max()) if len(counts) else 1
    placed = features.new_zeros(len(counts), width, features.shape[1]).index_put((owners, places), features)
    return placed.sum(dim=1) / counts.unsqueeze(1).to(features.dtype)
