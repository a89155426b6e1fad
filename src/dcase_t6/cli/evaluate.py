"""`dcase-t6 evaluate`: R@K and mAP@K of a similarity matrix, both directions; intervals; paired comparisons."""

from __future__ import annotations

import click

from dcase_t6.cli import main, matrix_path, print_json, split_named
from dcase_t6.cli.console import console
from dcase_t6.cli.normalise_options import normalise_options, resolve_banks, resolve_normalisation


@main.command()
@click.option("--predictions", "-p", "predictions", required=True, multiple=True, metavar="[NAME=]MATRIX",
              help="Similarity matrix: submission CSV (index, file names...) or .npz (or RUN:DATASET/SPLIT). "
              "Repeat to compare systems on the same queries: each later one against the first (paired "
              "difference, its 95% CI and p-value).")
@click.option("--relevance", "-r", type=click.Path(dir_okay=False),
              help="Multi-relevance CSV (query, audio_filenames), e.g. the dev-test metadata_eval.csv.")
@click.option("--captions", "-c", type=click.Path(dir_okay=False),
              help="Clotho captions CSV: single-relevant setting, each caption's target is its own file.")
@click.option("--allow-missing", is_flag=True, help="Skip ground-truth queries absent from the predictions "
              "(and report how many) instead of failing.")
@click.option("--per-query", type=click.Path(dir_okay=False), help="Write per-query metrics and ranks to this CSV.")
@click.option("--ci", "with_ci", is_flag=True, help="Add each system's 95%% confidence intervals (--ci-method).")
@click.option("--ci-method", type=click.Choice(["bootstrap", "jackknife"]), default="bootstrap", show_default=True,
              help="bootstrap: percentile interval of the mean over resampled queries (stays in [0, 1]); "
              "jackknife: leave one query out, mean ± 1.96 standard errors.")
@click.option("--resamples", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True,
              help="Bootstrap resamples, and random swaps of the paired test.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the resamples and swaps: the same inputs give the same intervals and p-values.")
@click.option("--direction", type=click.Choice(["t2a", "a2t", "both"]), default="both", show_default=True,
              help="t2a: text to audio (the task's, the top-level keys of --json); a2t: audio to text (each clip "
              "ranks the queries; its relevant queries are those that list it); both.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@normalise_options
def evaluate(predictions, relevance, captions, allow_missing, per_query, with_ci, ci_method, resamples, seed,
             direction, as_json, normalize, temperature, normalize_from, banks, bank_top_k):
    """Score a similarity matrix: R@1, R@5, R@10, mAP@10, mAP@16 as the organisers compute them, text to audio
    and (unless --direction t2a) audio to text.

    Ranks are pessimistic under ties (irrelevant files first), AP@K is divided by all relevant files.
    With several -p: each system's paired difference from the first, with a paired bootstrap 95% CI and a
    paired randomisation test's p-value (--resamples, --seed).

    \b
    Example:
      dcase-t6 evaluate -p system.csv -r clotho-devtest-relevance-metadata_eval.csv --ci
      dcase-t6 evaluate -p system.csv -c clotho_captions_evaluation.csv --json
      dcase-t6 evaluate -p base=a.csv -p new=b.csv -r metadata_eval.csv --ci
      dcase-t6 evaluate -p system.csv -r metadata_eval.csv --normalise inverted-softmax --temperature 0.05
      dcase-t6 evaluate -p system.csv -r metadata_eval.csv --normalise-from system_norm.json
      dcase-t6 evaluate -p system.csv -r metadata_eval.csv --normalise querybank --temperature 0.05 \
          --bank clotho.development-testing.bank.npz
    """
    from dcase_t6.cli.evaluate_render import print_assessment
    from dcase_t6.common.errors import UserError
    from dcase_t6.common.outputs import check_output_file
    from dcase_t6.retrieval.assessment import AssessOptions, assess
    from dcase_t6.retrieval.evaluation import write_per_query
    from dcase_t6.retrieval.ground_truth import check_ground_truth_options, read_ground_truth
    from dcase_t6.retrieval.matrices import read_matrix
    from dcase_t6.retrieval.normalisation import normalise_matrix, read_bank
    from dcase_t6.retrieval.significance import Resampling

    check_ground_truth_options("evaluate", relevance, captions)
    options = AssessOptions(direction, allow_missing, with_ci, Resampling(ci_method, resamples, seed))
    normalisation = resolve_normalisation(normalize, temperature, normalize_from, bank_top_k)
    if per_query and len(predictions) > 1:
        raise UserError(f"--per-query writes one system's per-query CSV; it was given {len(predictions)} "
                        "--predictions: evaluate one system at a time for it")
    named = [split_named(value, "--predictions") for value in predictions]
    paths = [matrix_path(reference) for _, reference in named]
    if per_query:
        check_output_file(per_query, "--per-query", [("--predictions", paths[0]), ("--relevance", relevance),
                                                     ("--captions", captions)])
    names = [name or value for (name, _), value in zip(named, predictions)]
    bank_paths = resolve_banks(normalisation, banks, names)
    truth = read_ground_truth("evaluate", relevance, captions)
    matrices = [normalise_matrix(read_matrix(path), normalisation, path,
                                 read_bank(matrix_path(bank, "bank")) if bank else None)
                for path, bank in zip(paths, bank_paths)]
    assessment = assess(list(zip(names, matrices)), truth, options)
    if per_query:
        write_per_query(assessment.results[0], per_query)
    if as_json:
        normalised = {"normalize": normalisation.as_json()} if normalisation else {}
        print_json({**assessment.as_json(), **normalised})
        return
    print_assessment(assessment)
    if normalisation and normalisation.transductive:
        console.print(f"scores normalised: {normalisation.describe()}, over all {matrices[0].shape[0]} queries of the "
                      "matrix (transductive)", highlight=False, soft_wrap=True)
    elif normalisation:
        listed = ", ".join(map(str, bank_paths))
        console.print(f"scores normalised: {normalisation.describe()}, each query against its bank ({listed}; not "
                      "transductive)", highlight=False, soft_wrap=True)

