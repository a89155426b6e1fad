"""The two rich consoles every module prints through, and the progress bars (on stderr, so stdout stays clean
for ``--json``)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console()
stderr_console = Console(stderr=True)


def count_progress() -> Progress:
    """Progress bar counting items (files, clips)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TimeRemainingColumn(), console=stderr_console, transient=True)


def byte_progress() -> Progress:
    """Progress bar for downloads and checksums: bytes, speed, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=stderr_console, transient=True)
