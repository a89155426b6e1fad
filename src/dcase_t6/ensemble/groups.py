"""Two-stage (grouped) weight search, as in the AISTAT 2025 report.

Stage 1 searches the weights inside each group and combines each group into one matrix; stage 2
searches the weights across the group matrices (no second normalisation). The flat weight of a
member is its inner weight times its group's weight, so applying the flat weights reproduces the
two-stage ensemble exactly. Systems named ``MODEL/SYSTEM`` can be grouped by strategy:
``system-first`` groups by MODEL (combine the systems of each model, then weight the models),
``model-first`` groups by SYSTEM. Systems left out of every explicit group form a group of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.ensemble.grid import grid_search, grid_size
from dcase_t6.ensemble.systems import take, weighted_sum

STRATEGIES = ("system-first", "model-first")


@dataclass(frozen=True)
class Group:
    """Systems whose weights stage 1 searches together (indices into the system list)."""

    name: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class SearchPlan:
    """How the weights are searched: the ``groups`` (one group: a flat search), ``divisions`` (grid steps that make
    1) and ``top`` (how many best candidates to keep)."""

    groups: Sequence[Group]
    divisions: int
    top: int


@dataclass(frozen=True)
class SearchOutcome:
    """Flat weights of the best candidates (best first) and each group's inner weights and weight."""

    candidates: list[np.ndarray]
    group_inner: list[np.ndarray]
    group_weights: np.ndarray
    grid_points: int


def resolve_groups(names: Sequence[str], groups: Mapping[str, Sequence[str]], strategy: str | None) -> list[Group]:
    """The search groups: explicit ``groups`` (override), else by ``strategy``, else one group of all systems.

    Args:
        names: the system names, in system order.
        groups: group name -> member system names; systems in no group become single-member groups.
        strategy: ``system-first``, ``model-first`` or None.

    Returns:
        The groups, explicit ones first, as indices into ``names``.

    Raises:
        UserError: for an unknown or twice-grouped member, an empty group, or (with a strategy) a name
            that is not ``MODEL/SYSTEM``.
    """
    if groups:
        return _explicit_groups(names, groups)
    if strategy:
        return _strategy_groups(names, strategy)
    return [Group("all", tuple(range(len(names))))]


def _explicit_groups(names: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[Group]:
    """Groups by name; ungrouped systems become single-member groups."""
    index_of = {name: index for index, name in enumerate(names)}
    resolved, taken = [], {}
    for group_name, members in groups.items():
        if not members:
            raise UserError(f"--group {group_name}: the group has no members; list --system names after =")
        for member in members:
            if member not in index_of:
                raise UserError(f"--group {group_name}: {member!r} is not a --system name ({', '.join(names)})")
            if member in taken:
                raise UserError(f"--group: {member!r} is in groups {taken[member]!r} and {group_name!r}; "
                                "put each system in one group")
            taken[member] = group_name
        resolved.append(Group(group_name, tuple(index_of[member] for member in members)))
    return resolved + [Group(name, (index_of[name],)) for name in names if name not in taken]


def _strategy_groups(names: Sequence[str], strategy: str) -> list[Group]:
    """system-first: group ``MODEL/SYSTEM`` names by MODEL; model-first: by SYSTEM."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
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


def two_stage_search(scores: np.ndarray, relevant: np.ndarray, plan: SearchPlan,
                     reporter: Reporter = SILENT) -> SearchOutcome:
    """Search inside each group, then across the group matrices; flat weight = inner x group weight.

    Args:
        scores: (systems, queries, files) scores of the scored queries.
        relevant: (queries, R) relevant file columns per query.
        plan: the search groups (one group: a flat search), the grid steps that make 1 and how many best
            candidates to keep.
        reporter: shows a bar over each stage's grid points.

    Returns:
        The best flat weight vectors and each group's inner weights and weight.
    """
    groups, divisions, top = plan.groups, plan.divisions, plan.top
    if len(groups) == 1:
        result = grid_search(take(scores, groups[0].members), relevant, divisions, reporter, "grid search")
        best = result.best(top)
        candidates = [_flatten(scores.shape[0], groups, [result.points[i]], np.ones(1)) for i in best]
        return SearchOutcome(candidates, [result.points[best[0]]], np.ones(1), len(result.points))
    inner = [_best_inner_weights(scores, relevant, group, divisions, reporter) for group in groups]
    group_scores = np.stack([weighted_sum(take(scores, group.members), weights)
                             for group, weights in zip(groups, inner)])
    outer = grid_search(group_scores, relevant, divisions, reporter, "stage 2: across groups")
    best = outer.best(top)
    candidates = [_flatten(scores.shape[0], groups, inner, outer.points[i]) for i in best]
    return SearchOutcome(candidates, inner, outer.points[best[0]], planned_grid_points(groups, divisions))


def _best_inner_weights(scores: np.ndarray, relevant: np.ndarray, group: Group, divisions: int,
                        reporter: Reporter) -> np.ndarray:
    """Stage 1: the best weights inside one group (a single member gets weight 1)."""
    if len(group.members) == 1:
        return np.ones(1)
    result = grid_search(take(scores, group.members), relevant, divisions, reporter, f"stage 1: {group.name}")
    return result.points[result.best(1)[0]]


def _flatten(n_systems: int, groups: Sequence[Group], inner: Sequence[np.ndarray], group_weights: np.ndarray
             ) -> np.ndarray:
    """Flat per-system weights: each member's inner weight times its group's weight."""
    flat = np.zeros(n_systems)
    for group, weights, group_weight in zip(groups, inner, group_weights):
        flat[list(group.members)] = weights * group_weight
    return flat
