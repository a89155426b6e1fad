"""`train --pipeline FILE`: multi-stage, multi-system training described in YAML, resumable per stage.

Format (see ``examples/pipeline-synthetic.yaml``)::

    name: demo                      # optional, default: the file name; names the state file
    defaults:                       # training config keys for every stage (as in `train --config`)
      data_root: data
      datasets: [clotho]
    systems:
      - name: a                     # letters, digits, '-' and '_'
        config: {seed: 1}           # optional: keys for every stage of this system
        stages:
          - name: pretrain
            config: {epochs: 20}
          - name: finetune
            init_from: pretrain     # start from that stage's best weights
            distill_from: [pretrain, b/pretrain]   # the teacher ensemble
            config: {caption_augmentation: {deletion_p: 0.4, synonym_p: 0.4}}
          - name: refinetune
            init_from: finetune
            distill_from: [pretrain, b/pretrain]
            config: {clusters: {method: kmeans, count: 32}}
      - name: b
        ...

A reference in ``init_from``/``distill_from`` is a stage of the same system (``STAGE``), a stage of any
system (``SYSTEM/STAGE``) or an already registered run (id or unique id prefix). A stage's config is
``defaults``, then its system's ``config``, then its own ``config``, then the command line's options
(``--set``, ``--epochs``, ...), mappings merged key by key; its run is named ``SYSTEM-STAGE``.

Stages run in file order, except that a stage waits for the stages it references (above, ``a/finetune``
runs after ``b/pretrain``); a cycle is an error. Every stage is a registered run, and
``<workdir>/pipelines/<name>.json`` maps each ``SYSTEM/STAGE`` to its run and a digest of its config.
Running the pipeline again skips finished stages, continues a stopped or failed stage from its last
checkpoint, and refuses a stage whose config changed since its run started (``dcase-t6 runs rm RUN``
forgets that run, so the stage trains anew). A stage that stops (``--max-steps``, Ctrl-C) ends the
pipeline there.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.registry import Registry
from dcase_t6.training.config import TrainConfig, dotted_to_nested, from_dict, merge, read_yaml_mapping
from dcase_t6.training.distributed import World, init_world, share_from_main
from dcase_t6.training.trainer import continue_run, register_run

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOP_KEYS = {"name", "defaults", "systems"}
_SYSTEM_KEYS = {"name", "config", "stages"}
_STAGE_KEYS = {"name", "config", "init_from", "distill_from"}
_REFERENCE_KEYS = ("init_from", "distill_from")


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
class Pipeline:
    """A parsed pipeline file: its name and stages in the order they run."""

    path: Path
    name: str
    stages: list[Stage]


def load_pipeline(path: Path, overrides: dict) -> Pipeline:
    """Parse and check a pipeline file (unknown keys, names, references, every stage's config)."""
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
    return Pipeline(path, str(values.get("name") or path.stem), _run_order(path, stages))


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


def run_pipeline(workdir: str | Path, path: str | Path, overrides: dict | None = None,
                 max_steps: int | None = None, world: World | None = None) -> list[dict]:
    """Run (or continue) every stage of a pipeline file; one summary per stage that was looked at."""
    world = world or init_world()
    registry = Registry(workdir)
    pipeline = load_pipeline(Path(path), overrides or {})
    _check_run_references(registry, pipeline)
    state = PipelineState(registry.workdir / "pipelines" / f"{pipeline.name}.json")
    summaries = []
    for stage in pipeline.stages:
        summaries.append(_run_stage(registry, pipeline, stage, state, world, max_steps))
        if summaries[-1]["status"] not in ("finished", "skipped"):
            break
    return summaries


def _check_run_references(registry: Registry, pipeline: Pipeline) -> None:
    keys = {stage.key for stage in pipeline.stages}
    for stage in pipeline.stages:
        for reference in stage.references:
            if reference not in keys and registry.find(reference) is None:
                raise UserError(f"{pipeline.path}: stage {stage.key} references '{reference}', neither a stage of "
                                f"this pipeline nor a registered run (see `dcase-t6 runs list`)")


def _run_stage(registry: Registry, pipeline: Pipeline, stage: Stage, state: "PipelineState", world: World,
               max_steps: int | None) -> dict:
    config = _stage_config(registry, pipeline, stage, state)
    digest = config_digest(config)
    entry = state.stages.get(stage.key)
    run = registry.find(entry["run"]) if entry else None
    if run is not None and entry["config"] != digest:
        raise UserError(f"{pipeline.path}: stage {stage.key} changed since its run {run.id} started; "
                        f"`dcase-t6 runs rm {run.id}` to train it anew with the new config")
    if run is not None and run.status == "finished":
        return {"stage": stage.key, "run": run.id, "status": "skipped"}
    if run is None:
        run_id = share_from_main(register_run(registry, config) if world.is_main else None, world)
        state.record(stage.key, run_id, digest, save=world.is_main)
    else:
        run_id = run.id
    return {"stage": stage.key, **continue_run(registry, run_id, world, max_steps)}


def _stage_config(registry: Registry, pipeline: Pipeline, stage: Stage, state: "PipelineState") -> TrainConfig:
    """The stage's config with its references as full run ids (referenced stages have run by now)."""
    def run_of(reference: str) -> str:
        entry = state.stages.get(reference)
        return entry["run"] if entry else registry.resolve(reference)

    references = {"init_from": run_of(stage.init_from) if stage.init_from else None,
                  "distill_from": [run_of(reference) for reference in stage.distill_from]}
    return from_dict({**stage.config, **references}, source=f"{pipeline.path}: {stage.key}")


def config_digest(config: TrainConfig) -> str:
    """SHA-256 of a config (what decides whether a stage's run still matches the file)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()


class PipelineState:
    """``SYSTEM/STAGE`` -> {run, config digest} of one pipeline, kept in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        remedy = "delete it to run every stage of the pipeline anew"
        self.stages: dict[str, dict] = read_json(path, remedy)["stages"] if path.is_file() else {}

    def record(self, key: str, run_id: str, digest: str, save: bool) -> None:
        """Remember the run of a stage; ``save`` writes the file at once, so an interrupted pipeline finds it."""
        self.stages[key] = {"run": run_id, "config": digest}
        if save:
            write_json({"stages": self.stages}, self.path, sort_keys=True)


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    return value


def _check_keys(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise UserError(f"{where}: expected a name of letters, digits, '-' and '_', got {value!r}")
    return value


def _check_unique(names: list[str], what: str) -> None:
    repeated = first_duplicate(names)
    if repeated is not None:
        raise UserError(f"{what} '{repeated.value}' appears twice; names must be unique")
