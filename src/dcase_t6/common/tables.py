"""The one CSV reader and writer, with checks that name the file, row and column of any problem (JSON documents:
:mod:`dcase_t6.common.jsonfile`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.duplicates import duplicates
from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file

UTF8 = "utf-8-sig"
LATIN1 = "ISO-8859-1"


def read_table(path: Path, required: list[str], encoding: str = UTF8, fallback: str | None = None,
               skip_blank_lines: bool = False) -> pd.DataFrame:
    """Read a CSV as strings; fail on a missing file or column; try ``fallback`` if not ``encoding``.

    Blank lines are rows (so row numbers in messages are line numbers) unless ``skip_blank_lines``.
    """
    require_file(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding,
                            skip_blank_lines=skip_blank_lines)
    except UnicodeDecodeError as err:
        if fallback is None:
            raise UserError(f"{path}: not {encoding} text ({err.reason}); save it as {encoding}") from None
        return read_table(path, required, fallback, skip_blank_lines=skip_blank_lines)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: cannot parse as CSV ({str(err).strip()})") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}; "
                        f"the file needs the columns {required}")
    return frame


def check_unique(path: Path, frame: pd.DataFrame, column: str) -> None:
    """Fail naming the CSV rows (1-based, header = row 1) of the first repeated value of ``column``."""
    repeated = duplicates(frame[column]) if frame[column].duplicated().any() else []
    if repeated:
        first = min(repeated, key=lambda duplicate: duplicate.first)
        rows = [str(position + 2) for position in first.positions]
        raise UserError(f"{path}: {column} {first.value!r} appears in rows {', '.join(rows)}; "
                        f"each {column} must appear once ({len(repeated)} repeated value(s) in all)")


def check_non_empty(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    """Fail naming the row and column of the first empty (or blank) cell in ``columns``."""
    blank = frame[columns].apply(lambda column: column.str.strip() == "").to_numpy()
    if blank.any():
        row, col = (int(i) for i in np.argwhere(blank)[0])
        raise UserError(f"{path}: row {row + 2}, column '{columns[col]}' is empty "
                        f"({int(blank.sum())} empty cell(s) in all); every caption must be non-empty")


def write_table(frame: pd.DataFrame, path: Path, encoding: str = "utf-8") -> None:
    """Write a CSV atomically (LF line ends, minimal quoting, no index column)."""
    with atomic_open(path, "w", encoding=encoding, newline="") as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")

