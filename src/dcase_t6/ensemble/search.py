"""Ensemble API: grid-search weights on validation matrices (:func:`search`) and apply them (:func:`apply`).

The ensemble of systems ``S_1 .. S_M`` is ``E = w_1 N(S_1) + ... + w_M N(S_M)`` (see ``systems``) with
weights on a simplex grid (see ``grid``), searched flat or in two stages over groups (see ``groups``).
The functions take and return typed objects and touch no files: the command line reads the matrices,
writes the weights file with ``weights.write_weights`` and the ensemble matrix with
``retrieval.matrices.write_matrix``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from rich.progress import Progress

from dcase_t6.common.errors import UserError
from dcase_t6.ensemble.grid import METRIC, exact_map_at_k, grid_divisions
from dcase_t6.ensemble.groups import Group, SearchOutcome, planned_grid_points, resolve_groups, two_stage_search
from dcase_t6.ensemble.systems import NORMALIZATIONS, System, align_systems, stacked_scores, take, weighted_sum
from dcase_t6.ensemble.weights import Candidate, EnsembleWeights, GroupWeights, Validation
from dcase_t6.retrieval.evaluation import EvaluationResult, evaluate
from dcase_t6.retrieval.ground_truth import Relevance, align
from dcase_t6.retrieval.matrices import SimilarityMatrix

MAX_GRID_POINTS = 250_000  # about 7 systems at step 0.05; minutes of search


@dataclass(frozen=True)
class SearchOptions:
    """How to search.

    Args:
        normalize: per-query normalisation before summing, ``none`` or ``zscore``.
        step: spacing of the weight grid; must divide 1.
        groups: group name -> member system names for a two-stage search (overrides ``strategy``);
            systems in no group form their own group.
        strategy: ``system-first`` or ``model-first`` grouping of ``MODEL/SYSTEM`` names, or None.
        top: how many best candidates to keep.
        allow_missing: skip ground-truth queries absent from the matrices instead of failing.
    """

    normalize: str = "none"
    step: float = 0.05
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    strategy: str | None = None
    top: int = 5
    allow_missing: bool = False

    @property
    def strategy_name(self) -> str:
        """``groups`` for explicit groups, else the strategy, else ``flat``."""
        return "groups" if self.groups else self.strategy or "flat"


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search` found.

    Args:
        weights: the best flat weights with the search record: the weights file's contents.
        evaluation: validation evaluation of the applied best weights (per-query values included).
    """

    weights: EnsembleWeights
    evaluation: EvaluationResult


def plan_search(names: Sequence[str], options: SearchOptions) -> list[Group]:
    """Check a search before any matrix is read: step, number of systems, groups and grid size.

    Args:
        names: the system names, in system order.
        options: the search options.

    Returns:
        The search groups (one group for a flat search).

    Raises:
        UserError: for a step that does not divide 1, fewer than 2 systems, bad groups or too many grid points.
    """
    divisions = grid_divisions(options.step)
    if options.normalize not in NORMALIZATIONS:
        raise UserError(f"--normalize {options.normalize}: expected one of {', '.join(NORMALIZATIONS)}")
    if options.top < 1:
        raise UserError(f"--top {options.top}: keep at least 1 candidate")
    if len(names) < 2:
        raise UserError("ensemble --search: give at least 2 --system NAME=PATH matrices to combine")
    groups = resolve_groups(names, options.groups, options.strategy)
    points = planned_grid_points(groups, divisions)
    if points > MAX_GRID_POINTS:
        raise UserError(f"the search would visit {points} weight points (more than {MAX_GRID_POINTS}); "
                        "use a larger --step or split the systems with --group / --strategy")
    return groups


