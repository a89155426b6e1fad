"""The audio-to-text direction: each clip is a query that ranks the text queries, from the same matrix.

The ground truth is the transpose of the text-to-audio one: a clip's relevant queries are those that list it
(for a captions file: the clip's own captions). The candidates are the scored ground-truth queries (one per
occurrence, so a caption repeated in the ground truth is a candidate each time, with the same scores). A clip
no scored query lists (an unjudged column) has nothing to find: it is left out and counted. Ranks, ties
(pessimistic: irrelevant queries first) and R@K / AP@K are exactly those of :mod:`dcase_t6.retrieval.metrics`.
Clips are taken in the order of their first appearance in the ground truth, so two matrices with their columns
in different orders give the same clip order (and can be compared clip by clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.metrics import PADDING

A2T_PREFIX = "a2t/"


@dataclass(frozen=True)
class AudioToText:
    """The audio-to-text scores of one matrix.

    scores: mean R@1, R@5, R@10, mAP@10, mAP@16 over the scored clips.
    n_queries: the clips scored (each has at least one relevant query).
    n_left_out: columns of the matrix no scored query lists as relevant (left out).
    per_query: one row per scored clip: ``clip``, ``n_relevant``, ``R@K``/``AP@K`` and the sorted ``ranks`` of
        its relevant queries among the candidates.
    intervals: metric -> (low, high) of its 95% interval (jackknife, unless replaced by a bootstrap one).
    """

    scores: dict[str, float]
    n_queries: int
    n_left_out: int
    per_query: pd.DataFrame
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def values(self) -> dict[str, np.ndarray]:
        """Per-clip values of each metric, keyed as ``scores``."""
        return metric_values(self.per_query)

    def as_json(self, with_intervals: bool = False) -> dict:
        """The ``audio_to_text`` object of ``evaluate --json``: the five metrics, ``n_queries`` (clips) and
        ``n_left_out`` (clips without a relevant query), with ``ci95`` when asked."""
        payload: dict = {**self.scores, "n_queries": self.n_queries, "n_left_out": self.n_left_out}
        if with_intervals:
            payload["ci95"] = {key: list(bounds) for key, bounds in self.intervals.items()}
        return payload


def audio_to_text(scores: np.ndarray, relevant: np.ndarray, files: Sequence[str]) -> AudioToText:
    """Score the audio-to-text direction.

    Args:
        scores: (queries, files) scores of the scored text queries (one row per ground-truth occurrence).
        relevant: (queries, R_max) relevant columns of each query, padded with -1 (``Alignment.relevant``).
        files: the matrix's audio file names (its columns).

    Returns:
        The scores, per-clip values and jackknife intervals.
    """
    query_of, slot = np.nonzero(relevant != PADDING)
    columns = relevant[query_of, slot]
    unique, first = np.unique(columns, return_index=True)
    clips = unique[np.argsort(first, kind="stable")]
    position = np.empty(len(files), dtype=np.int64)
    position[clips] = np.arange(len(clips))
    clip_of = position[columns]
    order = np.lexsort((query_of, clip_of))
    clip_of, query_of = clip_of[order], query_of[order]
    counts = np.bincount(clip_of, minlength=len(clips))
    within = np.arange(len(order)) - (np.cumsum(counts) - counts)[clip_of]
    relevant_queries = np.full((len(clips), int(counts.max())), PADDING, dtype=np.int64)
    relevant_queries[clip_of, within] = query_of
    ranks = metrics.relevant_ranks(_clip_rows(scores, clips), relevant_queries)
    per_query = metrics.per_query_metrics(ranks)
    table = pd.DataFrame({"clip": [files[clip] for clip in clips], "n_relevant": counts})
    for key, values in per_query.items():
        table[key.replace("mAP@", "AP@")] = values
    valid = ranks != np.iinfo(np.int64).max
    table["ranks"] = [" ".join(map(str, row[mask])) for row, mask in zip(ranks, valid)]
    return AudioToText(scores=metrics.summarize(per_query), n_queries=len(clips), n_left_out=len(files) - len(clips),
                       per_query=table,
                       intervals={key: metrics.jackknife_interval(values) for key, values in per_query.items()})


def metric_values(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-query values of each metric (``R@K``, ``mAP@K`` keys) from a per-query table (``AP@K`` columns)."""
    return {key: table[key.replace("mAP@", "AP@")].to_numpy(dtype=np.float64) for key in metrics.METRIC_KEYS}


def prefixed(scores: dict[str, float]) -> dict[str, float]:
    """Audio-to-text scores under ``a2t/`` keys (``a2t/mAP@16``), as training logs and ``runs compare`` name them."""
    return {A2T_PREFIX + key: value for key, value in scores.items()}


def _clip_rows(scores: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """(clips, queries): each scored clip's column as a row; a transposed view when every column is a clip in order."""
    if len(clips) == scores.shape[1] and np.array_equal(clips, np.arange(len(clips))):
        return scores.T
    return np.ascontiguousarray(scores[:, clips].T)
