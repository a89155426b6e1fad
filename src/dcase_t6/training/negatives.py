"""Hard-negative batches (config section ``negatives``): every training pair's nearest pairs, and batches of them.

A pair (clip, caption) is a point in an embedding space: the unit mean of its clip's and its caption's unit
embeddings (``pair_vectors``), so two pairs are near when their clips or their captions are alike: what makes
them hard negatives of each other in both directions of the loss. ``nearest_neighbours`` gives each pair its
k nearest pairs by cosine similarity, a block of rows at a time (at most ``CHUNK_ELEMENTS`` similarities in
memory, never the n x n matrix; under torchrun each process takes its share of the blocks). A pair of the same
clip or with the identical caption text is never a neighbour: those are positives or duplicates.

``mined_batches`` cuts an epoch's seeded order (``data.epoch_order``) into batches: the mined part of a batch
(``share`` of it) is groups of an anchor (the next pair of the order not drawn yet) and up to k of its
neighbours not drawn yet (in an order shuffled each epoch), no two pairs of a mined part of one clip or one
caption text; the rest of the batch is the next pairs of the order, as without mining. Every pair is drawn as
often in an epoch as the order has it (once; or per ``dataset_weights``), the pairs of a batch are shuffled (the
mined groups spread over the processes' shares) and the last batch is dropped when it has fewer than 2 pairs.
Batches are a pure function of (seed, epoch, neighbours): a resumed run draws the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dcase_t6.training.data import CaptionPairs
from dcase_t6.training.distributed import World, gather

CHUNK_ELEMENTS = 1 << 24  # pair similarities computed at a time: 64 MiB of float32, whatever the number of pairs
ANCHOR_LOOKAHEAD = 4  # batch sizes of the order an anchor is looked for in past the next undrawn pair
NO_NEIGHBOUR = -1  # a table entry of a pair with fewer than k candidates


@dataclass(frozen=True)
class PairGroups:
    """Which pairs are never each other's mined neighbours: those of one clip (``clip_ids``, per pair) and those
    with the identical caption text (``caption_ids``, per pair: equal ids for equal texts)."""

    clip_ids: np.ndarray
    caption_ids: np.ndarray


@dataclass(frozen=True)
class Neighbours:
    """Every pair's nearest pairs, nearest first (``table``: pairs x k pair indices, ``NO_NEIGHBOUR`` where a
    pair has fewer than k candidates), and the groups a mined part keeps apart."""

    table: np.ndarray
    groups: PairGroups


@dataclass(frozen=True)
class MinedEpoch:
    """An epoch's batches (pair indices) and, per batch, which of its rows the mining drew (anchors and their
    neighbours; the others are the order's next pairs)."""

    batches: list[np.ndarray]
    mined: list[np.ndarray]

    def mined_fraction(self) -> float:
        """The share of the epoch's drawn pairs that mined groups brought."""
        return float(sum(int(mask.sum()) for mask in self.mined) / max(1, sum(len(b) for b in self.batches)))

    def digest(self) -> str:
        """A SHA-256 of the batches (hex, 16 characters): equal on every process that drew the same batches."""
        hashed = hashlib.sha256()
        for batch in self.batches:
            hashed.update(np.asarray(batch, dtype=np.int64).tobytes() + b"|")
        return hashed.hexdigest()[:16]


def pair_groups(pairs: CaptionPairs) -> PairGroups:
    """The training pairs' clips and caption texts as groups (see ``PairGroups``)."""
    return PairGroups(np.asarray(pairs.clip_ids, dtype=np.int64), distinct_captions(pairs.captions)[1])


