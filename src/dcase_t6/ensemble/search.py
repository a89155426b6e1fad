"""`ensemble`: weighted sums of several systems' similarity matrices, weights grid-searched on validation.

The ensemble of systems ``S_1 .. S_M`` (queries x files, aligned by query text and file name) is
``E = w_1 N(S_1) + ... + w_M N(S_M)`` where ``N`` is the identity (``--normalize none``) or the
per-query z-score (``--normalize zscore``: each row becomes ``(x - mean) / std`` over its files; a
constant row becomes all zeros). Weights lie on the simplex (``w_i >= 0``, ``sum w_i = 1``) and the
search visits every point of the grid with spacing ``step`` (4 systems at 0.05: C(23, 3) = 1771
points), keeping the one with the highest validation mAP@16 (ties: the most even weights, i.e. the
smallest sum of squared weights, then grid order).

Two-stage (grouped) search, as in the AISTAT 2025 report: stage 1 searches the weights inside each
group and combines each group into one matrix; stage 2 searches the weights across the group
matrices (no second normalisation). The flat weight of a member is its inner weight times its
group's weight, so applying the flat weights reproduces the two-stage ensemble exactly. Systems
named ``MODEL/SYSTEM`` can be grouped by strategy: ``system-first`` groups by MODEL (combine the
systems of each model, then weight the models), ``model-first`` groups by SYSTEM. Systems left out
of every ``--group`` form a group of their own.

Fast search. With pessimistic ties (see ``metrics``) the rank of a relevant file ``j`` of query
``q`` is fixed by how many irrelevant files ``c`` satisfy ``sum_i w_i (S_i[q,c] - S_i[q,j]) >= 0``.
Per triple (q, j, c) the difference vector ``d`` decides: if every ``d_i < 0`` the file never counts,
if every ``d_i >= 0`` it always counts (a constant per (q, j)); only the few "mixed" triples depend
on the weights. A (q, j) already counting 16 or more irrelevant files is beyond rank 16 for every
weight, so its mixed triples are dropped, and queries without mixed triples have a fixed AP that is
computed once. Every batch of grid points is then one matrix product ``W @ D >= 0`` over the mixed
triples, summed per (q, j) with ``np.add.reduceat``, turned into ranks and AP@16 for all points at
once. The best point (and each reported candidate) is re-scored exactly on the applied matrix.

Weights file (JSON, written atomically)::

    {"format": "dcase-t6-ensemble-weights", "version": 1, "metric": "mAP@16",
     "normalize": "none" | "zscore", "step": 0.05,
     "strategy": "flat" | "groups" | "system-first" | "model-first",
     "weights": {"NAME": weight, ...},                     # flat weights, used by --apply
     "validation": {"R@1": ..., "mAP@16": ..., "n_queries": ..., "setting": ..., "relevance": ...},
     "groups": [{"name": ..., "weight": ..., "members": {"NAME": inner weight}, "mAP@16": ...}],
     "candidates": [{"weights": {...}, "mAP@16": ...}, ...],   # best first, exact scores
     "systems": {"NAME": "validation matrix path"}, "grid_points": ..., "seconds": ...}
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dcase_t6.retrieval import metrics
from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json
from dcase_t6.retrieval.evaluation import EvaluationResult, evaluate
from dcase_t6.retrieval.ground_truth import Relevance, align
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix, write_matrix

METRIC_K = 16
METRIC = f"mAP@{METRIC_K}"
WEIGHTS_FORMAT = "dcase-t6-ensemble-weights"
NORMALIZATIONS = ("none", "zscore")
STRATEGIES = ("system-first", "model-first")
MAX_GRID_POINTS = 250_000  # about 7 systems at step 0.05; minutes of search
_CHUNK_ELEMENTS = 1 << 22
_BATCH_ELEMENTS = 1 << 18  # (points x mixed entries) per batch: small enough to stay in cache


@dataclass(frozen=True)
class System:
    """One named similarity matrix and the file it came from."""

    name: str
    path: str
    matrix: SimilarityMatrix


@dataclass(frozen=True)
class Group:
    """Systems whose weights stage 1 searches together (indices into the system list)."""

    name: str
    members: tuple[int, ...]


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


# --- systems: parsing, loading, alignment ----------------------------------------------------------
def parse_system_option(option: str) -> tuple[str, str]:
    """Split ``NAME=PATH`` into its two non-empty parts."""
    name, separator, path = option.partition("=")
    if not separator or not name.strip() or not path.strip():
        raise UserError(f"--system {option!r}: expected NAME=PATH, e.g. --system passt/s1=passt_s1_val.csv")
    return name.strip(), path.strip()


def parse_system_options(options: Sequence[str]) -> list[tuple[str, str]]:
    """(name, path) of every ``NAME=PATH`` option; a UserError for bad syntax or a repeated name."""
    parsed = [parse_system_option(option) for option in options]
    _reject_duplicates([name for name, _ in parsed], "--system name")
    return parsed


def load_systems(options: Sequence[str]) -> list[System]:
    """Read every ``NAME=PATH`` matrix and reorder all of them to the first one's queries and files."""
    systems = [System(name, path, read_matrix(path)) for name, path in parse_system_options(options)]
    return [systems[0]] + [_aligned_to(systems[0], system) for system in systems[1:]]


