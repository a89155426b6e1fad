"""What the dataset adapters reading local folders share (AudioCaps, WavCaps): the DCASE 2025 forbidden
Freesound ids, audio files found by name, and items with an empty caption listed and skipped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.tables import read_table
from dcase_t6.data.audio_io import AUDIO_SUFFIXES

DEFAULT_FORBIDDEN = Path(__file__).with_name("dcase2025_task6_excluded_freesound_ids.csv")
FREESOUND_SOURCES = {"FreeSound"}


def read_forbidden_ids(path: Path) -> tuple[set[str], int]:
    """Forbidden Freesound ids (column ``sound_id``) and how many rows were not ids (e.g. 'Not found')."""
    ids = read_table(path, ["sound_id"])["sound_id"].str.strip()
    numeric = ids.str.fullmatch(r"\d+")
    if not numeric.any():
        raise UserError(f"{path}: no numeric Freesound id in column 'sound_id'; pass the DCASE forbidden-ids CSV")
    return set(ids[numeric]), int((~numeric).sum())


def audio_files_by_stem(folder: Path) -> dict[str, Path]:
    """Audio files under ``folder`` by file name without extension; two files with one stem is an error."""
    if not folder.is_dir():
        raise UserError(f"{folder}: audio folder not found; pass the folder holding the audio files")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    repeated = first_duplicate(path.stem for path in paths)
    if repeated is not None:
        raise UserError(f"{folder}: duplicate audio file name {repeated.value!r} ({paths[repeated.first]} and "
                        f"{paths[repeated.second]}); keep one of them")
    return {path.stem: path for path in paths}


def skip_empty_captions(table: pd.DataFrame, what: str) -> tuple[pd.DataFrame, list[dict]]:
    """The caption table without its empty captions, and those rows listed (``path``, ``reason``)."""
    empty = table["caption"].str.strip() == ""
    rows = [{"path": str(path), "reason": f"empty caption ({what})"} for path in table.loc[empty, "audio_path"]]
    return table[~empty], rows
