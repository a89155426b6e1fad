"""How `dcase-t6 evaluate` shows an assessment (``retrieval.assessment.Assessment``) in the terminal: one system's
tables (text to audio as it always was, then audio to text), or for several systems one table per direction with
each system's values and every later system's paired difference from the first, its interval and p-value.
Imported by the command when it runs (the library behind it is not loaded for ``--help``)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from dcase_t6.cli.console import console, reporter
from dcase_t6.retrieval.assessment import AUDIO_TO_TEXT, TEXT_TO_AUDIO, Assessment
from dcase_t6.retrieval.significance import JACKKNIFE


def print_assessment(assessment: Assessment) -> None:
    """The tables of ``evaluate`` (no ``--json``)."""
    if len(assessment.names) == 1:
        _print_single(assessment)
    else:
        for direction in assessment.options.directions():
            _print_compared(assessment, direction)
        _note(f"Δ: paired difference from {assessment.names[0]} (system minus {assessment.names[0]}, query by "
              f"query, then averaged); 95% CI of Δ: {_interval_words(assessment, paired=True)}; p: paired "
              f"randomisation test, two-sided, {assessment.options.resampling.resamples:,} random swaps of the two "
              f"systems' per-query values, seed {assessment.options.resampling.seed}")
    if assessment.options.with_intervals:
        which = " of each system" if len(assessment.names) > 1 else ""
        _note(f"95% CI{which}: {_interval_words(assessment, paired=False)}")
    skipped = max(result.n_skipped for result in assessment.results)
    if skipped:
        reporter.warning(f"skipped {skipped} ground-truth queries missing from the predictions")


def _print_single(assessment: Assessment) -> None:
    result, with_ci = assessment.results[0], assessment.options.with_intervals
    console.print(f"{escape(str(assessment.names[0]))}: {result.n_queries} queries", highlight=False, soft_wrap=True)
    header = f"95% CI ({assessment.options.resampling.method})"
    if TEXT_TO_AUDIO in assessment.options.directions():
        console.print(_values_table(result.scores, result.intervals if with_ci else None, header))
    if AUDIO_TO_TEXT in assessment.options.directions():
        other = result.audio_to_text
        console.print(f"audio-to-text: {other.n_queries} clips as queries, each ranking the {result.n_queries} "
                      f"queries{_left_out(other.n_left_out)}", highlight=False, soft_wrap=True)
        console.print(_values_table(other.scores, other.intervals if with_ci else None, header))


def _values_table(scores: dict[str, float], intervals: dict | None, header: str) -> Table:
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    if intervals is not None:
        table.add_column(header, justify="right")
    for key, value in scores.items():
        cells = [key, f"{value:.4f}"]
        if intervals is not None:
            low, high = intervals[key]
            cells.append(f"[{low:.4f}, {high:.4f}]")
        table.add_row(*cells)
    return table


def _print_compared(assessment: Assessment, direction: str) -> None:
    names, results = assessment.names, assessment.results
    figures = assessment.significance[direction]
    if direction == TEXT_TO_AUDIO:
        scores = [result.scores for result in results]
        title = f"text-to-audio: {results[0].n_queries} queries"
    else:
        scores = [result.audio_to_text.scores for result in results]
        other = results[0].audio_to_text
        title = (f"audio-to-text: {other.n_queries} clips as queries, each ranking the {results[0].n_queries} "
                 f"queries{_left_out(other.n_left_out)}")
    console.print(escape(title), highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("metric", no_wrap=True)
    for name in names:
        table.add_column(escape(name), justify="right")
    for key in scores[0]:
        table.add_row(key, *(f"{values[key]:.4f}" for values in scores))
    console.print(table)
    for name, compared in zip(names[1:], figures.differences):
        differences = Table(title=f"{escape(name)} − {escape(names[0])}", title_justify="left")
        for column in ("metric", "Δ", "95% CI of Δ", "p"):
            differences.add_column(column, justify="left" if column == "metric" else "right", no_wrap=True)
        for key, difference in compared.items():
            differences.add_row(key, f"{difference.difference:+.4f}",
                                f"[{difference.low:+.4f}, {difference.high:+.4f}]", f"{difference.p_value:.4f}")
        console.print(differences)
    if assessment.options.with_intervals:
        intervals = Table(title="95% CI of each system", title_justify="left")
        intervals.add_column("metric", no_wrap=True)
        for name in names:
            intervals.add_column(escape(name), justify="right", no_wrap=True)
        for key in scores[0]:
            intervals.add_row(key, *(f"[{bounds[key][0]:.4f}, {bounds[key][1]:.4f}]" for bounds in figures.intervals))
        console.print(intervals)


def _interval_words(assessment: Assessment, paired: bool) -> str:
    resampling = assessment.options.resampling
    if resampling.method == JACKKNIFE:
        return "jackknife (leave one query out, mean ± 1.96 standard errors)"
    same = " (the same resamples for every system)" if paired else ""
    return f"bootstrap percentile, {resampling.resamples:,} resamples of the queries{same}, seed {resampling.seed}"


def _left_out(count: int) -> str:
    return f" ({count} clips that no query lists as relevant left out)" if count else ""


def _note(text: str) -> None:
    console.print(escape(text), highlight=False, soft_wrap=True)
