"""Confidence intervals and paired tests between systems, resampling queries, fully vectorised.

A metric is the mean of its per-query values (R@K of each query, AP@K of each query), so every figure here
resamples those values:

* **bootstrap interval** (the default): the n queries are drawn with replacement ``resamples`` times: one
  (resamples, n) integer index matrix, drawn in blocks of rows from NumPy's default generator seeded with
  ``[seed, 0]``. The interval is the 2.5th and 97.5th percentile of the resamples' means. A resample's mean lies
  between the smallest and the largest per-query value, so the interval never leaves the metric's range [0, 1].
* **jackknife interval**: leave one query out, mean ± 1.96 · its standard error (the former default; it is
  symmetric, so for a metric near 0 or 1 it can leave [0, 1]).
* **paired difference** of a system from a reference system on the same queries: the mean of the per-query
  differences (which is the difference of the two means); its bootstrap interval resamples the queries with the
  very same index matrix for both systems (so it bootstraps the per-query differences).
* **paired randomisation test**: each query's two values are swapped at random (the sign of its difference is
  flipped), ``resamples`` times, generator seeded with ``[seed, 1]``; two-sided
  ``p = (1 + #{|flipped mean| >= |observed mean|}) / (1 + resamples)``. Identical systems give p = 1.

The resampled means are ``counts @ values``: each resample's per-query counts (a ``bincount`` of its row of
indices) times the (queries, metrics) values, so every metric and system shares one pass over the indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.metrics import jackknife_interval

BOOTSTRAP, JACKKNIFE = "bootstrap", "jackknife"
CI_METHODS = (BOOTSTRAP, JACKKNIFE)
DEFAULT_RESAMPLES = 10_000
MAX_RESAMPLES = 1_000_000
LEVEL = 0.95
TEST_NAME = "paired randomisation test (random swaps of the two systems' per-query values), two-sided"
_BOOTSTRAP_STREAM, _SWAP_STREAM = 0, 1
_BLOCK_ELEMENTS = 1 << 22  # indices drawn at a time (32 MB of int64)
_TIE_TOLERANCE = 1e-9  # relative: a flipped sum this close to the observed one counts as at least as large


@dataclass(frozen=True)
class Resampling:
    """How intervals and p-values are drawn.

    method: ``bootstrap`` (percentile intervals) or ``jackknife`` (leave one query out, normal intervals).
    resamples: bootstrap resamples, and random swaps of the paired test.
    seed: seeds both, so the same inputs always give the same figures.
    """

    method: str = BOOTSTRAP
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def __post_init__(self):
        if self.method not in CI_METHODS:
            raise UserError(f"--ci-method {self.method!r}: expected one of {', '.join(CI_METHODS)}")
        if not 1 <= self.resamples <= MAX_RESAMPLES:
            raise UserError(f"--resamples {self.resamples}: expected 1 to {MAX_RESAMPLES:,} (default "
                            f"{DEFAULT_RESAMPLES:,})")
        if self.seed < 0:
            raise UserError(f"--seed {self.seed}: expected a seed >= 0")

    def interval_name(self) -> str:
        """How the intervals were made, in words (for tables and reports)."""
        if self.method == JACKKNIFE:
            return "jackknife (leave one query out)"
        return f"bootstrap percentile, {self.resamples:,} resamples of the queries, seed {self.seed}"

    def as_json(self) -> dict:
        """``ci_method``, ``level``, ``resamples``, ``seed`` and the test's name."""
        return {"ci_method": self.method, "level": LEVEL, "resamples": self.resamples, "seed": self.seed,
                "test": TEST_NAME}


@dataclass(frozen=True)
class PairedDifference:
    """One metric of a system against the reference system, on the same queries.

    difference: mean per-query difference (system minus reference), i.e. the difference of the two metrics.
    low, high: its 95% interval (paired bootstrap percentile, or jackknife).
    p_value: the paired randomisation test's two-sided p-value.
    """

    difference: float
    low: float
    high: float
    p_value: float

    def as_json(self) -> dict:
        return {"difference": self.difference, "ci95": [self.low, self.high], "p_value": self.p_value}


@dataclass(frozen=True)
class Significance:
    """Intervals and paired comparisons of systems scored on the same queries (one retrieval direction).

    resampling: how they were drawn.
    intervals: per system (in the order given), metric -> (low, high) of its 95% interval; empty when not asked.
    differences: per system after the first, metric -> its paired difference from the first system.
    """

    resampling: Resampling
    intervals: tuple[dict[str, tuple[float, float]], ...]
    differences: tuple[dict[str, PairedDifference], ...]


