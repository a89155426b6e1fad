"""Multi-relevance files (organiser format: ``query``, ``audio_filenames`` list literal): write and attach."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from dcase_t6.common.atomic import atomic_open, atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.data.layout import DEV_TEST, Layout
from dcase_t6.data.reports import RelevanceReport
from dcase_t6.data.split_index import load_split, read_index
from dcase_t6.retrieval.ground_truth import Relevance, read_relevance_file, single_relevant


def split_ground_truth(data_root: str | Path, dataset: str, split: str,
                       present: set[str] | None = None) -> Relevance | None:
    """The ground truth of a prepared split: its multi-relevance file (``prepare relevance``) when there is one,
    else each caption -> its clip. The one place that decides it (dev-test in ``runs show``, pipelines).

    Args:
        data_root: the prepared data root.
        dataset: the dataset.
        split: the split (e.g. ``development-testing``).
        present: clips the matrices hold; captions of other clips are left out (the relevance file is
            used whole: ``evaluate`` decides about its missing clips).

    Returns:
        The ground truth, or None when the split has no relevance file and no caption of a present clip.

    Raises:
        UserError: the split index is missing or damaged (its message names the fix).
    """
    layout = Layout.at(data_root)
    relevance_file = layout.relevance_file(dataset, split)
    if relevance_file.is_file():
        return read_relevance_file(relevance_file)
    data = load_split(layout.root, dataset, split)
    return single_relevant(data.queries, data.query_files, layout.index_file(dataset), present)


def write_relevance_csv(path: Path, queries: list[str], relevant: list[list[str]]) -> None:
    """Write a multi-relevance CSV exactly like the organisers' ``metadata_eval.csv``."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["query", "audio_filenames"])
        writer.writerows((query, str(list(files))) for query, files in zip(queries, relevant))


def attach_relevance(layout: Layout, dataset: str, source: Path, split: str = DEV_TEST) -> RelevanceReport:
    """Validate ``source`` against the split (every query a caption, every file a clip) and store it."""
    relevance = read_relevance_file(source)
    frame = read_index(layout.root, dataset, split)
    captions, files = set(frame["caption"]), set(frame["file_name"])
    bad_queries = [query for query in relevance.queries if query not in captions]
    bad_files = sorted({name for names in relevance.relevant_files for name in names} - files)
    if bad_queries or bad_files:
        raise UserError(f"{source}: does not match {dataset} {split} ({len(files)} clips): "
                        f"{_mismatch(bad_queries, len(relevance.queries), 'queries are not captions of the split')}; "
                        f"{_mismatch(bad_files, None, 'listed files are not clips of the split')}; "
                        "use the relevance file of this dataset, or re-run prepare if clips were skipped "
                        f"(see {layout.report_file(dataset)})")
    target = layout.relevance_file(dataset, split)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    counts = np.array([len(names) for names in relevance.relevant_files])
    return RelevanceReport(dataset=dataset, split=split, relevance=str(target), queries=len(relevance.queries),
                           relevant_per_query={"min": int(counts.min()), "mean": round(float(counts.mean()), 3),
                                               "max": int(counts.max())})


def _mismatch(items: list[str], total: int | None, what: str) -> str:
    if not items:
        return f"0 {what}"
    out_of = f" of {total}" if total is not None else ""
    return f"{len(items)}{out_of} {what} (first {items[0]!r})"
