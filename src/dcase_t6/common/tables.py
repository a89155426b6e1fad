"""CSV and JSON input/output with checks that name the file, row and column of any problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError

UTF8 = "utf-8-sig"
LATIN1 = "ISO-8859-1"


def read_table(path: Path, required: list[str], encoding: str = UTF8, fallback: str | None = None) -> pd.DataFrame:
    """Read a CSV as strings; fail on a missing file or column; try ``fallback`` if not ``encoding``."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, skip_blank_lines=False)
    except UnicodeDecodeError as err:
        if fallback is None:
            raise UserError(f"{path}: not {encoding} text ({err.reason}); save it as {encoding}") from None
        return read_table(path, required, fallback)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: cannot parse as CSV ({str(err).strip()})") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}; "
                        f"the file needs the columns {required}")
    return frame


def check_unique(path: Path, frame: pd.DataFrame, column: str) -> None:
    """Fail naming the CSV rows (1-based, header = row 1) of the first repeated value of ``column``."""
    repeated = frame[column][frame[column].duplicated(keep=False)]
    if len(repeated):
        value = repeated.iloc[0]
        rows = [str(i + 2) for i in frame.index[frame[column] == value]]
        raise UserError(f"{path}: {column} {value!r} appears in rows {', '.join(rows)}; "
                        f"each {column} must appear once ({repeated.nunique()} repeated value(s) in all)")


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


def write_json(payload: dict, path: Path) -> None:
    """Write a JSON file atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_json(path: Path) -> dict | None:
    """Read a JSON object, or None if the file is absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