def _reject_duplicates(names: Sequence[str], what: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{what} {repeated[0]!r} is given twice; use each name once")


def _aligned_to(reference: System, system: System) -> System:
    """``system`` with rows and columns in ``reference``'s order; a UserError on any difference."""
    rows = _positions(reference, system, _occurrence_keys(reference.matrix.queries),
                      _occurrence_keys(system.matrix.queries), "query")
    columns = _positions(reference, system, reference.matrix.files, system.matrix.files, "audio file")
    scores = take(take(system.matrix.scores, rows, axis=0), columns, axis=1)
    return System(system.name, system.path, SimilarityMatrix(reference.matrix.queries, reference.matrix.files, scores))


def _occurrence_keys(queries: Sequence[str]) -> list[tuple[str, int]]:
    """Key each query by (text, k) for its k-th occurrence, so repeated captions align one to one."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for query in queries:
        keys.append((query, seen[query]))
        seen[query] += 1
    return keys


def _positions(reference: System, system: System, wanted: Sequence, present: Sequence, what: str) -> np.ndarray:
    """Index of each (unique) ``wanted`` key in ``present``; a UserError naming the first key in only one."""
    position_of = {key: index for index, key in enumerate(present)}
    missing = next((key for key in wanted if key not in position_of), None)
    if missing is not None:
        raise _mismatch(reference, system, f"lacks the {what} {_describe(missing)} of {reference.path}")
    if len(present) != len(wanted):
        wanted_set = set(wanted)
        extra = next(key for key in present if key not in wanted_set)
        raise _mismatch(reference, system, f"has the {what} {_describe(extra)} that {reference.path} lacks")
    return np.array([position_of[key] for key in wanted], dtype=np.int64)


def _mismatch(reference: System, system: System, problem: str) -> UserError:
    return UserError(f"{system.path}: {problem} ({system.name} vs {reference.name}); every system must score "
                     "the same queries and audio files (the same split): re-run embed on that split")


def _describe(key: tuple[str, int] | str) -> str:
    """A query key as its text (and which repeat of it), a file name as itself."""
    if isinstance(key, tuple):
        text, repeat = key
        return repr(text) + (f" (occurrence {repeat + 1})" if repeat else "")
    return repr(key)


# --- normalisation, combination, grid ------------------------------------------------------------
def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Per-query z-score: each row becomes (x - mean) / std over its files; constant rows become 0."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 0, spread, 1.0)


def stacked_scores(systems: Sequence[System], normalize: str) -> np.ndarray:
    """(systems, queries, files) float64 scores, z-normalised per query when asked."""
    transform = zscore_rows if normalize == "zscore" else np.asarray
    return np.stack([transform(system.matrix.scores) for system in systems])


def weighted_sum(scores: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``sum_i weights[i] * scores[i]``, accumulated in system order (the one definition of the ensemble)."""
    total = np.zeros(scores.shape[1:], dtype=np.float64)
    for weight, system_scores in zip(weights, scores):
        total += float(weight) * system_scores
    return total


def take(array: np.ndarray, indices: Sequence[int], axis: int = 0) -> np.ndarray:
    """``array`` indexed along ``axis``, without a copy when ``indices`` keeps every entry in order."""
    if np.array_equal(indices, np.arange(array.shape[axis])):
        return array
    return np.take(array, indices, axis=axis)


def grid_divisions(step: float) -> int:
    """Number of steps that make 1; a UserError unless ``step`` divides 1."""
    divisions = round(1.0 / step) if 0 < step <= 1 else 0
    if divisions < 1 or abs(divisions * step - 1.0) > 1e-9:
        raise UserError(f"--step {step}: the weight step must divide 1 (e.g. 0.05, 0.1, 0.25)")
    return divisions


def simplex_grid(n_systems: int, divisions: int) -> np.ndarray:
    """All weight vectors ``k / divisions`` with non-negative integers ``k`` summing to ``divisions``."""
    slots = divisions + n_systems - 1
    bars = np.array(list(itertools.combinations(range(slots), n_systems - 1)), dtype=np.int64)
    bars = bars.reshape(-1, n_systems - 1)
    edges = np.column_stack([np.full(len(bars), -1), bars, np.full(len(bars), slots)])
    return (np.diff(edges, axis=1) - 1) / divisions


def grid_size(n_systems: int, divisions: int) -> int:
    """Number of simplex grid points: C(divisions + n - 1, n - 1)."""
    return math.comb(divisions + n_systems - 1, n_systems - 1)


# --- fast mAP@16 over many weight points ----------------------------------------------------------
def build_comparison_table(scores: np.ndarray, relevant: np.ndarray) -> ComparisonTable:
    """Precompute, in query chunks, the constant counts and mixed difference vectors of every query."""
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


def grid_search(scores: np.ndarray, relevant: np.ndarray, divisions: int, progress: Progress | None,
                label: str) -> GridResult:
    """Validation mAP@16 of every simplex grid point for the systems stacked in ``scores``."""
    table = build_comparison_table(scores, relevant)
    points = simplex_grid(len(scores), divisions)
    batch = max(1, _BATCH_ELEMENTS // max(1, table.differences.shape[1]))
    task = progress.add_task(label, total=len(points)) if progress else None
    values = []
    for start in range(0, len(points), batch):
        values.append(map_at_k_for_weights(table, points[start:start + batch]))
        if progress:
            progress.advance(task, len(values[-1]))
    return GridResult(points=points, scores=np.concatenate(values))


def exact_map_at_k(scores: np.ndarray, relevant: np.ndarray, weights: Sequence[float]) -> float:
    """mAP@16 of the explicitly applied weighted matrix (the reference the search must match)."""
    ranks = metrics.relevant_ranks(weighted_sum(scores, weights), relevant)
    return float(metrics.average_precision_at_k(ranks, METRIC_K).mean())


# --- groups ---------------------------------------------------------------------------------------
def resolve_groups(names: Sequence[str], group_options: Sequence[str], strategy: str | None) -> list[Group]:
    """Groups from --group (overrides), else from --strategy, else one group of all systems (flat)."""
    if group_options:
        return _explicit_groups(names, group_options)
    if strategy:
        return _strategy_groups(names, strategy)
    return [Group("all", tuple(range(len(names))))]


def _explicit_groups(names: Sequence[str], group_options: Sequence[str]) -> list[Group]:
    """Parse ``GROUP=NAME1,NAME2``; ungrouped systems become single-member groups."""
    index_of = {name: index for index, name in enumerate(names)}
    groups, taken = [], {}
    for option in group_options:
        group_name, separator, listed = option.partition("=")
        members = [member.strip() for member in listed.split(",") if member.strip()]
        if not separator or not group_name.strip() or not members:
            raise UserError(f"--group {option!r}: expected GROUP=NAME1,NAME2 with --system names")
        for member in members:
            if member not in index_of:
                raise UserError(f"--group {option!r}: {member!r} is not a --system name ({', '.join(names)})")
            if member in taken:
                raise UserError(f"--group: {member!r} is in groups {taken[member]!r} and {group_name.strip()!r}; "
                                "put each system in one group")
            taken[member] = group_name.strip()
        groups.append(Group(group_name.strip(), tuple(index_of[member] for member in members)))
    _reject_duplicates([group.name for group in groups], "--group name")
    return groups + [Group(name, (index_of[name],)) for name in names if name not in taken]


def _strategy_groups(names: Sequence[str], strategy: str) -> list[Group]:
    """system-first: group ``MODEL/SYSTEM`` names by MODEL; model-first: by SYSTEM."""
    members: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        model, separator, system = name.partition("/")
        if not separator or not model or not system:
            raise UserError(f"--strategy {strategy}: system name {name!r} is not MODEL/SYSTEM (e.g. passt/s1); "
                            "rename it or use --group GROUP=NAME1,NAME2")
        members.setdefault(model if strategy == "system-first" else system, []).append(index)
    return [Group(key, tuple(indices)) for key, indices in members.items()]


def planned_grid_points(groups: Sequence[Group], divisions: int) -> int:
    """Grid points the search will evaluate: every multi-member group, plus the groups themselves."""
    inner = sum(grid_size(len(group.members), divisions) for group in groups if len(group.members) > 1)
    return inner + (grid_size(len(groups), divisions) if len(groups) > 1 else 0)


# --- search ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchOutcome:
    """Flat weights of the best candidates (best first) and each group's inner weights and weight."""

    candidates: list[np.ndarray]
    group_inner: list[np.ndarray]
    group_weights: np.ndarray
    grid_points: int


def two_stage_search(scores: np.ndarray, relevant: np.ndarray, groups: Sequence[Group], divisions: int,
                     top: int, progress: Progress | None) -> SearchOutcome:
    """Search inside each group, then across the group matrices; flat weight = inner x group weight."""
    if len(groups) == 1:
        result = grid_search(take(scores, groups[0].members), relevant, divisions, progress, "grid search")
        best = result.best(top)
        candidates = [_flatten(scores.shape[0], groups, [result.points[i]], np.ones(1)) for i in best]
        return SearchOutcome(candidates, [result.points[best[0]]], np.ones(1), len(result.points))
    inner = [_best_inner_weights(scores, relevant, group, divisions, progress) for group in groups]
    group_scores = np.stack([weighted_sum(take(scores, group.members), weights)
                             for group, weights in zip(groups, inner)])
    outer = grid_search(group_scores, relevant, divisions, progress, "stage 2: across groups")
    best = outer.best(top)
    candidates = [_flatten(scores.shape[0], groups, inner, outer.points[i]) for i in best]
    return SearchOutcome(candidates, inner, outer.points[best[0]], planned_grid_points(groups, divisions))


def _best_inner_weights(scores: np.ndarray, relevant: np.ndarray, group: Group, divisions: int,
                        progress: Progress | None) -> np.ndarray:
    """Stage 1: the best weights inside one group (a single member gets weight 1)."""
    if len(group.members) == 1:
        return np.ones(1)
    result = grid_search(take(scores, group.members), relevant, divisions, progress, f"stage 1: {group.name}")
    return result.points[result.best(1)[0]]


def _flatten(n_systems: int, groups: Sequence[Group], inner: Sequence[np.ndarray], group_weights: np.ndarray
             ) -> np.ndarray:
    """Flat per-system weights: each member's inner weight times its group's weight."""
    flat = np.zeros(n_systems)
    for group, weights, group_weight in zip(groups, inner, group_weights):
        flat[list(group.members)] = weights * group_weight
    return flat


@dataclass(frozen=True)
class SearchOptions:
    """How to search: normalisation, grid step, grouping, candidates kept, missing queries allowed."""

    normalize: str = "none"
    step: float = 0.05
    group_options: tuple[str, ...] = ()
    strategy: str | None = None
    top: int = 5
    allow_missing: bool = False

    @property
    def strategy_name(self) -> str:
        """``groups`` for explicit --group, else the --strategy, else ``flat``."""
        return "groups" if self.group_options else self.strategy or "flat"


@dataclass(frozen=True)
class ValidationSet:
    """Aligned (and normalised) validation matrices of all systems and the relevance mapped onto them."""

    systems: list[System]
    scores: np.ndarray
    rows: np.ndarray
    relevant: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        """(systems, scored queries, files): only the rows that have relevance judgements."""
        return take(self.scores, self.rows, axis=1)

    def applied(self, weights: np.ndarray) -> SimilarityMatrix:
        """The explicit ensemble matrix for ``weights`` (all rows, first system's order)."""
        first = self.systems[0].matrix
        return SimilarityMatrix(first.queries, first.files, weighted_sum(self.scores, weights))


def load_validation(system_options: Sequence[str], relevance: Relevance, options: SearchOptions) -> ValidationSet:
    """Read, align and normalise the validation matrices; map the relevance onto their rows."""
    systems = load_systems(system_options)
    alignment = align(systems[0].matrix, relevance, allow_missing=options.allow_missing)
    return ValidationSet(systems, stacked_scores(systems, options.normalize), alignment.rows, alignment.relevant)


def search(system_options: Sequence[str], relevance: Relevance, options: SearchOptions, out: str | Path,
           show_progress: bool) -> dict:
    """The `ensemble --search` command: search, re-score exactly, save and return the weights document."""
    started = time.perf_counter()
    divisions = grid_divisions(options.step)
    names = [name for name, _ in parse_system_options(system_options)]
    if len(names) < 2:
        raise UserError("ensemble --search: give at least 2 --system NAME=PATH matrices to combine")
    groups = resolve_groups(names, options.group_options, options.strategy)
    _check_grid_size(groups, divisions)
    data = load_validation(system_options, relevance, options)
    scored = data.scored
    with search_progress(show_progress) as progress:
        outcome = two_stage_search(scored, data.relevant, groups, divisions, options.top, progress)
    validation = evaluate(data.applied(outcome.candidates[0]), relevance, allow_missing=options.allow_missing)
    document = {
        "format": WEIGHTS_FORMAT, "version": 1, "metric": METRIC, "normalize": options.normalize,
        "step": options.step, "strategy": options.strategy_name,
        "weights": _named(names, outcome.candidates[0]),
        "validation": _validation_summary(validation, relevance),
        "groups": _group_summaries(names, groups, outcome, scored, data.relevant) if len(groups) > 1 else [],
        "candidates": [{"weights": _named(names, weights), METRIC: exact_map_at_k(scored, data.relevant, weights)}
                       for weights in outcome.candidates],
        "systems": {system.name: system.path for system in data.systems},
        "grid_points": outcome.grid_points,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_weights(document, out)
    return document


def _check_grid_size(groups: Sequence[Group], divisions: int) -> None:
    points = planned_grid_points(groups, divisions)
    if points > MAX_GRID_POINTS:
        raise UserError(f"the search would visit {points} weight points (more than {MAX_GRID_POINTS}); "
                        "use a larger --step or split the systems with --group / --strategy")


def _named(names: Sequence[str], weights: np.ndarray) -> dict[str, float]:
    return {name: float(weight) for name, weight in zip(names, weights)}


def _validation_summary(result: EvaluationResult, relevance: Relevance) -> dict:
    setting = "single-relevant" if all(len(files) == 1 for files in relevance.relevant_files) else "multi-relevant"
    return {**result.scores, "n_queries": result.n_queries, "setting": setting, "relevance": str(relevance.source)}


def _group_summaries(names: Sequence[str], groups: Sequence[Group], outcome: SearchOutcome, scores: np.ndarray,
                     relevant: np.ndarray) -> list[dict]:
    """Per group: its weight, its members' inner weights and the validation mAP@16 of its combination."""
    return [{"name": group.name, "weight": float(group_weight),
             "members": _named([names[i] for i in group.members], inner),
             METRIC: exact_map_at_k(take(scores, group.members), relevant, inner)}
            for group, inner, group_weight in zip(groups, outcome.group_inner, outcome.group_weights)]


@contextlib.contextmanager
def search_progress(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr over the grid points, or None when disabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield progress


# --- weights file and --apply ---------------------------------------------------------------------
def write_weights(document: dict, path: str | Path) -> None:
    """Write the weights document as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_weights(path: str | Path) -> dict:
    """Read and check a weights file: its format, its normalisation and non-negative finite weights."""
    path = Path(path)
    document = read_json(path, f"create it with `dcase-t6 ensemble --search ... --out {path}`")
    if not isinstance(document, dict) or document.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path}: not an ensemble weights file (\"format\" must be {WEIGHTS_FORMAT!r})")
    weights = document.get("weights")
    if not isinstance(weights, dict) or not weights or not all(_is_weight(value) for value in weights.values()):
        raise UserError(f"{path}: \"weights\" must map system names to finite non-negative numbers")
    if document.get("normalize") not in NORMALIZATIONS:
        raise UserError(f"{path}: \"normalize\" is {document.get('normalize')!r}; expected one of {NORMALIZATIONS}")
    return document


def _is_weight(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def apply(weights_path: str | Path, system_options: Sequence[str], out: str | Path) -> dict:
    """The `ensemble --apply` command: combine test matrices with stored weights and write the result."""
    document = read_weights(weights_path)
    systems = load_systems(system_options)
    by_name = {system.name: system for system in systems}
    _check_same_names(weights_path, list(document["weights"]), list(by_name))
    ordered = [by_name[name] for name in document["weights"]]
    combined = weighted_sum(stacked_scores(ordered, document["normalize"]), list(document["weights"].values()))
    write_matrix(SimilarityMatrix(systems[0].matrix.queries, systems[0].matrix.files, combined), out)
    return {"out": str(out), "weights": document["weights"], "normalize": document["normalize"],
            "n_queries": combined.shape[0], "n_files": combined.shape[1]}


def _check_same_names(weights_path: str | Path, stored: Sequence[str], given: Sequence[str]) -> None:
    missing = [name for name in stored if name not in given]
    if missing:
        raise UserError(f"{weights_path}: weights name system {missing[0]!r}, which no --system gives; "
                        f"pass --system {missing[0]}=PATH for every weighted system ({', '.join(stored)})")
    extra = [name for name in given if name not in stored]
    if extra:
        raise UserError(f"--system {extra[0]!r} has no weight in {weights_path} (it weights {', '.join(stored)}); "
                        "drop it or re-run the search with it")
