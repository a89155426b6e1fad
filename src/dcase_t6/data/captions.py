"""Any captioned audio set from a CSV and a folder of audio (``prepare captions``): MACS, FSD50K-based caption
sets, your own recordings.

The CSV has a ``file_name`` column and either one or more caption columns (``caption``, ``caption_1``,
``caption_2``, ...: every column whose name starts with ``caption``) or one row per caption (a file name repeated).
Optional columns: ``split`` (rows without one get ``--split``, default ``train``, the split training reads when
``train_split`` names none of the set's splits) and ``sound_id`` or ``freesound_id`` (the set is then
Freesound-derived: every id of the DCASE 2025 forbidden list is excluded and counted, and ``prepare audit``
checks the ids). A file name is a path under the audio folder or a file name (with or without extension) found
anywhere under it. The index, its report (skipped files and rows, exclusions), the audio cache and its storage
modes are those of the built-in sets (``split_index.write_index``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import check_name
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import read_table
from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN, audio_files_by_stem, read_forbidden_ids, skip_empty_captions
from dcase_t6.data.layout import Layout
from dcase_t6.data.reports import IndexReport
from dcase_t6.data.split_index import AudioPolicy, IndexInput, current_report, fingerprint, write_index

BUILT_IN = ("clotho", "audiocaps", "wavcaps", "synthetic", "eval")  # their own `prepare` commands write these
ID_COLUMNS = ("sound_id", "freesound_id")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class CaptionSource:
    """A captioned set to index: its name, its captions CSV, its audio folder and the split of unsplit rows.

    Attributes:
        name: the dataset's name (``datasets: [clotho, NAME]`` in training): letters, digits, ``-`` and ``_``, not
            a built-in set's name.
        csv: the captions (see the module docstring for the columns).
        audio: the folder of the audio files.
        split: the split of rows without a ``split`` value.
    """

    name: str
    csv: Path
    audio: Path
    split: str = "train"


def prepare_captions(layout: Layout, source: CaptionSource, forbidden: Path = DEFAULT_FORBIDDEN, workers: int = 1,
                     reporter: Reporter = SILENT) -> IndexReport:
    """Index the captioned set ``source`` (its CSV and the audio under its folder).

    Args:
        layout: the data root.
        source: the set's name, captions CSV, audio folder and default split.
        forbidden: the forbidden Freesound ids CSV (used when the CSV has a Freesound id column).
        workers: threads checking the audio files.
        reporter: shows the bar over the files checked.

    Returns:
        The index report: clips/captions/hours per split, skipped files and rows, excluded forbidden ids.
    """
    name, csv, split = source.name, source.csv, source.split
    check_name(name, "--name (the dataset name)")
    if not _NAME.fullmatch(name) or name in BUILT_IN:
        raise UserError(f"--name {name!r}: expected letters, digits, '-' and '_' and not one of {', '.join(BUILT_IN)} "
                        "(their own `prepare` commands index those); e.g. --name macs")
    if not split or not _NAME.fullmatch(split):
        raise UserError(f"--split {split!r}: expected a split name of letters, digits, '-' and '_', e.g. train")
    frame = read_table(csv, ["file_name"])
    caption_columns = [column for column in frame.columns if column.lower().startswith("caption")]
    if not caption_columns:
        raise UserError(f"{csv}: no caption column (found {list(frame.columns)}); name it caption, or caption_1, "
                        "caption_2, ... for several captions per file")
    id_column = next((column for column in ID_COLUMNS if column in frame.columns), None)
    files = audio_files_by_stem(source.audio)
    key = fingerprint([csv, *files.values(), *([forbidden] if id_column else [])],
                      {"dataset": name, "kind": "captions", "split": split})
    report = current_report(layout, name, key)
    if report is not None:
        return report
    table = _caption_table(frame, source, caption_columns, id_column, files)
    extra: dict = {"excluded": {name: 0}, "freesound_derived": []}
    if id_column:
        forbidden_ids, ignored = read_forbidden_ids(forbidden)
        is_forbidden = table["sound_id"].isin(forbidden_ids)
        extra = {"excluded": {name: int(table.loc[is_forbidden, "audio_path"].nunique())}, "freesound_derived": [name],
                 "forbidden_ids": {"file": str(forbidden), "ids": len(forbidden_ids), "ignored_rows": ignored}}
        table = table[~is_forbidden]
    table, empty = skip_empty_captions(table, name)
    if table.empty:
        raise UserError(f"{csv}: no caption left (empty captions: {len(empty)}, forbidden ids: "
                        f"{extra['excluded'][name]}); check the caption columns")
    return write_index(layout, IndexInput(name, table, key, {**extra, "skipped_rows": empty}), AudioPolicy(), workers,
                       reporter)


def _caption_table(frame: pd.DataFrame, source: CaptionSource, caption_columns: list[str], id_column: str | None,
                   files: dict[str, Path]) -> pd.DataFrame:
    """One row per (file, caption) of ``source``'s CSV (read as ``frame``) in CSV order, captions numbered per file,
    audio paths resolved (``files``: the audio files found by stem)."""
    csv, name = source.csv, source.name
    names = frame["file_name"].str.strip()
    empty = names == ""
    if empty.any():
        row = int(empty.to_numpy().argmax()) + 2  # header = line 1
        raise UserError(f"{csv}: row {row}: empty file_name; fill it in or delete the row")
    splits = frame["split"].str.strip() if "split" in frame.columns else pd.Series("", index=frame.index)
    bad = ~(splits.eq("") | splits.str.fullmatch(_NAME.pattern))
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 2
        raise UserError(f"{csv}: row {row}: split {splits[bad].iloc[0]!r} is not a split name (letters, digits, '-' "
                        "and '_'); fix the split column")
    paths = [_audio_path(file_name, files, source.audio) for file_name in names]
    ids = frame[id_column].str.strip() if id_column else pd.Series("", index=frame.index)
    wide = pd.DataFrame({"row": range(len(frame)), "split": splits.where(splits != "", source.split).to_numpy(),
                         "audio_path": paths, "file_name": [path.name for path in paths], "sound_id": ids.to_numpy()})
    _check_one_path_per_name(wide, csv)
    long = pd.concat([wide.assign(caption=frame[column].to_numpy(), column=number)
                      for number, column in enumerate(caption_columns)], ignore_index=True)
    long = long.sort_values(["row", "column"], kind="stable").reset_index(drop=True)
    long = long[long["caption"].str.strip() != ""].reset_index(drop=True) if len(caption_columns) > 1 else long
    return pd.DataFrame({
        "dataset": name, "split": long["split"], "source": name, "file_name": long["file_name"],
        "caption_index": long.groupby("audio_path", sort=False).cumcount().to_numpy() + 1,
        "caption": long["caption"], "audio_path": long["audio_path"], "sound_id": long["sound_id"],
    })


def _audio_path(file_name: str, files: dict[str, Path], audio: Path) -> Path:
    """A path under the audio folder, else the file found by name (extension optional); else where it is missing."""
    direct = audio / file_name
    if direct.is_file():
        return direct
    stem = Path(file_name).stem if Path(file_name).suffix else file_name
    return files.get(Path(stem).name, direct)


def _check_one_path_per_name(table: pd.DataFrame, csv: Path) -> None:
    """Clips are keyed by file name: two audio files of one name (in different folders) are an error."""
    paths = table.drop_duplicates("audio_path")
    repeated = paths["file_name"].duplicated(keep=False)
    if repeated.any():
        first = paths[repeated].sort_values("file_name").iloc[:2]
        raise UserError(f"{csv}: rows {int(first['row'].iloc[0]) + 2} and {int(first['row'].iloc[1]) + 2} name two "
                        f"audio files called {first['file_name'].iloc[0]!r} ({first['audio_path'].iloc[0]}, "
                        f"{first['audio_path'].iloc[1]}); rename one of them")
