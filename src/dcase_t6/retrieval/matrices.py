"""Similarity matrices (queries x audio files): the submission CSV format and NumPy files."""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.atomic import atomic_open, atomic_path
from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file

INDEX_HEADER = "index"
# Longest query text or file name accepted (the csv module's default field limit): a longer cell is not a caption.
FIELD_LIMIT = 131072
# Largest matrix read, checked from the CSV header line (or the .npy headers) before any score is parsed, so memory
# and time stay bounded by what retrieval needs. The official sets are ~1,000 clips x ~5,000 captions (Clotho
# evaluation 1,045 x 5,225, AudioCaps test 975 x 4,875); 100,000 columns covers a WavCaps-scale held-out set, and
# 100 million scores (800 MB as float64) Clotho development as a whole (3,839 x 19,195 = 73.7 million).
MAX_FILES = 100_000
MAX_QUERIES = 500_000
MAX_SCORES = 100_000_000
_HEADER_SCAN = 256 << 20  # bytes of header line looked at: 100,000 file names need at most ~50 MB
_SIZE_FIX = (f"a similarity matrix has one column per clip and one row per caption of the retrieval set; this tool "
             f"reads at most {MAX_FILES:,} audio files, {MAX_QUERIES:,} queries and {MAX_SCORES:,} scores "
             "(score the evaluation split, e.g. Clotho's 1,045 clips x 5,225 captions)")
NPZ_ARRAYS = ("scores", "queries", "files")
_NPZ_FIX = "write it with numpy.savez(path, scores=<float matrix>, queries=<str array>, files=<str array>)"
_MAX_DEFLATE_RATIO = 1032  # deflate never expands data more than this: a member claiming more is corrupt
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
    require_file(path, "file not found; pass an existing similarity matrix (.csv or .npz)")
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
    _check_width(path)
    files = _read_header(path)
    most_rows = min(MAX_QUERIES, MAX_SCORES // len(files))
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", header=0, index_col=0, dtype={0: str},
                            keep_default_na=False, na_values=[], nrows=most_rows + 1, **_ROUND_TRIP)
    except pd.errors.ParserError as err:
        raise UserError(f"{path}: malformed CSV ({' '.join(str(err).split())}); every row needs 1 + {len(files)} "
                        "fields") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text after the header ({err.reason}); save the "
                        "CSV as UTF-8") from None
    if frame.shape[1] != len(files):
        raise UserError(f"{path}: found {frame.shape[1]} score columns but the header names {len(files)} files")
    if frame.shape[0] == 0:
        raise UserError(f"{path}: the header names {len(files)} audio files but no query rows follow; add one row "
                        "per query: '<caption>,<score 1>,<score 2>,...'")
    if frame.shape[0] > most_rows:
        raise UserError(f"{path}: more than {most_rows:,} query rows for {len(files):,} audio files (reading stopped "
                        f"at row {most_rows + 2:,}); {_SIZE_FIX}")
    queries = [str(q) for q in frame.index]
    empty = next((row for row, query in enumerate(queries, start=2) if not query.strip()), None)
    if empty is not None:
        raise UserError(f"{path}: row {empty} has an empty query text in column 1; every row needs its caption")
    _check_names(path, queries, "row {}, column 1 (the query text)", 2)
    scores = _numeric_scores(path, frame, files)
    matrix = SimilarityMatrix(queries=queries, files=files, scores=scores)
    _check_finite(scores, path, matrix)
    return matrix


def _check_width(path: Path) -> None:
    """Refuse a header naming more than MAX_FILES audio files, counted in the raw header line before it is parsed."""
    width, ended = _header_width(path)
    if width > MAX_FILES:
        count = f"{width:,}" if ended else f"more than {width:,}"
        raise UserError(f"{path}: the header names {count} audio files (columns), more than {MAX_FILES:,}; {_SIZE_FIX}")
    if not ended:
        raise UserError(f"{path}: row 1 (the header) is longer than {_HEADER_SCAN >> 20} MiB, far more than "
                        f"{MAX_FILES:,} audio file names need; expected 'index,<file 1>,<file 2>,...'")


