"""The simplex weight grid and validation mAP@16 of every grid point at once.

Weights lie on the simplex (``w_i >= 0``, ``sum w_i = 1``) and the search visits every point of the
grid with spacing ``step`` (4 systems at 0.05: C(23, 3) = 1771 points), keeping the one with the
highest validation mAP@16 (ties: the most even weights, i.e. the smallest sum of squared weights,
then grid order).

Fast search. With pessimistic ties (see ``metrics``) the rank of a relevant file ``j`` of query
``q`` is fixed by how many irrelevant files ``c`` satisfy ``sum_i w_i (S_i[q,c] - S_i[q,j]) >= 0``.
Per triple (q, j, c) the difference vector ``d`` decides: if every ``d_i < 0`` the file never counts,
if every ``d_i >= 0`` it always counts (a constant per (q, j)); only the few "mixed" triples depend
on the weights. A (q, j) already counting 16 or more irrelevant files is beyond rank 16 for every
weight, so its mixed triples are dropped, and queries without mixed triples have a fixed AP that is
computed once. Every batch of grid points is then one matrix product ``W @ D >= 0`` over the mixed
triples, summed per (q, j) with ``np.add.reduceat``, turned into ranks and AP@16 for all points at
once. The best point (and each reported candidate) is re-scored exactly on the applied matrix.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.ensemble.systems import weighted_sum
from dcase_t6.retrieval import metrics

METRIC_K = 16
METRIC = f"mAP@{METRIC_K}"
_CHUNK_ELEMENTS = 1 << 22
_BATCH_ELEMENTS = 1 << 18  # (points x mixed entries) per batch: small enough to stay in cache


@dataclass(frozen=True)
class ComparisonTable:
    """What the weights can change: fixed AP of settled queries plus mixed difference vectors of the rest."""

    differences: np.ndarray  # (systems, E) d = S[q, c] - S[q, j] of the mixed entries, grouped by (q, j)
    segment_starts: np.ndarray  # first entry of each (q, j) group that has mixed entries
    segment_slots: np.ndarray  # that group's flat position in variable_constant
    variable_constant: np.ndarray  # (variable queries, R) always-counting irrelevant files, -1 at padding
    fixed_ap_sum: float  # sum of AP@16 over the queries no weight can change
    n_queries: int


@dataclass(frozen=True)
class GridResult:
    """Every grid point (rows of weights) with its searched validation mAP@16."""

    points: np.ndarray
    scores: np.ndarray

    def best(self, n: int) -> np.ndarray:
        """Indices of the ``n`` best points, best first; ties (to 1e-12) go to the most even weights."""
        unevenness = np.round(np.square(self.points).sum(axis=1), 12)
        return np.lexsort((unevenness, -np.round(self.scores, 12)))[:n]


def grid_divisions(step: float) -> int:
    """Number of steps that make 1.

    Args:
        step: the spacing of the weight grid.

    Raises:
        UserError: unless ``step`` divides 1.
    """
    divisions = round(1.0 / step) if 0 < step <= 1 else 0
    if divisions < 1 or abs(divisions * step - 1.0) > 1e-9:
        raise UserError(f"--step {step}: the weight step must divide 1 (e.g. 0.05, 0.1, 0.25)")
    return divisions


def simplex_grid(n_systems: int, divisions: int) -> np.ndarray:
    """All weight vectors ``k / divisions`` with non-negative integers ``k`` summing to ``divisions``."""
    if n_systems == 1:
        return np.ones((1, 1))
    slots = divisions + n_systems - 1
    bars = np.array(list(itertools.combinations(range(slots), n_systems - 1)), dtype=np.int64)
    bars = bars.reshape(-1, n_systems - 1)
    edges = np.column_stack([np.full(len(bars), -1), bars, np.full(len(bars), slots)])
    return (np.diff(edges, axis=1) - 1) / divisions


def grid_size(n_systems: int, divisions: int) -> int:
    """Number of simplex grid points: C(divisions + n - 1, n - 1)."""
    return math.comb(divisions + n_systems - 1, n_systems - 1)


def build_comparison_table(scores: np.ndarray, relevant: np.ndarray) -> ComparisonTable:
    """Precompute, in query chunks, the constant counts and mixed difference vectors of every query.

    Args:
        scores: (systems, queries, files) scores of the scored queries.
        relevant: (queries, R) relevant file columns per query, ``metrics.PADDING`` at padding.
    """
    n_systems, n_queries, n_files = scores.shape
    width = relevant.shape[1]
    rows = max(1, _CHUNK_ELEMENTS // (n_systems * width * n_files))
    chunks = [_chunk_comparisons(scores[:, start:start + rows], relevant[start:start + rows], start * width)
              for start in range(0, n_queries, rows)]
    constant = np.concatenate([chunk[0] for chunk in chunks])
    differences = np.concatenate([chunk[1] for chunk in chunks], axis=1)
    entry_segments = np.concatenate([chunk[2] for chunk in chunks])
    return _settle_fixed_queries(constant, differences, entry_segments)


def _chunk_comparisons(scores: np.ndarray, relevant: np.ndarray, slot_offset: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Constant counts (queries, R), mixed differences (systems, E) and the (q, j) slot of each entry."""
    n_files = scores.shape[2]
    valid = relevant != metrics.PADDING
    targets = np.take_along_axis(scores, np.where(valid, relevant, 0)[None], axis=2)
    differences = scores[:, :, None, :] - targets[..., None]
    at_or_above = differences >= 0
    always = at_or_above.all(axis=0)
    competitor = _irrelevant_files(relevant, n_files)[:, None, :] & valid[..., None]
    constant = np.where(valid, (always & competitor).sum(axis=2), metrics.PADDING)
    mixed = at_or_above.any(axis=0) & ~always & competitor & (constant < METRIC_K)[..., None]
    return constant, differences[:, mixed], slot_offset + np.flatnonzero(mixed) // n_files


