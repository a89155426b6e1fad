"""``runs import``: an exported model folder (or hub repo id) -> a registered run of status ``imported``.

The folder is checked by loading it strictly (``load_exported``), then copied into ``runs/<run>/model/``. Its
weights also become the run's ``best`` checkpoint (``best.pt``: weights, config, position, as ``train`` writes
them, the config's text model pointing at the copied ``model/text/``), so every command that takes a run takes
it: ``embed``, ``ensemble``/``evaluate`` with ``RUN:DATASET/SPLIT``, ``distill_from``, ``init_from``,
``clusters.source: run:RUN``. Its epochs are registered as exported, so ``runs compare`` shows its curves; its
dev-test scores are kept with the registered weights file (kind ``import``). The run keeps the id it had where it
was trained, unless a run here already has it (then ``<name>-<6 hex>``).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import replace_dir, staging_dir
from dcase_t6.common.outputs import NAME_LIMIT, check_name
from dcase_t6.runs.config import MAX_SEED, from_dict
from dcase_t6.runs.folder import TRAINING_NAME, WEIGHTS_NAME, load_exported, model_config, resolve_source
from dcase_t6.runs.layout import MODEL_DIR, TEXT_DIR
from dcase_t6.runs.registry import ImportedRun, Registry
from dcase_t6.sharing.history import IMPORT_KIND


@dataclass(frozen=True)
class ImportResult:
    """The registered run, where it came from, the copied folder and the ``best`` checkpoint written."""

    run_id: str
    source: str
    folder: Path
    checkpoint: Path
    epochs: int
    best_epoch: int | None

    def as_json(self) -> dict:
        return {"run": self.run_id, "source": self.source, "folder": str(self.folder),
                "checkpoint": str(self.checkpoint), "epochs": self.epochs, "best_epoch": self.best_epoch}


def import_model(workdir: str | Path, source: str, revision: str | None = None) -> ImportResult:
    """Register an exported model as a run.

    Args:
        workdir: the registry's folder.
        source: an exported folder, or a hub repo id (``owner/name``).
        revision: with a repo id: branch, tag or commit.

    Returns:
        The new run and its files.

    Raises:
        UserError: the folder is incomplete, of another format, its weights do not fit its config, or its training
            config is not valid here.
    """
    folder = resolve_source(source, revision)
    return register_folder(workdir, folder, str(source), {"source": str(source), "revision": revision})


def register_folder(workdir: str | Path, folder: Path, source: str, provenance: dict) -> ImportResult:
    """Register the exported model in ``folder`` as a run (the folder is copied; see the module docstring).

    Args:
        workdir: the registry's folder.
        folder: an exported model folder (``sharing.folder``).
        source: where it came from, as the user named it (the run records it).
        provenance: facts kept with the run's imported-model file (source, revision, format, ...).

    Returns:
        The new run and its files.

    Raises:
        UserError: the folder is incomplete, of another format, its weights do not fit its config, or its training
            config is not valid here.
    """

    loaded = load_exported(folder)
    training = loaded.training
    config, run = training.get("config"), training.get("run") or {}
    epochs = training.get("epochs", [])
    if not isinstance(config, dict) or not isinstance(epochs, list) or not all(
            isinstance(epoch, dict) and isinstance(epoch.get("epoch"), int) for epoch in epochs):
        raise UserError(f"{folder / TRAINING_NAME}: no training config, or epochs without their 'epoch' number; "
                        "export the run again with `dcase-t6 export`")
    from_dict(config, source=str(folder / TRAINING_NAME))  # checked before anything is registered
    _check_run_record(run, folder / TRAINING_NAME)
    name = check_name(str(run.get("name") or config.get("name") or "imported"), f"{folder / TRAINING_NAME}: run name")
    check_name(str(run.get("id") or name), f"{folder / TRAINING_NAME}: run id", limit=NAME_LIMIT + 7)
    registry = Registry(workdir)
    run_id = registry.import_run(ImportedRun(str(run.get("id") or name), name, config, run.get("data_fingerprint"),
                                             run.get("seed"), run.get("code_version"), epochs))
    directory = registry.layout.run(run_id)
    try:
        copy = directory / MODEL_DIR
        with staging_dir(copy) as staging:
            shutil.copytree(folder, staging / MODEL_DIR, ignore=shutil.ignore_patterns(".*"))
            replace_dir(staging / MODEL_DIR, copy)
        checkpoint_config = dict(config, model=dataclasses.asdict(
            model_config(loaded.config, folder, text_model=str(copy / TEXT_DIR))))
        from_dict(checkpoint_config, source=str(folder / TRAINING_NAME))
        exported = training.get("checkpoint") or {}
        monitor = training.get("monitor") or config.get("monitor", "mAP@10")
        best = _best_record(epochs, monitor)
        best_value = best.get(monitor) if best else None
        position = {"epoch": int(exported.get("epoch") or 0), "batch": 0, "step": int(exported.get("step") or 0),
                    "best": float(best_value) if best_value is not None else -math.inf, "epoch_sums": {}}
        path = directory / "best.pt"
        with atomic_path(path) as tmp:
            torch.save({"model": loaded.model.state_dict(), "config": checkpoint_config, "position": position}, tmp)
        info = {"epoch": exported.get("epoch"), "step": exported.get("step"),
                "parameters": loaded.model.parameter_count(), "imported_from": source}
        if best is not None:
            info.update({monitor: best_value, "metrics": {k: v for k, v in best.items() if k != "epoch"}})
        registry.add_file(run_id, "checkpoint", "best", path, info)
        registry.add_file(run_id, IMPORT_KIND, "model", copy / WEIGHTS_NAME,
                          {**provenance, "exported_checkpoint": exported.get("tag"),
                           "dev_test": training.get("dev_test")})
    except BaseException:
        registry.remove(run_id, delete_files=True)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return ImportResult(run_id, source, copy, path, len(epochs),
                        None if best is None else int(best["epoch"]) + 1)


def _check_run_record(run, where: Path) -> None:
    """``training.json``'s ``run`` entry holds what the registry stores: a seed in the config's range, texts."""

    if not isinstance(run, dict):
        raise UserError(f"{where}: key 'run' must be a mapping (id, name, seed, ...); export the run again")
    seed = run.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise UserError(f"{where}: key 'run.seed' = {str(seed)[:40]} must be a whole number between 0 and {MAX_SEED}; "
                        "export the run again")
    for key in ("id", "name", "data_fingerprint", "code_version"):
        if run.get(key) is not None and not isinstance(run[key], str):
            raise UserError(f"{where}: key 'run.{key}' must be a text, got {type(run[key]).__name__}; export the run "
                            "again")


def _best_record(epochs: list[dict], monitor: str) -> dict | None:
    scored = [epoch for epoch in epochs if isinstance(epoch.get(monitor), (int, float))]
    return max(scored, key=lambda epoch: epoch[monitor]) if scored else None
