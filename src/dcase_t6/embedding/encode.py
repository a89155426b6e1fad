"""Turning clips and captions into embeddings (batched), and embeddings into similarity matrices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.models import DualEncoder

ClipReader = Callable[[Path, int], np.ndarray]  # (path, max_samples) -> the first max_samples samples


def pad_batch(clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad mono clips to the longest: (batch, samples) waveforms and their lengths."""
    lengths = torch.tensor([len(clip) for clip in clips], dtype=torch.long)
    waveforms = torch.zeros(len(clips), int(lengths.max()), dtype=torch.float32)
    for row, clip in enumerate(clips):
        waveforms[row, : len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
    return waveforms, lengths


@dataclass(frozen=True)
class EncodeSettings:
    """How the encoder is run: ``batch_size`` clips or captions per forward pass, on ``device`` (the model's)."""

    batch_size: int
    device: torch.device


@dataclass(frozen=True)
class Clips:
    """Clips to embed: their ``paths``, the ``read`` function that loads one, and ``max_samples``, how many samples
    of each (the first ones) the audio encoder sees: the model's input length."""

    paths: Sequence[Path]
    read: ClipReader
    max_samples: int


@torch.no_grad()
def embed_audio(model: DualEncoder, clips: Clips, settings: EncodeSettings, reporter: Reporter = SILENT,
                label: str = "audio") -> np.ndarray:
    """Audio embeddings (clips, dim) of the first ``clips.max_samples`` samples of each clip (a bar over the clips)."""
    model.eval()
    outputs = []
    paths, batch_size, device = clips.paths, settings.batch_size, settings.device
    with reporter.task(label, len(paths)) as task:
        for start in range(0, len(paths), batch_size):
            loaded = [clips.read(path, clips.max_samples) for path in paths[start:start + batch_size]]
            waveforms, lengths = pad_batch(loaded)
            outputs.append(model.encode_audio(waveforms.to(device), lengths.to(device)).float().cpu())
            task.advance(len(loaded))
    return torch.cat(outputs).numpy()


@torch.no_grad()
def embed_text(model: DualEncoder, captions: Sequence[str], settings: EncodeSettings, reporter: Reporter = SILENT,
               label: str = "captions") -> np.ndarray:
    """Caption embeddings (captions, dim) (a bar over the captions)."""
    model.eval()
    outputs = []
    batch_size = settings.batch_size
    with reporter.task(label, len(captions)) as task:
        for start in range(0, len(captions), batch_size):
            batch = list(captions[start:start + batch_size])
            outputs.append(model.encode_text(batch).float().cpu())
            task.advance(len(batch))
    return torch.cat(outputs).numpy()


def similarity(text_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> np.ndarray:
    """(queries, clips) cosine similarities of unit vectors, as float64 for exact CSV round trips."""
    return (text_embeddings.astype(np.float64) @ audio_embeddings.astype(np.float64).T)