def search(systems: Sequence[System], relevance: Relevance, options: SearchOptions = SearchOptions(),
           progress: Progress | None = None) -> SearchResult:
    """Grid-search the ensemble weights that maximise validation mAP@16, then re-score the best exactly.

    Args:
        systems: validation matrices of at least 2 systems with distinct names; they are aligned to the
            first one's queries and files.
        relevance: the validation ground truth.
        options: normalisation, step, groups, candidates kept, missing queries allowed.
        progress: a rich progress display to advance over the grid points, or None.

    Returns:
        The best weights with their search record, and the validation evaluation of their ensemble.

    Raises:
        UserError: see :func:`plan_search`; also for systems scoring different queries or files, or
            ground-truth queries missing from the matrices (unless ``allow_missing``).
    """
    started = time.perf_counter()
    names = [system.name for system in systems]
    groups = plan_search(names, options)
    aligned = align_systems(systems)
    alignment = align(aligned[0].matrix, relevance, allow_missing=options.allow_missing)
    scores = stacked_scores(aligned, options.normalize)
    scored = take(scores, alignment.rows, axis=1)
    outcome = two_stage_search(scored, alignment.relevant, groups, grid_divisions(options.step), options.top,
                               progress)
    first = aligned[0].matrix
    best = SimilarityMatrix(first.queries, first.files, weighted_sum(scores, outcome.candidates[0]))
    evaluation = evaluate(best, relevance, allow_missing=options.allow_missing)
    weights = EnsembleWeights(
        weights=_named(names, outcome.candidates[0]), normalize=options.normalize, metric=METRIC,
        step=options.step, strategy=options.strategy_name,
        validation=_validation(evaluation, relevance),
        groups=_group_weights(names, groups, outcome, scored, alignment.relevant) if len(groups) > 1 else [],
        candidates=[Candidate(_named(names, flat), exact_map_at_k(scored, alignment.relevant, flat))
                    for flat in outcome.candidates],
        systems={system.name: system.path for system in aligned},
        grid_points=outcome.grid_points,
        seconds=round(time.perf_counter() - started, 3))
    return SearchResult(weights=weights, evaluation=evaluation)


def apply(weights: EnsembleWeights, systems: Sequence[System]) -> SimilarityMatrix:
    """Combine matrices with stored weights: ``sum_i w_i N(S_i)`` with the stored normalisation.

    Args:
        weights: the weights (e.g. from ``weights.read_weights``); every weighted system must be given.
        systems: one matrix per weighted system, named as in ``weights``; aligned to the first one.

    Returns:
        The ensemble matrix, in the first system's query and file order.

    Raises:
        UserError: for a weighted system not given, a given system without weight, or systems scoring
            different queries or files.
    """
    aligned = align_systems(systems)
    by_name = {system.name: system for system in aligned}
    _check_same_names(weights, list(by_name))
    ordered = [by_name[name] for name in weights.weights]
    combined = weighted_sum(stacked_scores(ordered, weights.normalize), list(weights.weights.values()))
    return SimilarityMatrix(aligned[0].matrix.queries, aligned[0].matrix.files, combined)


def _check_same_names(weights: EnsembleWeights, given: Sequence[str]) -> None:
    stored = list(weights.weights)
    where = weights.source or "the ensemble weights"
    missing = [name for name in stored if name not in given]
    if missing:
        raise UserError(f"{where}: weights name system {missing[0]!r}, which no --system gives; "
                        f"pass --system {missing[0]}=PATH for every weighted system ({', '.join(stored)})")
    extra = [name for name in given if name not in stored]
    if extra:
        raise UserError(f"--system {extra[0]!r} has no weight in {where} (it weights {', '.join(stored)}); "
                        "drop it or re-run the search with it")


def _named(names: Sequence[str], weights: np.ndarray) -> dict[str, float]:
    return {name: float(weight) for name, weight in zip(names, weights)}


def _validation(result: EvaluationResult, relevance: Relevance) -> Validation:
    setting = "single-relevant" if all(len(files) == 1 for files in relevance.relevant_files) else "multi-relevant"
    return Validation(dict(result.scores), result.n_queries, setting, str(relevance.source))


def _group_weights(names: Sequence[str], groups: Sequence[Group], outcome: SearchOutcome, scores: np.ndarray,
                   relevant: np.ndarray) -> list[GroupWeights]:
    """Per group: its weight, its members' inner weights and the validation mAP@16 of its combination."""
    return [GroupWeights(group.name, float(group_weight), _named([names[i] for i in group.members], inner),
                         exact_map_at_k(take(scores, group.members), relevant, inner))
            for group, inner, group_weight in zip(groups, outcome.group_inner, outcome.group_weights)]