def _header_width(path: Path) -> tuple[int, bool]:
    """Cells after the first in the header line and whether its end was reached, reading at most _HEADER_SCAN bytes.

    Counts the commas outside quoted cells as the csv module splits them (a quote opens a quoted cell only at the
    start of a cell; inside one, a quote closes it unless doubled), in 1 MiB binary reads: UTF-8 never uses the
    bytes of ``,``, ``"``, CR or LF inside a character, so the text need not be decoded.
    """
    commas, quoted, cell_start, seen = 0, False, True, 0
    with open(path, "rb") as handle:
        if handle.read(3) != b"\xef\xbb\xbf":
            handle.seek(0)
        while True:
            chunk = handle.read(1 << 20) if seen < _HEADER_SCAN else None
            if not chunk:
                return commas, chunk is not None  # the end of the file ends the header; None: the scan stopped
            seen += len(chunk)
            position, end = 0, -1
            while position < len(chunk):
                if quoted:
                    close = chunk.find(b'"', position)
                    if close < 0:
                        break
                    # a closing quote; a quote right after it is a doubled (escaped) one and reopens the cell
                    quoted, cell_start, position = False, True, close + 1
                    continue
                quote = chunk.find(b'"', position)
                if end < position:  # the first line break from here (found again only after one inside quotes)
                    end = min((i for i in (chunk.find(b"\n", position), chunk.find(b"\r", position)) if i >= 0),
                              default=len(chunk))
                if end < len(chunk) and (quote < 0 or end < quote):
                    return commas + chunk.count(b",", position, end), True
                stop = len(chunk) if quote < 0 else quote
                commas += chunk.count(b",", position, stop)
                if stop > position:
                    cell_start = chunk[stop - 1:stop] == b","
                if quote >= 0:
                    quoted, cell_start = cell_start, False
                    stop += 1
                position = stop


def _read_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle))
        except StopIteration:
            raise UserError(f"{path}: the file is empty; expected a header 'index,<file 1>,<file 2>,...'") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason}); save the CSV as UTF-8") from None
        except csv.Error as err:
            raise UserError(f"{path}: row 1 (the header) is not CSV ({err}); expected 'index,<file 1>,<file 2>,...' "
                            f"with names of at most {FIELD_LIMIT} characters") from None
    if not header or header[0].strip().lower() != INDEX_HEADER:
        first = header[0] if header else ""
        raise UserError(f"{path}: header cell 1 is {_show(first)}; the first header cell must be 'index'")
    files = header[1:]
    if not files:
        raise UserError(f"{path}: the header names no audio files; expected 'index,<file 1>,<file 2>,...'")
    _check_names(path, files, "header cell {} (an audio file name)", 2)
    _check_unique(path, files, "audio file column", offset=2)
    return files


def _check_names(path: Path, names: list[str], place: str, offset: int) -> None:
    """Every query text or file name must be non-empty text of at most FIELD_LIMIT characters, without NUL.

    ``place`` names the cell with a ``{}`` for its position (counted from ``offset``).
    """
    for position, name in enumerate(names, start=offset):
        if not name.strip():
            problem = "is empty"
        elif len(name) > FIELD_LIMIT:
            problem = f"is {len(name)} characters long (more than {FIELD_LIMIT}), not a caption or file name"
        elif "\0" in name:
            problem = "holds a NUL character (binary data, not text)"
        else:
            continue
        raise UserError(f"{path}: {place.format(position)} {problem}; every query and audio file needs a name of "
                        "plain text")


