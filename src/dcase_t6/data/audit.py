"""Freesound-id audit of a data root: which training clips are also validation, test or evaluation clips, and
which forbidden ids remain.

The DCASE 2025 rules forbid training or validating on Freesound data that overlaps Clotho's development-testing
and the evaluation set, and publish the forbidden ids (shipped as ``dcase2025_task6_excluded_freesound_ids.csv``).
Every split index under ``DATA/index`` is read: its rows in the splits of :data:`PROTECTED_SPLITS` (Clotho's
validation and development-testing, the evaluation set) are what must not leak; every other (dataset, split,
source) is a training source (Clotho development via its metadata sound ids, WavCaps' FreeSound part, any other
index with sound ids). Ids are compared as numbers (``0123`` = ``123``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.tables import read_table
from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN, read_forbidden_ids
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import index_path, list_datasets

PROTECTED_SPLITS = ("development-validation", "development-testing", "evaluation")
_COLUMNS = ["dataset", "split", "source", "file_name", "sound_id"]
_ID = re.compile(r"(\d+)(\.0*)?")


@dataclass(frozen=True)
class ProtectedSet:
    """Clips that must not be trained on: one protected split of one dataset, and how many carry a Freesound id."""

    dataset: str
    split: str
    clips: int
    with_ids: int

    @property
    def name(self) -> str:
        """``dataset/split``."""
        return f"{self.dataset}/{self.split}"

    def as_json(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "clips": self.clips, "with_ids": self.with_ids}


@dataclass(frozen=True)
class SourceAudit:
    """One training source (dataset, split, source): its clips, those with a Freesound id, the ids it shares with
    each protected set (by ``dataset/split``; only non-empty ones), and the forbidden ids it still holds."""

    dataset: str
    split: str
    source: str
    clips: int
    with_ids: int
    overlaps: dict[str, list[str]] = field(default_factory=dict)
    forbidden: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``dataset/split/source``."""
        return f"{self.dataset}/{self.split}/{self.source}"

    @property
    def clean(self) -> bool:
        """No overlap and no forbidden id."""
        return not self.overlaps and not self.forbidden

    def as_json(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "source": self.source, "clips": self.clips,
                "with_ids": self.with_ids, "overlaps": self.overlaps, "forbidden": self.forbidden}


@dataclass(frozen=True)
class AuditReport:
    """The audit of a data root: the forbidden-id list used, the protected sets and every training source."""

    root: str
    forbidden_file: str
    forbidden_ids: int
    protected: list[ProtectedSet]
    sources: list[SourceAudit]

    @property
    def ok(self) -> bool:
        """True when no training source shares an id with a protected set or holds a forbidden id."""
        return all(source.clean for source in self.sources)

    def as_json(self) -> dict:
        """The ``prepare audit --json`` object."""
        return {"ok": self.ok, "root": self.root, "forbidden_file": self.forbidden_file,
                "forbidden_ids": self.forbidden_ids, "protected": [item.as_json() for item in self.protected],
                "sources": [source.as_json() for source in self.sources]}


def audit(layout: Layout, forbidden: Path = DEFAULT_FORBIDDEN) -> AuditReport:
    """Audit every split index under ``layout.root`` for Freesound-id overlaps and forbidden ids.

    Args:
        layout: the data root.
        forbidden: the forbidden Freesound ids CSV (column ``sound_id``).

    Returns:
        Per training source: clips, clips with an id, ids shared with each protected set, forbidden ids left.

    Raises:
        UserError: when the root has no split index, or an index or the forbidden list is malformed.
    """
    datasets = list_datasets(layout.root)
    if not datasets:
        raise UserError(f"{layout.root / 'index'}: no split index; run `dcase-t6 prepare clotho|wavcaps|... --root "
                        f"{layout.root}` first")
    forbidden_ids = {_freesound_id(value) for value in read_forbidden_ids(Path(forbidden))[0]}
    tables = [_clips(layout.root, dataset) for dataset in datasets]
    table = pd.concat(tables, ignore_index=True)
    protected_rows = table["split"].isin(PROTECTED_SPLITS)
    protected, protected_ids = [], {}
    for (dataset, split), group in table[protected_rows].groupby(["dataset", "split"], sort=True):
        ids = set(group["id"].dropna())
        protected.append(ProtectedSet(dataset, split, len(group), int(group["id"].notna().sum())))
        protected_ids[f"{dataset}/{split}"] = ids
    sources = []
    for (dataset, split, source), group in table[~protected_rows].groupby(["dataset", "split", "source"], sort=True):
        ids = set(group["id"].dropna())
        overlaps = {name: _sorted(ids & others) for name, others in protected_ids.items() if ids & others}
        sources.append(SourceAudit(dataset, split, source, len(group), int(group["id"].notna().sum()), overlaps,
                                   _sorted(ids & forbidden_ids)))
    return AuditReport(str(layout.root), str(forbidden), len(forbidden_ids), protected, sources)


def _clips(root: Path, dataset: str) -> pd.DataFrame:
    """One row per clip of a split index (its first caption row), with its Freesound id or None."""
    frame = read_table(index_path(root, dataset), _COLUMNS)
    clips = frame.drop_duplicates(["dataset", "split", "file_name"])[_COLUMNS[:4]].copy()
    clips["id"] = [_freesound_id(value) for value in frame.loc[clips.index, "sound_id"]]
    return clips


def _freesound_id(value: str) -> str | None:
    """A Freesound id as a canonical number string (``'0123'``, ``'123.0'`` -> ``'123'``); None when not an id."""
    match = _ID.fullmatch(str(value).strip())
    return str(int(match.group(1))) if match else None


def _sorted(ids: set[str]) -> list[str]:
    return sorted(ids, key=int)


TEST_SPLITS = ("development-testing", "evaluation")  # what training must never see: dev-test and the eval set


def test_overlaps(layout: Layout, training: dict[str, list[str]]) -> dict[str, list[str]]:
    """Freesound ids that the splits a run trains on share with the test clips (dev-test, the evaluation set) of any
    prepared dataset: what ``train`` refuses before anything is registered (``allow_test_overlap`` lets it train).

    Args:
        layout: the data root.
        training: the splits each training dataset trains on (``training.data.training_splits``).

    Returns:
        ``{"TRAIN_DATASET/SPLIT -> TEST_DATASET/SPLIT": [ids]}``, only the non-empty ones.
    """
    tables = {dataset: _clips(layout.root, dataset) for dataset in list_datasets(layout.root)}
    tests = {f"{dataset}/{split}": set(group["id"].dropna())
             for dataset, table in tables.items() for split, group in table.groupby("split", sort=True)
             if split in TEST_SPLITS}
    found = {}
    for dataset, splits in training.items():
        table = tables.get(dataset)
        if table is None:
            continue
        for split in splits:
            ids = set(table.loc[table["split"] == split, "id"].dropna())
            for name, others in tests.items():
                if name != f"{dataset}/{split}" and ids & others:
                    found[f"{dataset}/{split} -> {name}"] = _sorted(ids & others)
    return found
