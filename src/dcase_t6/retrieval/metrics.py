"""Retrieval metrics exactly as the DCASE Task 6 organisers define them, fully vectorised.

Every query has R >= 1 relevant audio files. Ranks are 1-based and pessimistic under ties: within a
group of equal scores the irrelevant files are ranked first and the relevant ones after them, so a
constant score matrix never scores well. With the relevant files sorted by rank, the i-th one
(1-based) has rank ``r_i = i + n_i`` where ``n_i`` counts the irrelevant files scoring at least as
high as it. Then, per query:

* ``R@K  = #{i : r_i <= K} / R``
* ``AP@K = sum over i with r_i <= K of (i / r_i), divided by R`` (all relevant files, also those
  outside the top K)

and ``mAP@K``/``R@K`` are the means over queries. With a single relevant file this reduces to
``R@K = [r <= K]`` and ``AP@K = 1/r if r <= K else 0``.
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)
MAP_KS = (10, 16)
METRIC_KEYS = tuple(f"R@{k}" for k in RECALL_KS) + tuple(f"mAP@{k}" for k in MAP_KS)
PADDING = -1
_CHUNK_ELEMENTS = 1 << 24


def irrelevant_at_or_above(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Count, for each relevant file, the irrelevant files scoring at least as high as it.

    ``scores`` is (queries, files); ``relevant`` is (queries, R_max) column indices padded with -1.
    Returns (queries, R_max) int64 counts, -1 at padding.
    """
    valid = relevant != PADDING
    relevant_scores = np.take_along_axis(scores, np.where(valid, relevant, 0), axis=1)
    counts = np.full(relevant.shape, PADDING, dtype=np.int64)
    for slot in range(relevant.shape[1]):
        queries = np.flatnonzero(valid[:, slot])
        counts[queries, slot] = _count_at_or_above(scores, queries, relevant_scores[queries, slot])
    relevant_at_or_above = (
        (relevant_scores[:, None, :] >= relevant_scores[:, :, None]) & valid[:, None, :]
    ).sum(axis=2)
    return np.where(valid, counts - relevant_at_or_above, PADDING)


def _count_at_or_above(scores: np.ndarray, queries: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each listed query, count the files scoring >= its threshold (chunked, no copy when all rows)."""
    every_row = len(queries) == scores.shape[0]
    counts = np.empty(len(queries), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, scores.shape[1]))
    for start in range(0, len(queries), step):
        block = slice(start, start + step)
        rows = scores[block] if every_row else scores[queries[block]]
        counts[block] = (rows >= thresholds[block, None]).sum(axis=1)
    return counts


def ranks_from_counts(counts: np.ndarray) -> np.ndarray:
    """Turn irrelevant-above counts into sorted 1-based ranks of the relevant files (padding -> max int)."""
    padded = np.where(counts == PADDING, np.iinfo(np.int64).max // 2, counts)
    ordered = np.sort(padded, axis=1)
    position = np.arange(1, counts.shape[1] + 1, dtype=np.int64)
    return np.where(ordered >= np.iinfo(np.int64).max // 2, np.iinfo(np.int64).max, ordered + position)


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Sorted pessimistic 1-based ranks of each query's relevant files (queries, R_max); padding -> max int."""
    return ranks_from_counts(irrelevant_at_or_above(scores, relevant))


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query R@K: the fraction of a query's relevant files ranked within the top K."""
    return (ranks <= k).sum(axis=1) / _n_relevant(ranks)


def average_precision_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query AP@K: sum of precision i / r_i over relevant files in the top K, divided by all R."""
    position = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)
    precision = np.where(ranks <= k, position / np.minimum(ranks, k).astype(np.float64), 0.0)
    return precision.sum(axis=1) / _n_relevant(ranks)


def per_query_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query values of every reported metric, keyed ``R@K`` and ``mAP@K`` (the AP of that query)."""
    values = {f"R@{k}": recall_at_k(ranks, k) for k in RECALL_KS}
    values.update({f"mAP@{k}": average_precision_at_k(ranks, k) for k in MAP_KS})
    return values


def summarize(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-query metric over queries."""
    return {key: float(np.mean(values)) for key, values in per_query.items()}


def jackknife_interval(values: np.ndarray, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% jackknife confidence interval of the mean of ``values`` (leave-one-query-out)."""
    n = len(values)
    if n < 2:
        return float("nan"), float("nan")
    leave_one_out = (values.sum() - values) / (n - 1)
    spread = np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    mean = float(values.mean())
    return mean - z * spread, mean + z * spread


def _n_relevant(ranks: np.ndarray) -> np.ndarray:
    return (ranks != np.iinfo(np.int64).max).sum(axis=1)
