"""The pipeline file of `train --pipeline FILE` (format: ``docs/pipelines.md``; example:
``examples/pipeline-synthetic.yaml``): read, typed and checked (keys, names, references, cycles, ensembles)
before anything runs. Running it: ``pipeline.run``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import NAME_LIMIT, check_name
from dcase_t6.embedding.checkpoints import check_batch_size
from dcase_t6.ensemble.grid import grid_divisions
from dcase_t6.ensemble.groups import STRATEGIES
from dcase_t6.ensemble.search import SearchOptions, plan_search
from dcase_t6.ensemble.systems import NORMALIZATIONS
from dcase_t6.runs.config import (
    dotted_to_nested,
    from_dict,
    merge,
    read_yaml_mapping,
)

_NAME = re.compile(r"[A-Za-z0-9_-]+")


_TOP_KEYS = {"name", "defaults", "systems", "ensembles"}


_SYSTEM_KEYS = {"name", "config", "stages"}


_STAGE_KEYS = {"name", "config", "init_from", "distill_from"}


_REFERENCE_KEYS = ("init_from", "distill_from")


_ENSEMBLE_KEYS = {"name", "stages", "strategy", "groups", "step", "normalize", "top", "dataset", "validation_split",
                  "test_split", "checkpoint", "batch_size"}


_FLAT = "flat"


_CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class Stage:
    """One training stage of one system: its merged config and what it starts from and learns from."""

    system: str
    name: str
    config: dict
    init_from: str | None
    distill_from: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.system}/{self.name}"

    @property
    def references(self) -> tuple[str, ...]:
        return ((self.init_from,) if self.init_from else ()) + self.distill_from


@dataclass(frozen=True)
class Ensemble:
    """An ensemble of stages' checkpoints: weights searched on a validation split, optionally applied to a test split.

    Args:
        name: the ensemble's name (names its output files).
        stages: the ``SYSTEM/STAGE`` keys it combines, also the system names of the search.
        options: the weight search (strategy or groups, step, normalisation, candidates kept).
        data_root: the prepared data root the splits are read from (the first stage's).
        dataset: the dataset of both splits.
        validation_split: the split the weights are searched on.
        test_split: a split to apply them to and score, or None.
        checkpoint: which checkpoint of each stage's run embeds, ``best`` or ``last``.
        batch_size: the embedding batch.
    """

    name: str
    stages: tuple[str, ...]
    options: SearchOptions
    data_root: str
    dataset: str
    validation_split: str
    test_split: str | None
    checkpoint: str
    batch_size: int

    def definition(self) -> dict:
        """Everything that decides the ensemble's result (the embedding batch does not)."""
        return {"stages": list(self.stages), "strategy": self.options.strategy_name,
                "groups": {name: list(members) for name, members in self.options.groups.items()},
                "step": self.options.step, "normalize": self.options.normalize, "top": self.options.top,
                "data_root": self.data_root, "dataset": self.dataset, "validation_split": self.validation_split,
                "test_split": self.test_split, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class Pipeline:
    """A parsed pipeline file: its name, stages in the order they run and the ensembles run after them."""

    path: Path
    name: str
    stages: list[Stage]
    ensembles: list[Ensemble] = field(default_factory=list)


def load_pipeline(path: Path, overrides: dict) -> Pipeline:
    """Parse and check a pipeline file (unknown keys, names, references, every stage's config, the ensembles).

    Args:
        path: the pipeline YAML.
        overrides: config keys (``section.key`` allowed) put on top of every stage's config.

    Returns:
        The stages in run order, each with its merged config, and the ensembles.

    Raises:
        UserError: one line naming the file, the entry and the fix.
    """
    values = read_yaml_mapping(path)
    _check_keys(values, _TOP_KEYS, f"{path}")
    defaults = _mapping(values.get("defaults"), f"{path}: defaults")
    systems = values.get("systems")
    if not isinstance(systems, list) or not systems:
        raise UserError(f"{path}: 'systems' must be a non-empty list of systems, each with a name and stages")
    per_system = [_system_stages(path, index, system, defaults, dotted_to_nested(overrides))
                  for index, system in enumerate(systems)]
    _check_unique([group[0].system for group in per_system], f"{path}: system")
    stages = [stage for group in per_system for stage in group]
    _check_unique([stage.key for stage in stages], f"{path}: stage")
    keys = {stage.key for stage in stages}
    stages = [_with_resolved_references(stage, keys) for stage in stages]
    ensembles = _ensembles(path, values.get("ensembles"), {stage.key: stage for stage in stages})
    name = _name(values["name"], f"{path}: name") if "name" in values else check_name(path.stem, f"{path}: file name")
    return Pipeline(path, name, _run_order(path, stages), ensembles)


def _system_stages(path: Path, index: int, system, defaults: dict, overrides: dict) -> list[Stage]:
    where = f"{path}: systems[{index}]"
    system = _mapping(system, where)
    _check_keys(system, _SYSTEM_KEYS, where)
    name = _name(system.get("name"), f"{where}.name")
    system_config = _mapping(system.get("config"), f"{where}.config")
    stages = system.get("stages")
    if not isinstance(stages, list) or not stages:
        raise UserError(f"{where}: 'stages' must be a non-empty list of stages")
    return [_stage(f"{where}.stages[{number}]", name, stage, merge(defaults, system_config), overrides)
            for number, stage in enumerate(stages)]


def _stage(where: str, system: str, stage, inherited: dict, overrides: dict) -> Stage:
    stage = _mapping(stage, where)
    _check_keys(stage, _STAGE_KEYS, where)
    name = _name(stage.get("name"), f"{where}.name")
    config = merge(merge(inherited, _mapping(stage.get("config"), f"{where}.config")), overrides)
    for key in _REFERENCE_KEYS:
        if key in config:
            raise UserError(f"{where}: '{key}' belongs beside 'config' (a stage key naming stages or runs), "
                            "not inside a config")
    config["name"] = f"{system}-{name}"
    from_dict(config, source=where)
    distill_from = stage.get("distill_from") or []
    distill_from = [distill_from] if isinstance(distill_from, str) else distill_from
    if not isinstance(distill_from, list) or not all(isinstance(item, str) for item in distill_from):
        raise UserError(f"{where}.distill_from: expected a stage name or a list of them")
    init_from = stage.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise UserError(f"{where}.init_from: expected one stage name")
    return Stage(system, name, config, init_from, tuple(distill_from))


def _with_resolved_references(stage: Stage, keys: set[str]) -> Stage:
    """References as ``SYSTEM/STAGE`` keys where they name a stage (a run reference otherwise)."""
    def resolve(reference: str) -> str:
        own = f"{stage.system}/{reference}"
        return own if own in keys else reference

    return Stage(stage.system, stage.name, stage.config, resolve(stage.init_from) if stage.init_from else None,
                 tuple(resolve(reference) for reference in stage.distill_from))


def _ensembles(path: Path, entries, stages: dict[str, Stage]) -> list[Ensemble]:
    """The checked ``ensembles`` section (absent: none)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise UserError(f"{path}: 'ensembles' must be a list of ensembles, each with a name and stages")
    ensembles = [_ensemble(f"{path}: ensembles[{index}]", entry, stages) for index, entry in enumerate(entries)]
    _check_unique([ensemble.name for ensemble in ensembles], f"{path}: ensemble")
    return ensembles


def _ensemble(where: str, entry, stages: dict[str, Stage]) -> Ensemble:
    entry = _mapping(entry, where)
    _check_keys(entry, _ENSEMBLE_KEYS, where)
    name = _name(entry.get("name"), f"{where}.name")
    members = _ensemble_stages(where, entry.get("stages"), stages)
    strategy, groups = entry.get("strategy"), entry.get("groups")
    if strategy is not None and groups is not None:
        raise UserError(f"{where}: give 'strategy' or 'groups', not both (groups are an explicit two-stage search)")
    if strategy is not None and strategy not in (_FLAT, *STRATEGIES):
        raise UserError(f"{where}.strategy: {strategy!r} must be one of {', '.join((_FLAT, *STRATEGIES))}")
    options = SearchOptions(normalize=_choice(entry.get("normalize", "none"), NORMALIZATIONS, f"{where}.normalize"),
                            step=_step(entry.get("step", 0.05), f"{where}.step"),
                            groups=_ensemble_groups(where, groups, members),
                            strategy=None if strategy in (None, _FLAT) else strategy,
                            top=_count(entry.get("top", 5), f"{where}.top"))
    try:
        plan_search(list(members), options)  # the grid size (and anything else the search would refuse)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    first = from_dict(stages[members[0]].config, source=where)
    if first.validation_split is None and not entry.get("validation_split"):
        raise UserError(f"{where}: stage {members[0]} has no validation split (validation_split null) to search the "
                        "weights on; give the ensemble a validation_split")
    return Ensemble(name=name, stages=members, options=options, data_root=first.data_root,
                    dataset=_text(entry.get("dataset"), f"{where}.dataset") or first.validation_source,
                    validation_split=(_text(entry.get("validation_split"), f"{where}.validation_split")
                                      or first.validation_split),
                    test_split=_text(entry.get("test_split"), f"{where}.test_split"),
                    checkpoint=_choice(entry.get("checkpoint", "best"), _CHECKPOINTS, f"{where}.checkpoint"),
                    batch_size=check_batch_size(entry.get("batch_size", 32), f"{where}.batch_size"))


def _ensemble_stages(where: str, members, stages: dict[str, Stage]) -> tuple[str, ...]:
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(item, str) for item in members):
        raise UserError(f"{where}.stages: expected a list of at least 2 stages as SYSTEM/STAGE, "
                        f"e.g. [{', '.join(list(stages)[:2])}]")
    for member in members:
        if member not in stages:
            raise UserError(f"{where}.stages: '{member}' is not a stage of this pipeline; name one of "
                            f"{', '.join(stages)} (SYSTEM/STAGE)")
    _check_unique(members, f"{where}.stages: stage")
    return tuple(members)


def _ensemble_groups(where: str, groups, members: tuple[str, ...]) -> dict[str, list[str]]:
    """``groups``: group name -> member stages (each of the ensemble's stages in at most one group)."""
    groups = _mapping(groups, f"{where}.groups")
    taken: dict[str, str] = {}
    for group, listed in groups.items():
        if not isinstance(listed, list) or not listed or not all(isinstance(item, str) for item in listed):
            raise UserError(f"{where}.groups.{group}: expected a non-empty list of the ensemble's stages")
        for member in listed:
            if member not in members:
                raise UserError(f"{where}.groups.{group}: '{member}' is not one of the ensemble's stages "
                                f"({', '.join(members)})")
            if member in taken:
                raise UserError(f"{where}.groups: '{member}' is in groups '{taken[member]}' and '{group}'; "
                                "put each stage in one group")
            taken[member] = str(group)
    return {str(group): list(listed) for group, listed in groups.items()}


def _step(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: expected a number that divides 1 (e.g. 0.05), got {value!r}")
    try:
        grid_divisions(float(value))
    except UserError:
        raise UserError(f"{where}: {value!r} must divide 1 (e.g. 0.05, 0.1, 0.25)") from None
    return float(value)


def _count(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: expected a whole number >= 1, got {value!r}")
    return value


def _choice(value, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise UserError(f"{where}: {value!r} must be one of {', '.join(choices)}")
    return value


def _text(value, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise UserError(f"{where}: expected a name, got {value!r}")
    return value


def _run_order(path: Path, stages: list[Stage]) -> list[Stage]:
    """File order, each stage after the stages it references."""
    keys = {stage.key for stage in stages}
    ordered: list[Stage] = []
    done: set[str] = set()
    pending = list(stages)
    while pending:
        ready = next((s for s in pending if all(r in done for r in s.references if r in keys)), None)
        if ready is None:
            raise UserError(f"{path}: stages {', '.join(s.key for s in pending)} reference each other in a cycle")
        ordered.append(ready)
        done.add(ready.key)
        pending.remove(ready)
    return ordered


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    return value


def _check_keys(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed, key=lambda key: (not isinstance(key, str), str(key)))  # 1: and a: both
    if unknown:
        raise UserError(f"{where}: unknown key '{str(unknown[0])[:60]}'; allowed: {', '.join(sorted(allowed))}")


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > NAME_LIMIT:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40] + "...")
        raise UserError(f"{where}: expected a name of 1 to {NAME_LIMIT} letters, digits, '-' and '_', got {shown}")
    return value


def _check_unique(names: list[str], what: str) -> None:
    repeated = first_duplicate(names)
    if repeated is not None:
        raise UserError(f"{what} '{repeated.value}' appears twice; names must be unique")
