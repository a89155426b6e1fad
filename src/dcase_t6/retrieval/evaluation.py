"""`evaluate`: score a similarity matrix against relevance judgements (R@K, mAP@K)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.atomic import atomic_open
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.directions import AudioToText, audio_to_text
from dcase_t6.retrieval.ground_truth import Relevance, align
from dcase_t6.retrieval.matrices import SimilarityMatrix


@dataclass(frozen=True)
class EvaluationResult:
    """Mean metrics over the scored queries, per-query values and optional confidence intervals; with
    ``audio_to_text`` the other direction's scores (None when it was not asked for)."""

    scores: dict[str, float]
    n_queries: int
    n_skipped: int
    per_query: pd.DataFrame
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    audio_to_text: AudioToText | None = None

    def as_json(self, with_intervals: bool = False, with_skipped: bool = False) -> dict:
        """The ``--json`` object: exactly ``R@1 R@5 R@10 mAP@10 mAP@16 n_queries`` plus requested extras (and
        ``audio_to_text`` when that direction was scored)."""
        payload: dict = {**self.scores, "n_queries": self.n_queries}
        if with_intervals:
            payload["ci95"] = {key: list(bounds) for key, bounds in self.intervals.items()}
        if with_skipped:
            payload["n_skipped"] = self.n_skipped
        if self.audio_to_text is not None:
            payload["audio_to_text"] = self.audio_to_text.as_json(with_intervals)
        return payload


def evaluate(matrix: SimilarityMatrix, relevance: Relevance, allow_missing: bool = False,
             both_directions: bool = False) -> EvaluationResult:
    """Compute R@1/5/10 and mAP@10/16 of ``matrix`` on the queries of ``relevance`` (text to audio); with
    ``both_directions`` also audio to text (:mod:`dcase_t6.retrieval.directions`) into ``audio_to_text``."""
    alignment = align(matrix, relevance, allow_missing=allow_missing)
    scored = _scored_rows(matrix, alignment.rows)
    ranks = metrics.relevant_ranks(scored, alignment.relevant)
    per_query = metrics.per_query_metrics(ranks)
    intervals = {key: metrics.jackknife_interval(values) for key, values in per_query.items()}
    return EvaluationResult(
        scores=metrics.summarize(per_query),
        n_queries=len(alignment.rows),
        n_skipped=alignment.n_missing,
        per_query=_per_query_table(matrix, alignment.rows, ranks, per_query),
        intervals=intervals,
        audio_to_text=audio_to_text(scored, alignment.relevant, matrix.files) if both_directions else None,
    )


def mean_average_precision(matrix: SimilarityMatrix, relevance: Relevance, k: int,
                           allow_missing: bool = False) -> float:
    """mAP@k of ``matrix`` exactly as :func:`evaluate` computes it (same alignment and ranks), nothing else."""
    alignment = align(matrix, relevance, allow_missing=allow_missing)
    ranks = metrics.relevant_ranks(_scored_rows(matrix, alignment.rows), alignment.relevant)
    return float(np.mean(metrics.average_precision_at_k(ranks, k)))


def write_per_query(result: EvaluationResult, path: str | Path) -> None:
    """Write one row per scored query: its metrics and the sorted ranks of its relevant files."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        result.per_query.to_csv(handle, index=False)


def _scored_rows(matrix: SimilarityMatrix, rows: np.ndarray) -> np.ndarray:
    """The score rows of the scored queries, without a copy when they are all rows in order."""
    if len(rows) == matrix.shape[0] and np.array_equal(rows, np.arange(len(rows))):
        return matrix.scores
    return matrix.scores[rows]


def _per_query_table(matrix: SimilarityMatrix, rows: np.ndarray, ranks: np.ndarray,
                     per_query: dict[str, np.ndarray]) -> pd.DataFrame:
    valid = ranks != np.iinfo(np.int64).max
    table = pd.DataFrame({"query": [matrix.queries[row] for row in rows], "n_relevant": valid.sum(axis=1)})
    for key, values in per_query.items():
        table[key.replace("mAP@", "AP@")] = values
    table["ranks"] = [" ".join(map(str, row[mask])) for row, mask in zip(ranks, valid)]
    return table
