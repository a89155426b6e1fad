"""The draft report's confidence intervals: those of ``dcase-t6 evaluate --ci`` (bootstrap percentile, default
resamples and seed), computed from the per-query CSV that ``evaluate --per-query`` wrote, so the report prints the
very figures ``evaluate`` printed for that system."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.metrics import METRIC_KEYS
from dcase_t6.retrieval.significance import Resampling, significance


@dataclass(frozen=True)
class ReportIntervals:
    """Each metric's value and 95% interval over the queries of a per-query file.

    rows: (metric, value, "[low, high]") in METRIC_KEYS order, formatted to 4 decimals.
    n_queries: the queries of the file.
    method: how the intervals were drawn, in words.
    """

    rows: tuple[tuple[str, str, str], ...]
    n_queries: int
    method: str


def per_query_intervals(path: str | Path, resampling: Resampling = Resampling()) -> ReportIntervals | None:
    """The intervals of the metrics in a ``dcase-t6 evaluate --per-query`` CSV (None when it lacks the metric
    columns R@1 ... AP@16, e.g. a file of ranks only).

    Raises:
        UserError: a metric cell is not a number in [0, 1].
    """
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = [key.replace("mAP@", "AP@") for key in METRIC_KEYS]
    if table.empty or any(column not in table.columns for column in columns):
        return None
    values = {}
    for key, column in zip(METRIC_KEYS, columns):
        numbers = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~((numbers >= 0) & (numbers <= 1)))
        if len(bad):
            raise UserError(f"{path}: row {bad[0] + 2}, column {column!r} is {table[column].iloc[bad[0]]!r}; "
                            "expected a fraction in [0, 1] as `dcase-t6 evaluate --per-query` writes it")
        values[key] = numbers
    bounds = significance([values], resampling).intervals[0]
    rows = tuple((key, f"{values[key].mean():.4f}", f"[{bounds[key][0]:.4f}, {bounds[key][1]:.4f}]")
                 for key in METRIC_KEYS)
    return ReportIntervals(rows, len(table), resampling.interval_name())
