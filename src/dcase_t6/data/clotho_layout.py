"""Read a dataset in the Clotho layout (captions and metadata CSVs, ``audio/<part>/``) into a split index.

Used for the real Clotho v2.1 and for the synthetic demo data, so both go through the same checks.
Captions CSVs are read as UTF-8 (ISO-8859-1 if they are not valid UTF-8), metadata CSVs as ISO-8859-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import LATIN1, UTF8, check_non_empty, check_unique, read_table
from dcase_t6.data.layout import CLOTHO_PARTS, CLOTHO_SAMPLE_RATE, Layout
from dcase_t6.data.reports import IndexReport
from dcase_t6.data.split_index import AudioPolicy, IndexInput, current_report, fingerprint, write_index

CAPTION_FIELDS = [f"caption_{i}" for i in range(1, 6)]
METADATA_FIELDS = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"]


def read_captions_csv(path: Path) -> pd.DataFrame:
    """Clotho captions CSV: ``file_name``, ``caption_1..5``; unique names, no empty caption."""
    frame = read_table(path, ["file_name", *CAPTION_FIELDS], encoding=UTF8, fallback=LATIN1)
    check_non_empty(path, frame, ["file_name", *CAPTION_FIELDS])
    check_unique(path, frame, "file_name")
    return frame


def read_metadata_csv(path: Path) -> pd.DataFrame:
    """Clotho metadata CSV (ISO-8859-1): ``file_name`` and ``sound_id`` are required, names unique."""
    frame = read_table(path, ["file_name", "sound_id"], encoding=LATIN1)
    check_unique(path, frame, "file_name")
    return frame


def caption_table(layout: Layout, dataset: str) -> pd.DataFrame:
    """Long table of every (clip, caption) of every part present, with DCASE split names."""
    parts = [part for part in CLOTHO_PARTS if layout.captions_csv(dataset, part).is_file()]
    if not parts:
        raise UserError(f"{layout.dataset_dir(dataset)}: no clotho_captions_<part>.csv found; "
                        f"run `dcase-t6 prepare {dataset} --root {layout.root}` first")
    return pd.concat([_part_table(layout, dataset, part) for part in parts], ignore_index=True)


def _part_table(layout: Layout, dataset: str, part: str) -> pd.DataFrame:
    captions = read_captions_csv(layout.captions_csv(dataset, part))
    metadata_path = layout.metadata_csv(dataset, part)
    sound_ids = (read_metadata_csv(metadata_path).set_index("file_name")["sound_id"]
                 if metadata_path.is_file() else pd.Series(dtype=str))
    audio_dir = layout.audio_dir(dataset, part)
    names = captions["file_name"].to_numpy()
    return pd.DataFrame({
        "dataset": dataset,
        "split": CLOTHO_PARTS[part],
        "source": part,
        "file_name": np.repeat(names, len(CAPTION_FIELDS)),
        "caption_index": np.tile(np.arange(1, len(CAPTION_FIELDS) + 1), len(names)),
        "caption": captions[CAPTION_FIELDS].to_numpy().ravel(),
        "audio_path": np.repeat(np.array([audio_dir / name for name in names], dtype=object), len(CAPTION_FIELDS)),
        "sound_id": np.repeat(sound_ids.reindex(names).fillna("").to_numpy(), len(CAPTION_FIELDS)),
    })


def index_clotho_layout(layout: Layout, dataset: str, workers: int, reporter: Reporter = SILENT) -> IndexReport:
    """Write the split index of a Clotho-layout dataset (no-op when its inputs did not change)."""
    inputs = [path for part in CLOTHO_PARTS
              for path in (layout.captions_csv(dataset, part), layout.metadata_csv(dataset, part)) if path.is_file()]
    audio_files = [path for part in CLOTHO_PARTS if layout.audio_dir(dataset, part).is_dir()
                   for path in layout.audio_dir(dataset, part).iterdir()]
    key = fingerprint([*inputs, *audio_files], {"dataset": dataset, "kind": "clotho-layout"})
    report = current_report(layout, dataset, key)
    if report is not None:
        return report
    table = caption_table(layout, dataset)
    return write_index(layout, IndexInput(dataset, table, key), AudioPolicy(sample_rate=CLOTHO_SAMPLE_RATE), workers,
                       reporter)
