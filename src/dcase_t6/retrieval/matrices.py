"""Similarity matrices (queries x audio files): the submission CSV format and NumPy files."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.atomic import atomic_open, atomic_path
from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError

INDEX_HEADER = "index"
# pandas >= 3 parses floats round-trip exactly by default and deprecates asking for it.
_ROUND_TRIP = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


@dataclass(frozen=True)
class SimilarityMatrix:
    """Scores of every query (row) against every audio file (column); higher = more relevant."""

    queries: list[str]
    files: list[str]
    scores: np.ndarray

    def __post_init__(self):
        if self.scores.shape != (len(self.queries), len(self.files)):
            raise ValueError(
                f"scores shape {self.scores.shape} != ({len(self.queries)} queries, {len(self.files)} files)"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape


def read_matrix(path: str | Path) -> SimilarityMatrix:
    """Read a similarity matrix from a submission CSV or an ``.npz`` (scores, queries, files)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass an existing similarity matrix (.csv or .npz)")
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".npy":
        raise UserError(f"{path}: a bare .npy has no query or file names; save an .npz with arrays scores, queries, "
                        "files")
    return read_csv(path)


def write_matrix(matrix: SimilarityMatrix, path: str | Path) -> None:
    """Write ``matrix`` atomically as CSV or ``.npz``, chosen by the file suffix."""
    path = Path(path)
    if path.suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, scores=matrix.scores, queries=np.array(matrix.queries, dtype=str),
                         files=np.array(matrix.files, dtype=str))
    else:
        write_csv(matrix, path)


def write_csv(matrix: SimilarityMatrix, path: str | Path) -> None:
    """Write the submission CSV: header ``index`` + file names, then one row per query.

    Names are quoted by the csv module (commas, quotes, newlines); numbers use Python's shortest
    round-trip repr so reading the file back gives the exact same float64 values.
    """
    _check_finite(matrix.scores, Path(path), matrix)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(_csv_line([INDEX_HEADER, *matrix.files]))
        for query, row in zip(matrix.queries, np.asarray(matrix.scores, dtype=np.float64).tolist()):
            handle.write(_csv_line([query]).rstrip("\r\n"))
            handle.write("," + ",".join(map(repr, row)) + "\r\n")


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()


def read_csv(path: str | Path) -> SimilarityMatrix:
    """Read and validate a submission CSV; any problem raises a UserError naming row and column."""
    path = Path(path)
    files = _read_header(path)
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", header=0, index_col=0, dtype={0: str},
                            keep_default_na=False, na_values=[], **_ROUND_TRIP)
    except pd.errors.ParserError as err:
        raise UserError(f"{path}: malformed CSV ({str(err).strip()}); every row needs 1 + {len(files)} "
                        "fields") from None
    if frame.shape[1] != len(files):
        raise UserError(f"{path}: found {frame.shape[1]} score columns but the header names {len(files)} files")
    queries = [str(q) for q in frame.index]
    _check_queries(path, queries)
    scores = _numeric_scores(path, frame, files)
    matrix = SimilarityMatrix(queries=queries, files=files, scores=scores)
    _check_finite(scores, path, matrix)
    return matrix


def _read_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle))
        except StopIteration:
            raise UserError(f"{path}: the file is empty; expected a header 'index,<file 1>,<file 2>,...'") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason}); save the CSV as UTF-8") from None
    if not header or header[0].strip().lower() != INDEX_HEADER:
        first = header[0] if header else ""
        raise UserError(f"{path}: header cell 1 is {first!r}; the first header cell must be 'index'")
    files = header[1:]
    if not files:
        raise UserError(f"{path}: the header names no audio files; expected 'index,<file 1>,<file 2>,...'")
    _check_unique(path, files, "audio file column", offset=2)
    return files


def _check_queries(path: Path, queries: list[str]) -> None:
    for row, query in enumerate(queries, start=2):
        if not query.strip():
            raise UserError(f"{path}: row {row} has an empty query text in column 1; every row needs its caption")


def _check_unique(path: Path, names: list[str], what: str, offset: int) -> None:
    repeated = first_duplicate(names)
    if repeated is not None:
        raise UserError(f"{path}: duplicated {what} {repeated.value!r} (positions {repeated.first + offset} and "
                        f"{repeated.second + offset}); each must appear once")


def _numeric_scores(path: Path, frame: pd.DataFrame, files: list[str]) -> np.ndarray:
    bad_columns = [i for i, dtype in enumerate(frame.dtypes) if not pd.api.types.is_numeric_dtype(dtype)]
    if bad_columns:
        column = bad_columns[0]
        values = frame.iloc[:, column]
        bad_row = int(np.flatnonzero(pd.to_numeric(values, errors="coerce").isna().to_numpy())[0])
        cell = values.iloc[bad_row]
        what = "is empty (short row or missing score)" if cell == "" else f"holds {cell!r}, not a number"
        raise UserError(f"{path}: row {bad_row + 2}, column {column + 2} ({files[column]!r}) {what}; "
                        "every score must be a finite number")
    return frame.to_numpy(dtype=np.float64)


def _check_finite(scores: np.ndarray, path: Path, matrix: SimilarityMatrix) -> None:
    bad = ~np.isfinite(scores)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{path}: row {row + 2}, column {column + 2} ({matrix.files[column]!r}) is "
                        f"{scores[row, column]}; every score must be a finite number")


def _read_npz(path: Path) -> SimilarityMatrix:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"scores", "queries", "files"} - set(data.files)
            if missing:
                raise UserError(f"{path}: missing arrays {sorted(missing)}; an .npz needs scores, queries and files")
            matrix = SimilarityMatrix(queries=[str(q) for q in data["queries"]],
                                      files=[str(f) for f in data["files"]],
                                      scores=np.asarray(data["scores"], dtype=np.float64))
    except (ValueError, OSError) as err:
        raise UserError(f"{path}: cannot read as .npz ({err}); write it with numpy.savez") from None
    _check_unique(path, matrix.files, "audio file", offset=1)
    _check_finite(matrix.scores, path, matrix)
    return matrix
