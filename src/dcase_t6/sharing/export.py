"""``dcase-t6 export``: a registered run's checkpoint -> a self-contained model folder (see ``folder``), with a
model card, optionally uploaded to the Hugging Face hub.

The folder is written in a staging folder beside ``out`` and renamed into place when complete, so ``out`` is
either the whole export or untouched. The run is held with an "export" lease meanwhile (``runs rm`` waits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import replace_owned_dir, staging_dir
from dcase_t6.common.outputs import MARKER, FolderKind, OutputRequest, check_output_dir
from dcase_t6.runs.folder import (
    CARD_NAME,
    FORMAT,
    FORMAT_VERSION,
    model_config_json,
    write_model_folder,
)
from dcase_t6.runs.hub import looks_like_repo_id, push_folder
from dcase_t6.runs.model import load_model
from dcase_t6.runs.records import code_version, sha256_of
from dcase_t6.runs.registry import Registry
from dcase_t6.sharing.card import CardFacts, render_card
from dcase_t6.sharing.history import summarize_run


@dataclass(frozen=True)
class ExportedFile:
    """One file of an exported folder: its path inside the folder (``/``-separated), size and SHA-256."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ExportResult:
    """What ``export_run`` wrote: the run and checkpoint exported, the folder and its files, the hub commit URL
    when pushed."""

    run_id: str
    checkpoint: str
    checkpoint_epoch: int | None
    folder: Path
    files: list[ExportedFile]
    hub_url: str | None = None

    def as_json(self) -> dict:
        return {"run": self.run_id, "checkpoint": self.checkpoint, "checkpoint_epoch": self.checkpoint_epoch,
                "folder": str(self.folder), "hub_url": self.hub_url,
                "files": [{"path": item.path, "bytes": item.bytes, "sha256": item.sha256} for item in self.files]}


@dataclass(frozen=True)
class ExportRequest:
    """What to export and where (``dcase-t6 export``).

    Args:
        reference: the run (id or unique prefix).
        out: the folder to write; it must not exist unless ``force``.
        tag: the checkpoint, ``best`` or ``last``.
        force: replace an existing ``out`` that dcase-t6 wrote (its marker, ``dcase_t6.common.outputs.MARKER``).
        data_root: where the dev-test ground truth is, for the card's dev-test scores (default: the run's).
        push_to: a hub repo id (``owner/name``) to upload the folder to.
        private: create that repo private.
    """

    reference: str
    out: str | Path
    tag: str = "best"
    force: bool = False
    data_root: str | Path | None = None
    push_to: str | None = None
    private: bool = False


def export_run(workdir: str | Path, request: ExportRequest) -> ExportResult:
    """Export a run's checkpoint as a model folder, and optionally upload it to the hub.

    Args:
        workdir: the registry's folder.
        request: the run and checkpoint, the folder to write, the data root of the card, the hub repo.

    Returns:
        The run, the folder and its files, the hub commit URL.

    Raises:
        UserError: ``out`` exists (without ``force``), was not written by dcase-t6 (with or without ``force``), is or
            holds the work directory, the data root or the run's folder; the run or its checkpoint is missing or
            damaged, or the upload failed (the folder is complete then).
    """

    out, tag, data_root, push_to = Path(request.out).absolute(), request.tag, request.data_root, request.push_to
    check_output_dir(OutputRequest(out, "--out", protected=[("work directory", workdir), ("data root", data_root)]),
                     FolderKind(replaced=False))
    if push_to is not None and not looks_like_repo_id(push_to):
        raise UserError(f"--push-to-hub {push_to!r}: not a hub repo id; expected OWNER/NAME, e.g. my-team/passt-clotho")
    registry = Registry(workdir)
    found = registry.run(request.reference)  # read only: the output is checked before the run is leased
    check_output_dir(OutputRequest(out, "--out", force=request.force, force_option="--force",
                                   protected=[("work directory", workdir), ("data root", data_root),
                                              ("run folder", registry.layout.run(found.id)),
                                              ("data root", found.config.get("data_root"))]),
                     FolderKind("a model folder"))
    with registry.using(found.id, "export") as run_id:
        run = registry.run(run_id)
        loaded = load_model(registry, run_id, tag)
        summary = summarize_run(registry, run_id, data_root)
        model, config = loaded.model, loaded.config
        origin = run.config.get("model", {}).get("text_model", config.model.text_model)
        training_config = config.to_dict()
        training_config["model"]["text_model"] = origin
        epoch = loaded.checkpoint.info.get("epoch")
        folder_config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_config_json(model),
                         "text_model_origin": origin, "sample_rate": model.sample_rate,
                         "audio_seconds": config.audio_seconds, "max_samples": config.clip_samples(model.sample_rate),
                         "parameters": model.parameter_count(), "run": run_id, "checkpoint": tag,
                         "checkpoint_epoch": epoch, "written_by": f"dcase-t6 {code_version()}"}
        training = {"run": {"id": run.id, "name": run.name, "status": run.status, "created": run.created,
                            "seed": run.seed, "data_fingerprint": run.data_fingerprint,
                            "code_version": run.code_version},
                    "config": training_config, "monitor": summary.history.monitor,
                    "best_epoch": summary.history.best_epoch,
                    "checkpoint": {"tag": tag, "epoch": epoch, "step": loaded.checkpoint.info.get("step"),
                                   "sha256": loaded.checkpoint.sha256},
                    "epochs": summary.history.epochs,
                    "dev_test": summary.dev_test.as_json() if summary.dev_test else None}
        facts = CardFacts(run_id=run_id, code_version=run.code_version, data_fingerprint=run.data_fingerprint,
                          checkpoint=tag, checkpoint_epoch=epoch, history=summary.history, dev_test=summary.dev_test,
                          training_config=training_config, text_model_origin=origin, sample_rate=model.sample_rate,
                          max_samples=config.clip_samples(model.sample_rate), parameters=model.parameter_count(),
                          repo_id=push_to)
        with staging_dir(out) as staging:
            folder = staging / out.name
            folder.mkdir()
            write_model_folder(model, folder, folder_config, training)
            (folder / CARD_NAME).write_text(render_card(facts), encoding="utf-8")
            replace_owned_dir(folder, out, f"export {run_id}")
    result = ExportResult(run_id, tag, epoch, out, list_files(out))
    if push_to is not None:
        url = push_folder(out, push_to, private=request.private, message=f"dcase-t6 export of run {run_id} ({tag})")
        result = ExportResult(run_id, tag, epoch, out, result.files, url)
    return result


def list_files(folder: Path) -> list[ExportedFile]:
    """Every file under ``folder``, sorted by path, with size and SHA-256.

    Args:
        folder: the folder.

    Returns:
        The files.
    """
    return [ExportedFile(path.relative_to(folder).as_posix(), path.stat().st_size, sha256_of(path))
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MARKER]
