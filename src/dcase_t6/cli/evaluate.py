"""`dcase-t6 evaluate`: R@K and mAP@K of a similarity matrix."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import main, matrix_path, print_json
from dcase_t6.cli.console import console, stderr_console


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
    from dcase_t6.common.outputs import check_output_file
    from dcase_t6.retrieval.evaluation import evaluate as run_evaluation
    from dcase_t6.retrieval.evaluation import write_per_query
    from dcase_t6.retrieval.ground_truth import check_ground_truth_options, read_ground_truth
    from dcase_t6.retrieval.matrices import read_matrix

    check_ground_truth_options("evaluate", relevance, captions)
    predictions_path = matrix_path(predictions)
    if per_query:
        check_output_file(per_query, "--per-query", [("--predictions", predictions_path), ("--relevance", relevance),
                                                     ("--captions", captions)])
    truth = read_ground_truth("evaluate", relevance, captions)
    result = run_evaluation(read_matrix(predictions_path), truth, allow_missing=allow_missing)
    if per_query:
        write_per_query(result, per_query)
    if as_json:
        print_json(result.as_json(with_intervals=with_ci, with_skipped=allow_missing))
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
        stderr_console.print(f"[yellow]warning:[/] skipped {result.n_skipped} ground-truth queries missing from "
                             "the predictions")
