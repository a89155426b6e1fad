"""Publish a benchmark's measured figures into the page that shows them (``docs/speed.md`` by default).

Each ``benchmarks/bench_*.py`` owns one block of the page, between the lines
``<!-- begin: benchmarks/bench_x.py -->`` and ``<!-- end: benchmarks/bench_x.py -->``. With ``--write-docs``
a script replaces its block with a fresh table of the rows it just measured (benchmark | measured | goal) and
one line saying when and where they were measured. Nothing else in the page changes; the page is replaced
atomically, and a page whose markers are missing or duplicated is refused and left as it was.

Scripts import it as ``import _published`` (``python benchmarks/bench_x.py`` puts ``benchmarks/`` on the path).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "speed.md"
HEADER = ("benchmark", "measured", "goal")
OPTION = "--write-docs"
# The load when the benchmark started (this module is imported at the top of every script).
LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


class PublishError(ValueError):
    """The page cannot take the block: its markers are missing, duplicated or out of order, or a row is bad."""


@dataclass(frozen=True)
class Row:
    """One table row.

    what: the measurement, as the page words it; measured: the figure from this run; goal: what it should reach
    (empty when there is none).
    """

    what: str
    measured: str
    goal: str = ""


def markers(script: str) -> tuple[str, str]:
    """The begin and end lines of ``script``'s block (``script`` is its file name, e.g. ``bench_fbank.py``)."""
    name = Path(script).name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+\.py", name):
        raise PublishError(f"not a benchmark script name: {script!r}")
    return f"<!-- begin: benchmarks/{name} -->", f"<!-- end: benchmarks/{name} -->"


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--write-docs [PAGE]`` to a script's parser (``PAGE`` defaults to docs/speed.md)."""
    parser.add_argument(OPTION, nargs="?", const=DOCUMENT, default=None, type=Path, metavar="PAGE",
                        help=f"replace this script's block in PAGE with the figures just measured "
                             f"(default PAGE: {DOCUMENT.relative_to(ROOT)})")


def requested(argv: Sequence[str] | None = None) -> Path | None:
    """For scripts that read ``sys.argv`` themselves: the page ``--write-docs`` or ``--write-docs=PAGE`` names."""
    for argument in sys.argv[1:] if argv is None else argv:
        if argument == OPTION:
            return DOCUMENT
        if argument.startswith(OPTION + "="):
            return Path(argument.split("=", 1)[1])
    return None


def machine_line(note: str = "") -> str:
    """When and where: UTC date, CPU model, cores, torch's version (if imported), load average at the start."""
    parts = [datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), _cpu_model(),
             f"{os.cpu_count()} cores"]
    if "torch" in sys.modules:
        parts.append(f"torch {sys.modules['torch'].__version__}")
    if LOAD_AT_START is not None:
        parts.append("load average {:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min) at the start".format(*LOAD_AT_START))
    if note:
        parts.append(note)
    return "Measured " + ", ".join(parts) + "."


def device_note(device: object) -> str:
    """For ``machine_line``: nothing on the CPU, else the device the figures were timed on (with the card's name)."""
    name = str(device)
    if name == "cpu":
        return ""
    torch = sys.modules.get("torch")
    if name.startswith("cuda") and torch is not None and torch.cuda.is_available():
        return f"timed on {name} ({torch.cuda.get_device_name(name)})"
    return f"timed on {name}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def table(rows: Sequence[Row]) -> list[str]:
    """The markdown table of ``rows`` (cells may not hold line breaks; ``|`` is escaped)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---|"]
    for row in rows:
        cells = [row.what, row.measured, row.goal]
        if any("\n" in cell or "\r" in cell for cell in cells):
            raise PublishError(f"a table cell holds a line break: {row!r}")
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def block(script: str, rows: Sequence[Row], when_where: str) -> list[str]:
    """The block's lines, markers included."""
    begin, end = markers(script)
    return [begin, *table(rows), "", when_where, end]


def replace_block(text: str, script: str, lines: Sequence[str], document: Path | str = "the page") -> str:
    """``text`` with ``script``'s block replaced by ``lines`` (markers included); refuses if its markers are not
    exactly one begin line followed by one end line."""
    begin, end = markers(script)
    old = text.splitlines(keepends=True)
    found = {marker: [number for number, line in enumerate(old) if line.strip() == marker] for marker in (begin, end)}
    for marker, numbers in found.items():
        if len(numbers) != 1:
            where = "missing" if not numbers else f"there {len(numbers)} times (lines " + \
                ", ".join(str(n + 1) for n in numbers) + ")"
            raise PublishError(f"{document}: the marker line {marker!r} is {where}; add exactly one "
                               f"'{begin}' ... '{end}' pair where the figures of {Path(script).name} belong")
    first, last = found[begin][0], found[end][0]
    if last < first:
        raise PublishError(f"{document}: {end!r} (line {last + 1}) comes before {begin!r} (line {first + 1})")
    newline = "\r\n" if old[first].endswith("\r\n") else "\n"
    return "".join([*old[:first], *(line + newline for line in lines), *old[last + 1:]])


def publish(script: str, rows: Sequence[Row], document: Path | str = DOCUMENT, note: str = "") -> Path:
    """Replace ``script``'s block in ``document`` with ``rows`` and the when/where line; atomic (a temporary file
    in the same folder, then ``os.replace``). Raises ``PublishError`` and leaves the page untouched when its
    markers are missing or duplicated."""
    path = Path(document)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PublishError(f"{path}: cannot read the page ({err.strerror or err})") from err
    updated = replace_block(text, script, block(script, rows, machine_line(note)), path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(updated)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def finish(script: str, rows: Sequence[Row], document: Path | str | None, note: str = "") -> None:
    """What every benchmark does last: print the rows and, when ``document`` is given (``--write-docs``), write
    them into its block; a refused page ends the script with one line saying why."""
    name = Path(script).name
    print(f"\nrows of {name} for {DOCUMENT.relative_to(ROOT)}:")
    print("\n".join(table(rows)))
    if document is None:
        print(f"(not written; pass {OPTION} to replace the block of {name})")
        return
    try:
        written = publish(name, rows, document, note)
    except PublishError as err:
        raise SystemExit(f"{OPTION}: {err}") from None
    print(f"wrote the block of {name} in {written}")
