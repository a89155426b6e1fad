"""What training and embedding do with the clips the audio cache skipped (unreadable when it was built): leave
them out with their caption pairs or queries, with one warning; fail with the fix when nothing is left, or when
a set needs every clip (the evaluation set)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.audio_cache import FIX_SKIPPED, AudioCache
from dcase_t6.data.split_index import Split


@dataclass(frozen=True)
class Absent:
    """Clips of a table (split index rows) that the audio cache does not hold, and how many rows named them."""

    where: str
    clips: list[str]
    rows: int


def drop_absent(store: AudioCache, frame: pd.DataFrame, where: str,
                reporter: Reporter = SILENT) -> tuple[pd.DataFrame, Absent]:
    """The rows (caption pairs) of ``frame`` (split index rows, absolute ``path``) whose clip the cache holds.

    Clips the cache skipped (unreadable when it was built) are left out with their rows: one warning line
    says how many and names the cache's skipped list. Nothing left is an error that names the files and the fix.

    Args:
        store: the audio cache.
        frame: split index rows.
        where: what the rows are part of, for the messages (``synthetic development-training``).
        reporter: told what was left out.

    Returns:
        The kept rows (index order, renumbered) and what was left out.
    """
    cached = frame["path"].map(store.__contains__).astype(bool)
    absent = Absent(where, list(dict.fromkeys(frame.loc[~cached, "path"])), int((~cached).sum()))
    if absent.clips:
        if not cached.any():
            raise _nothing_left(store, absent.clips, where)
        _warn_left_out(store, absent.clips, where, f"{absent.rows} caption pair(s)", reporter)
    return (frame[cached].reset_index(drop=True), absent) if absent.clips else (frame, absent)


def cached_split(store: AudioCache, split: Split, reporter: Reporter = SILENT) -> Split:
    """``split`` without the clips the cache skipped and without their queries (see :func:`drop_absent`).

    A split whose queries are not tied to clips (the evaluation set) needs every clip: a skipped one is an error.
    """
    present = [path in store for path in split.paths]
    if all(present):
        return split
    gone = {name for name, cached in zip(split.files, present) if not cached}
    absent = [str(path) for path, cached in zip(split.paths, present) if not cached]
    where = f"{split.dataset} {split.split}"
    if any(name is None for name in split.query_files):
        raise _nothing_left(store, absent, f"{where} (it needs every clip)")
    keep = [name not in gone for name in split.query_files]
    if not any(keep):
        raise _nothing_left(store, absent, where)
    _warn_left_out(store, absent, where, f"{len(keep) - sum(keep)} query(ies)", reporter)
    return Split(dataset=split.dataset, split=split.split,
                 files=[name for name, cached in zip(split.files, present) if cached],
                 paths=[path for path, cached in zip(split.paths, present) if cached],
                 queries=[query for query, kept in zip(split.queries, keep) if kept],
                 query_files=[name for name, kept in zip(split.query_files, keep) if kept])


def _nothing_left(store: AudioCache, absent: list[str], where: str) -> UserError:
    """The error (for the caller to raise) when leaving out the ``absent`` clips leaves nothing of ``where``."""
    return UserError(f"{store.skipped_file}: {len(absent)} clip(s) of {where} were skipped by the {store.rate} Hz "
                     f"audio cache, which leaves nothing to use (first {_first(store, absent)}); {FIX_SKIPPED}")


def _warn_left_out(store: AudioCache, absent: list[str], where: str, rows: str, reporter: Reporter) -> None:
    """Warn that ``rows`` of ``where`` are left out with their ``absent`` clips."""
    reporter.warning(f"left out {rows} of {where}: their {len(absent)} clip(s) were skipped by the {store.rate} Hz "
                     f"audio cache (listed in {store.skipped_file}; first {_first(store, absent)})")


def _first(store: AudioCache, absent: list[str]) -> str:
    """The first absent clip and why the cache skipped it."""
    return f"{absent[0]}: {store.reason(absent[0])}"
