"""Command line: parses options and delegates to the modules that do the work."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
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
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dcase-t6")
def main():
    """dcase-t6: language-based audio retrieval for DCASE Task 6.

    \b
    Pipeline: prepare -> train -> embed -> ensemble -> evaluate -> package.
    Run `dcase-t6 COMMAND --help` for the options and an example of each command.
    """


def _print_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def _not_yet(command: str, issue: str) -> None:
    raise UserError(f"`dcase-t6 {command}` is not implemented yet ({issue}); "
                    "see README.md for what works today")


# --- prepare -------------------------------------------------------------------------------------
# PREPARE-COMMANDS (filled by the prepare issue)
@main.group(cls=_Group)
def prepare():
    """Download, verify and cache datasets (Clotho v2.1, AudioCaps, WavCaps, synthetic demo data)."""


# --- train / embed -------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train():
    """Train a dual encoder (PaSST/tiny-cnn audio + transformers text). Arrives with issue #4."""
    _not_yet("train", "issue #4: train, embed and the checkpoint registry")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def embed():
    """Embed a split with a trained run and write its similarity matrix. Arrives with issue #4."""
    _not_yet("embed", "issue #4: train, embed and the checkpoint registry")


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
    result = run_evaluation(read_matrix(predictions), truth, allow_missing=allow_missing)
    if per_query:
        write_per_query(result, per_query)
    if as_json:
        _print_json(result.as_json(with_intervals=with_ci, with_skipped=allow_missing))
        return
    _print_evaluation(result, with_ci, predictions)


def _print_evaluation(result, with_ci: bool, source: str) -> None:
    table = Table(title=f"{source}: {result.n_queries} queries", title_justify="left")
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
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def ensemble():
    """Weighted sum of several systems' similarity matrices, weights grid-searched on validation."""
    _not_yet("ensemble", "in progress")


# --- package -------------------------------------------------------------------------------------
# PACKAGE-COMMAND (filled by the packaging work)
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def package():
    """Build and check the submission zip (CSV, metadata YAML, technical report)."""
    _not_yet("package", "in progress")
