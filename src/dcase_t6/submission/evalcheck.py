"""A submission matrix against the official evaluation set: the same queries and the same audio files, exactly.

The organisers match a submission's rows to their queries by exact string and its columns to their clips by file
name: a caption re-normalised (lower-cased, stripped, punctuation changed), dropped or repeated is a query they
cannot score. :func:`eval_set_problems` names the first mismatch of each kind (with the row or column and the
nearest official caption) and counts the others.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.tables import read_table
from dcase_t6.data.evalset import audio_files
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import read_index

EVAL_DATASET, EVAL_SPLIT = "eval", "evaluation"
_SHOWN = 70


@dataclass(frozen=True)
class EvalSet:
    """The official queries (in their file's order) and, when known, the evaluation audio file names.

    Args:
        queries: the captions, as the organisers' file spells them.
        queries_file: the file they were read from (its rows are named in the messages).
        files: the evaluation clips' file names, or None when only the captions were given.
        source: how the set was given, for messages (``--eval-captions FILE``, ``--data-root DATA``).
    """

    queries: list[str]
    queries_file: str
    files: list[str] | None
    source: str

    def as_json(self) -> dict:
        """``{"source", "queries", "files"}`` (counts; files None when not checked)."""
        return {"source": self.source, "queries": len(self.queries),
                "files": None if self.files is None else len(self.files)}


def read_eval_set(captions: str | Path | None = None, audio: str | Path | None = None,
                  data_root: str | Path | None = None) -> EvalSet:
    """The evaluation set from the organisers' captions file (and audio folder), or from a prepared data root.

    Args:
        captions: the organisers' ``retrieval_captions.csv`` (column ``caption``).
        audio: the folder of the evaluation clips (with ``captions``; optional).
        data_root: a data root where ``dcase-t6 prepare eval`` ran (``index/eval.queries.csv`` and the eval index).

    Raises:
        UserError: when neither or both sources are given, or a file is missing or malformed.
    """

    if (captions is None) == (data_root is None):
        raise UserError("give the evaluation set once: --eval-captions retrieval_captions.csv [--eval-audio DIR], "
                        "or --data-root DATA where `dcase-t6 prepare eval` ran")
    if data_root is None:
        queries = _queries(Path(captions))
        files = [path.name for path in audio_files(Path(audio))] if audio is not None else None
        return EvalSet(queries, str(captions), files, f"--eval-captions {captions}")
    if audio is not None:
        raise UserError("--eval-audio goes with --eval-captions; with --data-root the prepared eval index lists the "
                        "clips")

    layout = Layout.at(data_root)
    queries_file = layout.queries_file(EVAL_DATASET)
    if not queries_file.is_file():
        raise UserError(f"{queries_file}: not found; run `dcase-t6 prepare eval --root {data_root} --captions "
                        "retrieval_captions.csv --audio DIR` first, or pass --eval-captions")
    files = list(dict.fromkeys(read_index(data_root, EVAL_DATASET, EVAL_SPLIT)["file_name"]))
    return EvalSet(_queries(queries_file), str(queries_file), files, f"--data-root {data_root}")


def find_eval_root(data_root: str | Path) -> Path | None:
    """``data_root`` when ``dcase-t6 prepare eval`` ran there (its queries file and eval index exist), else None."""
    layout = Layout.at(data_root)
    if layout.queries_file(EVAL_DATASET).is_file() and layout.index_file(EVAL_DATASET).is_file():
        return layout.root
    return None


def eval_set_problems(queries: list[str], files: list[str], evalset: EvalSet, where: str) -> list[str]:
    """How the rows and columns of a submission matrix differ from the evaluation set; empty when they match.

    Args:
        queries: the matrix's query texts (CSV rows 2, 3, ...).
        files: its audio file columns (header cells 2, 3, ...).
        evalset: the official set.
        where: the matrix's name, starting every message.

    Returns:
        One line per kind of mismatch (a query not official, a repeated query, an official query missing, a file
        not an evaluation clip, an evaluation clip missing): the first one named, the others counted.
    """
    fix = (f"write every caption of {Path(evalset.queries_file).name} exactly once, spelled exactly as there "
           "(the organisers match queries by exact string: no change of case, spaces or punctuation)")
    official = Counter(evalset.queries)
    used: Counter = Counter()
    extra: list[tuple[int, str]] = []
    repeated: list[tuple[int, str]] = []
    first_row: dict[str, int] = {}
    for row, query in enumerate(queries, start=2):
        used[query] += 1
        first_row.setdefault(query, row)
        if query not in official:
            extra.append((row, query))
        elif used[query] > official[query]:
            repeated.append((row, query))
    left = {query: count - used[query] for query, count in official.items() if count > used[query]}
    missing = []
    for row, query in enumerate(evalset.queries, start=2):
        if left.get(query, 0) > 0:
            missing.append((row, query))
            left[query] -= 1
    problems = []
    if extra:
        row, query = extra[0]
        problems.append(f"{where}: row {row}: query {_show(query)} is not an official evaluation caption"
                        f"{_in_all(extra, 'such queries')}"
                        f"{_nearest(query, [text for _, text in missing] or evalset.queries, evalset)}; {fix}")
    if repeated:
        row, query = repeated[0]
        problems.append(f"{where}: row {row}: query {_show(query)} repeats row {first_row[query]}"
                        f"{_in_all(repeated, 'repeated rows')}; {fix}")
    if missing:
        row, query = missing[0]
        problems.append(f"{where}: no row for the official caption {_show(query)} ({evalset.queries_file} row "
                        f"{row}){_in_all(missing, 'official captions without a row')}; {fix}")
    if evalset.files is not None:
        problems.extend(_file_problems(files, evalset.files, where))
    return problems


def _file_problems(files: list[str], official: list[str], where: str) -> list[str]:
    known, given = set(official), set(files)
    extra = [(column, name) for column, name in enumerate(files, start=2) if name not in known]
    missing = [name for name in official if name not in given]
    problems = []
    fix = "the header needs one column per evaluation clip, named exactly as its audio file"
    if extra:
        column, name = extra[0]
        problems.append(f"{where}: header cell {column}: file {_show(name)} is not an evaluation audio file"
                        f"{_in_all(extra, 'such files')}; {fix}")
    if missing:
        problems.append(f"{where}: no column for the evaluation audio file {_show(missing[0])}"
                        f"{_in_all(missing, 'evaluation files without a column')}; {fix}")
    return problems


def _queries(path: Path) -> list[str]:
    frame = read_table(path, ["caption"])
    if frame.empty:
        raise UserError(f"{path}: no caption rows; pass the organisers' retrieval_captions.csv (column 'caption')")
    return frame["caption"].tolist()


def _nearest(query: str, candidates: list[str], evalset: EvalSet) -> str:
    match = difflib.get_close_matches(query, list(dict.fromkeys(candidates)), n=1, cutoff=0.6)
    if not match:
        return ""
    nearest = match[0]
    row = evalset.queries.index(nearest) + 2
    return (f"; nearest official caption ({evalset.queries_file} row {row}): {_show(nearest)}, "
            f"{_difference(query, nearest)}")


def _difference(given: str, official: str) -> str:
    if given.casefold() == official.casefold():
        return "which differs only in upper/lower case"
    if given.split() == official.split():
        return "which differs only in spaces"
    position = next((i for i, (a, b) in enumerate(zip(given, official)) if a != b), min(len(given), len(official)))
    return (f"which differs from character {position + 1} on ({_show(given[position:position + 12])} instead of "
            f"{_show(official[position:position + 12])})")


def _in_all(items: list, many: str) -> str:
    """`` (N <many> in all)`` when there is more than one."""
    return f" ({len(items)} {many} in all)" if len(items) > 1 else ""


def _show(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}..."
