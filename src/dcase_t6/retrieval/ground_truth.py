"""Ground truth for evaluation: which audio files are relevant to each query.

Two sources: the multi-relevance file of the DCASE 2025 dev-test set (``query``, ``audio_filenames``
as a Python list literal) and a Clotho captions CSV (``file_name``, ``caption_1`` ... ``caption_5``:
every caption is a query whose only relevant file is its own clip).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.tables import read_table
from dcase_t6.retrieval.matrices import SimilarityMatrix
from dcase_t6.retrieval.metrics import PADDING


@dataclass(frozen=True)
class Relevance:
    """Queries in file order and, for each, the names of its relevant audio files."""

    queries: list[str]
    relevant_files: list[list[str]]
    source: Path


@dataclass(frozen=True)
class Alignment:
    """Relevance mapped onto a similarity matrix: which rows are scored and their relevant columns."""

    rows: np.ndarray
    relevant: np.ndarray
    n_missing: int


def read_relevance_file(path: str | Path) -> Relevance:
    """Read a multi-relevance CSV (``query``, ``audio_filenames``); every row is validated."""
    path = Path(path)
    frame = read_table(path, ["query", "audio_filenames"], skip_blank_lines=True)
    queries, relevant = [], []
    for row, (query, literal) in enumerate(zip(frame["query"], frame["audio_filenames"]), start=2):
        if not query.strip():
            raise UserError(f"{path}: row {row}: empty 'query'; every row needs a query text")
        relevant.append(_parse_file_list(path, row, literal))
        queries.append(query)
    _reject_duplicate_queries(path, queries)
    return Relevance(queries=queries, relevant_files=relevant, source=path)


def read_captions_file(path: str | Path) -> Relevance:
    """Read a Clotho captions CSV: each caption is a query whose single relevant file is its clip."""
    path = Path(path)
    frame = read_table(path, ["file_name"], skip_blank_lines=True)
    caption_columns = [c for c in frame.columns if c.startswith("caption")]
    if not caption_columns:
        raise UserError(f"{path}: no 'caption_1'... columns; expected a Clotho captions CSV")
    queries, relevant = [], []
    for row, record in enumerate(frame.to_dict("records"), start=2):
        for column in caption_columns:
            if not record[column].strip():
                raise UserError(f"{path}: row {row}, column '{column}' is empty; every caption must be non-empty")
            queries.append(record[column])
            relevant.append([record["file_name"]])
    return Relevance(queries=queries, relevant_files=relevant, source=path)


def check_ground_truth_options(command: str, relevance: object, captions: object) -> None:
    """A UserError unless exactly one of ``--relevance`` and ``--captions`` is given (checked before any work)."""
    if (relevance is None) == (captions is None):
        raise UserError(f"{command}: give exactly one of --relevance (multi-relevant) or --captions "
                        "(single-relevant)")


def read_ground_truth(command: str, relevance: str | Path | None = None,
                      captions: str | Path | None = None) -> Relevance:
    """The ground truth a command was given: exactly one of ``--relevance`` (multi-relevant) or ``--captions``.

    Args:
        command: the command's name, for the message.
        relevance: a multi-relevance CSV, or None.
        captions: a Clotho captions CSV, or None.

    Raises:
        UserError: both or neither given, or the file is not valid.
    """
    check_ground_truth_options(command, relevance, captions)
    return read_relevance_file(relevance) if relevance is not None else read_captions_file(captions)


def single_relevant(queries: list[str], files: list[str | None], source: str | Path,
                    present: set[str] | None = None) -> Relevance | None:
    """Each caption is a query whose one relevant file is its clip (the single-relevant setting).

    Args:
        queries: caption texts.
        files: each caption's clip (None: a caption without a clip, left out).
        source: what the pairs came from (a split index), for messages.
        present: if given, only captions of these clips are kept (clips the audio cache skipped are absent
            from the matrices).

    Returns:
        The ground truth, or None when no caption is left.
    """
    pairs = [(query, file) for query, file in zip(queries, files)
             if file is not None and (present is None or file in present)]
    if not pairs:
        return None
    return Relevance([query for query, _ in pairs], [[file] for _, file in pairs], Path(source))


def align(matrix: SimilarityMatrix, relevance: Relevance, allow_missing: bool = False,
          scores: np.ndarray | None = None) -> Alignment:
    """Match relevance queries to matrix rows by exact text.

    A query text on several prediction rows with identical scores (a text model gives the same
    caption the same row) counts as one row that every occurrence in the ground truth uses. Rows
    of the same text with different scores are matched k-th occurrence to k-th occurrence, and
    must then occur as often in the predictions as in the ground truth.

    ``scores`` (``(..., queries, files)``, default ``matrix.scores``) decides which repeated rows are
    identical: an ensemble search passes every system's scores, so rows count as one only when they
    are identical in all of them.
    """
    rows_by_query = _rows_by_query(matrix.queries, matrix.scores if scores is None else scores)
    column_of = {name: column for column, name in enumerate(matrix.files)}
    used: dict[str, int] = defaultdict(int)
    rows, relevant, missing = [], [], []
    for index, (query, files) in enumerate(zip(relevance.queries, relevance.relevant_files)):
        candidates = rows_by_query.get(query, [])
        occurrence = 0 if len(candidates) == 1 else used[query]
        used[query] += 1
        if occurrence >= len(candidates):
            missing.append(query)
            continue
        rows.append(candidates[occurrence])
        relevant.append([_column(column_of, name, relevance, index, matrix) for name in files])
    _check_missing(missing, relevance, allow_missing)
    _check_surplus(rows_by_query, used, relevance)
    if not rows:
        raise UserError(f"{relevance.source}: none of its queries appear in the predictions; nothing to score")
    return Alignment(rows=np.array(rows, dtype=np.int64), relevant=_pad(relevant), n_missing=len(missing))


def _rows_by_query(queries: list[str], scores: np.ndarray) -> dict[str, list[int]]:
    """Rows of each query text; repeated texts whose rows are all identical collapse to their first row."""
    rows_by_query: dict[str, list[int]] = defaultdict(list)
    for row, query in enumerate(queries):
        rows_by_query[query].append(row)
    for query, rows in rows_by_query.items():
        if len(rows) > 1 and (scores[..., rows, :] == scores[..., rows[:1], :]).all():
            rows_by_query[query] = rows[:1]
    return rows_by_query


def _parse_file_list(path: Path, row: int, literal: str) -> list[str]:
    try:
        files = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        files = None
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise UserError(f"{path}: row {row}: 'audio_filenames' is {literal!r}; expected a non-empty list "
                        "literal of file names like ['a.wav', 'b.wav']")
    if first_duplicate(files) is not None:
        raise UserError(f"{path}: row {row}: 'audio_filenames' lists a file twice; list each relevant file once")
    return files


def _reject_duplicate_queries(path: Path, queries: list[str]) -> None:
    repeated = first_duplicate(queries)
    if repeated is not None:
        raise UserError(f"{path}: rows {repeated.first + 2} and {repeated.second + 2} repeat the query "
                        f"{repeated.value!r}; merge their relevant files into one row")


def _column(column_of: dict[str, int], name: str, relevance: Relevance, index: int,
            matrix: SimilarityMatrix) -> int:
    if name not in column_of:
        raise UserError(f"{relevance.source}: query {relevance.queries[index]!r} lists audio file {name!r}, "
                        f"which is not a column of the predictions ({len(matrix.files)} files); "
                        "score every file of the evaluated split")
    return column_of[name]


def _check_missing(missing: list[str], relevance: Relevance, allow_missing: bool) -> None:
    if missing and not allow_missing:
        raise UserError(f"{relevance.source}: {len(missing)} of {len(relevance.queries)} queries are missing "
                        f"from the predictions, first {missing[0]!r}; add them or pass --allow-missing")


def _check_surplus(rows_by_query: dict[str, list[int]], used: dict[str, int], relevance: Relevance) -> None:
    for query, rows in rows_by_query.items():
        if len(rows) > 1 and len(rows) > used.get(query, 0):
            raise UserError(f"predictions: query {query!r} appears {len(rows)} times with different scores (rows "
                            f"{', '.join(str(r + 2) for r in rows)}) but {used.get(query, 0)} time(s) in "
                            f"{relevance.source}; remove the duplicate rows")


def _pad(relevant: list[list[int]]) -> np.ndarray:
    width = max(len(files) for files in relevant)
    padded = np.full((len(relevant), width), PADDING, dtype=np.int64)
    for row, columns in enumerate(relevant):
        padded[row, : len(columns)] = columns
    return padded
