"""WavCaps from local files, without the DCASE 2025 forbidden Freesound ids.

``json_files/<Source>/<x>_final.json`` (``{"data": [{"id", "caption", ...}]}``) and audio in
``<audio>/<Source>/<id>.flac``. The FreeSound source is Freesound-derived: its ``id`` is the Freesound
sound id, and every id in the forbidden list is excluded. Items whose caption is empty are listed and
skipped, as are missing or unreadable audio files; the counts excluded per source are printed and
stored in the index report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.audio_io import AUDIO_SUFFIXES
from dcase_t6.data.dataset_files import (
    DEFAULT_FORBIDDEN,
    FREESOUND_SOURCES,
    audio_files_by_stem,
    read_forbidden_ids,
    skip_empty_captions,
)
from dcase_t6.data.layout import Layout
from dcase_t6.data.reports import IndexReport
from dcase_t6.data.split_index import AudioPolicy, IndexInput, current_report, fingerprint, write_index

WAVCAPS_SOURCES = {"as_final.json": "AudioSet_SL", "bbc_final.json": "BBC_Sound_Effects",
                   "fsd_final.json": "FreeSound", "sb_final.json": "SoundBible"}
_EXPECTED = 'expected {"data": [{"id": ..., "caption": ...}, ...]}'


@dataclass(frozen=True)
class WavCapsSource:
    """Where a local copy of WavCaps lies.

    Attributes:
        json_dir: its ``json_files`` folder (``<Source>/*_final.json``).
        audio: its audio folder (``<Source>/<id>.flac``).
    """

    json_dir: Path
    audio: Path


def prepare_wavcaps(layout: Layout, source: WavCapsSource, forbidden: Path = DEFAULT_FORBIDDEN, workers: int = 1,
                    reporter: Reporter = SILENT) -> IndexReport:
    """Index WavCaps from its JSON files and local audio, without the forbidden Freesound ids."""
    json_dir, audio = source.json_dir, source.audio
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
        part = WAVCAPS_SOURCES.get(json_file.name, json_file.parent.name)
        table = _wavcaps_table(json_file, part, audio / part if (audio / part).is_dir() else audio)
        is_forbidden = table["sound_id"].isin(forbidden_ids) & (part in FREESOUND_SOURCES)
        excluded[part] = excluded.get(part, 0) + int(is_forbidden.sum())
        tables.append(table[~is_forbidden])
    table, empty = skip_empty_captions(pd.concat(tables, ignore_index=True), "WavCaps")
    extra = {"excluded": excluded, "freesound_derived": sorted(FREESOUND_SOURCES & set(excluded)),
             "forbidden_ids": {"file": str(forbidden), "ids": len(forbidden_ids), "ignored_rows": ignored},
             "skipped_rows": empty}
    return write_index(layout, IndexInput("wavcaps", table, key, extra), AudioPolicy(), workers, reporter)


def _wavcaps_table(json_file: Path, source: str, audio: Path) -> pd.DataFrame:
    document = read_json(json_file, f"pass the json_files folder of WavCaps ({_EXPECTED})")
    try:
        items = document["data"]
        ids = [str(item["id"]) for item in items]
        captions = [str(item["caption"]) for item in items]
    except (KeyError, TypeError) as err:
        raise UserError(f"{json_file}: not a WavCaps JSON ({type(err).__name__}: {err}); {_EXPECTED}") from None
    files = audio_files_by_stem(audio)
    stems = [Path(item_id).stem if item_id.endswith(AUDIO_SUFFIXES) else item_id for item_id in ids]
    paths = [files.get(stem, audio / f"{stem}.flac") for stem in stems]
    return pd.DataFrame({
        "dataset": "wavcaps", "split": "train", "source": source, "file_name": [path.name for path in paths],
        "caption_index": 1, "caption": captions, "audio_path": paths,
        "sound_id": stems if source in FREESOUND_SOURCES else "",
    })
