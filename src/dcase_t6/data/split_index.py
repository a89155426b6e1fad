"""Split index: one row per (clip, caption) with the audio facts training and embedding need.

Every dataset adapter (Clotho layout, AudioCaps, WavCaps, evaluation set) builds a caption table
(``CAPTION_COLUMNS``, ``audio_path`` absolute) and hands it to :func:`write_index`, which checks every
audio file once, lists and drops unusable ones, and writes ``DATA/index/<dataset>.csv`` and its report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import read_table, write_table
from dcase_t6.data.audio_io import AudioInfo, AudioProblem, inspect_audio
from dcase_t6.data.layout import Layout
from dcase_t6.data.parallel import ordered_map
from dcase_t6.data.reports import IndexReport

INDEX_COLUMNS = ["dataset", "split", "source", "file_name", "caption_index", "caption", "path",
                 "duration_s", "n_samples", "sample_rate", "sound_id"]
CAPTION_COLUMNS = ["dataset", "split", "source", "file_name", "caption_index", "caption", "audio_path", "sound_id"]


@dataclass(frozen=True)
class AudioPolicy:
    """Which audio files an index accepts: a required sample rate, whether silent clips are kept, and
    whether any unusable file is an error (``strict``: a set that needs every file) instead of a skip."""

    sample_rate: int | None = None
    keep_silent: bool = False
    strict: bool = False

    def problem(self, info: AudioInfo) -> str | None:
        """Why ``info`` is unacceptable, or None."""
        if info.silent and not self.keep_silent:
            return "silent (every sample is zero)"
        if self.sample_rate and info.sample_rate != self.sample_rate:
            return f"sample rate {info.sample_rate} Hz, expected {self.sample_rate} Hz"
        return None


@dataclass(frozen=True)
class IndexInput:
    """What one dataset's index is written from.

    Attributes:
        dataset: the dataset's name (its index and report files are named after it).
        table: its caption table (``CAPTION_COLUMNS``, ``audio_path`` absolute).
        key: the fingerprint of the inputs the table was built from (kept in the report).
        extra: the dataset's optional :class:`IndexReport` fields (exclusions, skipped rows, queries).
    """

    dataset: str
    table: pd.DataFrame
    key: str
    extra: dict | None = None


@dataclass(frozen=True)
class Split:
    """The clips and the queries of one split, ready for embedding."""

    dataset: str
    split: str
    files: list[str]
    paths: list[Path]
    queries: list[str]
    query_files: list[str | None]


def fingerprint(files: Iterable[Path], params: dict) -> str:
    """Cheap identity of the inputs: names, sizes and modification times of ``files`` plus ``params``."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode())
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def current_report(layout: Layout, dataset: str, key: str) -> IndexReport | None:
    """The stored report if the index of ``dataset`` was built from inputs with fingerprint ``key``, else None."""
    path = layout.report_file(dataset)
    if not (path.is_file() and layout.index_file(dataset).is_file()):
        return None
    stored = read_json(path, f"delete it and re-run `dcase-t6 prepare {dataset}` to rebuild the index")
    if not isinstance(stored, dict) or stored.get("fingerprint") != key:
        return None
    return IndexReport.from_document(stored, up_to_date=True)


def write_index(layout: Layout, source: IndexInput, policy: AudioPolicy, workers: int,
                reporter: Reporter = SILENT) -> IndexReport:
    """Check the audio of ``source.table`` (in ``workers`` threads), drop (and list) the files ``policy`` refuses,
    write the index and its report."""
    dataset, table = source.dataset, source.table
    paths = list(dict.fromkeys(table["audio_path"]))
    infos, skipped = inspect_files(paths, workers, policy, reporter)
    if policy.strict and skipped:
        first = skipped[0]
        raise UserError(f"{first['path']}: {first['reason']} ({len(skipped)} unusable file(s) in all); "
                        "every file of this set is needed: replace or re-extract it")
    kept = table[table["audio_path"].isin(infos.keys())]
    if kept.empty:
        raise UserError(f"{dataset}: no usable audio file ({len(skipped)} skipped, first: "
                        f"{skipped[0]['path'] if skipped else '-'}); check the audio folder")
    index = _index_frame(layout, kept, infos)
    write_table(index, layout.index_file(dataset))
    report = IndexReport(dataset=dataset, index=str(layout.index_file(dataset)),
                         report=str(layout.report_file(dataset)), fingerprint=source.key,
                         splits=_split_counts(index), skipped=skipped, up_to_date=False, **(source.extra or {}))
    write_json(report.document(), layout.report_file(dataset))
    return report