def _irrelevant_files(relevant: np.ndarray, n_files: int) -> np.ndarray:
    """(queries, files) mask of the files that are not relevant to each query."""
    mask = np.ones((len(relevant), n_files), dtype=bool)
    rows, slots = np.nonzero(relevant != metrics.PADDING)
    mask[rows, relevant[rows, slots]] = False
    return mask


def _settle_fixed_queries(constant: np.ndarray, differences: np.ndarray, entry_segments: np.ndarray
                          ) -> ComparisonTable:
    """Sum the AP of queries no weight can change; index the mixed entries of the others by (q, j) slot."""
    width = constant.shape[1]
    segments, starts = np.unique(entry_segments, return_index=True)
    variable = np.unique(segments // width)
    fixed = np.ones(len(constant), dtype=bool)
    fixed[variable] = False
    fixed_ap = metrics.average_precision_at_k(metrics.ranks_from_counts(constant[fixed]), METRIC_K)
    slots = np.searchsorted(variable, segments // width) * width + segments % width
    return ComparisonTable(differences=np.ascontiguousarray(differences), segment_starts=starts,
                           segment_slots=slots, variable_constant=constant[variable],
                           fixed_ap_sum=float(fixed_ap.sum()), n_queries=len(constant))


def map_at_k_for_weights(table: ComparisonTable, weights: np.ndarray) -> np.ndarray:
    """Validation mAP@16 of each row of ``weights`` (points, systems), from the comparison table."""
    if len(table.segment_starts) == 0:
        return np.full(len(weights), table.fixed_ap_sum / table.n_queries)
    hits = np.einsum("pm,me->pe", weights, table.differences) >= 0  # not BLAS: steady for this thin product
    per_slot = np.add.reduceat(hits, table.segment_starts, axis=1, dtype=np.int64)
    counts = np.tile(table.variable_constant.reshape(1, -1), (len(weights), 1))
    counts[:, table.segment_slots] += per_slot
    ranks = metrics.ranks_from_counts(counts.reshape(-1, table.variable_constant.shape[1]))
    ap = metrics.average_precision_at_k(ranks, METRIC_K).reshape(len(weights), -1)
    return (table.fixed_ap_sum + ap.sum(axis=1)) / table.n_queries


def grid_search(scores: np.ndarray, relevant: np.ndarray, divisions: int, reporter: Reporter = SILENT,
                label: str = "grid search") -> GridResult:
    """Validation mAP@16 of every simplex grid point for the systems stacked in ``scores``.

    Args:
        scores: (systems, queries, files) scores of the scored queries.
        relevant: (queries, R) relevant file columns per query, ``metrics.PADDING`` at padding.
        divisions: grid steps that make 1 (see :func:`grid_divisions`).
        reporter: shows a bar over the grid points.
        label: the bar's description.

    Returns:
        Every grid point and its mAP@16.
    """
    table = build_comparison_table(scores, relevant)
    points = simplex_grid(len(scores), divisions)
    batch = max(1, _BATCH_ELEMENTS // max(1, table.differences.shape[1]))
    values = []
    with reporter.task(label, total=len(points)) as task:
        for start in range(0, len(points), batch):
            values.append(map_at_k_for_weights(table, points[start:start + batch]))
            task.advance(len(values[-1]))
    return GridResult(points=points, scores=np.concatenate(values))


def exact_map_at_k(scores: np.ndarray, relevant: np.ndarray, weights: Sequence[float]) -> float:
    """mAP@16 of the explicitly applied weighted matrix (the reference the search must match)."""
    ranks = metrics.relevant_ranks(weighted_sum(scores, weights), relevant)
    return float(metrics.average_precision_at_k(ranks, METRIC_K).mean())