def _show(text: str, limit: int = 60) -> str:
    """``repr(text)``, shortened for a one-line message."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _check_unique(path: Path, names: list[str], what: str, offset: int) -> None:
    repeated = first_duplicate(names)
    if repeated is not None:
        raise UserError(f"{path}: duplicated {what} {_show(repeated.value)} (positions {repeated.first + offset} and "
                        f"{repeated.second + offset}); each must appear once")


def _numeric_scores(path: Path, frame: pd.DataFrame, files: list[str]) -> np.ndarray:
    bad_columns = [i for i, dtype in enumerate(frame.dtypes) if not pd.api.types.is_numeric_dtype(dtype)]
    if bad_columns:
        column = bad_columns[0]
        values = frame.iloc[:, column]
        bad_row = int(np.flatnonzero(pd.to_numeric(values, errors="coerce").isna().to_numpy())[0])
        cell = values.iloc[bad_row]
        what = "is empty (short row or missing score)" if cell == "" else f"holds {_show(cell, 30)}, not a number"
        raise UserError(f"{path}: row {bad_row + 2}, column {column + 2} ({_show(files[column])}) {what}; "
                        "every score must be a finite number")
    return frame.to_numpy(dtype=np.float64)


def _check_finite(scores: np.ndarray, path: Path, matrix: SimilarityMatrix) -> None:
    bad = ~np.isfinite(scores)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{path}: row {row + 2}, column {column + 2} ({_show(matrix.files[column])}) is "
                        f"{scores[row, column]}; every score must be a finite number")


def _read_npz(path: Path) -> SimilarityMatrix:
    """Read an .npz without pickles, checking every array's header before any memory is allocated for it."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: not an .npz (zip) archive ({err}); {_NPZ_FIX}") from None
    with archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        missing = [name for name in NPZ_ARRAYS if name not in members]
        if missing:
            raise UserError(f"{path}: missing arrays {missing}; an .npz needs scores, queries and files: {_NPZ_FIX}")
        scores, queries, files = (_read_member(path, archive, members[name], name) for name in NPZ_ARRAYS)
    for name, names in (("queries", queries), ("files", files)):
        if names.ndim != 1 or names.dtype.kind != "U":
            raise UserError(f"{path}: array {name!r} is {_describe(names)}; it must be a 1-D array of str "
                            f"(numpy.array(names, dtype=str)): {_NPZ_FIX}")
    if scores.ndim != 2 or scores.dtype.kind not in "iuf":
        raise UserError(f"{path}: array 'scores' is {_describe(scores)}; it must be a 2-D array of floats "
                        f"(queries x files): {_NPZ_FIX}")
    if scores.shape != (len(queries), len(files)) or not scores.size:
        raise UserError(f"{path}: array 'scores' has shape {scores.shape} but there are {len(queries)} queries and "
                        f"{len(files)} files; it must be (queries, files), neither empty: {_NPZ_FIX}")
    matrix = SimilarityMatrix(queries=queries.tolist(), files=files.tolist(),
                              scores=scores.astype(np.float64, copy=scores.dtype != np.float64))
    _check_names(path, matrix.queries, "entry {} of array 'queries'", 0)
    _check_names(path, matrix.files, "entry {} of array 'files'", 0)
    _check_unique(path, matrix.files, "audio file", offset=1)
    _check_finite(matrix.scores, path, matrix)
    return matrix


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """One .npy member: header checked (no objects, size consistent with the member), then exactly its bytes."""
    def corrupt(problem: str) -> UserError:
        return UserError(f"{path}: array {name!r} {problem}; the file is truncated or corrupt: {_NPZ_FIX}")

    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise corrupt(f"uses zip compression method {info.compress_type} (numpy writes stored or deflated)")
    if info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1) + 1024 or \
            (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size):
        raise corrupt(f"claims {info.file_size} bytes from {info.compress_size} stored bytes")
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise corrupt(f"has .npy format version {version[0]}.{version[1]} (numpy.savez writes 1.0 or 2.0)")
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(handle)
            if dtype.hasobject:
                raise UserError(f"{path}: array {name!r} holds Python objects (dtype {dtype}), which are never "
                                f"unpickled; save numbers and str arrays instead: {_NPZ_FIX}")
            count = math.prod(shape)
            size = count * dtype.itemsize
            if size > info.file_size:
                raise corrupt(f"declares shape {shape} of {dtype} ({size} bytes) but the member holds "
                              f"{info.file_size} bytes")
            too_big = _too_big(name, shape)
            if too_big:
                raise UserError(f"{path}: array {name!r} has shape {shape}: {too_big}; {_SIZE_FIX}")
            buffer = bytearray(size)
            if handle.readinto(buffer) != size or handle.read(1):  # reading to the end checks the CRC
                raise corrupt(f"does not hold exactly the {size} bytes of its shape {shape}")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as err:
        raise corrupt(f"cannot be read ({' '.join(str(err).split())})") from None
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def _too_big(name: str, shape: tuple[int, ...]) -> str | None:
    """Which bound an .npz array's header shape exceeds (MAX_FILES, MAX_QUERIES, MAX_SCORES), or None."""
    if name == "scores" and len(shape) == 2:
        rows, files = shape
    elif name in ("queries", "files") and len(shape) == 1:
        rows, files = (shape[0], 0) if name == "queries" else (0, shape[0])
    else:
        return None  # a wrong number of dimensions is reported once the arrays are read
    if files > MAX_FILES:
        return f"{files:,} audio files, more than {MAX_FILES:,}"
    if rows > MAX_QUERIES:
        return f"{rows:,} queries, more than {MAX_QUERIES:,}"
    if rows * files > MAX_SCORES:
        return f"{rows * files:,} scores, more than {MAX_SCORES:,}"
    return None


def _describe(array: np.ndarray) -> str:
    return f"{array.ndim}-D of dtype {array.dtype} (shape {array.shape})"
