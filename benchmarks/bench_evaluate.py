"""Benchmark `evaluate` against straightforward per-query references (pure Python, and NumPy).

Cases: the Clotho dev-test single-relevant shape (5225 captions x 1045 files) and the real
1037-query multi-relevance file. Prints seconds, the speed ratio and whether the goals hold
(< 0.5 s single-relevant on one core, >= 20x faster than the reference). Also checks both agree.
Then both directions (audio to text too), the bootstrap intervals and the paired comparison of two systems
(10,000 resamples x 5225 queries x 5 metrics; goal about 1-2 s) against a per-resample Python loop, and
the seconds to write a 1000 x 1045 submission CSV (goal < 2 s) and whether it reads back bit-exact.
``--write-docs`` puts the figures into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_evaluate.py [--write-docs]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the goal is stated for one core

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import _published
from dcase_t6.retrieval.directions import metric_values
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance, read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix, write_matrix
from dcase_t6.retrieval.significance import Resampling, bootstrap_indices, significance

RELEVANCE_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "clotho-devtest-relevance-metadata_eval.csv"


def python_reference_map16(matrix: SimilarityMatrix, relevance: Relevance) -> float:
    """Straightforward reference: per query, sort all files in Python (irrelevant first within ties)."""
    total = 0.0
    for scores, targets in _reference_queries(matrix, relevance):
        target_set = set(targets)
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], c in target_set))
        total += _ap16([column in target_set for column in order[:16]], len(targets))
    return total / len(relevance.queries)


def numpy_reference_map16(matrix: SimilarityMatrix, relevance: Relevance) -> float:
    """Stronger reference: per query, one NumPy lexsort (irrelevant first within ties)."""
    total = 0.0
    for scores, targets in _reference_queries(matrix, relevance):
        is_relevant = np.zeros(len(scores), dtype=bool)
        is_relevant[targets] = True
        order = np.lexsort((is_relevant, -scores))
        total += _ap16(is_relevant[order[:16]].tolist(), len(targets))
    return total / len(relevance.queries)


def _reference_queries(matrix: SimilarityMatrix, relevance: Relevance):
    row_of = {query: row for row, query in enumerate(matrix.queries)}
    column_of = {name: column for column, name in enumerate(matrix.files)}
    for query, files in zip(relevance.queries, relevance.relevant_files):
        yield matrix.scores[row_of[query]], [column_of[name] for name in files]


def _ap16(top16_is_relevant: list[bool], n_relevant: int) -> float:
    hits, precision_sum = 0, 0.0
    for rank, hit in enumerate(top16_is_relevant, start=1):
        if hit:
            hits += 1
            precision_sum += hits / rank
    return precision_sum / n_relevant


def time_it(function, repeat: int = 3) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def single_relevant_case(rng: np.random.Generator) -> tuple[SimilarityMatrix, Relevance]:
    files = [f"clip {i}, take &#39;{i}&#39;.wav" for i in range(1045)]
    queries = [f"caption {i} of clip {i // 5}" for i in range(5225)]
    target = np.arange(5225) // 5
    scores = rng.standard_normal((5225, 1045)).astype(np.float32).astype(np.float64)
    scores[np.arange(5225), target] += 2.5
    relevance = Relevance(queries, [[files[t]] for t in target], Path("<generated>"))
    return SimilarityMatrix(queries, files, scores), relevance


def multi_relevant_case(rng: np.random.Generator) -> tuple[SimilarityMatrix, Relevance]:
    relevance = read_relevance_file(RELEVANCE_FILE)
    files = sorted({name for names in relevance.relevant_files for name in names})
    extra = [f"unjudged_{i}.wav" for i in range(1045 - len(files))]
    files = files + extra
    scores = rng.standard_normal((len(relevance.queries), len(files)))
    return SimilarityMatrix(relevance.queries, files, scores), relevance


def report(name: str, matrix: SimilarityMatrix, relevance: Relevance, goal_s: float | None
           ) -> tuple[float, dict[str, float]]:
    """Print the timings of one case; return the seconds of `evaluate` and each reference's speed ratio."""
    fast_s, result = time_it(lambda: evaluate(matrix, relevance))
    print(f"{name}: {matrix.shape[0]} x {matrix.shape[1]}")
    print(f"  evaluate          {fast_s:8.3f} s  (five metrics, per-query table, jackknife CIs)")
    if goal_s is not None:
        print(f"  goal < {goal_s} s: {'met' if fast_s < goal_s else 'NOT met'}")
    ratios = {}
    for label, reference in (("Python reference", python_reference_map16), ("NumPy reference", numpy_reference_map16)):
        slow_s, value = time_it(lambda: reference(matrix, relevance), repeat=1)
        agree = abs(result.scores["mAP@16"] - value) < 1e-12
        ratios[label] = slow_s / fast_s
        print(f"  {label:17s} {slow_s:8.3f} s  ratio {slow_s / fast_s:6.1f}x  mAP@16 agrees: {agree}")
    print("  goal: >= 20x faster than the straightforward per-query Python reference")
    return fast_s, ratios


