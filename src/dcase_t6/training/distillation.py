"""Ensemble distillation (stage 2): soft targets from registered teacher embeddings of the training split.

``train --distill-from RUN[,RUN...]`` (config ``distill_from``): for a training batch of pairs i (clip
a_i, caption c_i) the teachers' mean similarity is C_ij = 1/M sum_m a_i^m . t_j^m, where a^m and t^m
are teacher m's registered embeddings of the training split (tag ``<dataset>/<train_split>``: audio
looked up by clip, text by caption text), never computed by running the teachers during training.
``losses.distillation_loss`` is the cross-entropy of the student's softmax over audios and over
captions against softmax(C / ``distill_temperature``) in the same direction (0.5 each), and the
training loss is L_sup + ``distill_weight`` * L_dist.

A teacher without embeddings of the training split, or with embeddings of an older checkpoint, is
embedded once automatically (``dcase-t6 embed RUN --split TRAIN_SPLIT`` without the similarity matrix)
and the embeddings are registered with the teacher's run.

The mean over teachers of A_m T_m^T equals (A_1|...|A_M)(T_1|...|T_M)^T / M, so the teachers' vectors
are kept side by side and one matrix product per batch gives C.

The side-by-side tables are stored as float16, written once and memory-mapped read-only by every process of a
node (``teacher_tables``); C is computed in float32 from the float16 vectors. Against float32 tables the soft
targets softmax(C / tau) move by at most 1.7e-5 (random unit vectors, 3 teachers x 1024 dims, batch 64, tau 0.05,
both directions; 3.1e-5 with captions near their clips) and the loss by at most 4.8e-6 (docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run, split_tag
from dcase_t6.runs.config import TrainConfig
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.training.data import CaptionPairs, training_splits
from dcase_t6.training.distributed import World, share_from_main
from dcase_t6.training.teacher_tables import shared_tables, tables_folder


class TeacherSimilarity:
    """The teachers' mean similarity of any (clip, caption) pairs of the training set.

    The tables stay on the host (in training: float16 memory maps shared by the node's processes, see
    ``teacher_tables``); a lookup gathers only the batch's rows (and its mixed-in partners'), copies them to
    ``device`` and computes in float32 there, so no process holds whole tables on its GPU. The batch's pair ids
    are read on the host for that: one small device-to-host copy per step.
    """

    def __init__(self, audio: np.ndarray, text: np.ndarray, clip_ids: np.ndarray, teachers: int,
                 device: torch.device = torch.device("cpu")):
        self.audio, self.text, self.clip_ids, self.teachers = audio, text, np.asarray(clip_ids), teachers
        self.device = device
        self._probe = torch.empty(0, device=device)

    def to(self, device: torch.device) -> TeacherSimilarity:
        """The same (host) tables, their rows copied to ``device`` at each lookup."""
        return TeacherSimilarity(self.audio, self.text, self.clip_ids, self.teachers, device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Where the looked-up rows go, by table name (for the objective's device check)."""
        return {"teachers' audio": self._probe, "teachers' text": self._probe}

    def __call__(self, pairs: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        """(batch, batch) mean teacher similarity; a mixed pair (partner >= 0) uses the mean of its own and
        its partner pair's teacher vectors."""
        own, partner = pairs.cpu().numpy(), partners.cpu().numpy()
        rows = np.concatenate([own, np.where(partner >= 0, partner, own)])  # unmixed rows: not used
        audio = self._rows(self.audio, self.clip_ids[rows])
        text = self._rows(self.text, rows)
        size = len(own)
        mixed = torch.from_numpy(partner >= 0).to(self.device).unsqueeze(1)
        audio = torch.where(mixed, 0.5 * (audio[:size] + audio[size:]), audio[:size])
        text = torch.where(mixed, 0.5 * (text[:size] + text[size:]), text[:size])
        return audio @ text.T / self.teachers

    def _rows(self, table: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """``table``'s ``rows`` on the device as float32 (exact from float16)."""
        return torch.from_numpy(np.asarray(table[rows])).to(self.device).float()


def load_teachers(registry: RunLookup, config: TrainConfig, pairs: CaptionPairs, world: World,
                  reporter: Reporter = SILENT) -> TeacherSimilarity:
    """The teachers of ``config.distill_from`` aligned to the training ``pairs`` (every process embeds its shard of
    missing ones), as float16 tables written once per node and memory-mapped by every process
    (``teacher_tables``); the looked-up rows go to ``world.device``."""
    for teacher in config.distill_from:
        ensure_embeddings(registry, teacher, config, reporter, world)
    world.wait("write the teachers' embeddings", "embed them first with `dcase-t6 embed`")
    folder = share_from_main(_tables_folder(registry, config, pairs) if world.is_main else None, world)

    def build() -> tuple[np.ndarray, np.ndarray]:
        vectors = [teacher_vectors(registry, teacher, config, pairs.captions, pairs.clip_names)
                   for teacher in config.distill_from]
        return np.concatenate([a for a, _ in vectors], axis=1), np.concatenate([t for _, t in vectors], axis=1)

    tables = shared_tables(folder, build, world)
    return TeacherSimilarity(tables.audio, tables.text, pairs.clip_ids, len(config.distill_from), world.device)


def _tables_folder(registry: RunLookup, config: TrainConfig, pairs: CaptionPairs) -> Path:
    """The tables' folder, keyed by the teachers' registered embeddings (in order) and the pairs' order."""
    splits = training_splits(config)
    shas = [registry.file(teacher, "embeddings", split_tag(dataset, split), verify=False).sha256
            for teacher in config.distill_from for dataset in config.datasets for split in splits[dataset]]
    return tables_folder(registry.workdir, shas, pairs.captions, [str(name) for name in pairs.clip_names])


def ensure_embeddings(registry: RunLookup, teacher: str, config: TrainConfig, reporter: Reporter = SILENT,
                      world: World | None = None) -> None:
    """Embed every training split of each of ``config.datasets`` with the teacher's best checkpoint, each unless
    already registered. Under torchrun every process calls it (``world``): the main process decides what is
    missing and each embeds its shard of it (``embed_run``)."""
    world = world or World()
    splits = training_splits(config)
    for dataset in config.datasets:
        for split in splits[dataset]:
            registered = None
            if world.is_main:
                best = registry.file(teacher, "checkpoint", "best")
                registered = _registered_embeddings(registry, teacher, split_tag(dataset, split), best.sha256)
            if share_from_main(registered is not None, world):
                continue
            # with the teacher's own input settings (audio_seconds), from its stored config
            request = SplitRequest(config.data_root, dataset, split, batch_size=config.batch_size,
                                   world=None if world.size == 1 else world)
            embed_run(registry.workdir, teacher, request, with_similarity=False, reporter=reporter)


def _registered_embeddings(registry: RunLookup, teacher: str, tag: str, checkpoint_sha: str) -> Path | None:
    """The teacher's embeddings file for ``tag`` if it is intact and made with ``checkpoint_sha``."""
    if not registry.has_file(teacher, "embeddings", tag):
        return None
    record = registry.file(teacher, "embeddings", tag, verify=False)
    if record.problem() is not None:  # missing or changed on disk: embed again
        return None
    with np.load(record.path, allow_pickle=False) as data:
        return record.path if str(data["checkpoint"]) == checkpoint_sha else None


def teacher_vectors(registry: RunLookup, teacher: str, config: TrainConfig, captions: list[str],
                    clip_names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One teacher's (clips, d) audio vectors in clip-id order and (pairs, d) caption vectors in pair order."""
    audio_by_clip: dict[str, np.ndarray] = {}
    text_by_caption: dict[str, np.ndarray] = {}
    splits = training_splits(config)
    for dataset in config.datasets:
        for split in splits[dataset]:
            record = registry.file(teacher, "embeddings", split_tag(dataset, split))
            with np.load(record.path, allow_pickle=False) as data:
                audio_by_clip.update(zip((f"{dataset}/{name}" for name in data["files"].tolist()), data["audio"]))
                text_by_caption.update(zip(data["queries"].tolist(), data["text"]))
    missing = next((name for name in clip_names if name not in audio_by_clip), None)
    missing = missing or next((caption for caption in captions if caption not in text_by_caption), None)
    if missing is not None:
        raise UserError(f"teacher {teacher}: its registered embeddings of the training splits lack {missing!r}; the "
                        f"data changed since: for each of "
                        f"{', '.join(f'{d}/{s}' for d in config.datasets for s in splits[d])} run "
                        f"`dcase-t6 embed {teacher} --data-root {config.data_root} --dataset DATASET --split SPLIT`")
    audio = np.stack([audio_by_clip[name] for name in clip_names]).astype(np.float32)
    text = np.stack([text_by_caption[caption] for caption in captions]).astype(np.float32)
    return audio, text
