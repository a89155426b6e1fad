"""Running a pipeline file (``pipeline.file``; its format and what running it again does are described there):
each stage is a registered run trained in order, then (on the main process) each ensemble is embedded,
searched on validation and scored on its test split. ``<workdir>/pipelines/<name>.json`` holds the state.

Under torchrun only the main process opens the registry: it checks the references, decides whether a stage is
trained, continued or skipped and registers its run, and shares that with the others, which read run records
(``runs.lookup``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.relevance import split_ground_truth
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run, split_tag
from dcase_t6.ensemble.grid import METRIC
from dcase_t6.ensemble.search import apply, search
from dcase_t6.ensemble.systems import System
from dcase_t6.ensemble.weights import EnsembleWeights, write_weights
from dcase_t6.pipeline.file import Ensemble, Pipeline, Stage, load_pipeline
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance
from dcase_t6.retrieval.matrices import read_matrix, write_matrix
from dcase_t6.runs.config import (
    TrainConfig,
    from_dict,
    nested_to_dotted,
)
from dcase_t6.runs.lookup import lookup_for, writable
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.runs.world import main_decides
from dcase_t6.training.distributed import World, init_world
from dcase_t6.training.trainer import TrainOutcome, continue_run, register_run


@dataclass(frozen=True)
class StepOutcome:
    """One step of a pipeline run: a stage (``SYSTEM/STAGE``, its run, how its training ended) or an ensemble
    (``ensembles/NAME``, its weights file, its validation and test mAP@16)."""

    stage: str
    run: str
    status: str  # finished, stopped, skipped (finished before, or an ensemble already searched)
    training: TrainOutcome | None = None  # a stage trained now
    validation: float | None = None  # an ensemble's validation mAP@16
    test: float | None = None  # an ensemble's test mAP@16, with a test split that has ground truth

    def as_json(self) -> dict:
        """``stage``, ``run``, ``status`` and the rest (epoch, step, best value; validation / test mAP@16)."""
        summary = {"stage": self.stage, "run": self.run, "status": self.status}
        if self.training is not None:
            summary.update({key: value for key, value in self.training.as_json().items() if key not in summary})
        if self.validation is not None:
            summary[f"validation_{METRIC}"] = self.validation
        if self.test is not None:
            summary[f"test_{METRIC}"] = self.test
        return summary


@dataclass(frozen=True)
class PipelineRequest:
    """A pipeline to run (or continue).

    Args:
        path: the pipeline YAML.
        overrides: config keys (``section.key`` allowed) put on top of every stage's config.
        max_steps: stop the running stage after this many optimizer steps (resumable); None: no limit.
    """

    path: str | Path
    overrides: dict = field(default_factory=dict)
    max_steps: int | None = None


@dataclass(frozen=True)
class _PipelineContext:
    """What the steps of one pipeline run share: the registry (the run records on a process other than the main
    one), the pipeline, its state file, the processes, the running stage's step limit (``max_steps``) and the
    reporter."""

    registry: RunLookup
    pipeline: Pipeline
    state: PipelineState
    world: World
    max_steps: int | None
    reporter: Reporter


def run_pipeline(workdir: str | Path, request: PipelineRequest, world: World | None = None,
                 reporter: Reporter = SILENT) -> list[StepOutcome]:
    """Run (or continue) every stage of a pipeline file, then (on the main process) search its ensembles.

    Args:
        workdir: the registry's work directory.
        request: the pipeline YAML, the config overrides of every stage and the step limit of the running stage.
        world: the torchrun processes (default: joined from the environment).
        reporter: progress bars and notes (the main process's).

    Returns:
        One :class:`StepOutcome` per stage looked at, up to the first stage that did not finish; when every
        stage finished, one per ensemble (``ensembles/NAME``, its weights file, finished or skipped, its
        validation mAP@16 and, with a test split that has ground truth, its test mAP@16).

    Raises:
        UserError: for a bad pipeline file, a reference to nothing, or a stage or ensemble that changed.
    """
    pipeline = load_pipeline(Path(request.path), request.overrides or {})  # checked before the registry is created
    registry = lookup_for(world, workdir)  # the main process opens the registry before the others wait for it
    world = world or init_world(max(from_dict(stage.config).dist_timeout_minutes for stage in pipeline.stages))
    main_decides(world, lambda: _check_run_references(registry, pipeline))
    state = PipelineState(registry.layout.pipeline_state(pipeline.name))
    context = _PipelineContext(registry, pipeline, state, world, request.max_steps, reporter)
    summaries = []
    for stage in pipeline.stages:
        summaries.append(_run_stage(context, stage))
        if summaries[-1].status not in ("finished", "skipped"):
            return summaries
    if world.is_main:  # embedding and searching need no other process
        summaries += [_run_ensemble(context, ensemble) for ensemble in pipeline.ensembles]
    return summaries


def _check_run_references(registry: RunLookup, pipeline: Pipeline) -> None:
    """A UserError for a stage reference that is neither a stage nor a registered run (the main process)."""
    registry = writable(registry)
    keys = {stage.key for stage in pipeline.stages}
    for stage in pipeline.stages:
        for reference in stage.references:
            if reference not in keys and registry.find(reference) is None:
                raise UserError(f"{pipeline.path}: stage {stage.key} references '{reference}', neither a stage of "
                                f"this pipeline nor a registered run (see `dcase-t6 runs list`)")


@dataclass(frozen=True)
class _StageRun:
    """What the main process decided for a stage: its ``run`` (registered just now when ``new``), whether it is
    ``skipped`` (finished before) and the ``digest`` of its config."""

    run: str
    digest: str
    new: bool = False
    skipped: bool = False


def _run_stage(context: _PipelineContext, stage: Stage) -> StepOutcome:
    state, world = context.state, context.world
    decided = main_decides(world, lambda: _stage_run(context, stage))
    if decided.skipped:
        return StepOutcome(stage.key, decided.run, "skipped")
    if decided.new:
        state.record(stage.key, decided.run, decided.digest, save=world.is_main)
    outcome = continue_run(context.registry, decided.run, world, context.max_steps, context.reporter)
    return StepOutcome(stage.key, outcome.run, outcome.status, training=outcome)


def _stage_run(context: _PipelineContext, stage: Stage) -> _StageRun:
    """The run of a stage, registered now if it has none (on the main process, which alone opens the registry)."""
    registry, pipeline = writable(context.registry), context.pipeline
    config = _stage_config(context, stage)
    digest = config_digest(config)
    entry = context.state.stages.get(stage.key)
    run = registry.find(entry["run"]) if entry else None
    if run is not None and entry["config"] != digest:
        raise UserError(f"{pipeline.path}: stage {stage.key} changed since its run {run.id} started; "
                        f"`dcase-t6 runs rm {run.id}` to train it anew with the new config")
    if run is None:
        return _StageRun(register_run(registry, config), digest, new=True)
    return _StageRun(run.id, digest, skipped=run.status == "finished")


def _stage_config(context: _PipelineContext, stage: Stage) -> TrainConfig:
    """The stage's config with its references as full run ids (referenced stages have run by now)."""
    def run_of(reference: str) -> str:
        entry = context.state.stages.get(reference)
        return entry["run"] if entry else context.registry.resolve(reference)

    references = {"init_from": run_of(stage.init_from) if stage.init_from else None,
                  "distill_from": [run_of(reference) for reference in stage.distill_from]}
    return from_dict({**stage.config, **references}, source=f"{context.pipeline.path}: {stage.key}")


def _run_ensemble(context: _PipelineContext, ensemble: Ensemble) -> StepOutcome:
    """Search (or skip, when searched before with the same definition) one ensemble; its summary."""
    pipeline, state = context.pipeline, context.state
    runs = {key: state.stages[key]["run"] for key in ensemble.stages}
    digest = _digest({**ensemble.definition(), "runs": runs})
    entry = state.ensembles.get(ensemble.name)
    if entry is not None and Path(entry["weights"]).is_file():
        if entry["definition"] != digest:
            raise UserError(f"{pipeline.path}: ensemble {ensemble.name} (or the runs of its stages) changed since its "
                            f"weights were searched; delete {entry['weights']} to search it anew")
        return _ensemble_summary(ensemble, entry, "skipped")
    folder = context.registry.layout.pipeline_folder(pipeline.name)
    where = f"{pipeline.path}: ensemble {ensemble.name}"
    validation = _split_systems(context, ensemble, runs, ensemble.validation_split)
    truth = _ground_truth(ensemble, ensemble.validation_split, validation[0].matrix.files)
    if truth is None:
        raise UserError(f"{where}: {ensemble.dataset}/{ensemble.validation_split} has no captions or relevance file "
                        "to search the weights on; set validation_split to a split with captions")
    found = search(validation, truth, ensemble.options, context.reporter)
    weights_path = folder / f"{ensemble.name}.weights.json"
    members = {key: {"run": runs[key], "validation": evaluate(system.matrix, truth).scores}
               for key, system in zip(ensemble.stages, validation)}
    entry = {"definition": digest, "weights": str(weights_path), "strategy": found.weights.strategy,
             "stage_weights": found.weights.weights, "validation": found.weights.validation.scores,
             "test": None, "test_matrix": None, "members": members}
    if ensemble.test_split:
        entry.update(_apply_to_test(context, ensemble, runs, found.weights, members))
    write_weights(found.weights, weights_path)
    state.record_ensemble(ensemble.name, entry)
    return _ensemble_summary(ensemble, entry, "finished")


def _apply_to_test(context: _PipelineContext, ensemble: Ensemble, runs: dict[str, str], weights: EnsembleWeights,
                   members: dict[str, dict]) -> dict:
    """Embed the test split, write the ensemble's matrix into the pipeline's folder and score it (and each stage)
    where it can."""
    systems = _split_systems(context, ensemble, runs, ensemble.test_split)
    combined = apply(weights, systems)
    folder = context.registry.layout.pipeline_folder(context.pipeline.name)
    matrix_path = folder / f"{ensemble.name}.{ensemble.dataset}.{ensemble.test_split}.npz"
    write_matrix(combined, matrix_path)
    truth = _ground_truth(ensemble, ensemble.test_split, combined.files)
    if truth is not None:
        for key, system in zip(ensemble.stages, systems):
            members[key]["test"] = evaluate(system.matrix, truth).scores
    return {"test_matrix": str(matrix_path), "test": evaluate(combined, truth).scores if truth else None}


def _split_systems(context: _PipelineContext, ensemble: Ensemble, runs: dict[str, str], split: str) -> list[System]:
    """Each stage's similarity matrix of ``split`` (embedded now unless registered for this checkpoint)."""
    registry = context.registry
    tag = split_tag(ensemble.dataset, split)
    systems = []
    for key in ensemble.stages:
        path = _registered_similarity(registry, runs[key], tag, ensemble.checkpoint) or embed_run(
            registry.workdir, runs[key],
            SplitRequest(ensemble.data_root, ensemble.dataset, split, ensemble.checkpoint, ensemble.batch_size),
            reporter=context.reporter).similarity
        systems.append(System(key, read_matrix(path), str(path)))
    return systems


def _registered_similarity(registry: RunLookup, run: str, tag: str, checkpoint: str) -> Path | None:
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


def _ensemble_summary(ensemble: Ensemble, entry: dict, status: str) -> StepOutcome:
    """The ensemble's step: ``stage`` ensembles/NAME, ``run`` its weights file, its scores (4 decimals)."""
    test = round(entry["test"][METRIC], 4) if entry.get("test") else None
    return StepOutcome(f"ensembles/{ensemble.name}", entry["weights"], status,
                       validation=round(entry["validation"][METRIC], 4), test=test)


NOT_DIGESTED = {"log", "log_every",  # where the run's curves go: a rerun may log elsewhere
                "compile",  # speed only: a rerun may compile or not
                "workers",  # speed only: the batches are the same with any number of loader processes
                "gradient_checkpointing",  # memory only: blocks recomputed in backward, the same gradients
                # memory only: the same loss of the same global batch, encoded in chunks (training.grad_cache)
                "grad_cache_chunk",
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