def inspect_files(paths: list[Path], workers: int, policy: AudioPolicy,
                  reporter: Reporter = SILENT) -> tuple[dict[Path, AudioInfo], list[dict]]:
    """Check every file (in threads): usable ones map to their info, the others are listed with why."""
    infos: dict[Path, AudioInfo] = {}
    skipped: list[dict] = []
    with ThreadPoolExecutor(max(1, workers)) as pool, reporter.task("checking audio", len(paths)) as task:
        for path, outcome in zip(paths, ordered_map(pool, _inspect, paths, 64 * max(1, workers))):
            reason = outcome if isinstance(outcome, str) else policy.problem(outcome)
            if reason is None:
                infos[path] = outcome
            else:
                skipped.append({"path": str(path), "reason": reason})
            task.advance()
    return infos, skipped


def _inspect(path: Path) -> AudioInfo | str:
    if not path.is_file():
        return "missing audio file"
    try:
        return inspect_audio(path)
    except AudioProblem as problem:
        return str(problem)


def _index_frame(layout: Layout, table: pd.DataFrame, infos: dict[Path, AudioInfo]) -> pd.DataFrame:
    facts = pd.DataFrame([(path, layout.relative(path), round(info.duration_s, 6), info.n_samples, info.sample_rate)
                          for path, info in infos.items()],
                         columns=["audio_path", "path", "duration_s", "n_samples", "sample_rate"])
    return table.merge(facts, on="audio_path", how="left", validate="many_to_one")[INDEX_COLUMNS]


def _split_counts(index: pd.DataFrame) -> dict:
    groups = index.groupby("split", sort=False)
    clips = groups["path"].nunique()
    hours = index.drop_duplicates("path").groupby("split", sort=False)["duration_s"].sum() / 3600
    return {split: {"clips": int(clips[split]), "captions": int((groups.get_group(split)["caption"] != "").sum()),
                    "hours": round(float(hours[split]), 3)} for split in clips.index}


def index_path(root: str | Path, dataset: str) -> Path:
    """The split index CSV of ``dataset``; fails with the fix when it was not prepared."""
    path = Layout.at(root).index_file(dataset)
    if not path.is_file():
        raise UserError(f"{path}: no index for dataset {dataset!r}; run `dcase-t6 prepare` for it first "
                        f"(found: {', '.join(list_datasets(root)) or 'none'})")
    return path


def read_index(root: str | Path, dataset: str, split: str | None = None) -> pd.DataFrame:
    """Read a split index (optionally one split) with absolute ``path`` values."""
    layout = Layout.at(root)
    path = index_path(root, dataset)
    frame = read_table(path, INDEX_COLUMNS)
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            splits = sorted(set(read_table(path, ["split"])["split"]))
            raise UserError(f"{path}: no rows for split {split!r}; splits: {splits}")
    frame = frame.astype({"n_samples": int, "sample_rate": int, "duration_s": float})
    absolute = frame["path"].where(frame["path"].str.startswith("/"), f"{layout.root}/" + frame["path"])
    return frame.assign(path=absolute).reset_index(drop=True)


def list_datasets(root: str | Path) -> list[str]:
    """Names of the datasets that have a split index under ``root``."""
    folder = Layout.at(root).root / "index"
    return sorted(p.name[: -len(".csv")] for p in folder.glob("*.csv") if not p.name.endswith(".queries.csv"))


def load_split(root: str | Path, dataset: str, split: str) -> Split:
    """Files (index order) and queries of a split; queries come from the captions or the query list."""
    layout = Layout.at(root)
    frame = read_index(root, dataset, split)
    clips = frame.drop_duplicates("file_name")
    captions = frame[frame["caption"] != ""]
    if captions.empty:
        queries = read_table(layout.queries_file(dataset), ["caption"])["caption"].tolist()
        query_files: list[str | None] = [None] * len(queries)
    else:
        queries, query_files = captions["caption"].tolist(), captions["file_name"].tolist()
    return Split(dataset=dataset, split=split, files=clips["file_name"].tolist(),
                 paths=[Path(p) for p in clips["path"]], queries=queries, query_files=query_files)