def distinct_captions(captions: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct caption texts (in order of first occurrence) and each caption's index among them."""
    index: dict[str, int] = {}
    ids = np.fromiter((index.setdefault(caption, len(index)) for caption in captions), dtype=np.int64,
                      count=len(captions))
    return list(index), ids


def pair_vectors(audio: torch.Tensor, text: torch.Tensor, clip_ids: torch.Tensor) -> torch.Tensor:
    """Every pair's point: the unit mean of its clip's and its caption's unit embeddings.

    Args:
        audio: (clips, d) clip embeddings in clip-id order.
        text: (pairs, d) caption embeddings in pair order.
        clip_ids: (pairs,) each pair's clip, on the tensors' device.

    Returns:
        (pairs, d) float32 unit vectors.
    """
    unit_audio = torch.nn.functional.normalize(audio.float(), dim=1)
    unit_text = torch.nn.functional.normalize(text.float(), dim=1)
    return torch.nn.functional.normalize(unit_audio[clip_ids] + unit_text, dim=1)


def nearest_neighbours(vectors: torch.Tensor, groups: PairGroups, k: int, world: World = World()) -> np.ndarray:
    """Each pair's k nearest pairs by cosine similarity, never one of its clip nor one with its caption text.

    Rows are taken in blocks of ``CHUNK_ELEMENTS // pairs`` (the blocks do not depend on the number of processes,
    so the table does not either); each process computes its share of the blocks on ``vectors``' device and the
    shares are gathered, so every process returns the same table.

    Args:
        vectors: (pairs, d) unit vectors (``pair_vectors``), on ``world.device`` under torchrun.
        groups: the pairs' clips and captions.
        k: neighbours per pair (fewer pairs than k + 1: as many as there are).
        world: the processes (every one must call this).

    Returns:
        (pairs, min(k, pairs - 1)) int64 pair indices, nearest first, ``NO_NEIGHBOUR`` past a pair's candidates.
    """
    count, device = vectors.shape[0], vectors.device
    k = max(0, min(k, count - 1))
    rows = max(1, CHUNK_ELEMENTS // max(1, count))
    clips = torch.from_numpy(groups.clip_ids).to(device)
    texts = torch.from_numpy(groups.caption_ids).to(device)
    found = [torch.empty(0, k, dtype=torch.long, device=device)]
    for start in world.shard(list(range(0, count, rows))):
        stop = min(count, start + rows)
        similarity = vectors[start:stop] @ vectors.T
        excluded = (clips[start:stop, None] == clips[None, :]) | (texts[start:stop, None] == texts[None, :])
        values, indices = similarity.masked_fill_(excluded, -torch.inf).topk(k, dim=1)
        found.append(torch.where(values > -torch.inf, indices, NO_NEIGHBOUR))
    return gather(torch.cat(found), world).cpu().numpy().astype(np.int64)


def mined_batches(order: np.ndarray, neighbours: Neighbours, batch_size: int, share: float,
                  rng: np.random.Generator) -> MinedEpoch:
    """An epoch's batches with mined groups (see the module docstring).

    Args:
        order: the epoch's seeded order of pair indices (``data.epoch_order``; a pair may occur more than once).
        neighbours: every pair's nearest pairs.
        batch_size: pairs per (global) batch.
        share: the part of each batch filled by mined groups, in [0, 1] (0: the order cut into batches).
        rng: the epoch's generator (seeded by (seed, epoch)).

    Returns:
        The batches, each shuffled, with the rows the mining drew.
    """
    draw = _Draw(order, neighbours, rng.permuted(neighbours.table, axis=1).tolist())
    slots = int(np.floor(share * batch_size + 0.5))
    batches, mined = [], []
    while True:
        batch = draw.mined_part(slots, ANCHOR_LOOKAHEAD * batch_size)
        drawn = len(batch)
        batch += draw.next_pairs(batch_size - drawn)
        if len(batch) < 2:
            break
        shuffled = rng.permutation(len(batch))
        batches.append(np.asarray(batch, dtype=np.int64)[shuffled])
        mined.append((np.arange(len(batch)) < drawn)[shuffled])
    return MinedEpoch(batches, mined)


class _Draw:
    """The pairs of an epoch not drawn yet: how often each may still be drawn, and where the order stands."""

    def __init__(self, order: np.ndarray, neighbours: Neighbours, candidates: list[list[int]]):
        self.order, self.candidates = order.tolist(), candidates
        self.clips, self.texts = neighbours.groups.clip_ids.tolist(), neighbours.groups.caption_ids.tolist()
        self.left = np.bincount(order, minlength=len(self.clips)).tolist()
        self.cursor = 0  # the order before it is drawn (or was drawn early, by the mining)

    def mined_part(self, slots: int, lookahead: int) -> list[int]:
        """At most ``slots`` pairs, no two of one clip or caption text: an anchor from the order, its undrawn
        neighbours, theirs in turn (breadth first), and the next anchor when the group can grow no more."""
        batch: list[int] = []
        clips: set[int] = set()
        texts: set[int] = set()
        for position in range(self.cursor, min(len(self.order), self.cursor + lookahead)):
            if len(batch) >= slots:
                break
            if not self._free(self.order[position], clips, texts):
                continue
            grown = len(batch)
            self._take(self.order[position], batch, clips, texts)
            while grown < len(batch) < slots:
                for pair in self.candidates[batch[grown]]:
                    if len(batch) < slots and pair != NO_NEIGHBOUR and self._free(pair, clips, texts):
                        self._take(pair, batch, clips, texts)
                grown += 1
        return batch

    def next_pairs(self, wanted: int) -> list[int]:
        """Up to ``wanted`` pairs, the next undrawn ones of the order."""
        taken: list[int] = []
        while len(taken) < wanted and self.cursor < len(self.order):
            pair = self.order[self.cursor]
            self.cursor += 1
            if self.left[pair]:
                self.left[pair] -= 1
                taken.append(pair)
        return taken

    def _take(self, pair: int, batch: list[int], clips: set[int], texts: set[int]) -> None:
        self.left[pair] -= 1
        batch.append(pair)
        clips.add(self.clips[pair])
        texts.add(self.texts[pair])

    def _free(self, pair: int, clips: set[int], texts: set[int]) -> bool:
        return bool(self.left[pair]) and self.clips[pair] not in clips and self.texts[pair] not in texts
