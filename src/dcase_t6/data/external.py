"""External training data from local folders: AudioCaps (CSV) and WavCaps (JSON), with the
DCASE 2025 forbidden Freesound ids removed.

AudioCaps: ``train.csv``, ``val.csv``, ``test.csv`` (``audiocap_id, youtube_id, start_time, caption``);
audio files named after the YouTube id (``<id>.wav``, ``Y<id>.wav`` or ``<id>_<start>...``), any of
WAV/FLAC/MP3/OGG, anywhere under the audio folder. AudioCaps comes from YouTube (AudioSet): no item is
Freesound-derived.

WavCaps: ``json_files/<Source>/<x>_final.json`` (``{"data": [{"id", "caption", ...}]}``) and audio in
``<audio>/<Source>/<id>.flac``. The FreeSound source is Freesound-derived: its ``id`` is the Freesound
sound id, and every id in the forbidden list is excluded.

Items whose caption is empty are listed and skipped, as are missing or unreadable audio files; the
counts excluded per source are printed and stored in the index report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dcase_t6.data.audio_io import AUDIO_SUFFIXES
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import AudioPolicy, current_report, fingerprint, write_index
from dcase_t6.common.tables import read_table
from dcase_t6.common.errors import UserError

DEFAULT_FORBIDDEN = Path(__file__).with_name("dcase2025_task6_excluded_freesound_ids.csv")
AUDIOCAPS_SPLITS = ("train", "val", "test")
AUDIOCAPS_COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]
WAVCAPS_SOURCES = {"as_final.json": "AudioSet_SL", "bbc_final.json": "BBC_Sound_Effects",
                   "fsd_final.json": "FreeSound", "sb_final.json": "SoundBible"}
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
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        if path.stem in found:
            raise UserError(f"{folder}: duplicate audio file name {path.stem!r} ({found[path.stem]} and {path}); "
                            "keep one of them")
        found[path.stem] = path
    return found


def _youtube_keys(stem: str) -> list[str]:
    """YouTube ids a file stem may stand for: '<id>', 'Y<id>', '<id>_<start>...', 'Y<id>_<start>...'."""
    keys = [stem]
    for start in (0, 1) if stem.startswith("Y") else (0,):
        if len(stem) >= start + 11 and (len(stem) == start + 11 or stem[start + 11] == "_"):
            keys.append(stem[start: start + 11])
    return keys


def _by_youtube_id(files: dict[str, Path]) -> dict[str, Path]:
    """Audio file of each YouTube id; two files for one id is an error."""
    found: dict[str, Path] = {}
    for stem, path in files.items():
        for key in _youtube_keys(stem):
            if found.setdefault(key, path) != path:
                raise UserError(f"{path}: stands for the same YouTube id {key!r} as {found[key]}; keep one of them")
    return found


def _skip_empty(table: pd.DataFrame, what: str) -> tuple[pd.DataFrame, list[dict]]:
    empty = table["caption"].str.strip() == ""
    rows = [{"path": str(path), "reason": f"empty caption ({what})"} for path in table.loc[empty, "audio_path"]]
    return table[~empty], rows


def prepare_audiocaps(layout: Layout, metadata: Path, audio: Path, workers: int = 1) -> dict:
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
    table, empty = _skip_empty(pd.concat(tables, ignore_index=True), "AudioCaps")
    extra = {"excluded": {"audiocaps": 0}, "freesound_derived": [], "skipped_rows": empty}
    return write_index(layout, "audiocaps", table, AudioPolicy(), workers, key, extra)


def _audiocaps_table(csv: Path, by_id: dict[str, Path], audio: Path) -> pd.DataFrame:
    frame = read_table(csv, AUDIOCAPS_COLUMNS)
    paths = [by_id.get(youtube_id, audio / f"{youtube_id}.wav") for youtube_id in frame["youtube_id"]]
    return pd.DataFrame({
        "dataset": "audiocaps", "split": csv.stem, "source": "audiocaps",
        "file_name": [path.name for path in paths],
        "caption_index": frame.groupby("youtube_id").cumcount().to_numpy() + 1,
        "caption": frame["caption"].to_numpy(), "audio_path": paths, "sound_id": "",
    })


def prepare_wavcaps(layout: Layout, json_dir: Path, audio: Path, forbidden: Path = DEFAULT_FORBIDDEN,
                    workers: int = 1) -> dict:
    """Index WavCaps from its JSON files and local audio, without the forbidden Freesound ids."""
    json_files = sorted(json_dir.rglob("*.json")) if json_dir.is_dir() else []
    if not json_files:
        raise UserError(f"{json_dir}: no WavCaps JSON file found; pass the json_files folder of WavCaps")
    forbidden_ids, ignored = read_forbidden_ids(forbidden)
    key = fingerprint([*json_files, forbidden, *(p for p in audio.rglob("*") if p.is_file())],
                      {"dataset": "wavcaps"})
    report = current_report(layout, "wavcaps", key)
    if report is not None:
        return report
    tables, excluded = [], {}
    for json_file in json_files:
        source = WAVCAPS_SOURCES.get(json_file.name, json_file.parent.name)
        table = _wavcaps_table(json_file, source, audio / source if (audio / source).is_dir() else audio)
        is_forbidden = table["sound_id"].isin(forbidden_ids) & (source in FREESOUND_SOURCES)
        excluded[source] = excluded.get(source, 0) + int(is_forbidden.sum())
        tables.append(table[~is_forbidden])
    table, empty = _skip_empty(pd.concat(tables, ignore_index=True), "WavCaps")
    extra = {"excluded": excluded, "freesound_derived": sorted(FREESOUND_SOURCES & set(excluded)),
             "forbidden_ids": {"file": str(forbidden), "ids": len(forbidden_ids), "ignored_rows": ignored},
             "skipped_rows": empty}
    return write_index(layout, "wavcaps", table, AudioPolicy(), workers, key, extra)


def _wavcaps_table(json_file: Path, source: str, audio: Path) -> pd.DataFrame:
    try:
        items = json.loads(json_file.read_text(encoding="utf-8"))["data"]
        ids = [str(item["id"]) for item in items]
        captions = [str(item["caption"]) for item in items]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{json_file}: not a WavCaps JSON ({type(err).__name__}: {err}); expected "
                        '{"data": [{"id": ..., "caption": ...}, ...]}') from None
    files = audio_files_by_stem(audio)
    stems = [Path(item_id).stem if item_id.endswith(AUDIO_SUFFIXES) else item_id for item_id in ids]
    paths = [files.get(stem, audio / f"{stem}.flac") for stem in stems]
    return pd.DataFrame({
        "dataset": "wavcaps", "split": "train", "source": source, "file_name": [path.name for path in paths],
        "caption_index": 1, "caption": captions, "audio_path": paths,
        "sound_id": stems if source in FREESOUND_SOURCES else "",
    })
