"""Exact top-K by inner product (cosine of unit vectors) over memory-mapped vectors, in bounded memory.

The vectors are read ``CHUNK_BYTES`` at a time; each chunk keeps its K best rows (``argpartition``), merged with
the best so far, so memory stays at one chunk and K rows per query whatever the index's size. Ties are broken by
the row (the earlier file first), so the order is the same however the rows are chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_BYTES = 32 << 20  # vectors read at a time (32 MiB: 8,192 rows of 1,024 floats)


@dataclass(frozen=True)
class TopK:
    """The best rows for each query, best first: ``rows`` (queries, k) int64 and their ``scores`` (queries, k)
    float32; k is at most the number of vectors."""

    rows: np.ndarray
    scores: np.ndarray


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, chunk_bytes: int = CHUNK_BYTES) -> TopK:
    """The ``k`` rows of ``vectors`` (count, dim) with the highest inner product with each of ``queries``
    (queries, dim), reading ``chunk_bytes`` of vectors at a time."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    k = max(0, min(k, len(vectors)))
    best = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)) for _ in queries]
    step = max(1, chunk_bytes // max(1, vectors.shape[1] * 4))
    for start in range(0, len(vectors) if k else 0, step):
        scores = queries @ np.asarray(vectors[start:start + step], dtype=np.float32).T  # (queries, block rows)
        # each query's k-th best score of the block (argpartition's selection): only rows at or above it can stay
        bound = (np.partition(scores, -k, axis=1)[:, -k] if scores.shape[1] > k
                 else np.full(len(queries), -np.inf, dtype=np.float32))
        for query, (rows, values) in enumerate(best):
            kept = np.flatnonzero(scores[query] >= bound[query])
            rows, values = np.concatenate([rows, kept + start]), np.concatenate([values, scores[query, kept]])
            if len(rows) > k:
                order = np.lexsort((rows, -values))[:k]
                rows, values = rows[order], values[order]
            best[query] = rows, values
    shape = (len(queries), k)
    orders = [np.lexsort((rows, -values)) for rows, values in best]
    return TopK(np.array([rows[order] for (rows, _), order in zip(best, orders)], dtype=np.int64).reshape(shape),
                np.array([values[order] for (_, values), order in zip(best, orders)], dtype=np.float32).reshape(shape))
