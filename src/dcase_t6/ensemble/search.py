"""Ensemble API: grid-search weights on validation matrices (:func:`search`) and apply them (:func:`apply`).

The ensemble of systems ``S_1 .. S_M`` is ``E = w_1 N(S_1) + ... + w_M N(S_M)`` (see ``systems``) with
weights on a simplex grid (see ``grid``), searched flat or in two stages over groups (see ``groups``). A
tempered ``N`` (inverted or dual softmax) is searched at every temperature of a grid (see ``temperatures``);
one system alone is then allowed (its weight is 1: the search finds its temperature).
The functions take and return typed objects and touch no files: the command line reads the matrices,
writes the weights file with ``weights.write_weights`` and the ensemble matrix with
``retrieval.matrices.write_matrix``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.ensemble.grid import METRIC, METRIC_K, grid_divisions
from dcase_t6.ensemble.groups import (
    Group,
    SearchOutcome,
    SearchPlan,
    planned_grid_points,
    resolve_groups,
    two_stage_search,
)
from dcase_t6.ensemble.systems import NORMALIZATIONS, System, align_systems, stacked_scores, take, weighted_sum
from dcase_t6.ensemble.temperatures import best_temperature, temperature_grid
from dcase_t6.ensemble.weights import Candidate, EnsembleWeights, GroupWeights, TemperatureScore, Validation
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.evaluation import EvaluationResult, evaluate, mean_average_precision
from dcase_t6.retrieval.ground_truth import Alignment, Relevance, align
from dcase_t6.retrieval.matrices import SimilarityMatrix
from dcase_t6.retrieval.normalisation import MAX_TOP_K, NORMALISERS, QUERYBANK

MAX_GRID_POINTS = 250_000  # about 7 systems at step 0.05; minutes of search


@dataclass(frozen=True)
class SearchOptions:
    """How to search.

    Args:
        normalize: each system's normalisation before summing: ``none``, ``zscore`` (per query),
            ``inverted-softmax`` or ``dual-softmax`` (over all queries of the matrix, at a searched temperature),
            or ``querybank`` (over each system's bank of training captions, at a searched temperature).
        temperatures: the temperatures tried with ``inverted-softmax`` / ``dual-softmax`` / ``querybank``
            (empty: the default grid of ``temperatures.DEFAULT_TEMPERATURES``).
        top_k: ``querybank`` only: the activation set's k (a hub is among a bank caption's k best clips).
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
    temperatures: tuple[float, ...] = ()
    top_k: int = 1

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
        UserError: for a step that does not divide 1, fewer than 2 systems (1 is enough with a tempered
            normalisation), bad groups or temperatures, or too many grid points.
    """
    divisions = grid_divisions(options.step)
    if options.normalize not in NORMALIZATIONS:
        raise UserError(f"--normalize {options.normalize}: expected one of {', '.join(NORMALIZATIONS)}")
    if options.top < 1:
        raise UserError(f"--top {options.top}: keep at least 1 candidate")
    temperatures = temperature_grid(options.normalize, options.temperatures)
    if options.top_k != 1 and options.normalize != QUERYBANK:
        raise UserError(f"--bank-top-k {options.top_k}: only --normalize querybank has an activation set; drop it")
    if not isinstance(options.top_k, int) or not 1 <= options.top_k <= MAX_TOP_K:
        raise UserError(f"--bank-top-k {options.top_k!r}: give a whole number from 1 to {MAX_TOP_K} (default 1)")
    if len(names) < (1 if options.normalize in NORMALISERS else 2):
        raise UserError("ensemble --search: give at least 2 --system NAME=PATH matrices to combine")
    groups = resolve_groups(names, options.groups, options.strategy)
    points = planned_grid_points(groups, divisions)
    if points > MAX_GRID_POINTS:
        raise UserError(f"the search would visit {points} weight points (more than {MAX_GRID_POINTS}); "
                        "use a larger --step or split the systems with --group / --strategy")
    if points * len(temperatures) > MAX_GRID_POINTS:
        raise UserError(f"the search would visit {points} weight points at each of {len(temperatures)} temperatures "
                        f"(more than {MAX_GRID_POINTS} in all); use a larger --step or fewer --temperatures")
    return groups


def search(systems: Sequence[System], relevance: Relevance, options: SearchOptions = SearchOptions(),
           reporter: Reporter = SILENT) -> SearchResult:
    """Grid-search the ensemble weights that maximise validation mAP@16, then re-score the best exactly.

    The order of ``systems`` changes nothing: they are searched (and summed) in name order, aligned as
    :func:`~dcase_t6.ensemble.systems.align_systems` does (repeated captions as ``evaluate`` matches
    them), and a repeated caption's rows count as one only when they are identical in every system.
    Every reported score (validation, candidates, groups) is ``evaluate`` on the applied matrix.

    Args:
        systems: validation matrices of at least 2 systems with distinct names, scoring the same queries
            and files; the weights are listed in this order.
        relevance: the validation ground truth.
        options: normalisation, step, groups, candidates kept, missing queries allowed.
        reporter: shows a bar over the grid points.

    Returns:
        The best weights with their search record, and the validation evaluation of their ensemble.

    Raises:
        UserError: see :func:`plan_search`; also for systems scoring different queries or files, or
            ground-truth queries missing from the matrices (unless ``allow_missing``).
    """
    started = time.perf_counter()
    given = [system.name for system in systems]
    canonical = sorted(systems, key=lambda system: system.name)  # the -s order changes nothing
    names = [system.name for system in canonical]
    groups = plan_search(names, options)
    trials = _Trials(align_systems(canonical), relevance, options,
                     SearchPlan(groups, grid_divisions(options.step), options.top))
    chosen, tried = trials.best(reporter)
    outcome, rescore, evaluation = chosen.outcome, chosen.rescore, chosen.evaluation
    best_score = evaluation.scores[METRIC]
    weights = EnsembleWeights(
        weights=_named(names, outcome.candidates[0], given), normalize=options.normalize, metric=METRIC,
        step=options.step, strategy=options.strategy_name,
        validation=_validation(evaluation, relevance),
        groups=[GroupWeights(group.name, float(group_weight), _named(names, inner, given, group.members),
                             rescore.map_at_k(inner, group.members))
                for group, inner, group_weight in zip(groups, outcome.group_inner, outcome.group_weights)
                if len(groups) > 1],
        candidates=[Candidate(_named(names, flat, given), best_score if rank == 0 else rescore.map_at_k(flat))
                    for rank, flat in enumerate(outcome.candidates)],
        systems={system.name: system.path for system in systems},
        grid_points=outcome.grid_points * len(tried),
        seconds=round(time.perf_counter() - started, 3),
        temperature=chosen.temperature,
        temperature_search=tried if chosen.temperature is not None else None,
        top_k=options.top_k if options.normalize == QUERYBANK else None,
        banks={system.name: system.bank.source for system in systems if system.bank is not None}
        if options.normalize == QUERYBANK else None)
    return SearchResult(weights=weights, evaluation=evaluation)


@dataclass(frozen=True)
class _Trial:
    """The weight search at one temperature (None: an untempered normalisation) and its exact evaluation."""

    temperature: float | None
    outcome: SearchOutcome
    rescore: _Rescorer
    evaluation: EvaluationResult


class _Trials:
    """The weight search at every temperature of the grid; only the best trial so far is kept in memory."""

    def __init__(self, aligned: Sequence[System], relevance: Relevance, options: SearchOptions, plan: SearchPlan):
        self.aligned, self.relevance, self.options, self.plan = aligned, relevance, options, plan

    def best(self, reporter: Reporter) -> tuple[_Trial, list[TemperatureScore]]:
        """The best trial (see ``temperatures.best_temperature``) and the score of every temperature tried."""
        temperatures = temperature_grid(self.options.normalize, self.options.temperatures)
        if temperatures == (None,):
            trial = self.at(None, reporter)
            return trial, [TemperatureScore(0.0, trial.evaluation.scores[METRIC])]
        chosen, tried = None, []
        with reporter.task(f"{self.options.normalize} temperatures", total=len(temperatures)) as task:
            for temperature in temperatures:
                trial = self.at(temperature, reporter)
                tried.append(TemperatureScore(temperature or 0.0, trial.evaluation.scores[METRIC]))
                if chosen is None or best_temperature([chosen.temperature, temperature], [
                        chosen.evaluation.scores[METRIC], trial.evaluation.scores[METRIC]]) == 1:
                    chosen = trial
                task.advance(1)
        return chosen, tried

    def at(self, temperature: float | None, reporter: Reporter) -> _Trial:
        """Search the weights of the systems normalised at ``temperature``; evaluate the best exactly."""
        scores = stacked_scores(self.aligned, self.options.normalize, temperature, self.options.top_k)
        first, allow_missing = self.aligned[0].matrix, self.options.allow_missing
        alignment = align(first, self.relevance, allow_missing=allow_missing, scores=scores)
        scored = take(scores, alignment.rows, axis=1)
        outcome = two_stage_search(scored, alignment.relevant, self.plan, reporter)
        rescore = _Rescorer(first, scores, alignment, self.relevance, allow_missing)
        evaluation = evaluate(rescore.applied(outcome.candidates[0]), self.relevance, allow_missing=allow_missing)
        return _Trial(temperature, outcome, rescore, evaluation)


class _Rescorer:
    """Exact validation mAP@16 of applied weights: what ``evaluate`` gives on the applied matrix.

    The search alignment (a repeated caption is one row only where its rows are identical in every
    system) is ``evaluate``'s alignment of any applied matrix, unless the weights make a caption's
    different rows identical (e.g. weight 0 on every system that tells them apart); only then is the
    applied matrix aligned anew.
    """

    def __init__(self, first: SimilarityMatrix, scores: np.ndarray, alignment: Alignment, relevance: Relevance,
                 allow_missing: bool):
        self.first, self.scores, self.alignment = first, scores, alignment
        self.relevance, self.allow_missing = relevance, allow_missing
        rows_of: dict[str, list[int]] = {}
        for row, query in enumerate(first.queries):
            rows_of.setdefault(query, []).append(row)
        self.distinct = [rows for rows in rows_of.values()
                         if len(rows) > 1 and not (scores[:, rows] == scores[:, rows[:1]]).all()]

    def applied(self, weights: Sequence[float], members: Sequence[int] | None = None) -> SimilarityMatrix:
        """The matrix of ``weights`` over ``members`` (default: every system), summed in system order."""
        chosen = self.scores if members is None else take(self.scores, members)
        return SimilarityMatrix(self.first.queries, self.first.files, weighted_sum(chosen, weights))

    def map_at_k(self, weights: Sequence[float], members: Sequence[int] | None = None) -> float:
        matrix = self.applied(weights, members)
        if any((matrix.scores[rows] == matrix.scores[rows[0]]).all() for rows in self.distinct):
            return mean_average_precision(matrix, self.relevance, METRIC_K, self.allow_missing)
        ranks = metrics.relevant_ranks(take(matrix.scores, self.alignment.rows), self.alignment.relevant)
        return float(np.mean(metrics.average_precision_at_k(ranks, METRIC_K)))


def apply(weights: EnsembleWeights, systems: Sequence[System]) -> SimilarityMatrix:
    """Combine matrices with stored weights: ``sum_i w_i N(S_i)`` with the stored normalisation.

    Args:
        weights: the weights (e.g. from ``weights.read_weights``); every weighted system must be given.
        systems: one matrix per weighted system, named as in ``weights``; aligned to the first one.

    Returns:
        The ensemble matrix, in the first system's query and file order, summed in name order (as the
        search sums it, so the same weights and matrices give the same matrix bit for bit).

    Raises:
        UserError: for a weighted system not given, a given system without weight, all weights 0, or
            systems scoring different queries or files.
    """
    aligned = align_systems(systems)
    by_name = {system.name: system for system in aligned}
    _check_same_names(weights, list(by_name))
    if not any(weight > 0 for weight in weights.weights.values()):
        raise UserError(f"{weights.source or 'the ensemble weights'}: every weight is 0, so the ensemble would be an "
                        "all-zero matrix; give at least one system a positive weight")
    names = sorted(weights.weights)  # summed in name order, as the search does: the same matrix whatever the order
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, naming its cause
        scores = stacked_scores([by_name[name] for name in names], weights.normalize, weights.temperature,
                                weights.top_k or 1)
        combined = weighted_sum(scores, [weights.weights[name] for name in names])
    if not np.isfinite(combined).all():
        raise _overflow(weights, [by_name[name] for name in names], scores, combined)
    return SimilarityMatrix(aligned[0].matrix.queries, aligned[0].matrix.files, combined)


def _overflow(weights: EnsembleWeights, systems: Sequence[System], scores: np.ndarray,
              combined: np.ndarray) -> UserError:
    """The error for an ensemble sum that overflows float64: the weights entry (or normalised matrix) to blame."""
    for system, system_scores in zip(systems, scores):
        if not np.isfinite(system_scores).all():  # finite scores whose z-score overflows: the matrix is the cause
            return UserError(f"{system.path or system.name}: its scores overflow float64 when normalised "
                             f"(--normalize {weights.normalize}); rescale that matrix's scores")
    row, column = (int(i) for i in np.argwhere(~np.isfinite(combined))[0])
    terms = [abs(weights.weights[system.name] * float(cell)) for system, cell in zip(systems, scores[:, row, column])]
    culprit = systems[int(np.argmax(terms))]
    return UserError(f"{weights.source or 'the ensemble weights'}: \"weights\" entry {culprit.name!r} is "
                     f"{weights.weights[culprit.name]:g}, which times the scores of {culprit.path or culprit.name} "
                     f"overflows float64 (row {row + 2}, column {column + 2}); only the ratios of the weights "
                     "matter: scale them all down, e.g. to sum to 1")


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


def _named(names: Sequence[str], weights: np.ndarray, order: Sequence[str],
           members: Sequence[int] | None = None) -> dict[str, float]:
    """Name -> weight of ``names`` (or of its ``members``), listed in ``order`` (the order of the -s options)."""
    chosen = names if members is None else [names[index] for index in members]
    by_name = {name: float(weight) for name, weight in zip(chosen, weights)}
    return {name: by_name[name] for name in order if name in by_name}


def _validation(result: EvaluationResult, relevance: Relevance) -> Validation:
    setting = "single-relevant" if all(len(files) == 1 for files in relevance.relevant_files) else "multi-relevant"
    return Validation(dict(result.scores), result.n_queries, setting, str(relevance.source))
