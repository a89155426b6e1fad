"""`dcase-t6 runs` (list, show, compare, import, rm, rebuild): the registry of training runs."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import Group, console, json_option, main, print_json
from dcase_t6.common.errors import UserError


@main.group(cls=Group)
def runs():
    """List, show, compare and remove registered runs; import exported models; rebuild a damaged or lost
    registry from the run folders.

    \b
    Example:
      dcase-t6 --workdir dcase-t6-work runs list
      dcase-t6 runs show small-3fa2c1 --json
      dcase-t6 runs compare small-3fa2c1 small-9b01d2 --plot curves.png
      dcase-t6 runs import exported/small
      dcase-t6 runs rebuild
    """


@runs.command("list")
@json_option
@click.pass_obj
def runs_list(obj, as_json):
    """List runs, newest first, with their status: running, finished, stopped (resumable), failed
    (with the reason) or interrupted (its process died without a word; `train --resume RUN` continues it).

    \b
    Example:
      dcase-t6 runs list --json
    """
    from dcase_t6.runs.registry import Registry

    listed = [{key: getattr(run, key) for key in ("id", "status", "reason", "created", "seed", "data_fingerprint")}
              for run in Registry(obj["workdir"]).runs()]
    if as_json:
        print_json(listed)
        return
    table = Table("id", "status", "created", "seed", "reason")
    for run in listed:
        table.add_row(run["id"], run["status"], run["created"], str(run["seed"]), escape(run["reason"] or ""))
    console.print(table)


@runs.command("show")
@click.argument("run")
@json_option
@click.pass_obj
def runs_show(obj, run, as_json):
    """Show a run: config, per-epoch metrics, registered files (with SHA-256) and how its best checkpoint is
    chosen (best_checkpoint: by the validation monitor, or the last epoch for a run without validation).

    \b
    Example:
      dcase-t6 runs show small-3fa2c1
    """
    from dcase_t6.runs.config import selection_rule
    from dcase_t6.runs.registry import Registry

    record = Registry(obj["workdir"]).run(run).as_json()
    record["best_checkpoint"] = selection_rule(record["config"])
    if as_json:
        print_json(record)
        return
    console.print_json(json.dumps(record, ensure_ascii=False))


@runs.command("compare")
@click.argument("references", nargs=-1, required=True, metavar="RUN...")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="PNG",
              help="Also draw the runs' curves here: train loss, validation mAP@10 and mAP@16 per epoch.")
@click.option("--data-root", help="Where the dev-test ground truth is (default: each run's own data_root).")
@json_option
@click.pass_obj
def runs_compare(obj, references, plot, data_root, as_json):
    """Compare runs in one table: status, epochs, best epoch, validation R@1/mAP@10/mAP@16 at the best
    epoch, dev-test R@1/mAP@10/mAP@16 (when the run embedded development-testing: scored against the
    dataset's relevance file if prepared, else its captions), each also audio to text (rows a2t/...), and
    every config key whose value differs.

    \b
    Example:
      dcase-t6 runs compare demo-seed0-3fa2c1 demo-seed1-9b01d2 --plot curves.png
      dcase-t6 runs compare demo-seed0 demo-seed1 --json
    """
    from dcase_t6.common.outputs import check_output_file
    from dcase_t6.runs.layout import WorkLayout
    from dcase_t6.runs.registry import Registry
    from dcase_t6.sharing.compare import compare_runs
    from dcase_t6.sharing.history import plot_curves

    if plot:
        check_output_file(plot, "--plot", [("--workdir registry", WorkLayout.at(obj["workdir"]).database)])
    comparison = compare_runs(Registry(obj["workdir"]), list(references), data_root)
    if plot:
        plot_curves([summary.history for summary in comparison.runs], plot)
    if as_json:
        print_json({**comparison.as_json(), "plot": plot})
        return
    table = Table("", *[summary.history.run_id for summary in comparison.runs])
    for label, cells in comparison.rows():
        table.add_row(escape(label), *[escape(cell) for cell in cells])
    console.print(table)
    for note in comparison.notes():
        console.print(escape(note), highlight=False, soft_wrap=True)
    if plot:
        console.print(f"curves: {escape(plot)}", highlight=False, soft_wrap=True)


@runs.command("import")
@click.argument("source", metavar="DIR|OWNER/NAME|FILE.ckpt|URL")
@click.option("--format", "source_format", type=click.Choice(["dcase-t6", "baseline"]), default="dcase-t6",
              show_default=True, help="dcase-t6: a folder of `dcase-t6 export` or a hub repo id. baseline: a "
              "Lightning checkpoint of the DCASE 2025 baseline (CPJKU/dcase2025_task6_baseline), a file or a URL.")
@click.option("--revision", help="With OWNER/NAME: the hub branch, tag or commit (default main).")
@click.option("--text-model", metavar="NAME|DIR",
              help="With --format baseline: where the text encoder's config and tokenizer come from (default the "
                   "hub's roberta-large, or roberta-base if the checkpoint says so; offline: a local folder). Its "
                   "weights are never read: they are the checkpoint's.")
@click.option("--name", default="dcase2025-baseline", show_default=True,
              help="With --format baseline: the run's name.")
@json_option
@click.pass_obj
def runs_import(obj, source, source_format, revision, text_model, name, as_json):
    """Register a model trained elsewhere as a run: an exported folder, a hub repo, or the baseline's checkpoint.

    The weights are loaded strictly first; the model is copied into runs/RUN/model/ and becomes the
    run's best checkpoint, so the run works with embed, RUN:DATASET/SPLIT references, --distill-from,
    --init-from, export and runs compare (an exported folder's epochs and dev-test scores come with it).
    Status: imported. An exported run keeps its original run id unless that is taken here.

    With --format baseline, every tensor of the baseline's AudioRetrievalModel is mapped onto PaSST +
    RoBERTa + projections (PaSST's AudioSet heads and the text pooler are dropped by name; any other key
    is an error naming it), with the baseline's input settings; the file is read without running any
    code from it. The published checkpoint (Clotho + AudioCaps + WavCaps; dev-test mAP@16 40.59) is at
    https://cloud.cp.jku.at/index.php/s/6ZTQ3mcwk9AAS4i/download.

    \b
    Example:
      dcase-t6 runs import exported/demo-seed0
      dcase-t6 runs import my-team/passt-clotho --revision v1
      dcase-t6 runs import --format baseline ~/Downloads/baseline.ckpt --text-model ~/models/roberta-large
    """
    if source_format == "baseline":
        if revision:
            raise UserError("runs import --format baseline: --revision only applies to a hub repo id")
        from dcase_t6.sharing.baseline import import_baseline

        imported = import_baseline(obj["workdir"], source, text_model, name)
        if as_json:
            print_json(imported.as_json())
            return
        console.print(f"imported the DCASE 2025 baseline checkpoint {escape(source)} as run "
                      f"[bold]{imported.result.run_id}[/] (PaSST + {escape(imported.text_model)}: "
                      f"{len(imported.mapped)} tensors mapped, {len(imported.dropped)} dropped by name); files in "
                      f"{escape(str(imported.result.folder.parent))}", highlight=False, soft_wrap=True)
        return
    from click.core import ParameterSource

    context = click.get_current_context()
    for option in ("text_model", "name"):
        if context.get_parameter_source(option) is ParameterSource.COMMANDLINE:
            raise UserError(f"runs import: --{option.replace('_', '-')} only applies with --format baseline (an "
                            "exported folder brings its own)")
    from dcase_t6.sharing.importing import import_model

    path = Path(source).expanduser()
    if path.is_file():
        raise UserError(f"{source}: a file, not an exported folder; for the DCASE 2025 baseline's Lightning "
                        "checkpoint pass --format baseline")
    result = import_model(obj["workdir"], source, revision)
    if as_json:
        print_json(result.as_json())
        return
    best = f", best epoch {result.best_epoch}" if result.best_epoch else ""
    console.print(f"imported {escape(source)} as run [bold]{result.run_id}[/] ({result.epochs} epoch(s){best}); "
                  f"files in {escape(str(result.folder.parent))}", highlight=False, soft_wrap=True)


@runs.command("rm")
@click.argument("run")
@click.option("--delete-files", is_flag=True, help="Also delete its checkpoints and outputs.")
@click.pass_obj
def runs_rm(obj, run, delete_files):
    """Forget a run (and optionally delete its files). Refused while a live process trains or embeds it.

    \b
    Example:
      dcase-t6 runs rm small-3fa2c1 --delete-files
    """
    from dcase_t6.runs.registry import Registry

    console.print(f"removed {Registry(obj['workdir']).remove(run, delete_files=delete_files)}")


@runs.command("rebuild")
@click.option("--force", is_flag=True, help="Also replace an intact registry (it is kept as "
              "registry.sqlite.replaced-<time>).")
@json_option
@click.pass_obj
def runs_rebuild(obj, force, as_json):
    """Recreate the registry from the run folders (runs/<run>/run.json), re-hashing every recorded file.

    A damaged, empty or missing registry is replaced (a damaged one is kept beside it as
    registry.sqlite.damaged-<time>); an intact one holding runs only with --force.

    \b
    Example:
      dcase-t6 --workdir dcase-t6-work runs rebuild
    """
    from dcase_t6.runs.rebuild import rebuild

    outcome = rebuild(obj["workdir"], force=force)
    if as_json:
        print_json(outcome.as_json())
        return
    console.print(f"rebuilt {escape(str(outcome.registry))}: {len(outcome.runs)} run(s) recovered, "
                  f"{len(outcome.skipped)} folder(s) skipped", highlight=False, soft_wrap=True)
    for run in outcome.runs:
        state = "all verified" if not run.problems else f"{len(run.problems)} missing or changed"
        console.print(f"  {run.id}  {run.status}  {run.epochs} epoch(s)  {run.files} file(s) ({state})",
                      highlight=False, soft_wrap=True)
        for problem in run.problems:
            console.print(f"    {escape(problem)}", highlight=False, soft_wrap=True)
    for folder in outcome.skipped:
        console.print(f"  skipped {escape(str(folder.folder))}: {escape(folder.reason)}", highlight=False,
                      soft_wrap=True)
    if outcome.previous:
        console.print(f"the previous registry is kept as {escape(str(outcome.previous))}", highlight=False,
                      soft_wrap=True)
