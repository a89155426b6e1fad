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
from dcase_t6.data.split_index import read_index
from dcase_t6.retrieval.ground_truth import read_relevance_file


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
