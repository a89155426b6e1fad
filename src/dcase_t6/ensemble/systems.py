"""Named similarity matrices ("systems"): alignment of their rows and columns, normalisation, weighted sum.

The ensemble of systems ``S_1 .. S_M`` (queries x files, aligned by query text and file name) is
``E = w_1 N(S_1) + ... + w_M N(S_M)`` where ``N`` is the identity (``none``), the per-query z-score
(``zscore``: each row becomes ``(x - mean) / std`` over its files; a constant row becomes all zeros), or, at
one shared temperature, the inverted or dual softmax of ``retrieval.normalisation`` (``inverted-softmax``,
``dual-softmax``: log-probabilities over all queries of the matrix, so transductive), or QB-Norm
(``querybank``: the inverted softmax over each system's own bank of training captions, applied to the queries
whose best clip is a hub of the bank; not transductive).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.matrices import SimilarityMatrix
from dcase_t6.retrieval.normalisation import NORMALISERS, QUERYBANK, Normalisation, QueryBank, align_bank, normalise

NORMALIZATIONS = ("none", "zscore", *NORMALISERS)


@dataclass(frozen=True)
class System:
    """One named similarity matrix.

    Args:
        name: the system's name (``MODEL/SYSTEM`` names enable the grouping strategies).
        matrix: its scores, queries x audio files.
        path: where the matrix came from; names it in error messages and in the weights file.
        bank: its QB-Norm query bank (``querybank`` only): bank captions x the same clips.
    """

    name: str
    matrix: SimilarityMatrix
    path: str = ""
    bank: QueryBank | None = None


def align_systems(systems: Sequence[System]) -> list[System]:
    """Reorder every system's rows and columns to the first system's queries and files.

    Repeated captions (one query text on several rows) follow ``evaluate``: a system whose rows of a text
    are identical (or that has the text once) gives that text one row, which is repeated wherever
    another system has distinct rows for it; distinct rows are matched occurrence by occurrence (the
    k-th row of the text in one file with the k-th in another), so they must be as many in every system
    that has them. A text that is one row in every system keeps the first system's number of (then
    identical) rows. The result does not depend on which system comes first, up to that row layout.

    Args:
        systems: the systems, with distinct names.

    Returns:
        The systems in the same order, all with the same queries (the first one's order) and files.

    Raises:
        UserError: for a repeated name, or a system lacking (or adding) a query or audio file, or having
            a different number of distinct rows for a repeated caption.
    """
    reject_duplicates([system.name for system in systems], "--system name")
    if not systems:
        return []
    reference = systems[0]
    queries, rows = _row_layout(systems)
    aligned = []
    for system, system_rows in zip(systems, rows):
        columns = _positions(reference, system, reference.matrix.files, system.matrix.files, "audio file")
        scores = take(take(system.matrix.scores, system_rows, axis=0), columns, axis=1)
        bank = None if system.bank is None else align_bank(system.bank, reference.matrix.files, _where(system))
        aligned.append(System(system.name, SimilarityMatrix(queries, reference.matrix.files, scores), system.path,
                              bank))
    return aligned


def reject_duplicates(names: Sequence[str], what: str) -> None:
    """A UserError naming the first of ``names`` that is given twice; ``what`` says what the names are."""
    repeated = first_duplicate(names)
    if repeated is not None:
        raise UserError(f"{what} {repeated.value!r} is given twice; use each name once")


@dataclass(frozen=True)
class _Repeats:
    """The rows of one query text in one system and whether they hold different scores."""

    rows: list[int]
    distinct: bool


def _row_layout(systems: Sequence[System]) -> tuple[list[str], list[np.ndarray]]:
    """The aligned query texts and, per system, the row it contributes to each (see :func:`align_systems`)."""
    reference = systems[0]
    if all(system.matrix.queries == reference.matrix.queries for system in systems):
        identity = np.arange(len(reference.matrix.queries))
        return list(reference.matrix.queries), [identity] * len(systems)
    repeats = [_repeats(system.matrix) for system in systems]
    counts = _agreed_counts(repeats)
    if counts is None:
        raise _first_difference(systems)
    reference_count = {text: len(entry.rows) for text, entry in repeats[0].items()}
    queries, rows = [], [[] for _ in systems]
    seen: dict[str, int] = defaultdict(int)
    for text in reference.matrix.queries:
        occurrence = seen[text]
        seen[text] += 1
        wanted = counts[text] or reference_count[text]
        last = occurrence == reference_count[text] - 1
        for k in range(occurrence, wanted if last else min(occurrence + 1, wanted)):
            queries.append(text)
            for system_rows, system_repeats in zip(rows, repeats):
                entry = system_repeats[text]
                system_rows.append(entry.rows[k] if k < len(entry.rows) else entry.rows[0])
    return queries, [np.array(system_rows, dtype=np.int64) for system_rows in rows]


def _repeats(matrix: SimilarityMatrix) -> dict[str, _Repeats]:
    """Every query text's rows; ``distinct`` when the text has several rows that are not all identical."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, query in enumerate(matrix.queries):
        rows_of[query].append(row)
    return {text: _Repeats(rows, len(rows) > 1 and not (matrix.scores[rows] == matrix.scores[rows[0]]).all())
            for text, rows in rows_of.items()}


def _agreed_counts(repeats: Sequence[dict[str, _Repeats]]) -> dict[str, int] | None:
    """Per text, the number of distinct rows the systems agree on (0: one row in every system); None when a
    system lacks or adds a text, or two systems have different numbers of distinct rows for one."""
    texts = repeats[0].keys()
    counts: dict[str, int] = {}
    for system_repeats in repeats:
        if system_repeats.keys() != texts:
            return None
        for text, entry in system_repeats.items():
            if entry.distinct and counts.setdefault(text, len(entry.rows)) != len(entry.rows):
                return None
    return {text: counts.get(text, 0) for text in texts}


def _first_difference(systems: Sequence[System]) -> UserError:
    """The error for systems that disagree on their queries: the first difference, occurrence by occurrence."""
    reference = systems[0]
    keys = _occurrence_keys(reference.matrix.queries)
    for system in systems[1:]:
        _positions(reference, system, keys, _occurrence_keys(system.matrix.queries), "query")
    return _mismatch(reference, systems[-1], "repeats a caption with different scores a different number of times")


def _occurrence_keys(queries: Sequence[str]) -> list[tuple[str, int]]:
    """Key each query by (text, k) for its k-th occurrence, so repeated captions align one to one."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for query in queries:
        keys.append((query, seen[query]))
        seen[query] += 1
    return keys


def _positions(reference: System, system: System, wanted: Sequence, present: Sequence, what: str) -> np.ndarray:
    """Index of each (unique) ``wanted`` key in ``present``; a UserError naming the first key in only one."""
    position_of = {key: index for index, key in enumerate(present)}
    missing = next((key for key in wanted if key not in position_of), None)
    if missing is not None:
        raise _mismatch(reference, system, f"lacks the {what} {_describe(missing)} of {_where(reference)}")
    if len(present) != len(wanted):
        wanted_set = set(wanted)
        extra = next(key for key in present if key not in wanted_set)
        raise _mismatch(reference, system, f"has the {what} {_describe(extra)} that {_where(reference)} lacks")
    return np.array([position_of[key] for key in wanted], dtype=np.int64)


def _where(system: System) -> str:
    return system.path or system.name


def _mismatch(reference: System, system: System, problem: str) -> UserError:
    return UserError(f"{_where(system)}: {problem} ({system.name} vs {reference.name}); every system must score "
                     "the same queries and audio files (the same split): re-run embed on that split")


def _describe(key: tuple[str, int] | str) -> str:
    """A query key as its text (and which repeat of it), a file name as itself."""
    if isinstance(key, tuple):
        text, repeat = key
        return repr(text) + (f" (occurrence {repeat + 1})" if repeat else "")
    return repr(key)


def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Per-query z-score: each row becomes (x - mean) / std over its files; constant rows become 0."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 0, spread, 1.0)


def stacked_scores(systems: Sequence[System], normalize: str, temperature: float | None = None, top_k: int = 1
                   ) -> np.ndarray:
    """(systems, queries, files) float64 scores of aligned systems, each normalised as asked.

    Args:
        systems: aligned systems (see :func:`align_systems`); with ``querybank`` each with its bank.
        normalize: one of ``NORMALIZATIONS``.
        temperature: the temperature of ``inverted-softmax`` / ``dual-softmax`` / ``querybank`` (ignored by the
            others).
        top_k: the activation set's ``k`` of ``querybank``.

    Raises:
        UserError: for an unknown normalisation, a missing temperature, or a ``querybank`` system without bank.
    """
    if normalize not in NORMALIZATIONS:
        raise UserError(f"normalize {normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    if normalize in NORMALISERS:
        if temperature is None:
            raise UserError(f"normalize {normalize}: give its temperature")
        tempered = Normalisation(normalize, temperature, top_k=top_k if normalize == QUERYBANK else 1)
        missing = next((system for system in systems if normalize == QUERYBANK and system.bank is None), None)
        if missing is not None:
            raise UserError(f"--normalize querybank: system {missing.name!r} has no query bank; give --bank "
                            f"{missing.name}=BANK.npz (`dcase-t6 embed RUN --split SPLIT --bank development-training`)")
        return np.stack([normalise(system.matrix.scores, tempered, _where(system),
                                   None if system.bank is None else system.bank.matrix.scores)
                         for system in systems])
    transform = zscore_rows if normalize == "zscore" else np.asarray
    return np.stack([transform(system.matrix.scores) for system in systems])


def weighted_sum(scores: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``sum_i weights[i] * scores[i]``, accumulated in system order (the one definition of the ensemble)."""
    total = np.zeros(scores.shape[1:], dtype=np.float64)
    for weight, system_scores in zip(weights, scores):
        total += float(weight) * system_scores
    return total


def take(array: np.ndarray, indices: Sequence[int], axis: int = 0) -> np.ndarray:
    """``array`` indexed along ``axis``, without a copy when ``indices`` keeps every entry in order."""
    if np.array_equal(indices, np.arange(array.shape[axis])):
        return array
    return np.take(array, indices, axis=axis)