def resampling_rows(matrix: SimilarityMatrix, relevance: Relevance) -> list[_published.Row]:
    """Time both directions, the bootstrap intervals of one system and the paired comparison of two (10,000
    resamples of the 5225 queries, 5 metrics), and a per-resample Python loop over the same indices."""
    both_s, both = time_it(lambda: evaluate(matrix, relevance, both_directions=True))
    one_s, _ = time_it(lambda: evaluate(matrix, relevance))
    values = metric_values(both.per_query)
    other = {key: np.clip(column + np.random.default_rng(1).normal(0, 0.05, len(column)), 0, 1)
             for key, column in values.items()}
    resampling = Resampling()
    interval_s, figures = time_it(lambda: significance([values], resampling))
    paired_s, _ = time_it(lambda: significance([values, other], resampling, with_intervals=False))
    loop = Resampling(resamples=500)
    stacked = np.stack(list(values.values()), axis=1)
    start = time.perf_counter()
    for indices in bootstrap_indices(len(stacked), loop):
        for row in indices:
            stacked[row].mean(axis=0)
    loop_s = (time.perf_counter() - start) * resampling.resamples / loop.resamples
    n, low_high = len(stacked), figures.intervals[0]["mAP@16"]
    print(f"both directions: {both_s:.3f} s (text to audio alone {one_s:.3f} s)")
    print(f"bootstrap CIs, {resampling.resamples} x {n} x 5: {interval_s:.2f} s (mAP@16 [{low_high[0]:.4f}, "
          f"{low_high[1]:.4f}]); a per-resample NumPy loop: {loop_s:.1f} s (from {loop.resamples} resamples)")
    print(f"paired comparison of two systems (CI of the difference + randomisation test): {paired_s:.2f} s")
    return [
        _published.Row(f"`evaluate`, both directions, {matrix.shape[0]} x {matrix.shape[1]}",
                       f"{both_s:.2f} s (text to audio alone {one_s:.2f} s)", "< 1 s"),
        _published.Row(f"`evaluate --ci` bootstrap, {resampling.resamples:,} resamples x {n} queries x 5 metrics",
                       f"{interval_s:.2f} s; {loop_s / interval_s:.0f}x a per-resample loop", "about 1-2 s"),
        _published.Row(f"`evaluate -p A -p B`, paired CI + randomisation test, {resampling.resamples:,} x {n} x 5",
                       f"{paired_s:.2f} s", "about 1-2 s"),
    ]


def submission_csv(rng: np.random.Generator, queries: int = 1000, files: int = 1045) -> tuple[float, bool]:
    """Seconds to write a ``queries`` x ``files`` submission CSV (best of 3), and whether it reads back bit-exact."""
    matrix = SimilarityMatrix([f"caption {i}, said &#39;{i}&#39;" for i in range(queries)],
                              [f"clip {i}.wav" for i in range(files)], rng.standard_normal((queries, files)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "submission.csv"
        seconds, _ = time_it(lambda: write_matrix(matrix, path))
        back = read_matrix(path)
    exact = back.queries == matrix.queries and back.files == matrix.files and np.array_equal(back.scores,
                                                                                               matrix.scores)
    print(f"submission CSV, write {queries} x {files}: {seconds:.2f} s (goal < 2 s: "
          f"{'met' if seconds < 2 else 'NOT met'}); reads back bit-exact: {exact}")
    return seconds, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _published.add_option(parser)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    matrix, relevance = single_relevant_case(rng)
    seconds, ratios = report("single-relevant (Clotho dev-test shape)", matrix, relevance, goal_s=0.5)
    rows = [_published.Row(
        f"`evaluate`, {matrix.shape[0]} x {matrix.shape[1]} single-relevant",
        f"{seconds:.2f} s; {ratios['Python reference']:.0f}x a per-query Python loop "
        f"({ratios['NumPy reference']:.0f}x a per-query NumPy sort)", "< 0.5 s, >= 20x")]
    rows += resampling_rows(matrix, relevance)
    if RELEVANCE_FILE.is_file():
        matrix, relevance = multi_relevant_case(rng)
        seconds, ratios = report("multi-relevant (real dev-test relevance file)", matrix, relevance, goal_s=None)
        rows.append(_published.Row(f"`evaluate`, real {len(relevance.queries)}-query relevance file",
                                   f"{seconds:.2f} s; {ratios['Python reference']:.0f}x the Python loop", ">= 20x"))
    else:
        print(f"multi-relevant case skipped: {RELEVANCE_FILE} not found")
        rows.append(_published.Row("`evaluate`, real 1037-query relevance file",
                                   f"not measured: {RELEVANCE_FILE.name} not found", ">= 20x"))
    seconds, exact = submission_csv(rng)
    back = "reads back bit-exact" if exact else "does NOT read back bit-exact"
    rows.append(_published.Row("submission CSV, write 1000 x 1045", f"{seconds:.2f} s ({back})", "< 2 s"))
    _published.finish(__file__, rows, arguments.write_docs)


if __name__ == "__main__":
    main()
