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

Ensembles (optional top-level ``ensembles:``), run once every stage has finished::

    ensembles:
      - name: by-model              # letters, digits, '-' and '_'; unique
        stages: [a/finetune, a/refinetune, b/finetune, b/refinetune]   # SYSTEM/STAGE, at least 2
        strategy: system-first      # flat (default), system-first or model-first; or groups: {G: [..], H: [..]}
        step: 0.05                  # weight grid spacing (divides 1)
        normalize: none             # or zscore (per query)
        top: 5                      # best candidates kept
        dataset: clotho             # default: the first stage's validation dataset
        validation_split: development-validation   # default: the first stage's validation split
        test_split: development-testing            # optional: embed it too, apply the weights, score
        checkpoint: best            # or last
        batch_size: 32              # embedding batch

Each stage's checkpoint embeds the validation split (``embed_run``; a similarity the run already registered
for that checkpoint is reused) and the weights are grid-searched on it (``dcase_t6.ensemble.search``) as
``dcase-t6 ensemble --search`` does, the stages named by their ``SYSTEM/STAGE`` keys. So with systems named
after the audio model and stages after the recipe's systems (``passt/sid2``), ``system-first`` combines the
stages of each model and then the models, ``model-first`` the models of each stage and then the stages:
the two strategies of the AISTAT 2025 report. With a ``test_split``, the weights are applied to its
embeddings and the ensemble scored (on the split's relevance file when ``prepare`` attached one, else
single-relevant on its captions). Written to ``<workdir>/pipelines/<name>/``: ``ENSEMBLE.weights.json``
(the ``ensemble --search`` weights file) and ``ENSEMBLE.<dataset>.<test_split>.npz``; the state file
records them with every stage's and the ensemble's scores. A searched ensemble is skipped when run again;
one whose definition (or whose stages' runs) changed since is refused until its weights file is deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.common.outputs import NAME_LIMIT, check_name
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.relevance import split_ground_truth
from dcase_t6.embedding.checkpoints import check_batch_size, embed_run, split_tag
from dcase_t6.ensemble.grid import METRIC, grid_divisions
from dcase_t6.ensemble.groups import STRATEGIES
from dcase_t6.ensemble.search import SearchOptions, apply, plan_search, search
from dcase_t6.ensemble.systems import NORMALIZATIONS, System
from dcase_t6.ensemble.weights import EnsembleWeights, write_weights
from dcase_t6.registry import Registry
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance
from dcase_t6.retrieval.matrices import read_matrix, write_matrix
from dcase_t6.training.config import (
    TrainConfig,
    dotted_to_nested,
    from_dict,
    merge,
    nested_to_dotted,
    read_yaml_mapping,
)
from dcase_t6.training.distributed import World, init_world, share_from_main
from dcase_t6.training.trainer import continue_run, register_run

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


def run_pipeline(workdir: str | Path, path: str | Path, overrides: dict | None = None,
                 max_steps: int | None = None, world: World | None = None,
                 reporter: Reporter = SILENT) -> list[dict]:
    """Run (or continue) every stage of a pipeline file, then (on the main process) search its ensembles.

    Args:
        workdir: the registry's work directory.
        path: the pipeline YAML.
        overrides: config keys (``section.key`` allowed) put on top of every stage's config.
        max_steps: stop the running stage after this many optimizer steps (resumable).
        world: the torchrun processes (default: joined from the environment).
        reporter: progress bars and notes (the main process's).

    Returns:
        One summary per stage looked at (``stage``, ``run``, ``status`` and the run's summary), up to the
        first stage that did not finish; when every stage finished, one per ensemble (``stage``
        ``ensembles/NAME``, ``run`` its weights file, ``status`` finished or skipped, ``validation_mAP@16``
        and, with a test split that has ground truth, ``test_mAP@16``).

    Raises:
        UserError: for a bad pipeline file, a reference to nothing, or a stage or ensemble that changed.
    """
    pipeline = load_pipeline(Path(path), overrides or {})  # checked before the registry is created
    registry = Registry(workdir)
    world = world or init_world(max(from_dict(stage.config).dist_timeout_minutes for stage in pipeline.stages))
    _check_run_references(registry, pipeline)
    state = PipelineState(registry.workdir / "pipelines" / f"{pipeline.name}.json")
    summaries = []
    for stage in pipeline.stages:
        summaries.append(_run_stage(registry, pipeline, stage, state, world, max_steps, reporter))
        if summaries[-1]["status"] not in ("finished", "skipped"):
            return summaries
    if world.is_main:  # embedding and searching need no other process
        summaries += [_run_ensemble(registry, pipeline, ensemble, state, reporter)
                      for ensemble in pipeline.ensembles]
    return summaries


def _check_run_references(registry: Registry, pipeline: Pipeline) -> None:
    keys = {stage.key for stage in pipeline.stages}
    for stage in pipeline.stages:
        for reference in stage.references:
            if reference not in keys and registry.find(reference) is None:
                raise UserError(f"{pipeline.path}: stage {stage.key} references '{reference}', neither a stage of "
                                f"this pipeline nor a registered run (see `dcase-t6 runs list`)")


def _run_stage(registry: Registry, pipeline: Pipeline, stage: Stage, state: "PipelineState", world: World,
               max_steps: int | None, reporter: Reporter) -> dict:
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
    return {"stage": stage.key, **continue_run(registry, run_id, world, max_steps, reporter)}


def _stage_config(registry: Registry, pipeline: Pipeline, stage: Stage, state: "PipelineState") -> TrainConfig:
    """The stage's config with its references as full run ids (referenced stages have run by now)."""
    def run_of(reference: str) -> str:
        entry = state.stages.get(reference)
        return entry["run"] if entry else registry.resolve(reference)

    references = {"init_from": run_of(stage.init_from) if stage.init_from else None,
                  "distill_from": [run_of(reference) for reference in stage.distill_from]}
    return from_dict({**stage.config, **references}, source=f"{pipeline.path}: {stage.key}")


def _run_ensemble(registry: Registry, pipeline: Pipeline, ensemble: Ensemble, state: "PipelineState",
                  reporter: Reporter) -> dict:
    """Search (or skip, when searched before with the same definition) one ensemble; its summary."""
    runs = {key: state.stages[key]["run"] for key in ensemble.stages}
    digest = _digest({**ensemble.definition(), "runs": runs})
    entry = state.ensembles.get(ensemble.name)
    if entry is not None and Path(entry["weights"]).is_file():
        if entry["definition"] != digest:
            raise UserError(f"{pipeline.path}: ensemble {ensemble.name} (or the runs of its stages) changed since its "
                            f"weights were searched; delete {entry['weights']} to search it anew")
        return _ensemble_summary(ensemble, entry, "skipped")
    folder = registry.workdir / "pipelines" / pipeline.name
    where = f"{pipeline.path}: ensemble {ensemble.name}"
    validation = _split_systems(registry, ensemble, runs, ensemble.validation_split, reporter)
    truth = _ground_truth(ensemble, ensemble.validation_split, validation[0].matrix.files)
    if truth is None:
        raise UserError(f"{where}: {ensemble.dataset}/{ensemble.validation_split} has no captions or relevance file "
                        "to search the weights on; set validation_split to a split with captions")
    found = search(validation, truth, ensemble.options, reporter)
    weights_path = folder / f"{ensemble.name}.weights.json"
    members = {key: {"run": runs[key], "validation": evaluate(system.matrix, truth).scores}
               for key, system in zip(ensemble.stages, validation)}
    entry = {"definition": digest, "weights": str(weights_path), "strategy": found.weights.strategy,
             "stage_weights": found.weights.weights, "validation": found.weights.validation.scores,
             "test": None, "test_matrix": None, "members": members}
    if ensemble.test_split:
        entry.update(_apply_to_test(registry, ensemble, runs, found.weights, folder, members, reporter))
    write_weights(found.weights, weights_path)
    state.record_ensemble(ensemble.name, entry)
    return _ensemble_summary(ensemble, entry, "finished")


def _apply_to_test(registry: Registry, ensemble: Ensemble, runs: dict[str, str], weights: EnsembleWeights,
                   folder: Path, members: dict[str, dict], reporter: Reporter) -> dict:
    """Embed the test split, write the ensemble's matrix there and score it (and each stage) where it can."""
    systems = _split_systems(registry, ensemble, runs, ensemble.test_split, reporter)
    combined = apply(weights, systems)
    matrix_path = folder / f"{ensemble.name}.{ensemble.dataset}.{ensemble.test_split}.npz"
    write_matrix(combined, matrix_path)
    truth = _ground_truth(ensemble, ensemble.test_split, combined.files)
    if truth is not None:
        for key, system in zip(ensemble.stages, systems):
            members[key]["test"] = evaluate(system.matrix, truth).scores
    return {"test_matrix": str(matrix_path), "test": evaluate(combined, truth).scores if truth else None}


def _split_systems(registry: Registry, ensemble: Ensemble, runs: dict[str, str], split: str,
                   reporter: Reporter) -> list[System]:
    """Each stage's similarity matrix of ``split`` (embedded now unless registered for this checkpoint)."""
    tag = split_tag(ensemble.dataset, split)
    systems = []
    for key in ensemble.stages:
        path = _registered_similarity(registry, runs[key], tag, ensemble.checkpoint) or Path(embed_run(
            registry.workdir, runs[key], ensemble.data_root, ensemble.dataset, split, ensemble.checkpoint,
            ensemble.batch_size, reporter=reporter)["similarity"])
        systems.append(System(key, read_matrix(path), str(path)))
    return systems


def _registered_similarity(registry: Registry, run: str, tag: str, checkpoint: str) -> Path | None:
    """The run's intact similarity matrix of ``tag`` if its current ``checkpoint`` wrote it, else None."""
    if not registry.has_file(run, "similarity", tag):
        return None
    record = registry.file(run, "similarity", tag, verify=False)
    epoch = registry.file(run, "checkpoint", checkpoint, verify=False).info.get("epoch")
    fresh = record.info.get("checkpoint") == checkpoint and record.info.get("checkpoint_epoch") == epoch
    return record.path if fresh and record.problem() is None else None


def _ground_truth(ensemble: Ensemble, split: str, files: list[str]) -> Relevance | None:
    """The split's relevance file (``prepare relevance``), else each caption -> its clip; None without captions."""
    return split_ground_truth(ensemble.data_root, ensemble.dataset, split, present=set(files))


def _ensemble_summary(ensemble: Ensemble, entry: dict, status: str) -> dict:
    """One line of the pipeline's summary: ``stage`` ensembles/NAME, ``run`` its weights file."""
    summary = {"stage": f"ensembles/{ensemble.name}", "run": entry["weights"], "status": status,
               f"validation_{METRIC}": round(entry["validation"][METRIC], 4)}
    if entry.get("test"):
        summary[f"test_{METRIC}"] = round(entry["test"][METRIC], 4)
    return summary


NOT_DIGESTED = {"log", "log_every",  # where the run's curves go: a rerun may log elsewhere
                "compile",  # speed only: a rerun may compile or not
                "workers",  # speed only: the batches are the same with any number of loader processes
                "dist_timeout_minutes"}  # how long processes wait for each other: no effect on the result


def config_digest(config: TrainConfig) -> str:
    """SHA-256 of the config keys whose values differ from the defaults (what decides whether a stage's run still
    matches the file). Keys at their default are left out, so a later version that adds a config key (with a
    default that keeps the old behaviour) does not turn every finished stage into a "changed" one."""
    defaults = _single_split_as_text(nested_to_dotted(TrainConfig().to_dict()))
    return _digest({key: value for key, value in _single_split_as_text(nested_to_dotted(config.to_dict())).items()
                    if key not in NOT_DIGESTED and (key not in defaults or defaults[key] != value)})


def _single_split_as_text(values: dict) -> dict:
    """``train_split`` of one name as the string earlier versions stored (so their stages keep their digests)."""
    split = values.get("train_split")
    return {**values, "train_split": split[0]} if isinstance(split, list) and len(split) == 1 else values


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()


class PipelineState:
    """``SYSTEM/STAGE`` -> {run, config digest} and ensemble name -> its result, of one pipeline, in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        document = read_json(path, "delete it to run every stage of the pipeline anew") if path.is_file() else {}
        if not isinstance(document, dict) or not isinstance(document.get("stages", {}), dict) \
                or not isinstance(document.get("ensembles", {}), dict):
            raise UserError(f"{path}: not a pipeline state file; delete it to run every stage of the pipeline anew")
        self.stages: dict[str, dict] = document.get("stages", {})
        self.ensembles: dict[str, dict] = document.get("ensembles", {})

    def record(self, key: str, run_id: str, digest: str, save: bool) -> None:
        """Remember the run of a stage; ``save`` writes the file at once, so an interrupted pipeline finds it."""
        self.stages[key] = {"run": run_id, "config": digest}
        if save:
            self._save()

    def record_ensemble(self, name: str, entry: dict) -> None:
        """Remember a searched ensemble (definition digest, weights file, scores) and write the file."""
        self.ensembles[name] = entry
        self._save()

    def _save(self) -> None:
        document = {"stages": self.stages, **({"ensembles": self.ensembles} if self.ensembles else {})}
        write_json(document, self.path, sort_keys=True)


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
