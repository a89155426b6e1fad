"""Benchmark `ensemble --search` against per-point references.

Cases: 4 correlated synthetic systems on the Clotho validation shape (1045 files x 5 captions = 5225
single-relevant queries) and on the real dev-test multi-relevance file (1037 queries, 1-12 relevant),
both on the full 4-system grid at step 0.05 (1771 points). Prints the seconds of the fast search
(core, and the whole command from .npz files), the seconds of two references EXTRAPOLATED from a
few timed points (a weighted sum, then per query one NumPy lexsort; and a weighted sum, then the
vectorised `metrics` ranks), the speed ratios, whether the 30 s goal holds, and whether the search
agrees with the references on the timed points. ``--write-docs`` puts the figures into this script's block
of docs/speed.md.

    .venv/bin/python benchmarks/bench_ensemble.py           # full size
    .venv/bin/python benchmarks/bench_ensemble.py --quick   # 300 files, 300 multi-relevant queries
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import _published
from dcase_t6.ensemble import grid
from dcase_t6.ensemble.search import SearchOptions, search
from dcase_t6.ensemble.systems import System, weighted_sum
from dcase_t6.ensemble.weights import write_weights
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.ground_truth import Relevance, align, read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix, write_matrix

RELEVANCE_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "clotho-devtest-relevance-metadata_eval.csv"
GOAL_S = 30.0
STEP = 0.05
N_SYSTEMS = 4
DIM = 64
CAPTION_NOISE = {"single": 2.5, "multi": 1.6}  # single-system mAP@16 about 0.35-0.55, as real systems
SYSTEM_NOISE = (0.45, 0.5, 0.55, 0.6)


def correlated_systems(rng: np.random.Generator, relevant: list[list[int]], n_files: int, caption_noise: float
                       ) -> np.ndarray:
    """(systems, queries, files) cosine scores: a query embeds the mean of its relevant clips plus noise
    shared by all systems (hard captions are hard for everyone), then each system adds its own noise."""
    audio = rng.standard_normal((n_files, DIM))
    text = np.stack([audio[files].mean(axis=0) for files in relevant])
    text += caption_noise / np.sqrt([len(files) for files in relevant])[:, None] * rng.standard_normal(text.shape)
    systems = []
    for noise in SYSTEM_NOISE[:N_SYSTEMS]:
        system_audio = _unit(audio + noise * rng.standard_normal(audio.shape))
        system_text = _unit(text + noise * rng.standard_normal(text.shape))
        systems.append(system_text @ system_audio.T)
    return np.stack(systems)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def single_relevant_case(rng: np.random.Generator, n_files: int) -> tuple[list[SimilarityMatrix], Relevance]:
    """Clotho validation shape: every file has 5 captions, each caption's only relevant file is its clip."""
    files = [f"clip_{i:04d}, take &#39;{i}&#39;.wav" for i in range(n_files)]
    target = np.repeat(np.arange(n_files), 5)
    queries = [f"caption {q} of clip {t}" for q, t in enumerate(target)]
    scores = correlated_systems(rng, [[t] for t in target], n_files, CAPTION_NOISE["single"])
    relevance = Relevance(queries, [[files[t]] for t in target], Path("<generated captions>"))
    return [SimilarityMatrix(queries, files, system) for system in scores], relevance


def multi_relevant_case(rng: np.random.Generator, n_queries: int) -> tuple[list[SimilarityMatrix], Relevance]:
    """The real dev-test relevance file (first ``n_queries``), its files plus unjudged ones up to 1045."""
    full = read_relevance_file(RELEVANCE_FILE)
    relevance = Relevance(full.queries[:n_queries], full.relevant_files[:n_queries], full.source)
    judged = sorted({name for names in relevance.relevant_files for name in names})
    files = judged + [f"unjudged_{i}.wav" for i in range(max(0, 1045 - len(judged)))]
    column_of = {name: column for column, name in enumerate(files)}
    relevant = [[column_of[name] for name in names] for names in relevance.relevant_files]
    scores = correlated_systems(rng, relevant, len(files), CAPTION_NOISE["multi"])
    return [SimilarityMatrix(relevance.queries, files, system) for system in scores], relevance


