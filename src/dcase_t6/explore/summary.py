"""The figures the explorer's summary page adds to ``evaluate``'s scores: each system's 95% bootstrap intervals,
for two systems the second's paired difference from the first (its interval and the paired test's p-value), and
the audio-to-text scores. They are ``dcase-t6 evaluate --ci`` 's (the same resampling, seed and resamples), so the
page and the command agree to the last digit."""

from __future__ import annotations

from dataclasses import dataclass

from dcase_t6.explore.analysis import Exploration
from dcase_t6.retrieval.directions import metric_values
from dcase_t6.retrieval.significance import PairedDifference, Resampling, significance


@dataclass(frozen=True)
class SummaryFigures:
    """What the summary page shows beside each system's scores.

    intervals: per system, metric -> (low, high) of its 95% interval.
    difference: with two systems, metric -> the second system's paired difference from the first; else None.
    audio_to_text: per system, metric -> its audio-to-text score.
    a2t_clips: the clips scored audio to text (those some explored query lists as relevant).
    method: how the intervals were drawn, in words.
    resampling: the resampling (its resamples and seed are stated on the page).
    """

    intervals: tuple[dict[str, tuple[float, float]], ...]
    difference: dict[str, PairedDifference] | None
    audio_to_text: tuple[dict[str, float], ...]
    a2t_clips: int
    method: str
    resampling: Resampling


def summary_figures(exploration: Exploration, resampling: Resampling = Resampling()) -> SummaryFigures:
    """Intervals and (for two systems) the paired comparison of the explored systems, text to audio."""
    systems = exploration.systems
    figures = significance([metric_values(system.evaluation.per_query) for system in systems], resampling)
    others = [system.evaluation.audio_to_text for system in systems]
    return SummaryFigures(
        intervals=figures.intervals,
        difference=figures.differences[0] if figures.differences else None,
        audio_to_text=tuple(dict(other.scores) for other in others if other is not None),
        a2t_clips=others[0].n_queries if others[0] is not None else 0,
        method=resampling.interval_name(),
        resampling=resampling,
    )
