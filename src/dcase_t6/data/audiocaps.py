"""AudioCaps from local files: ``train.csv``, ``val.csv``, ``test.csv`` (``audiocap_id, youtube_id,
start_time, caption``) and a folder of audio files named after the YouTube id (``<id>.wav``,
``Y<id>.wav`` or ``<id>_<start>...``), any of WAV/FLAC/MP3/OGG, anywhere under it.

AudioCaps comes from YouTube (AudioSet): no item is Freesound-derived, so nothing is excluded. Items
whose caption is empty are listed and skipped, as are missing or unreadable audio files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import read_table
from dcase_t6.data.dataset_files import audio_files_by_stem, skip_empty_captions
from dcase_t6.data.layout import Layout
from dcase_t6.data.reports import IndexReport
from dcase_t6.data.split_index import AudioPolicy, IndexInput, current_report, fingerprint, write_index

AUDIOCAPS_SPLITS = ("train", "val", "test")
AUDIOCAPS_COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]


def prepare_audiocaps(layout: Layout, metadata: Path, audio: Path, workers: int = 1,
                      reporter: Reporter = SILENT) -> IndexReport:
    """Index AudioCaps from its CSVs and a local audio folder (no item is Freesound-derived)."""
    csvs = [metadata / f"{split}.csv" for split in AUDIOCAPS_SPLITS if (metadata / f"{split}.csv").is_file()]
    if not csvs:
        raise UserError(f"{metadata}: none of train.csv, val.csv, test.csv found; pass the AudioCaps metadata folder")
    files = audio_files_by_stem(audio)
    key = fingerprint([*csvs, *files.values()], {"dataset": "audiocaps"})
    report = current_report(layout, "audiocaps", key)
    if report is not None:
        return report
    tables = [_audiocaps_table(csv, _by_youtube_id(files), audio) for csv in csvs]
    table, empty = skip_empty_captions(pd.concat(tables, ignore_index=True), "AudioCaps")
    extra = {"excluded": {"audiocaps": 0}, "freesound_derived": [], "skipped_rows": empty}
    return write_index(layout, IndexInput("audiocaps", table, key, extra), AudioPolicy(), workers, reporter)


def _youtube_keys(stem: str) -> list[str]:
    """YouTube ids a file stem may stand for: '<id>', 'Y<id>', '<id>_<start>...', 'Y<id>_<start>...'."""
    keys = [stem]
    for start in (0, 1) if stem.startswith("Y") else (0,):
        if len(stem) >= start + 11 and (len(stem) == start + 11 or stem[start + 11] == "_"):
            keys.append(stem[start: start + 11])
    return keys


def _by_youtube_id(files: dict[str, Path]) -> dict[str, Path]:
    """Audio file of each YouTube id; two files for one id is an error."""
    pairs = list(dict.fromkeys((key, path) for stem, path in files.items() for key in _youtube_keys(stem)))
    repeated = first_duplicate(key for key, _ in pairs)
    if repeated is not None:
        raise UserError(f"{pairs[repeated.second][1]}: stands for the same YouTube id {repeated.value!r} as "
                        f"{pairs[repeated.first][1]}; keep one of them")
    return dict(pairs)


def _audiocaps_table(csv: Path, by_id: dict[str, Path], audio: Path) -> pd.DataFrame:
    frame = read_table(csv, AUDIOCAPS_COLUMNS)
    paths = [by_id.get(youtube_id, audio / f"{youtube_id}.wav") for youtube_id in frame["youtube_id"]]
    return pd.DataFrame({
        "dataset": "audiocaps", "split": csv.stem, "source": "audiocaps",
        "file_name": [path.name for path in paths],
        "caption_index": frame.groupby("youtube_id").cumcount().to_numpy() + 1,
        "caption": frame["caption"].to_numpy(), "audio_path": paths, "sound_id": "",
    })
