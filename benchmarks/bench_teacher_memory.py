"""Memory per process of the distillation teachers' tables: float32 copies (before) vs a shared float16 memory map.

Writes random teacher tables (``--rows`` rows split as the full recipe splits them, 0.45 clips : 0.5 captions,
``--teachers`` x ``--dims`` columns side by side) into a temporary folder outside the repository, twice: as
float32 ``.npy`` files and as the float16 tables training writes (``teacher_tables.write_tables``). Then for 1, 2
and 4 processes at once (``multiprocessing``, spawn) each process loads the tables the training way and touches
every row:

* before: the float32 tables read whole into the process (what ``load_teachers`` held per process until now);
* after: ``teacher_tables.open_tables`` (``np.load(mmap_mode="r")``), wrapped in ``TeacherSimilarity``.

When all are loaded each reads its resident memory (RSS) and proportional set size (PSS: shared pages split
between the processes mapping them) from ``/proc/self/smaps_rollup``, minus its own figures before loading. The
node's memory for the tables is the sum of the processes' PSS. The projection to the full recipe (0.45 M clips +
0.5 M captions, 3 teachers x 1024 dims, 8 processes per node) scales the measured bytes per row. ``--write-docs``
puts the figures into this script's block of docs/speed.md.

Usage:

    .venv/bin/python benchmarks/bench_teacher_memory.py [--rows 200000] [--dims 1024] [--teachers 3]
        [--processes 1 2 4] [--write-docs]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
from pathlib import Path

import numpy as np

import _published
from dcase_t6.training.distillation import TeacherSimilarity
from dcase_t6.training.teacher_tables import open_tables, write_tables

CLIP_SHARE = 0.45 / 0.95
FULL_ROWS, FULL_COLUMNS, NODE_PROCESSES = 950_000, 3 * 1024, 8
CHUNK = 8192


def memory() -> tuple[float, float]:
    """This process's (RSS, PSS) in bytes, from /proc/self/smaps_rollup."""
    values = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name] = float(rest.split()[0]) * 1024
    return values["Rss"], values["Pss"]


def touch(table: np.ndarray) -> float:
    """Read every row (a chunk at a time)."""
    return sum(float(np.asarray(table[start:start + CHUNK], dtype=np.float32).sum())
               for start in range(0, len(table), CHUNK))


def worker(case: str, folder: str, barrier, results) -> None:
    """Load the tables as ``case`` says, touch every row, and report the memory they took once all are loaded."""
    barrier.wait()
    rss, pss = memory()
    if case == "before":
        audio, text = (np.load(Path(folder) / f"{name}32.npy") for name in ("audio", "text"))
    else:
        tables = open_tables(Path(folder))
        audio, text = tables.audio, tables.text
    teachers = TeacherSimilarity(audio, text, np.arange(len(audio)), 3)
    touch(teachers.audio)
    touch(teachers.text)
    barrier.wait()  # every process holds its tables
    after_rss, after_pss = memory()
    results.put((after_rss - rss, after_pss - pss))
    barrier.wait()  # keep the tables until every process has measured


def measure(case: str, folder: Path, processes: int) -> list[tuple[float, float]]:
    """(RSS, PSS) growth of each of ``processes`` processes loading the tables at once."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=worker, args=(case, str(folder), barrier, results)) for _ in range(processes)]
    for process in workers:
        process.start()
    figures = [results.get() for _ in workers]
    for process in workers:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a {case} process failed with exit code {process.exitcode}")
    return figures


def write_inputs(folder: Path, rows: int, columns: int) -> None:
    """Random float32 tables (audio32.npy, text32.npy) and the same as float16 training tables."""
    rng = np.random.default_rng(0)
    clips = int(rows * CLIP_SHARE)
    for name, count in (("audio", clips), ("text", rows - clips)):
        table = np.lib.format.open_memmap(folder / f"{name}32.npy", mode="w+", dtype=np.float32,
                                          shape=(count, columns))
        for start in range(0, count, CHUNK):
            block = rng.standard_normal((min(CHUNK, count - start), columns), dtype=np.float32)
            table[start:start + CHUNK] = block / np.sqrt(columns)
        table.flush()
        del table
    audio, text = (np.load(folder / f"{name}32.npy", mmap_mode="r") for name in ("audio", "text"))
    write_tables(folder / "tables", audio, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="clips + captions")
    parser.add_argument("--dims", type=int, default=1024)
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    _published.add_option(parser)
    options = parser.parse_args()
    columns = options.dims * options.teachers
    scratch = Path(tempfile.mkdtemp(prefix="bench-teacher-memory-"))
    rows, node = [], {}
    try:
        write_inputs(scratch, options.rows, columns)
        print(f"{options.rows} rows x {columns} columns: float32 {options.rows * columns * 4 / 1e9:.2f} GB, "
              f"float16 {options.rows * columns * 2 / 1e9:.2f} GB")
        for case, folder in (("before", scratch), ("after", scratch / "tables")):
            for processes in options.processes:
                figures = measure(case, folder, processes)
                rss = max(r for r, _ in figures) / 1e9
                pss = [p / 1e9 for _, p in figures]
                node[case, processes] = sum(pss)
                print(f"{case:>6} x{processes}: per process RSS {rss:5.2f} GB, PSS {max(pss):5.2f} GB; "
                      f"node (sum of PSS) {sum(pss):5.2f} GB")
                label = "float32 copies" if case == "before" else "float16 memory map"
                rows.append(_published.Row(
                    f"teacher tables, {options.rows // 1000}k rows x {options.teachers} x {options.dims}, "
                    f"{label}, {processes} process{'es' if processes > 1 else ''}: per process RSS / PSS; node",
                    f"{rss:.2f} / {max(pss):.2f} GB; {sum(pss):.2f} GB"))
        most = max(options.processes)
        scale = FULL_ROWS * FULL_COLUMNS / (options.rows * columns)
        before = node["before", most] / most * scale * NODE_PROCESSES
        after = node["after", most] * scale
        print(f"full recipe per 8-GPU node: before {before:.1f} GB, after {after:.1f} GB")
        rows.append(_published.Row(
            "projection, full recipe (0.45 M clips + 0.5 M captions, 3 x 1024 dims), 8 processes per node: "
            "teacher tables per node (before: 8 float32 copies, and each also on its GPU)",
            f"{before:.1f} GB before, {after:.1f} GB after (shared; nothing held on the GPUs)",
            "about 1/16 of the float32 copies"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _published.finish(__file__, rows, options.write_docs)


if __name__ == "__main__":
    main()
