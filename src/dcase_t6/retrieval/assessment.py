"""What ``evaluate`` reports for one or more systems on one ground truth: the scores in both retrieval directions,
95% intervals, and for several systems the paired difference of each from the first (interval and p-value).

See :mod:`dcase_t6.retrieval.directions` (audio to text) and :mod:`dcase_t6.retrieval.significance` (how the
intervals and p-values are drawn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.directions import metric_values
from dcase_t6.retrieval.evaluation import EvaluationResult, evaluate
from dcase_t6.retrieval.ground_truth import Relevance
from dcase_t6.retrieval.matrices import SimilarityMatrix
from dcase_t6.retrieval.significance import Resampling, Significance, significance

T2A, A2T, BOTH = "t2a", "a2t", "both"
DIRECTIONS = (T2A, A2T, BOTH)
TEXT_TO_AUDIO, AUDIO_TO_TEXT = "text_to_audio", "audio_to_text"


@dataclass(frozen=True)
class AssessOptions:
    """What ``evaluate`` computes besides the text-to-audio scores.

    direction: ``t2a`` (text to audio, the task's), ``a2t`` (audio to text) or ``both``.
    allow_missing: skip ground-truth queries absent from a matrix (and count them) instead of failing.
    with_intervals: each system's 95% intervals.
    resampling: the interval method, resamples and seed (also of the paired test).
    """

    direction: str = BOTH
    allow_missing: bool = False
    with_intervals: bool = False
    resampling: Resampling = Resampling()

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise UserError(f"--direction {self.direction!r}: expected one of {', '.join(DIRECTIONS)}")

    def directions(self) -> tuple[str, ...]:
        """The reported directions, text to audio first: of ``text_to_audio`` / ``audio_to_text``."""
        return {T2A: (TEXT_TO_AUDIO,), A2T: (AUDIO_TO_TEXT,), BOTH: (TEXT_TO_AUDIO, AUDIO_TO_TEXT)}[self.direction]


@dataclass(frozen=True)
class Assessment:
    """Every figure ``evaluate`` prints.

    names: each system's label, in the order given (the first is the reference of the comparisons).
    results: each system's evaluation (``audio_to_text`` set when that direction is reported; ``intervals`` those
        of ``options.resampling``).
    options: what was asked for.
    significance: per reported direction (``text_to_audio``, ``audio_to_text``), the intervals and paired
        comparisons; empty for a single system without intervals.
    """

    names: tuple[str, ...]
    results: tuple[EvaluationResult, ...]
    options: AssessOptions
    significance: dict[str, Significance]

    def system_json(self, index: int) -> dict:
        """One system's ``--json`` object: the text-to-audio keys as ``evaluate`` always printed them (unless only
        ``a2t`` is asked for), ``audio_to_text`` for that direction, ``resampling`` with intervals."""
        options, result = self.options, self.results[index]
        with_skipped = options.allow_missing
        if options.direction == A2T:
            payload = {AUDIO_TO_TEXT: result.audio_to_text.as_json(options.with_intervals)}
            if with_skipped:
                payload["n_skipped"] = result.n_skipped
        else:
            payload = result.as_json(with_intervals=options.with_intervals, with_skipped=with_skipped)
        if options.with_intervals:
            payload["resampling"] = options.resampling.as_json()
        return payload

    def as_json(self) -> dict:
        """The ``--json`` object: one system's object, or ``systems`` (each one's, with ``system``: its name),
        ``comparisons`` (each later system against the first, per direction and metric) and ``resampling``."""
        if len(self.names) == 1:
            return self.system_json(0)
        systems = []
        for index, name in enumerate(self.names):
            payload = self.system_json(index)
            payload.pop("resampling", None)
            systems.append({"system": name, **payload})
        comparisons = []
        for index, name in enumerate(self.names[1:]):
            compared = {"system": name, "reference": self.names[0]}
            for direction, figures in self.significance.items():
                compared[direction] = {key: value.as_json() for key, value in figures.differences[index].items()}
            comparisons.append(compared)
        return {"systems": systems, "comparisons": comparisons, "resampling": self.options.resampling.as_json()}


def assess(systems: Sequence[tuple[str, SimilarityMatrix]], relevance: Relevance,
           options: AssessOptions = AssessOptions()) -> Assessment:
    """Score every system on ``relevance`` and compute the asked-for intervals and paired comparisons.

    Args:
        systems: (name, matrix) of each system; with several, the first is the reference.
        relevance: the ground truth.
        options: direction, missing queries, intervals and resampling.

    Returns:
        The assessment.

    Raises:
        UserError: a matrix does not match the ground truth, or two systems do not score the same queries or
            the same audio files.
    """
    names = tuple(name for name, _ in systems)
    repeated = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if repeated is not None:
        raise UserError(f"evaluate: two systems are named {repeated!r}; give each its own name, -p NAME=MATRIX")
    both = options.direction != T2A
    results = [evaluate(matrix, relevance, options.allow_missing, both_directions=both) for _, matrix in systems]
    _check_paired(systems, results)
    figures = {}
    if options.with_intervals or len(systems) > 1:
        for direction in options.directions():
            values = [metric_values(result.per_query) if direction == TEXT_TO_AUDIO else result.audio_to_text.values()
                      for result in results]
            figures[direction] = significance(values, options.resampling, options.with_intervals)
    if options.with_intervals:
        results = [_with_intervals(result, figures, index) for index, result in enumerate(results)]
    return Assessment(names, tuple(results), options, figures)


def _with_intervals(result: EvaluationResult, figures: dict[str, Significance], index: int) -> EvaluationResult:
    if TEXT_TO_AUDIO in figures:
        result = dataclasses.replace(result, intervals=figures[TEXT_TO_AUDIO].intervals[index])
    if AUDIO_TO_TEXT in figures:
        other = dataclasses.replace(result.audio_to_text, intervals=figures[AUDIO_TO_TEXT].intervals[index])
        result = dataclasses.replace(result, audio_to_text=other)
    return result


def _check_paired(systems: Sequence[tuple[str, SimilarityMatrix]], results: list[EvaluationResult]) -> None:
    """Systems are compared query by query: they must score the same queries of the same audio files."""
    (first, matrix), reference = systems[0], results[0]
    queries = reference.per_query["query"].tolist()
    for (name, other), result in zip(systems[1:], results[1:]):
        if sorted(other.files) != sorted(matrix.files):
            missing = sorted(set(matrix.files) - set(other.files))
            what = (f"lacks the audio file {missing[0]!r} of {first}" if missing else
                    f"has the audio file {sorted(set(other.files) - set(matrix.files))[0]!r}, which {first} lacks")
            raise UserError(f"{name}: {what}; compare systems on matrices of the same split")
        if result.per_query["query"].tolist() != queries:
            raise UserError(f"{name}: scores {result.n_queries} of the ground-truth queries, {first} "
                            f"{reference.n_queries}, not the same ones; compare systems on the same queries "
                            "(give matrices with the same rows, or drop --allow-missing)")