def significance(systems: Sequence[Mapping[str, np.ndarray]], resampling: Resampling = Resampling(),
                 with_intervals: bool = True) -> Significance:
    """Intervals of each system's metrics and paired comparisons of every later system with the first.

    Args:
        systems: per system, metric -> per-query values (the same metrics, the same queries in the same order).
        resampling: method, resamples and seed.
        with_intervals: compute each system's own intervals (the comparisons are always computed).

    Returns:
        The figures; all bootstrap figures come from one index matrix, so the systems are resampled together.
    """
    keys = list(systems[0])
    blocks = [np.stack([np.asarray(system[key], dtype=np.float64) for key in keys], axis=1) for system in systems]
    if any(block.shape != blocks[0].shape for block in blocks):
        raise ValueError("significance: every system needs the same metrics on the same number of queries")
    differences = [block - blocks[0] for block in blocks[1:]]
    columns = (blocks if with_intervals else []) + differences
    bounds = _intervals(np.concatenate(columns, axis=1), resampling) if columns else np.empty((2, 0))
    width = len(keys)
    per_column = [dict(zip(keys, zip(bounds[0, i * width:(i + 1) * width].tolist(),
                                     bounds[1, i * width:(i + 1) * width].tolist()))) for i in range(len(columns))]
    intervals = tuple(per_column[:len(blocks)]) if with_intervals else ()
    compared = []
    for index, difference in enumerate(differences):
        p_values = paired_p_values(difference, resampling)
        bounds_of = per_column[len(intervals) + index]
        compared.append({key: PairedDifference(float(difference[:, column].mean()), *bounds_of[key],
                                               float(p_values[column])) for column, key in enumerate(keys)})
    return Significance(resampling, intervals, tuple(compared))


def bootstrap_indices(n: int, resampling: Resampling) -> Iterator[np.ndarray]:
    """The bootstrap's (resamples, n) matrix of query indices, drawn with replacement, in blocks of rows."""
    generator = np.random.default_rng([resampling.seed, _BOOTSTRAP_STREAM])
    rows = max(1, _BLOCK_ELEMENTS // max(1, n))
    for start in range(0, resampling.resamples, rows):
        yield generator.integers(0, n, size=(min(rows, resampling.resamples - start), n))


def bootstrap_means(values: np.ndarray, resampling: Resampling) -> np.ndarray:
    """The mean of each column of ``values`` (queries, k) in every bootstrap resample: (resamples, k)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    means = np.empty((resampling.resamples, values.shape[1]))
    done = 0
    for indices in bootstrap_indices(n, resampling):
        rows = len(indices)
        offsets = (np.arange(rows, dtype=np.int64) * n)[:, None]
        counts = np.bincount((indices + offsets).ravel(), minlength=rows * n).reshape(rows, n)
        means[done:done + rows] = (counts.astype(np.float64) @ values) / n
        done += rows
    return means


def swaps(n: int, resampling: Resampling) -> Iterator[np.ndarray]:
    """The randomisation test's (resamples, n) swaps, in blocks of rows: True where a query's values swap."""
    generator = np.random.default_rng([resampling.seed, _SWAP_STREAM])
    rows = max(1, _BLOCK_ELEMENTS // max(1, n))
    for start in range(0, resampling.resamples, rows):
        draws = generator.integers(0, 256, size=(min(rows, resampling.resamples - start), (n + 7) // 8),
                                   dtype=np.uint8)
        yield np.unpackbits(draws, axis=1, count=n).astype(bool)


def paired_p_values(differences: np.ndarray, resampling: Resampling) -> np.ndarray:
    """Two-sided p-values of the paired randomisation test, one per column of ``differences`` (queries, k).

    A swap of query i's two values flips the sign of its difference; a swapped sum at least as far from 0 as the
    observed one (within a relative 1e-9, for rounding) counts. ``p = (1 + count) / (1 + resamples)``.
    """
    differences = np.asarray(differences, dtype=np.float64)
    observed = differences.sum(axis=0)
    threshold = np.abs(observed) - _TIE_TOLERANCE * np.abs(differences).sum(axis=0)
    count = np.zeros(differences.shape[1], dtype=np.int64)
    for flipped in swaps(differences.shape[0], resampling):
        sums = observed - 2.0 * (flipped.astype(np.float64) @ differences)
        count += (np.abs(sums) >= threshold).sum(axis=0)
    return (1.0 + count) / (1.0 + resampling.resamples)


def percentile_bounds(means: np.ndarray, lowest: np.ndarray, highest: np.ndarray) -> np.ndarray:
    """(2, k) 2.5th/97.5th percentiles of resampled means, kept within [lowest, highest] of each column."""
    tail = (1.0 - LEVEL) / 2
    bounds = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return np.clip(bounds, lowest, highest)  # only rounding could cross them: a mean lies within its values


def _intervals(values: np.ndarray, resampling: Resampling) -> np.ndarray:
    """(2, k) lower and upper 95% bounds of the mean of each column of ``values`` (queries, k)."""
    if resampling.method == JACKKNIFE:
        return np.array([jackknife_interval(values[:, column]) for column in range(values.shape[1])]).T.reshape(
            2, values.shape[1])
    return percentile_bounds(bootstrap_means(values, resampling), values.min(axis=0), values.max(axis=0))