def numpy_reference_map16(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Straightforward reference for one applied matrix: per query one lexsort (irrelevant first in ties)."""
    total = 0.0
    for row, targets in zip(scores, relevant):
        targets = targets[targets != metrics.PADDING]
        is_relevant = np.zeros(len(row), dtype=bool)
        is_relevant[targets] = True
        order = np.lexsort((is_relevant, -row))
        hits = np.flatnonzero(is_relevant[order[:16]]) + 1
        total += float(np.sum(np.arange(1, len(hits) + 1) / hits)) / len(targets)
    return total / len(scores)


def vectorised_reference_map16(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Stronger reference for one applied matrix: the vectorised `metrics` ranks (as `evaluate` does)."""
    return float(metrics.average_precision_at_k(metrics.relevant_ranks(scores, relevant), 16).mean())


def time_reference(reference, scored: np.ndarray, relevant: np.ndarray, points: np.ndarray
                   ) -> tuple[float, np.ndarray]:
    """Seconds per point (weighted sum + reference mAP@16) over ``points``, and their values."""
    start = time.perf_counter()
    values = np.array([reference(weighted_sum(scored, point), relevant) for point in points])
    return (time.perf_counter() - start) / len(points), values


def time_command(systems: list[SimilarityMatrix], relevance: Relevance) -> float:
    """Seconds of the whole `ensemble --search` from .npz files (read, align, search, re-score, save)."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"s{index}.npz" for index in range(len(systems))]
        for matrix, path in zip(systems, paths):
            write_matrix(matrix, path)
        start = time.perf_counter()
        named = [System(f"s{index}", read_matrix(path), str(path)) for index, path in enumerate(paths)]
        found = search(named, relevance, SearchOptions(step=STEP))
        write_weights(found.weights, Path(folder) / "w.json")
        return time.perf_counter() - start


def report(name: str, systems: list[SimilarityMatrix], relevance: Relevance) -> dict:
    """Time the search and the references on one case, print the comparison and return the figures: the shape
    (systems, points, queries, files), the seconds of the search and of the whole command, and the ratio of the
    per-query NumPy reference to the search."""
    alignment = align(systems[0], relevance)
    scored = np.stack([matrix.scores for matrix in systems])[:, alignment.rows]
    divisions = grid.grid_divisions(STEP)
    start = time.perf_counter()
    table = grid.build_comparison_table(scored, alignment.relevant)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    result = grid.grid_search(scored, alignment.relevant, divisions, label=name)
    search_s = time.perf_counter() - start
    command_s = time_command(systems, relevance)
    n_points = len(result.points)
    best = result.points[result.best(1)[0]]
    singles = [vectorised_reference_map16(system, alignment.relevant) for system in scored]
    print(f"{name}: {len(scored)} systems, {scored.shape[1]} queries x {scored.shape[2]} files, "
          f"{n_points} grid points (step {STEP})")
    print(f"  single systems mAP@16 {' '.join(f'{value:.4f}' for value in singles)}; "
          f"best ensemble {result.scores.max():.4f} at {np.round(best, 2).tolist()}")
    print(f"  pruning: {table.differences.shape[1]} mixed (query, relevant, file) entries of "
          f"{scored.shape[1] * alignment.relevant.shape[1] * scored.shape[2]}; "
          f"{table.variable_constant.shape[0]} of {scored.shape[1]} queries depend on the weights "
          f"(table built in {build_s:.2f} s)")
    print(f"  fast search (core)       {search_s:9.2f} s")
    print(f"  whole --search command   {command_s:9.2f} s  (read .npz, align, search, exact re-score, save)")
    print(f"  goal < {GOAL_S:.0f} s: {'met' if command_s < GOAL_S else 'NOT met'}")
    timed = np.random.default_rng(1).choice(n_points, size=12, replace=False)
    ratios = {}
    for label, reference, n_timed in (("per-query NumPy reference", numpy_reference_map16, 3),
                                      ("vectorised reference", vectorised_reference_map16, 12)):
        per_point, values = time_reference(reference, scored, alignment.relevant, result.points[timed[:n_timed]])
        agree = np.allclose(values, result.scores[timed[:n_timed]], rtol=0, atol=1e-12)
        ratios[label] = per_point * n_points / search_s
        print(f"  {label:25s}{per_point * n_points:9.1f} s  EXTRAPOLATED from {n_timed} points "
              f"({per_point:.3f} s each); ratio {per_point * n_points / search_s:6.1f}x; agrees: {agree}")
    return {"systems": len(scored), "points": n_points, "queries": scored.shape[1], "files": scored.shape[2],
            "search_s": search_s, "command_s": command_s, "numpy_ratio": ratios["per-query NumPy reference"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (300 files, 300 multi-relevant queries)")
    _published.add_option(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    single = report("single-relevant (Clotho validation shape)",
                    *single_relevant_case(rng, 300 if args.quick else 1045))
    rows = [_published.Row(
        f"`ensemble --search`, {single['systems']} systems, {single['points']} points, "
        f"{single['queries']} x {single['files']}",
        f"{single['search_s']:.1f} s search, {single['command_s']:.1f} s whole command; "
        f"{single['numpy_ratio']:.0f}x a per-query NumPy loop", f"< {GOAL_S:.0f} s")]
    if RELEVANCE_FILE.is_file():
        multi = report("multi-relevant (real dev-test relevance file)",
                       *multi_relevant_case(rng, 300 if args.quick else 1037))
        rows.append(_published.Row(f"`ensemble --search`, same on the {multi['queries']}-query relevance file",
                                   f"{multi['search_s']:.1f} s search, {multi['command_s']:.1f} s whole command",
                                   f"< {GOAL_S:.0f} s"))
    else:
        print(f"multi-relevant case skipped: {RELEVANCE_FILE} not found")
        rows.append(_published.Row("`ensemble --search`, same on the 1037-query relevance file",
                                   f"not measured: {RELEVANCE_FILE.name} not found", f"< {GOAL_S:.0f} s"))
    _published.finish(__file__, rows, args.write_docs)


if __name__ == "__main__":
    main()
