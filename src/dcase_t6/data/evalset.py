"""Evaluation set: the retrieval captions (queries) and the audio folder a submission must rank.

Every audio file must be usable (the submission needs a column for each), so an unreadable file is
an error rather than a skip; silent clips are kept. Queries go to ``DATA/index/eval.queries.csv``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import check_non_empty, read_table, write_table
from dcase_t6.data.audio_io import AUDIO_SUFFIXES
from dcase_t6.data.layout import Layout
from dcase_t6.data.reports import IndexReport
from dcase_t6.data.split_index import AudioPolicy, IndexInput, current_report, fingerprint, write_index

DATASET, SPLIT = "eval", "evaluation"


def prepare_eval(layout: Layout, captions: Path, audio: Path, workers: int = 1,
                 reporter: Reporter = SILENT) -> IndexReport:
    """Index the evaluation audio and store the queries (column ``caption``) for embed and package."""
    queries = read_table(captions, ["caption"])
    check_non_empty(captions, queries, ["caption"])
    files = audio_files(audio)
    key = fingerprint([captions, *files], {"dataset": DATASET})
    report = current_report(layout, DATASET, key)
    if report is not None and layout.queries_file(DATASET).is_file():
        return report
    write_table(queries[["caption"]], layout.queries_file(DATASET))
    table = pd.DataFrame({"dataset": DATASET, "split": SPLIT, "source": "eval", "file_name": [f.name for f in files],
                          "caption_index": "", "caption": "", "audio_path": files, "sound_id": ""})
    extra = {"queries": len(queries), "queries_file": str(layout.queries_file(DATASET))}
    return write_index(layout, IndexInput(DATASET, table, key, extra), AudioPolicy(keep_silent=True, strict=True),
                       workers, reporter)


def audio_files(folder: Path) -> list[Path]:
    """The evaluation clips under ``folder`` (sorted); fails when there is none or two share a file name."""
    if not folder.is_dir():
        raise UserError(f"{folder}: audio folder not found; pass the folder of evaluation clips with --audio")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no audio file ({', '.join(AUDIO_SUFFIXES)}); pass the evaluation audio folder")
    repeated = first_duplicate(path.name for path in files)
    if repeated is not None:
        raise UserError(f"{folder}: two clips named {repeated.value!r} ({files[repeated.first]} and "
                        f"{files[repeated.second]}); submission columns are file names, so each must be unique")
    return files
