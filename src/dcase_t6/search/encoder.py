"""The model of an index: a registered run's checkpoint or an exported model folder, loaded once, that embeds
audio files (the first ``audio_seconds`` of each, decoded as the audio cache decodes) and texts.

Its identity (``ModelIdentity``: the run and checkpoint, or the folder, and the weights' digest) is written into
the index; a rebuild with another model is refused, and a search loads the same model again and checks the digest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.data.audio_io import AudioProblem, stream_mono
from dcase_t6.embedding.checkpoints import check_batch_size
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text
from dcase_t6.models import DualEncoder
from dcase_t6.runs.folder import load_exported
from dcase_t6.runs.layout import WorkLayout
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from dcase_t6.search.store import ModelIdentity


@dataclass(frozen=True)
class ModelSource:
    """Which model embeds: a registered ``run`` (with its ``checkpoint``) of the registry in ``workdir``, or an
    exported model ``folder`` (or hub repo id); ``batch_size`` clips or captions per forward pass."""

    run: str | None = None
    folder: str | Path | None = None
    workdir: str | Path = "dcase-t6-work"
    checkpoint: str = "best"
    batch_size: int = 32


@dataclass(frozen=True)
class EncodedFiles:
    """Audio files embedded: one ``problems`` entry per file given (None when it was embedded), and the
    ``vectors`` (embedded files, dim) of the embedded ones, in the order given."""

    vectors: np.ndarray
    problems: tuple[str | None, ...]


class Encoder:
    """A loaded model and its identity, embedding files and texts.

    Args:
        model: the dual encoder (eval mode, on its device).
        identity: what the index records of it.
        max_samples: the most samples of a clip it embeds (``audio_seconds`` at its rate).
        settings: batch size and device.
    """

    def __init__(self, model: DualEncoder, identity: ModelIdentity, max_samples: int, settings: EncodeSettings):
        self.model, self.identity, self.max_samples, self.settings = model, identity, max_samples, settings

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return int(self.model.config.embed_dim)

    def encode_files(self, paths: Sequence[Path]) -> EncodedFiles:
        """Embed the first ``max_samples`` of each file; a file that does not decode gets its reason instead."""
        decoded: dict[Path, np.ndarray] = {}
        problems: list[str | None] = []
        for path in paths:
            try:
                decoded[path] = read_clip(path, self.model.sample_rate, self.max_samples)
                problems.append(None)
            except AudioProblem as problem:
                problems.append(str(problem))
        readable = [path for path in paths if path in decoded]
        if not readable:
            return EncodedFiles(np.zeros((0, self.dim), dtype=np.float32), tuple(problems))
        clips = Clips(readable, lambda path, _: decoded[path], self.max_samples)
        return EncodedFiles(embed_audio(self.model, clips, self.settings).astype(np.float32), tuple(problems))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(texts, dim) float32 text embeddings."""
        return embed_text(self.model, list(texts), self.settings).astype(np.float32)


def read_clip(path: Path, rate: int, max_samples: int) -> np.ndarray:
    """The first ``max_samples`` mono samples of ``path`` at ``rate`` (as the audio cache stores them); an
    AudioProblem when it does not decode."""
    samples = np.concatenate(list(stream_mono(path, rate, max_samples)))
    if not len(samples):
        raise AudioProblem("no audio samples (empty file)")
    return samples


@contextlib.contextmanager
def open_encoder(source: ModelSource, command: str = "index") -> Iterator[Encoder]:
    """Load the model of ``source`` for the block (a run is held with a ``command`` lease meanwhile, so
    ``runs rm`` refuses it)."""
    check_batch_size(source.batch_size, "--batch-size")
    if (source.run is None) == (source.folder is None):
        raise UserError("give either RUN (a registered run) or --model DIR (an exported model)")
    settings = EncodeSettings(source.batch_size, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if source.folder is not None:
        loaded = load_exported(source.folder, settings.device)
        identity = ModelIdentity("folder", str(loaded.folder), None, loaded.weights_sha256)
        yield Encoder(loaded.model, identity, loaded.max_samples, settings)
        return
    registry = Registry(source.workdir)
    with registry.using(source.run, command) as run_id:
        loaded = load_model(registry, run_id, source.checkpoint, str(settings.device))
        loaded.model.eval()
        identity = ModelIdentity("run", run_id, source.checkpoint, loaded.checkpoint.sha256)
        yield Encoder(loaded.model, identity, loaded.config.clip_samples(loaded.model.sample_rate), settings)


@contextlib.contextmanager
def open_index_encoder(identity: ModelIdentity, workdir: str | Path, batch_size: int = 32) -> Iterator[Encoder]:
    """Load the model an index was built with, checking that its weights are still those (same digest)."""
    if identity.kind == "run" and not WorkLayout.at(workdir).database.is_file():
        raise UserError(f"the index was built with {identity.describe()}, and {workdir} holds no run registry; "
                        "pass the work directory of that run (--workdir or DCASE_T6_WORKDIR)")
    source = (ModelSource(folder=identity.reference, batch_size=batch_size) if identity.kind == "folder" else
              ModelSource(run=identity.reference, workdir=workdir, checkpoint=identity.checkpoint or "best",
                          batch_size=batch_size))
    with open_encoder(source, "search") as encoder:
        if encoder.identity.sha256 != identity.sha256:
            raise UserError(f"the index was built with {identity.describe()}, which now holds other weights "
                            f"({encoder.identity.sha256[:12]}); build a new index with `dcase-t6 index build`")
        yield encoder
